"""LoDa structure-score model, exactly as HNU-VPAI trained it for EvalMuse-Structure (NTIRE 2025 track 2,
1st place; their code: ``LoDa/src/model/loda.py`` of ``wangzhiyu918/text-to-image-assessment``).

A frozen timm ViT (DINOv2 ViT-L/14 with 4 registers at 518 px) and a frozen timm CNN (ResNet-50,
``features_only`` levels 1-4). The trainable part, ``learner`` (~29.3 M parameters at the published
size), has the published module names, so a published ``learner`` state dict loads 1:1:

- ``learner.conv[l]``: per CNN level, conv 1x1 -> ``latent_dim``, GELU, conv 3x3 (no bias),
  adaptive average pool to ``grid_size x grid_size``: ``4 x 49 = 196`` CNN tokens;
- before EVERY ViT block ``i``: ``d = down_proj[i](x)`` (timm ``Mlp`` embed -> latent -> latent),
  ``d = d + cross_attn[i](d, cnn_tokens)`` (multi-head attention, queries from ``d``, keys and values
  from the CNN tokens, q / kv without bias), ``x = x + up_proj[i](d) * scale_factor[i]`` (timm ``Mlp``
  latent -> embed -> embed, learned per-channel scale), then the ViT block;
- the score: the ViT's final norm, its class token, and the cosine between it and one learned vector
  (``learner.head.weight``, ``[embed_dim, 1]``): a score in [-1, 1]. HNU-VPAI min-max rescaled the
  scores of the whole test set to [1, 5] for their submission.

This file imports only torch, transformers, timm and its siblings, so it ships as remote code: ``AutoModel.from_pretrained(folder, trust_remote_code=True)``
works without this package installed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_hnu_vpai_loda import LodaConfig


@dataclass
class LodaOutput(ModelOutput):
    """Output of [`LodaModel`].

    Args:
        loss: the published PLCC loss of ``score`` against ``labels`` (when labels are given).
        score: ``(batch,)`` structure score, the cosine of the class token with ``learner.head.weight``,
            in [-1, 1] (higher: better structure; any monotone rescaling, e.g. to 1-5, keeps the ranking).
        pooler_output: ``(batch, embed_dim)`` the ViT's class token after its final norm.
    """

    loss: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------
# backbones (timm)


def _timm_model(name: str, pretrained: bool, source: str | os.PathLike | None, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=..., **kwargs)``; with ``source`` (pretrained only), the weights
    come from a local timm folder (``config.json`` + weights, as on the Hub) or a weights file instead."""
    import timm

    if source is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    path = os.fspath(source)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return timm.create_model(f"local-dir:{os.path.abspath(path)}", pretrained=True, **kwargs)
        for file in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, file)):
                path = os.path.join(path, file)
                break
        else:
            raise FileNotFoundError(
                f"{path} holds neither a timm config.json nor model.safetensors / pytorch_model.bin; pass the folder "
                f"of timm's {name} (as downloaded from the Hub) or its weights file"
            )
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights for {name} not found: {path} is neither a folder nor a file")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)


def build_vit(config: LodaConfig, pretrained: bool = False, source: str | os.PathLike | None = None) -> nn.Module:
    """The timm ViT of ``config`` (no classifier: ``num_classes=0``, as HNU-VPAI built it)."""
    return _timm_model(config.vit_name, pretrained, source, num_classes=0, img_size=config.image_size, **config.vit_kwargs)


def build_cnn(config: LodaConfig, pretrained: bool = False, source: str | os.PathLike | None = None) -> nn.Module:
    """The timm CNN of ``config`` with ``features_only=True`` at ``config.cnn_out_indices``."""
    return _timm_model(
        config.cnn_name, pretrained, source, features_only=True, out_indices=tuple(config.cnn_out_indices),
        **config.cnn_kwargs,
    )


# --------------------------------------------------------------------------------------------
# the trainable part: module names as published (``learner.*``)


class LodaCrossAttention(nn.Module):
    """Multi-head cross-attention of width ``dim``: queries from ``query``, keys and values from ``context``
    (``q`` and ``kv`` without bias, ``proj`` with bias; scale ``head_dim ** -0.5``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = query.shape
        m, h = context.shape[1], self.num_heads
        q = self.q(query).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.kv(context).view(b, m, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.proj(attended.transpose(1, 2).reshape(b, n, c))


class LodaNormedLinear(nn.Module):
    """Cosine head: ``normalize(x) @ normalize(weight, dim=0)``; ``weight`` is ``[in_features, out_features]``."""

    def __init__(self, in_features: int, out_features: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class LodaLearner(nn.Module):
    """The adapters, the CNN-token convolutions and the cosine head (HNU-VPAI's ``Learner``)."""

    def __init__(
        self,
        embed_dim: int,
        feature_channels: Sequence[int],
        num_blocks: int,
        latent_dim: int,
        grid_size: int,
        num_heads: int,
    ):
        super().__init__()
        from timm.layers import Mlp

        self.conv = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, latent_dim, kernel_size=1),
                nn.GELU(),
                nn.Conv2d(latent_dim, latent_dim, kernel_size=3, padding=1, bias=False),
                nn.AdaptiveAvgPool2d(grid_size),
            )
            for channels in feature_channels
        )
        self.down_proj = nn.ModuleList(
            Mlp(in_features=embed_dim, hidden_features=latent_dim, out_features=latent_dim) for _ in range(num_blocks)
        )
        self.cross_attn = nn.ModuleList(LodaCrossAttention(latent_dim, num_heads) for _ in range(num_blocks))
        self.up_proj = nn.ModuleList(
            Mlp(in_features=latent_dim, hidden_features=embed_dim, out_features=embed_dim) for _ in range(num_blocks)
        )
        self.scale_factor = nn.Parameter(torch.empty(num_blocks, embed_dim))
        self.head = LodaNormedLinear(embed_dim, 1)

    def cnn_tokens(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(batch, levels * grid_size ** 2, latent_dim)`` tokens of the CNN levels (row-major per level)."""
        return torch.cat([conv(f).flatten(2).transpose(1, 2) for conv, f in zip(self.conv, features, strict=True)], 1)

    def inject(self, index: int, tokens: torch.Tensor, cnn_tokens: torch.Tensor) -> torch.Tensor:
        """The adapter before ViT block ``index``: the tokens plus the scaled up-projection."""
        down = self.down_proj[index](tokens)
        down = down + self.cross_attn[index](down, cnn_tokens)
        return tokens + self.up_proj[index](down) * self.scale_factor[index]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)

    def init_published(self) -> None:
        """The published initialisation: PyTorch's defaults for the convolutions and linear layers, a
        truncated normal (std 0.02) for ``scale_factor`` and random unit columns for the head. Uses
        transformers' guarded init functions, so loaded weights are never overwritten."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    init.uniform_(module.bias, -bound, bound)
        init.trunc_normal_(self.scale_factor, std=0.02)
        init.uniform_(self.head.weight, -1.0, 1.0)
        init.copy_(self.head.weight, F.normalize(self.head.weight.detach(), dim=0))


def loda_plcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HNU-VPAI's PLCC loss: both sides standardised over the batch (population std, ``+ 1e-8``), then
    ``(mse(p, t) / 4 + mse(rho * p, t) / 4) / 2`` with ``rho = mean(p * t)``."""
    pred = pred.float().flatten()
    target = target.detach().float().flatten()
    sigma_p, mean_p = torch.std_mean(pred, unbiased=False)
    p = (pred - mean_p) / (sigma_p + 1e-8)
    sigma_t, mean_t = torch.std_mean(target, unbiased=False)
    t = (target - mean_t) / (sigma_t + 1e-8)
    rho = torch.mean(p * t)
    return (F.mse_loss(p, t) / 4 + F.mse_loss(rho * p, t) / 4) / 2


# --------------------------------------------------------------------------------------------
# the model


class LodaPreTrainedModel(PreTrainedModel):
    config_class = LodaConfig
    config: LodaConfig
    base_model_prefix = "loda"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["LodaLearner"]  # noqa: RUF012 (transformers class attribute)

    def _init_weights(self, module: nn.Module) -> None:
        # the backbones keep timm's own initialisation (or their loaded weights)
        if isinstance(module, LodaLearner):
            module.init_published()


class LodaModel(LodaPreTrainedModel):
    r"""LoDa: a frozen timm ViT whose tokens receive, before every block, local features of a frozen timm
    CNN through small trainable adapters; the score is the cosine of the class token with a learned vector.

    Modules: ``vit`` (timm ``VisionTransformer``), ``feature_model`` (timm ``features_only`` CNN) and
    ``learner`` (the trainable part, published names), as in HNU-VPAI's code.

    Args:
        config: a [`LodaConfig`] (e.g. ``LodaConfig.from_preset("tiny")``).

    The backbones are built with random weights (no network); call [`LodaModel.load_pretrained_backbones`]
    for timm's weights, or load a converted checkpoint with ``from_pretrained`` (it holds all weights).

    Example:

    ```python
    >>> import torch
    >>> from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel
    >>> model = LodaModel(LodaConfig.from_preset("tiny")).eval()
    >>> out = model(**model.dummy_inputs)
    >>> out.score.shape, bool(out.score.abs().max() <= 1)
    (torch.Size([2]), True)
    >>> out = model(**model.dummy_inputs, labels=torch.tensor([2.0, 4.5]))
    >>> out.loss.shape
    torch.Size([])

    ```
    """

    def __init__(self, config: LodaConfig):
        super().__init__(config)
        self.vit = build_vit(config)
        self.feature_model = build_cnn(config)
        self.learner = LodaLearner(
            embed_dim=self.vit.embed_dim,
            feature_channels=list(self.feature_model.feature_info.channels()),
            num_blocks=len(self.vit.blocks),
            latent_dim=config.latent_dim,
            grid_size=config.grid_size,
            num_heads=config.cross_attn_num_heads,
        )
        self.post_init()
        self.apply_config_freezing()

    def apply_config_freezing(self) -> None:
        """Freeze the backbones the config freezes (at construction, and again after ``from_pretrained``)."""
        self.freeze_backbones(self.config.freeze_backbones)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then the config's freezing: transformers re-creates every loaded
        parameter as trainable, which would silently train frozen backbones when fine-tuning a loaded model."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_config_freezing()
        return loaded

    # ---------------------------------------------------------------- backbones

    def load_pretrained_backbones(
        self, vit_from: str | os.PathLike | None = None, cnn_from: str | os.PathLike | None = None
    ) -> None:
        """Copy timm's pretrained weights into ``vit`` and ``feature_model``.

        Args:
            vit_from / cnn_from: ``None`` (default): timm's weights of ``config.vit_name`` /
                ``config.cnn_name`` (from the Hub, or the local Hugging Face cache offline). Otherwise a
                local timm folder (``config.json`` + ``model.safetensors``, as in the Hub repo
                ``timm/<name>``) or a weights file (``.safetensors`` / ``.pth`` state dict of the full timm model).
        """
        for attr, builder, source in (("vit", build_vit, vit_from), ("feature_model", build_cnn, cnn_from)):
            module = getattr(self, attr)
            name = getattr(self.config, "vit_name" if attr == "vit" else "cnn_name")
            weights = builder(self.config, pretrained=True, source=source).state_dict()
            missing, unexpected = module.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"the pretrained {name} weights{f' from {source}' if source else ''} do not fit this config: "
                    f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
                )

    def freeze_backbones(self, frozen: bool = True) -> None:
        """Freeze (``True``) or unfreeze the ViT and the CNN (gradients only; train / eval mode unchanged)."""
        self.vit.requires_grad_(not frozen)
        self.feature_model.requires_grad_(not frozen)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A valid batch of 2 random images for this config."""
        size = self.config.image_size
        generator = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(2, 3, size, size, generator=generator)}

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> LodaOutput | tuple:
        r"""
        Args:
            pixel_values: ``(batch, 3, image_size, image_size)`` from [`LodaProcessor`].
            labels: ``(batch,)`` target scores (any scale: the PLCC loss standardises them).
        """
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"pixel_values must be (batch, 3, {size}, {size}) for this model, got {tuple(pixel_values.shape)}; "
                "use LodaProcessor"
            )
        vit, learner = self.vit, self.learner
        cnn_frozen = not any(p.requires_grad for p in self.feature_model.parameters())
        with torch.no_grad() if cnn_frozen else contextlib.nullcontext():
            features = self.feature_model(pixel_values)
        cnn_tokens = learner.cnn_tokens(features)

        tokens = vit.patch_embed(pixel_values)
        tokens = vit._pos_embed(tokens)
        tokens = vit.patch_drop(tokens)
        tokens = vit.norm_pre(tokens)
        for index, block in enumerate(vit.blocks):
            tokens = block(learner.inject(index, tokens, cnn_tokens))
        tokens = vit.norm(tokens)
        pooled = vit.forward_head(tokens, pre_logits=True)
        score = learner(pooled)[:, 0]

        loss = loda_plcc_loss(score, labels.to(score.device)) if labels is not None else None
        output = LodaOutput(loss=loss, score=score, pooler_output=pooled)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    # ---------------------------------------------------------------- inference

    def _default_processor(self):
        cached = getattr(self, "_cached_processor", None)
        if cached is not None:
            return cached
        from .processing_hnu_vpai_loda import LodaProcessor

        source = getattr(self, "name_or_path", None)
        if source and os.path.isdir(source) and os.path.isfile(os.path.join(source, "processor_config.json")):
            processor = LodaProcessor.from_pretrained(source)
        else:
            processor = LodaProcessor.from_model_config(self.config)
        self._cached_processor = processor
        return processor

    @torch.no_grad()
    def predict(self, images: Sequence[Any], batch_size: int = 8, processor: Any = None) -> list[float]:
        """Structure scores (cosines in [-1, 1]) of PIL images or image paths, in order.

        Args:
            images: PIL images or paths (read as ``Image.open(path).convert("RGB")``, as HNU-VPAI did).
            batch_size: images per forward pass.
            processor: a [`LodaProcessor`]; default: the one saved with the checkpoint this model was
                loaded from, else one built from the config (centre crop).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        processor = processor if processor is not None else self._default_processor()
        parameter = next(self.parameters())
        was_training = self.training
        self.eval()
        scores: list[float] = []
        try:
            images = list(images)
            for start in range(0, len(images), batch_size):
                pixels = processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
                out = self(pixel_values=pixels.to(parameter.device, parameter.dtype))
                scores.extend(out.score.float().cpu().tolist())
        finally:
            self.train(was_training)
        return scores


__all__ = [
    "LodaCrossAttention",
    "LodaLearner",
    "LodaModel",
    "LodaNormedLinear",
    "LodaOutput",
    "LodaPreTrainedModel",
    "build_cnn",
    "build_vit",
    "loda_plcc_loss",
]
