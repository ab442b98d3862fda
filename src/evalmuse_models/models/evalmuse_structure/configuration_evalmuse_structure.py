"""Configuration of the EvalMuse structure model: a CNN + ViT fuser that predicts a distortion
heatmap and a structure score (EvalMuse-Structure, NTIRE 2025 track 2).

This file imports only ``transformers`` so that it ships as remote code with saved checkpoints.
"""

import copy
import dataclasses
import typing
from typing import Any, Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

#: The EvalMuse-Structure baseline's heatmap threshold (``> 40`` on 8-bit levels) and the smallest
#: region kept (the official score ignores regions under 0.0006 * 512**2 ~ 157.3 pixels).
BASELINE_THRESHOLD = 40 / 255
MIN_REGION_AREA = 158

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# DINOv2 ViT-L/14 (facebook/dinov2-large), used at 518 px (37 x 37 patches).
_DINOV2_LARGE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
}

# AltCLIP ViT-L/14 vision tower (BAAI/AltCLIP), used at 448 px (32 x 32 patches, interpolated positions).
_ALTCLIP_VISION_LARGE = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "hidden_act": "quick_gelu",
}

# AltCLIP's XLM-R text tower: only the embedding layer is used (vocabulary and positions).
_ALTCLIP_TEXT = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "project_dim": 768,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Random tiny backbones for tests and CPU demos: 64-px input, a narrow timm ResNet-10 and a
    # 2-layer DINOv2. Learns the synthetic structure release in a minute on two CPU cores.
    "tiny": {
        "vit_config": {
            "model_type": "dinov2",
            "hidden_size": 48,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 8,
            "image_size": 64,
        },
        "image_size": 64,
        "cnn_name": "resnet10t",
        "cnn_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 8},
        "cnn_out_indices": [1, 2, 3, 4],
        "fusion_layers": [0, 1, 2, 3],
        "fusion_latent_dim": 32,
        "fusion_num_heads": 2,
        "fusion_hidden_size": 48,
        "decoder_channels": [48, 32, 16],
        "score_hidden_size": 32,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "freeze_vit": False,
        "freeze_cnn": False,
    },
    # After HNU-VPAI (NTIRE 2025 structure track, 1st; the published model itself is the hnu_vpai_loda
    # family): frozen DINOv2 ViT-L/14 at 518 px and frozen
    # ResNet-50 features [256, 512, 1024, 2048] injected by cross-attention (latent 64, 4 heads).
    "dinov2-resnet-fuser": {
        "vit_config": {"model_type": "dinov2", **_DINOV2_LARGE},
        "vit_pretrained_id": "facebook/dinov2-large",
        "image_size": 518,
        "cnn_name": "resnet50",
        "cnn_pretrained": True,
        "cnn_out_indices": [1, 2, 3, 4],
        "fusion_layers": [5, 11, 17, 23],
        "fusion_latent_dim": 64,
        "fusion_num_heads": 4,
        "fusion_hidden_size": 256,
        "decoder_channels": [256, 128, 64, 32],
        "score_hidden_size": 256,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "plcc_loss_weight": 1.0,
    },
    # After EM-RAHF (EvalMuse-Structure baseline; the official architecture is the em_rahf family): AltCLIP vision at 448 + AltCLIP text embeddings of
    # "human artifact " + prompt, 6 pre-norm self-attention blocks, conv decoder, sigmoid score.
    "altclip-fuser": {
        "vit_config": {"model_type": "altclip_vision_model", **_ALTCLIP_VISION_LARGE},
        "text_config": {"model_type": "altclip_text_model", **_ALTCLIP_TEXT},
        "vit_pretrained_id": "BAAI/AltCLIP",
        "text_pretrained_id": "BAAI/AltCLIP",
        "image_size": 448,
        "cnn_name": None,
        "fusion_layers": [],
        "num_self_attention_blocks": 6,
        "fusion_hidden_size": 768,
        "fusion_num_heads": 12,
        "decoder_channels": [768, 384, 192, 96, 48],
        "decoder_upsample": "transposed",
        "decoder_use_skips": False,
        "score_head_type": "conv",
        "score_hidden_size": 768,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "heatmap_loss": "mse",
        "dice_loss_weight": 0.0,
        "plcc_loss_weight": 0.0,
        "freeze_schedule_fraction": 0.5,
    },
}


class EvalMuseStructureConfig(PreTrainedConfig):
    r"""
    Configuration of [`EvalMuseStructureModel`]: a frozen (by default) timm CNN and a transformers
    ViT, trainable fusion blocks, a U-Net-style heatmap decoder (512 x 512 distortion heatmap) and
    an MLP score head (structure score 1-5).

    Named presets (``tiny``, ``dinov2-resnet-fuser``, ``altclip-fuser``) are built with
    [`EvalMuseStructureConfig.from_preset`]; every preset builds with random weights and no
    network. Pretrained backbone ids (``vit_pretrained_id``, ``text_pretrained_id``,
    ``cnn_pretrained``) are used only when the model is built with
    ``load_pretrained_backbones=True``.

    Args:
        vit_config (`dict` or `PreTrainedConfig`): the ViT sub-config (``dinov2``,
            ``clip_vision_model`` or ``altclip_vision_model``). Default: DINOv2 ViT-L/14.
        text_config (`dict` or `PreTrainedConfig`, *optional*): the AltCLIP text config whose
            embedding layer embeds the prompt (EM-RAHF). ``None``: image only.
        vit_pretrained_id / text_pretrained_id (`str`, *optional*): Hub ids (or local folders) of
            the pretrained towers.
        cnn_name (`str`, *optional*): timm model name built with ``features_only=True``; ``None``
            disables the CNN branch. cnn_kwargs: extra ``timm.create_model`` arguments.
        cnn_pretrained (`bool`): load timm's pretrained weights for the CNN (from the Hub, or from
            ``cnn_checkpoint_path``, a local ``.safetensors`` / ``.pth`` state dict of the full timm
            model, when set).
        cnn_out_indices (`list[int]`): the CNN stages whose features are fused.
        image_size (`int`): square input size in pixels.
        fusion_layers (`list[int]`): ViT layer indices after which CNN features are injected by
            cross-attention, one per CNN level (cycled when shorter / longer).
        fusion_latent_dim, fusion_num_heads: width and heads of the cross-attention blocks.
        fusion_kv_grid (`int`, *optional*): CNN maps are average-pooled to at most this grid
            before attention (``None``: the ViT patch grid).
        num_self_attention_blocks (`int`): pre-norm self-attention blocks over image (+ text)
            tokens after the ViT.
        fusion_hidden_size (`int`): token width after the ViT (decoder and score head input).
        decoder_channels (`list[int]`): stem width then one entry per x2 upsampling stage.
        decoder_upsample (`"bilinear"` or `"transposed"`), decoder_use_skips (`bool`): U-Net skips
            from the CNN levels.
        heatmap_size (`int`): output heatmap side (512, as the official score).
        score_head_type (`"mlp"` or `"conv"`), score_hidden_size (`int`).
        heatmap_loss (`"bce"` or `"mse"`), heatmap_loss_weight, dice_loss_weight,
        score_loss_weight (MSE on ``(mos - 1) / 4``), plcc_loss_weight, rank_loss_weight,
        rank_loss_margin: loss terms.
        freeze_vit, freeze_cnn, freeze_text (`bool`): freeze the backbones.
        freeze_schedule_fraction (`float`): fraction of training with frozen backbones before
            they are unfrozen (the baseline's schedule); 1.0 keeps them frozen.
        threshold (`float`): heatmap binarisation threshold in [0, 1] (baseline: 40/255).
        min_region_area (`int`): connected regions of the 512 x 512 mask smaller than this are
            dropped (the official score ignores regions under 0.0006 * 512**2 ~ 157.3).
        text_prefix (`str`), max_text_length (`int`): prompt text sent to the text embeddings.
        image_mean, image_std: normalisation of the processor.

    Example:

    ```python
    >>> from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureModel
    >>> config = EvalMuseStructureConfig.from_preset("tiny")
    >>> model = EvalMuseStructureModel(config)
    >>> out = model(**model.dummy_inputs)
    >>> out.heatmap.shape, out.structure_score.shape
    (torch.Size([2, 512, 512]), torch.Size([2]))

    ```
    """

    model_type = "evalmuse_structure"
    sub_configs_defaults = {  # noqa: RUF012 (transformers class attribute)
        "vit_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", init_kwargs=dict(_DINOV2_LARGE)),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="altclip_text_model", optional=True),
    }

    vit_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vit_pretrained_id: str | None = None
    text_pretrained_id: str | None = None

    cnn_name: str | None = "resnet50"
    cnn_kwargs: dict | None = None
    cnn_pretrained: bool = False
    cnn_checkpoint_path: str | None = None
    cnn_out_indices: list[int] | None = None

    image_size: int = 518
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    fusion_layers: list[int] | None = None
    fusion_latent_dim: int = 64
    fusion_num_heads: int = 4
    fusion_kv_grid: int | None = None
    num_self_attention_blocks: int = 0
    fusion_hidden_size: int = 256

    decoder_channels: list[int] | None = None
    decoder_upsample: Literal["bilinear", "transposed"] = "bilinear"
    decoder_use_skips: bool = True
    heatmap_size: int = 512

    score_head_type: Literal["mlp", "conv"] = "mlp"
    score_hidden_size: int = 256

    heatmap_loss: Literal["bce", "mse"] = "bce"
    heatmap_loss_weight: float = 1.0
    dice_loss_weight: float = 1.0
    score_loss_weight: float = 1.0
    plcc_loss_weight: float = 0.5
    rank_loss_weight: float = 0.0
    rank_loss_margin: float = 0.0

    freeze_vit: bool = True
    freeze_cnn: bool = True
    freeze_text: bool = True
    freeze_schedule_fraction: float = 1.0

    threshold: float = BASELINE_THRESHOLD
    min_region_area: int = MIN_REGION_AREA
    text_prefix: str = "human artifact "
    max_text_length: int = 77
    initializer_range: float = 0.02
    preset: str | None = None

    def __post_init__(self, **kwargs):
        if self.cnn_out_indices is None:
            self.cnn_out_indices = [1, 2, 3, 4]
        if self.fusion_layers is None:
            self.fusion_layers = [5, 11, 17, 23] if self.cnn_name else []
        if self.decoder_channels is None:
            self.decoder_channels = [256, 128, 64, 32]
        if self.image_mean is None:
            self.image_mean = list(IMAGENET_MEAN)
        if self.image_std is None:
            self.image_std = list(IMAGENET_STD)
        self.cnn_out_indices = list(self.cnn_out_indices)
        self.fusion_layers = list(self.fusion_layers)
        self.decoder_channels = list(self.decoder_channels)
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        def bad(field: str, value: Any, expected: str) -> ValueError:
            return ValueError(f"EvalMuseStructureConfig.{field}={value!r} is invalid: expected {expected}")

        for field in dataclasses.fields(self):  # the fields typed Literal[...] take one of their values
            choices = typing.get_args(field.type) if typing.get_origin(field.type) is Literal else None
            if choices and getattr(self, field.name) not in choices:
                raise bad(field.name, getattr(self, field.name), " or ".join(map(repr, choices)))
        if not self.decoder_channels:
            raise bad("decoder_channels", self.decoder_channels, "a non-empty list of channel widths")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise bad("threshold", self.threshold, "a heatmap level in [0, 1] (the baseline uses 40/255)")
        if self.fusion_layers and not self.cnn_name:
            raise bad("fusion_layers", self.fusion_layers, "[] when cnn_name is None (no CNN features to inject)")
        if self.fusion_layers and self.fusion_latent_dim % self.fusion_num_heads:
            raise bad("fusion_num_heads", self.fusion_num_heads, "a divisor of fusion_latent_dim")
        if self.num_self_attention_blocks and self.fusion_hidden_size % self.fusion_num_heads:
            raise bad("fusion_num_heads", self.fusion_num_heads, "a divisor of fusion_hidden_size")
        if self.vit_config is not None:
            num_layers = getattr(self.vit_config, "num_hidden_layers", None)
            if num_layers is not None and any(not 0 <= i < num_layers for i in self.fusion_layers):
                raise bad("fusion_layers", self.fusion_layers, f"ViT layer indices in [0, {num_layers})")

    @property
    def uses_text(self) -> bool:
        return self.text_config is not None

    @property
    def patch_grid(self) -> int:
        return self.image_size // self.vit_config.patch_size

    @classmethod
    def available_presets(cls) -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "EvalMuseStructureConfig":
        """Build a named preset (``tiny``, ``dinov2-resnet-fuser``, ``altclip-fuser``); keyword overrides win, and a dict
        given for a sub-config (``vit_config``, ...) is merged into the preset's, not put in its place.

        Example:

        ```python
        >>> config = EvalMuseStructureConfig.from_preset("dinov2-resnet-fuser", freeze_cnn=False)
        >>> config.vit_config.hidden_size, config.image_size
        (1024, 518)

        ```
        """
        if name not in PRESETS:
            raise ValueError(f"unknown EvalMuse structure preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
                kwargs[key] = {**kwargs[key], **value}
            else:
                kwargs[key] = value
        kwargs.setdefault("preset", name)
        return cls(**kwargs)
