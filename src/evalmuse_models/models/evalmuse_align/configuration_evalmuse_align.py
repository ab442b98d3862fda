"""Configuration of the EvalMuse alignment model (FGA-BLIP2).

FGA-BLIP2 is the BLIP-2 first-stage (Q-Former) image-text matching model fine-tuned on EvalMuse-40K:
an EVA ViT-g/14 image encoder, a BERT-base Q-Former with 32 learned queries that cross-attend to the
image every second layer, the image-text matching (ITM) head applied to every token of the joint
query+text pass, and an extra MLP (``mask_proj``) that predicts which prompt tokens belong to
elements.

This module only imports ``transformers`` (and ``huggingface_hub``'s ``strict``, which checks every field's
type when the config is built or changed, as transformers' own configs do) so that it ships as remote code next
to the weights.
"""

# No ``from __future__ import annotations`` here: ``@strict`` checks the field annotations at runtime, and
# skips any it would see as strings.
from typing import ClassVar, Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.models.blip_2.configuration_blip_2 import (
    Blip2QFormerConfig,
    Blip2VisionConfig,
)

#: Named presets. ``fga-blip2`` is the official architecture (the ``blip2-itm-vit-g-coco`` layout at
#: 364 px, BERT-base Q-Former with the ``[DEC]`` token added: 30,523 rows); ``tiny`` is a few-hundred-
#: thousand-parameter model for tests and CPU demos that still learns the synthetic release quickly.
PRESETS: dict[str, dict] = {
    "fga-blip2": {
        "vision_config": {
            "hidden_size": 1408,
            "intermediate_size": 6144,
            "num_hidden_layers": 39,
            "num_attention_heads": 16,
            "image_size": 364,
            "patch_size": 14,
            "layer_norm_eps": 1e-6,
            "qkv_bias": True,
        },
        "qformer_config": {
            "vocab_size": 30523,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "cross_attention_frequency": 2,
        },
        "num_query_tokens": 32,
        "image_text_hidden_size": 256,
        "mask_head_hidden_sizes": [256, 128, 64, 16],
        "max_text_length": 32,
    },
    "tiny": {
        "vision_config": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "layer_norm_eps": 1e-6,
            "qkv_bias": True,
            # Wider than BLIP-2's init so that a from-scratch model's queries depend on the image from
            # the first step (with 0.02 they start almost input-independent and learn very slowly).
            "initializer_range": 0.1,
        },
        "qformer_config": {
            # The tiny tokenizer (``evalmuse_models.testing.align``) has fewer ids; the extra rows are unused.
            "vocab_size": 1024,
            "hidden_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 96,
            "max_position_embeddings": 128,
            "cross_attention_frequency": 2,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.1,
        },
        "num_query_tokens": 8,
        "image_text_hidden_size": 32,
        "mask_head_hidden_sizes": [32, 16],
        "max_text_length": 32,
        "initializer_range": 0.1,
        # The official 0.1 suits a pretrained ITM head; a from-scratch tiny model needs a stronger
        # element-token signal to learn element scores within a CPU minute.
        "token_loss_weight": 4.0,
    },
}

#: Per-sample weighting of the overall-score term of the loss (see ``EvalMuseAlignConfig.loss_weighting``).
LossWeighting = Literal["none", "var", "exp_var"]
LOSS_WEIGHTINGS: tuple[str, ...] = get_args(LossWeighting)


@strict
class EvalMuseAlignConfig(PreTrainedConfig):
    r"""
    Configuration of [`EvalMuseAlignModel`].

    Args:
        vision_config (`dict` or `Blip2VisionConfig`, *optional*):
            The image encoder (EVA ViT-g/14 in the official model).
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The Q-Former. ``use_qformer_text_input`` is forced on (text tokens run through it) and
            ``encoder_hidden_size`` follows the vision width.
        num_query_tokens (`int`, defaults to 32): learned query tokens.
        image_text_hidden_size (`int`, defaults to 256): width of the (ITC) projections kept from BLIP-2.
        mask_head_hidden_sizes (`list[int]`, defaults to `[256, 128, 64, 16]`):
            hidden widths of ``mask_proj`` (Q-Former width → ... → 1, ReLU between, sigmoid output).
        max_text_length (`int`, defaults to 32): text length used in training (padding/truncation).
        vision_post_layernorm_eps (`float`, defaults to 1e-5):
            epsilon of the LayerNorm after the image encoder (LAVIS ``ln_vision`` is a default
            ``nn.LayerNorm``, unlike the 1e-6 of the encoder blocks).
        loss_weighting (`str`, defaults to `"none"`): per-sample weighting of the overall-score term of
            the loss: ``"none"`` (released code), ``"var"`` or ``"exp_var"`` (earlier versions: weight
            by the per-prompt variance, or its exponential).
        token_loss_weight (`float`, defaults to 0.1), mask_loss_weight (`float`, defaults to 0.1):
            weights of the token-score and element-mask terms.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear/embedding weights.
        vision_autocast (`bool`, defaults to `False`): run the image encoder under fp16 autocast on CUDA, as
            the official code does (LAVIS ``maybe_autocast``); a no-op on any other device. ``score()`` and
            ``forward()`` take the same argument for one call.

    Example:

    ```python
    >>> from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    >>> config = EvalMuseAlignConfig.from_preset("tiny")
    >>> model = EvalMuseAlignModel(config)
    ```
    """

    model_type = "evalmuse_align"
    sub_configs_defaults: ClassVar[dict] = {"vision_config": Blip2VisionConfig, "qformer_config": Blip2QFormerConfig}

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256
    mask_head_hidden_sizes: list[int] | tuple[int, ...] = (256, 128, 64, 16)
    max_text_length: int = 32
    vision_post_layernorm_eps: float = 1e-5
    loss_weighting: LossWeighting = "none"
    token_loss_weight: float = 0.1
    mask_loss_weight: float = 0.1
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    vision_autocast: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The joint query+text pass needs the Q-Former's text feed-forward blocks, and its
        # cross-attention reads the vision features.
        self.qformer_config.use_qformer_text_input = True
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.mask_head_hidden_sizes = [int(size) for size in self.mask_head_hidden_sizes]

    def validate_query_tokens(self):
        """Part of ``@strict``'s validation (at construction and save time)."""
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "EvalMuseAlignConfig":
        """Build the config of a named preset (``"tiny"``, ``"fga-blip2"``); keyword arguments override
        top-level fields, and ``vision_config`` / ``qformer_config`` dicts are merged into the preset's.

        Example::

            config = EvalMuseAlignConfig.from_preset("tiny", loss_weighting="exp_var")
        """
        if name not in PRESETS:
            raise ValueError(f"unknown EvalMuseAlign preset {name!r}; available: {sorted(PRESETS)}")
        preset = {key: (dict(value) if isinstance(value, dict) else value) for key, value in PRESETS[name].items()}
        for key in ("vision_config", "qformer_config"):
            if isinstance(overrides.get(key), dict):
                preset[key].update(overrides.pop(key))
        preset.update(overrides)
        return cls(**preset)


__all__ = ["LOSS_WEIGHTINGS", "PRESETS", "EvalMuseAlignConfig", "LossWeighting"]
