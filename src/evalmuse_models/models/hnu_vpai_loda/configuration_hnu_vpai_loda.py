"""Configuration of the LoDa structure-score model as HNU-VPAI trained it for EvalMuse-Structure
(NTIRE 2025 track 2, 1st place): a frozen timm ViT and a frozen timm CNN, with small trainable
adapters that inject the CNN's local features into the ViT before every block.

This file imports only ``transformers`` so that it ships as remote code with saved checkpoints.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PreTrainedConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

PRESETS: dict[str, dict[str, Any]] = {
    # Random tiny backbones for tests: the same timm architectures (a DINOv2 ViT with 4 register
    # tokens, a bottleneck ResNet-50 with one block per stage), narrowed so the model builds and runs
    # in milliseconds on a CPU.
    "tiny": {
        "vit_name": "vit_small_patch14_reg4_dinov2",
        "vit_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2},
        "cnn_name": "resnet50",
        "cnn_kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]},
        "image_size": 56,
        "latent_dim": 16,
        "cross_attn_num_heads": 2,
        "grid_size": 7,
    },
    # HNU-VPAI's published model: timm DINOv2 ViT-L/14 with 4 registers at 518 px (37 x 37 patches)
    # and timm ResNet-50 (their config names ``resnet50``, which timm resolves to ``resnet50.a1_in1k``),
    # levels 1-4 ([256, 512, 1024, 2048] channels), latent width 64, 4 heads, 7 x 7 tokens per level.
    "hnu-vpai": {
        "vit_name": "vit_large_patch14_reg4_dinov2.lvd142m",
        "cnn_name": "resnet50.a1_in1k",
        "image_size": 518,
        "latent_dim": 64,
        "cross_attn_num_heads": 4,
        "grid_size": 7,
    },
}


class LodaConfig(PreTrainedConfig):
    r"""
    Configuration of [`LodaModel`], the LoDa design (Xu et al., CVPR 2024, "Boosting Image Quality
    Assessment through Efficient Transformer Adaptation with Local Feature Enhancement") as HNU-VPAI
    used it for the EvalMuse-Structure score.

    Both backbones are timm models, named by ``vit_name`` / ``cnn_name`` and built with random weights
    (no network); [`LodaModel.load_pretrained_backbones`] loads their timm weights when asked.

    Args:
        vit_name (`str`): timm ViT name (``timm.create_model(vit_name, num_classes=0, img_size=image_size,
            **vit_kwargs)``). Default: ``vit_large_patch14_reg4_dinov2.lvd142m``.
        vit_kwargs (`dict`, *optional*): extra timm arguments of the ViT (the ``tiny`` preset narrows it).
        cnn_name (`str`): timm CNN name, built with ``features_only=True``. Default: ``resnet50.a1_in1k``.
        cnn_kwargs (`dict`, *optional*): extra timm arguments of the CNN.
        cnn_out_indices (`list[int]`): the CNN levels whose features become tokens (default ``[1, 2, 3, 4]``).
        image_size (`int`): square input size in pixels (518 for the published model).
        latent_dim (`int`): width of the adapters and of the CNN tokens (64).
        cross_attn_num_heads (`int`): heads of the adapters' cross-attention (4).
        grid_size (`int`): each CNN level is average-pooled to ``grid_size x grid_size`` tokens (7).
        freeze_backbones (`bool`): the ViT and the CNN get no gradient (the published training); only
            the adapters (``learner``) train. Their batch-norm statistics still follow ``model.train()``,
            as in the published training (hence the ``bn_buffer`` in its checkpoint).
        image_mean, image_std (`list[float]`): normalisation of the processor (ImageNet's).

    Example:

    ```python
    >>> from evalmuse_models.models.hnu_vpai_loda import LodaConfig
    >>> config = LodaConfig.from_preset("hnu-vpai")
    >>> config.vit_name, config.cnn_name, config.image_size
    ('vit_large_patch14_reg4_dinov2.lvd142m', 'resnet50.a1_in1k', 518)

    ```
    """

    model_type = "hnu_vpai_loda"

    vit_name: str = "vit_large_patch14_reg4_dinov2.lvd142m"
    vit_kwargs: dict | None = None
    cnn_name: str = "resnet50.a1_in1k"
    cnn_kwargs: dict | None = None
    cnn_out_indices: list[int] | None = None
    image_size: int = 518
    latent_dim: int = 64
    cross_attn_num_heads: int = 4
    grid_size: int = 7
    freeze_backbones: bool = True
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    preset: str | None = None

    def __post_init__(self, **kwargs):
        self.vit_kwargs = dict(self.vit_kwargs or {})
        self.cnn_kwargs = dict(self.cnn_kwargs or {})
        self.cnn_out_indices = list(self.cnn_out_indices if self.cnn_out_indices is not None else [1, 2, 3, 4])
        self.image_mean = list(self.image_mean if self.image_mean is not None else IMAGENET_MEAN)
        self.image_std = list(self.image_std if self.image_std is not None else IMAGENET_STD)
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        def bad(field: str, expected: str) -> ValueError:
            return ValueError(f"LodaConfig.{field}={getattr(self, field)!r} is invalid: expected {expected}")

        for field in ("vit_name", "cnn_name"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise bad(field, "a timm model name")
        for field in ("image_size", "latent_dim", "cross_attn_num_heads", "grid_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(field, "a positive integer")
        if self.latent_dim % self.cross_attn_num_heads:
            raise bad("cross_attn_num_heads", f"a divisor of latent_dim ({self.latent_dim})")
        if not self.cnn_out_indices:
            raise bad("cnn_out_indices", "a non-empty list of CNN levels")
        for field in ("vit_kwargs", "cnn_kwargs"):
            reserved = {"pretrained", "features_only", "out_indices", "num_classes", "img_size"} & set(getattr(self, field))
            if reserved:
                raise bad(field, f"no {sorted(reserved)} (set by the model from the other config fields)")
        for field in ("image_mean", "image_std"):
            if len(getattr(self, field)) != 3:
                raise bad(field, "three values (R, G, B)")

    @classmethod
    def available_presets(cls) -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LodaConfig:
        """Build a named preset (``tiny``, ``hnu-vpai``); keyword overrides win, and a dict given for
        ``vit_kwargs`` / ``cnn_kwargs`` is merged into the preset's.

        Example:

        ```python
        >>> LodaConfig.from_preset("tiny", vit_kwargs={"depth": 3}).vit_kwargs
        {'embed_dim': 32, 'depth': 3, 'num_heads': 2}

        ```
        """
        if name not in PRESETS:
            raise ValueError(f"unknown LoDa preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
                kwargs[key] = {**kwargs[key], **value}
            else:
                kwargs[key] = value
        kwargs.setdefault("preset", name)
        return cls(**kwargs)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "LodaConfig"]
