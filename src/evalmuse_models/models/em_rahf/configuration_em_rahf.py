"""Configuration of EM-RAHF, the official EvalMuse-Structure baseline (NTIRE 2025 track 2), exactly as its
training code builds it: an AltCLIP ViT-L/14 at 448 px, AltCLIP's RoBERTa embeddings of
``"human artifact " + prompt``, six single-head self-attention blocks over the image and text tokens, and
two convolutional heads with LayerNorms over ``[C, H, W]`` (a 512 x 512 heatmap and a score).

This file imports only ``transformers`` so that it ships as remote code with saved checkpoints.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AltCLIPTextConfig, AltCLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: ``BAAI/AltCLIP``'s vision tower as the official code configures it: ViT-L/14 at 448 px, so 32 x 32
#: patches and 1025 position embeddings.
ALTCLIP_VISION_448 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 448,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}

#: ``BAAI/AltCLIP``'s text config (XLM-R large); only its embedding layer is built and used.
ALTCLIP_TEXT = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
    "hidden_dropout_prob": 0.1,
    "project_dim": 768,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny widths for tests and CPU demos (random weights, no network): 64-px input with 8-px patches
    # (an 8 x 8 grid, so a 128 x 128 heatmap), 2 fusion blocks, narrow heads, a 128-token vocabulary.
    "tiny": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 8,
            "image_size": 64,
            "projection_dim": 32,
        },
        "text_config": {
            "vocab_size": 128,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 34,
            "project_dim": 32,
        },
        "max_text_length": 32,
        "num_fusion_layers": 2,
        "fusion_intermediate_size": 64,
        "heatmap_conv_channels": [16, 16],
        "heatmap_deconv_channels": [32, 16, 16, 8],
        "score_conv_channels": [32, 16, 8, 4],
        "score_hidden_sizes": [32, 16],
    },
    # The official EM-RAHF (DYEvaLab/EvalMuse-Structure, model/model_final.py): the defaults below.
    "em-rahf": {},
}


class EmRahfConfig(PreTrainedConfig):
    r"""
    Configuration of [`EmRahfModel`], the EvalMuse-Structure baseline EM-RAHF. The defaults are the
    official architecture (the ``em-rahf`` preset); ``tiny`` narrows every width for tests.

    Args:
        vision_config (`dict` or [`AltCLIPVisionConfig`]): the AltCLIP vision tower. Default: ViT-L/14 at
            448 px (32 x 32 patches, 1025 position embeddings), as the official code configures
            ``BAAI/AltCLIP``.
        text_config (`dict` or [`AltCLIPTextConfig`]): AltCLIP's text config; only its RoBERTa embedding
            layer (word, position and token-type embeddings, LayerNorm, dropout) is built. Its
            ``hidden_size`` must equal the vision tower's.
        num_fusion_layers (`int`): self-attention blocks over the image and text tokens (6).
        fusion_intermediate_size (`int`): hidden width of the blocks' GELU MLP (2048).
        heatmap_conv_channels (`list[int]`): the heatmap head's two 3 x 3 convolutions on the patch grid
            ([512, 512]).
        heatmap_deconv_channels (`list[int]`): one x2 up-sampling stage per entry (a 3 x 3 stride-2
            transposed convolution and two 3 x 3 convolutions): [1024, 512, 512, 256], 32 -> 512 px.
        score_conv_channels (`list[int]`): the score head's 2 x 2 convolutions, each shrinking the grid by
            one ([1024, 512, 128, 64], 32 -> 28).
        score_hidden_sizes (`list[int]`): the score MLP's hidden widths ([2048, 1024]).
        weighted_heatmap_loss (`bool`): the official ``--weighted_loss`` option: the heatmap MSE of each
            image weighted by ``target + 1/255`` (off in the official run).
        freeze_vit, freeze_text (`bool`): the encoders are frozen when the model is built (the official
            run's ``--warmup``); [`EmRahfModel.freeze_backbones`] changes it.
        freeze_schedule_fraction (`float`): fraction of the training steps with frozen encoders before they
            are unfrozen (the official schedule: 0.5).
        threshold (`float`): heatmap level of the inference mask, ``round(heatmap * 255) > threshold * 255``
            (the official ``> 40``: 40/255).
        min_region_area (`int`): mask regions with fewer pixels are removed by post-processing (0: the
            official mask, as thresholded).
        text_prefix (`str`), max_text_length (`int`): the text is ``text_prefix + prompt``, padded (and
            truncated) to ``max_text_length`` tokens (512: the AltCLIP tokenizer's maximum).
        tokenizer_name_or_path (`str`): the tokenizer of the processor (``BAAI/AltCLIP``).
        pretrained_encoders_id (`str`): the checkpoint [`EmRahfModel.load_pretrained_encoders`] reads by
            default (``BAAI/AltCLIP``).
        image_mean, image_std (`list[float]`): normalisation of the processor (CLIP's).

    Example:

    ```python
    >>> from evalmuse_models.models.em_rahf import EmRahfConfig
    >>> config = EmRahfConfig.from_preset("em-rahf")
    >>> config.num_image_tokens, config.heatmap_size, config.text_config.vocab_size
    (1025, 512, 250002)

    ```
    """

    model_type = "em_rahf"
    sub_configs_defaults = {  # noqa: RUF012 (transformers class attribute)
        "vision_config": SubConfigSpec(config_class=AltCLIPVisionConfig, init_kwargs=dict(ALTCLIP_VISION_448)),
        "text_config": SubConfigSpec(config_class=AltCLIPTextConfig, init_kwargs=dict(ALTCLIP_TEXT)),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_fusion_layers: int = 6
    fusion_intermediate_size: int = 2048
    heatmap_conv_channels: list[int] | None = None
    heatmap_deconv_channels: list[int] | None = None
    score_conv_channels: list[int] | None = None
    score_hidden_sizes: list[int] | None = None
    weighted_heatmap_loss: bool = False
    freeze_vit: bool = True
    freeze_text: bool = True
    freeze_schedule_fraction: float = 0.5
    threshold: float = 40 / 255
    min_region_area: int = 0
    text_prefix: str = "human artifact "
    max_text_length: int = 512
    tokenizer_name_or_path: str = "BAAI/AltCLIP"
    pretrained_encoders_id: str = "BAAI/AltCLIP"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    preset: str | None = None

    def __post_init__(self, **kwargs):
        # a dict sub-config is the official one with these fields changed (as in ``from_preset``)
        if isinstance(self.vision_config, dict):
            self.vision_config = {**ALTCLIP_VISION_448, **self.vision_config}
        if isinstance(self.text_config, dict):
            self.text_config = {**ALTCLIP_TEXT, **self.text_config}
        defaults = {
            "heatmap_conv_channels": [512, 512],
            "heatmap_deconv_channels": [1024, 512, 512, 256],
            "score_conv_channels": [1024, 512, 128, 64],
            "score_hidden_sizes": [2048, 1024],
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            setattr(self, name, list(default if value is None else value))
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        def bad(field: str, expected: str) -> ValueError:
            return ValueError(f"EmRahfConfig.{field}={getattr(self, field)!r} is invalid: expected {expected}")

        vision, text = self.vision_config, self.text_config
        for field in ("image_size", "patch_size"):
            if not isinstance(getattr(vision, field), int):
                raise TypeError(f"EmRahfConfig.vision_config.{field} must be one integer (square images and patches)")
        if vision.image_size % vision.patch_size:
            raise ValueError(
                f"EmRahfConfig.vision_config.image_size={vision.image_size} is invalid: expected a multiple of "
                f"patch_size={vision.patch_size}"
            )
        if text.hidden_size != vision.hidden_size:
            raise ValueError(
                f"EmRahfConfig.text_config.hidden_size={text.hidden_size} is invalid: expected the vision tower's "
                f"width {vision.hidden_size} (image and text tokens are attended together)"
            )
        for field in ("num_fusion_layers", "fusion_intermediate_size", "max_text_length"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(field, "a positive integer")
        for field in ("heatmap_conv_channels", "heatmap_deconv_channels", "score_conv_channels", "score_hidden_sizes"):
            value = getattr(self, field)
            if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                raise bad(field, "a non-empty list of positive integers")
        if len(self.score_conv_channels) >= self.grid_size:
            raise bad("score_conv_channels", f"fewer stages than the patch grid's side ({self.grid_size}): each "
                      "2 x 2 convolution shrinks it by one")
        # RoBERTa positions start after the padding index, so the padded text needs max_text_length + pad + 1 rows
        needed = self.max_text_length + (text.pad_token_id or 0) + 1
        if text.max_position_embeddings < needed:
            raise bad("max_text_length", f"at most text_config.max_position_embeddings - pad_token_id - 1 = "
                      f"{text.max_position_embeddings - (text.pad_token_id or 0) - 1}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise bad("threshold", "a heatmap level in [0, 1] (the official one is 40/255)")
        if not 0.0 <= float(self.freeze_schedule_fraction) <= 1.0:
            raise bad("freeze_schedule_fraction", "a fraction of the training steps in [0, 1]")
        if isinstance(self.min_region_area, bool) or not isinstance(self.min_region_area, int) or self.min_region_area < 0:
            raise bad("min_region_area", "a pixel count >= 0")

    @property
    def uses_text(self) -> bool:
        """The prompt is an input (always, for EM-RAHF)."""
        return True

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def grid_size(self) -> int:
        """Patches per side (32 at 448 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """CLS + patches (1025 at 448 px): the vision tower's position embeddings."""
        return self.grid_size**2 + 1

    @property
    def heatmap_size(self) -> int:
        """Heatmap side: the patch grid doubled by every up-sampling stage (512)."""
        return self.grid_size * 2 ** len(self.heatmap_deconv_channels)

    @classmethod
    def available_presets(cls) -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EmRahfConfig:
        """Build a named preset (``em-rahf``, ``tiny``); keyword overrides win, and a dict given for a
        sub-config is merged into the preset's.

        Example:

        ```python
        >>> config = EmRahfConfig.from_preset("tiny", num_fusion_layers=1)
        >>> config.num_fusion_layers, config.vision_config.hidden_size
        (1, 32)

        ```
        """
        if name not in PRESETS:
            raise ValueError(f"unknown EM-RAHF preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
                kwargs[key] = {**kwargs[key], **value}
            else:
                kwargs[key] = value
        kwargs.setdefault("preset", name)
        return cls(**kwargs)


__all__ = ["ALTCLIP_TEXT", "ALTCLIP_VISION_448", "CLIP_MEAN", "CLIP_STD", "PRESETS", "EmRahfConfig"]
