"""EvalMuse structure model: a timm CNN and a transformers ViT fused by trainable attention blocks,
a U-Net-style decoder for a 512 x 512 distortion heatmap and an MLP head for the structure score.

Two presets of this one family follow public designs (see ``configuration_evalmuse_structure.py``); neither
IS the published system: those are the ``hnu_vpai_loda`` and ``em_rahf`` families of this package.

- ``dinov2-resnet-fuser`` (after HNU-VPAI, NTIRE 2025 structure track, 1st): frozen DINOv2 ViT-L/14 at 518 px and a frozen
  ResNet-50 whose multi-scale features are injected into the ViT tokens by cross-attention
  blocks (the LoDa design: queries from the ViT tokens, keys/values from a CNN level, a narrow
  latent width and a zero-initialised output projection added to the residual stream);
- ``altclip-fuser`` (after EM-RAHF, the EvalMuse-Structure baseline): AltCLIP vision tower at 448 px plus AltCLIP
  text embeddings of ``"human artifact " + prompt``, pre-norm self-attention blocks over image
  and text tokens, a transposed-convolution decoder and a sigmoid score.

This file holds the model: the processor (``processing_evalmuse_structure.py``) prepares its
inputs and turns its outputs into masks and regions (``post_process_distortion``), and the
``t2i-structure`` pipeline (``pipeline_evalmuse_structure.py``) runs the three (``predict`` is that
pipeline with typed results). It imports only
torch, numpy, transformers, timm (lazily) and its siblings, so it ships as remote code:
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works without this package installed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_evalmuse_structure import EvalMuseStructureConfig
from .processing_evalmuse_structure import StructureResult


@dataclass
class EvalMuseStructureOutput(ModelOutput):
    """Output of [`EvalMuseStructureModel`].

    Args:
        loss: weighted sum of the heatmap and score losses (when targets are given).
        heatmap: ``(batch, 512, 512)`` distortion probability in [0, 1].
        structure_score: ``(batch,)`` structure score on the MOS scale 1-5.
        heatmap_logits: ``(batch, 512, 512)`` pre-sigmoid heatmap.
        score_logits: ``(batch,)`` pre-sigmoid score (``sigmoid`` gives ``(mos - 1) / 4``).
        heatmap_loss / score_loss: the two parts of ``loss`` (already weighted).
        fused_tokens: ``(batch, tokens, fusion_hidden_size)`` image tokens after fusion.
    """

    loss: torch.FloatTensor | None = None
    heatmap: torch.FloatTensor | None = None
    structure_score: torch.FloatTensor | None = None
    heatmap_logits: torch.FloatTensor | None = None
    score_logits: torch.FloatTensor | None = None
    heatmap_loss: torch.FloatTensor | None = None
    score_loss: torch.FloatTensor | None = None
    fused_tokens: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------
# backbones


def _vit_class(model_type: str):
    from transformers import AltCLIPVisionModel, AutoModel, CLIPVisionModel, Dinov2Model

    known = {
        "dinov2": Dinov2Model,
        "clip_vision_model": CLIPVisionModel,
        "altclip_vision_model": AltCLIPVisionModel,
    }
    if model_type in known:
        return known[model_type]
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    if model_type not in MODEL_MAPPING_NAMES:
        raise ValueError(f"unsupported vit_config.model_type {model_type!r}; use one of {sorted(known)}")
    return AutoModel


def _build_vit(config) -> nn.Module:
    cls = _vit_class(config.model_type)
    if cls.__name__ == "AutoModel":
        return cls.from_config(config)
    return cls(config)


def _build_cnn(config: EvalMuseStructureConfig, pretrained: bool = False) -> nn.Module:
    import timm

    kwargs = dict(config.cnn_kwargs or {})
    if pretrained and config.cnn_checkpoint_path:
        if not os.path.isfile(config.cnn_checkpoint_path):
            raise FileNotFoundError(f"cnn_checkpoint_path {config.cnn_checkpoint_path!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": os.fspath(config.cnn_checkpoint_path)}
    return timm.create_model(
        config.cnn_name,
        pretrained=pretrained,
        features_only=True,
        out_indices=tuple(config.cnn_out_indices),
        **kwargs,
    )


def _pretrained_tower(model_id: str, kind: str, model_type: str) -> nn.Module:
    """The vision or text tower of a pretrained checkpoint: the checkpoint itself when it is a
    single tower, its ``vision_model`` / ``text_model`` when it is a dual encoder (AltCLIP, CLIP)."""
    from transformers import AltCLIPTextModel, AutoConfig, AutoModel

    pretrained_config = AutoConfig.from_pretrained(model_id)
    if hasattr(pretrained_config, f"{kind}_config"):
        full = AutoModel.from_pretrained(model_id)
        return getattr(full, f"{kind}_model")
    if kind == "text":
        return AltCLIPTextModel.from_pretrained(model_id)
    return _vit_class(model_type).from_pretrained(model_id)


def _copy_weights(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    missing, _unexpected = module.load_state_dict(state_dict, strict=False)
    if missing:
        raise ValueError(
            f"the pretrained weights of {source} do not fit this config: {len(missing)} missing, e.g. {missing[:3]}; "
            "make vit_config / text_config match the checkpoint"
        )


class _ViTRunner:
    """The parts of a transformers ViT needed to run it layer by layer (so fusion blocks can be
    inserted between layers): embeddings, optional pre-norm, the layer list, the final norm."""

    def __init__(self, vit: nn.Module):
        self.vit = vit
        encoder = vit.encoder
        self.layers = encoder.layer if hasattr(encoder, "layer") else encoder.layers
        self.pre_norm = getattr(vit, "pre_layrnorm", None)
        self.final_norm = getattr(vit, "layernorm", None) or getattr(vit, "post_layernorm", None)
        self.interpolate_kwarg = "interpolate_pos_encoding" in vit.embeddings.forward.__code__.co_varnames

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.interpolate_kwarg:
            hidden = self.vit.embeddings(pixel_values, interpolate_pos_encoding=True)
        else:
            hidden = self.vit.embeddings(pixel_values)
        if self.pre_norm is not None:
            hidden = self.pre_norm(hidden)
        return hidden

    def layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        out = self.layers[index](hidden, None)
        return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------------------------
# fusion, decoder, score head


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _FusionOutputProjection(nn.Linear):
    """The output projection of a [`CrossAttentionFusion`] block: zero-initialised (``_init_weights``)."""


class CrossAttentionFusion(nn.Module):
    """Injects one CNN level into the ViT token stream (LoDa-style local-distortion injection).

    Queries come from the (layer-normed) ViT tokens, keys and values from the CNN feature map
    (average-pooled to at most ``kv_grid`` x ``kv_grid``), all in a narrow latent width; the result is
    projected back to the ViT width by a zero-initialised layer and added to the tokens, so an
    untrained block leaves the backbone's features unchanged.
    """

    def __init__(self, dim: int, cnn_channels: int, latent_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(cnn_channels)
        self.q_proj = nn.Linear(dim, latent_dim)
        self.k_proj = nn.Linear(cnn_channels, latent_dim)
        self.v_proj = nn.Linear(cnn_channels, latent_dim)
        self.out_proj = _FusionOutputProjection(latent_dim, dim)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, kv_grid: int) -> torch.Tensor:
        b, n, _ = tokens.shape
        if features.shape[-1] > kv_grid or features.shape[-2] > kv_grid:
            features = F.adaptive_avg_pool2d(features, (min(kv_grid, features.shape[-2]), min(kv_grid, features.shape[-1])))
        kv = self.norm_kv(features.flatten(2).transpose(1, 2).to(tokens.dtype))
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], heads, -1).transpose(1, 2)

        q = split(self.q_proj(self.norm_q(tokens)))
        k = split(self.k_proj(kv))
        v = split(self.v_proj(kv))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(b, n, -1)
        return tokens + self.out_proj(attended)


class _ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


class HeatmapDecoder(nn.Module):
    """U-Net-style decoder: a conv stem on the fused patch grid, then one x2 upsampling stage per
    entry of ``channels[1:]`` (bilinear or transposed convolution), each concatenating the CNN
    level closest in resolution (when skips are on), then a 1 x 1 head; the logits are resized
    bilinearly to ``heatmap_size``."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        upsample: str,
        skip_channels: Sequence[int | None],
        heatmap_size: int,
    ):
        super().__init__()
        self.heatmap_size = heatmap_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.GroupNorm(_groups(channels[0]), channels[0]),
            nn.ReLU(inplace=True),
        )
        self.upsamplers = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for stage, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            if upsample == "transposed":
                self.upsamplers.append(nn.ConvTranspose2d(c_in, c_in, 2, stride=2))
            else:
                self.upsamplers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.blocks.append(_ConvBlock(c_in + (skip_channels[stage] or 0), c_out))
        self.head = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, grid: torch.Tensor, skips: Sequence[torch.Tensor | None]) -> torch.Tensor:
        x = self.stem(grid)
        for up, block, skip in zip(self.upsamplers, self.blocks, skips):
            x = up(x)
            if skip is not None:
                skip = F.interpolate(skip.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, skip], dim=1)
            x = block(x)
        logits = self.head(x)
        if logits.shape[-1] != self.heatmap_size or logits.shape[-2] != self.heatmap_size:
            logits = F.interpolate(logits, size=(self.heatmap_size, self.heatmap_size), mode="bilinear", align_corners=False)
        return logits[:, 0]


class ScoreHead(nn.Module):
    """Structure-score head: ``mlp`` pools the CLS and mean patch token; ``conv`` (EM-RAHF) runs two
    strided convolutions on the patch grid, average-pools, then an MLP. Returns one logit."""

    def __init__(self, dim: int, hidden: int, head_type: str):
        super().__init__()
        self.head_type = head_type
        if head_type == "conv":
            self.convs = nn.Sequential(
                nn.Conv2d(dim, hidden, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(_groups(hidden), hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(_groups(hidden), hidden),
                nn.ReLU(inplace=True),
            )
            in_features = hidden
        else:
            self.norm = nn.LayerNorm(2 * dim)
            in_features = 2 * dim
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.head_type == "conv":
            pooled = self.convs(grid).mean(dim=(-2, -1))
        else:
            pooled = self.norm(torch.cat([tokens[:, 0], grid.flatten(2).mean(-1)], dim=-1))
        return self.mlp(pooled)[:, 0]


# --------------------------------------------------------------------------------------------
# losses


def dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged; an empty target with an empty prediction costs 0."""
    p = probs.flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(-1)
    return (1 - (2 * inter + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(1 - Pearson) / 2`` over the batch; 0 when the batch has fewer than 2 distinct targets."""
    if pred.numel() < 2 or torch.all(target == target[0]):
        return pred.sum() * 0.0
    p = pred - pred.mean()
    t = target - target.mean()
    r = (p * t).sum() / (p.norm() * t.norm() + eps)
    return (1 - r) / 2


def rank_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Pairwise hinge ranking loss over all pairs with different targets."""
    diff_t = target[:, None] - target[None, :]
    diff_p = pred[:, None] - pred[None, :]
    pairs = diff_t > 0
    if not torch.any(pairs):
        return pred.sum() * 0.0
    return F.relu(margin - diff_p[pairs]).mean()


# --------------------------------------------------------------------------------------------
# the model


class EvalMuseStructurePreTrainedModel(PreTrainedModel):
    config_class = EvalMuseStructureConfig
    config: EvalMuseStructureConfig
    base_model_prefix = "evalmuse_structure"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["CrossAttentionFusion"]  # noqa: RUF012 (transformers class attribute)

    def _init_weights(self, module: nn.Module) -> None:
        """The one place weights are initialised: transformers' defaults, plus the zero-initialised
        output projections of the fusion blocks (an untrained injection leaves the backbone's
        features unchanged) and AltCLIP's text buffers."""
        if isinstance(module, _FusionOutputProjection):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if module.__class__.__name__ == "AltRobertaEmbeddings":
            # non-persistent buffers: not in checkpoints, so they must be rebuilt on every load
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """[`~PreTrainedModel.save_pretrained`]. When the code ships with the weights (the family is
        registered for the Auto classes), the ``t2i-structure`` pipeline ships too: its file is copied
        and ``config.json`` declares it under ``custom_pipelines``, so that
        ``pipeline("t2i-structure", model=folder, trust_remote_code=True)`` works without this package
        (with the processor saved in the same folder)."""
        if self._auto_class is not None and is_main_process:
            from transformers.dynamic_module_utils import custom_object_save

            from .pipeline_evalmuse_structure import EvalMuseStructurePipeline, custom_pipelines

            self.config.custom_pipelines = {**(getattr(self.config, "custom_pipelines", None) or {}), **custom_pipelines()}
            os.makedirs(save_directory, exist_ok=True)
            custom_object_save(EvalMuseStructurePipeline, save_directory)
        return super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)


class EvalMuseStructureModel(EvalMuseStructurePreTrainedModel):
    r"""CNN + ViT fuser predicting a 512 x 512 distortion heatmap and a structure score (1-5).

    Args:
        config: an [`EvalMuseStructureConfig`] (e.g. ``EvalMuseStructureConfig.from_preset("tiny")``).
        load_pretrained_backbones: load the pretrained ViT / text tower from
            ``config.vit_pretrained_id`` / ``config.text_pretrained_id`` and timm's pretrained CNN
            weights when ``config.cnn_pretrained`` (network or local cache needed). Leave it off
            when loading a trained checkpoint with ``from_pretrained``.

    Example:

    ```python
    >>> from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureModel
    >>> model = EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny")).eval()
    >>> out = model(**model.dummy_inputs)
    >>> out.structure_score.shape, out.heatmap.shape
    (torch.Size([2]), torch.Size([2, 512, 512]))
    >>> from PIL import Image
    >>> from evalmuse_models.models.evalmuse_structure import EvalMuseStructureProcessor
    >>> processor = EvalMuseStructureProcessor.from_model_config(model.config)
    >>> result = model.predict([Image.new("RGB", (300, 200))], processor=processor)[0]
    >>> result.mask.shape, result.threshold == model.config.threshold
    ((200, 300), True)

    ```
    """

    def __init__(self, config: EvalMuseStructureConfig, load_pretrained_backbones: bool = False):
        super().__init__(config)
        vit_cfg = config.vit_config
        self.vit = _build_vit(vit_cfg)
        vit_dim = vit_cfg.hidden_size

        self.cnn = _build_cnn(config) if config.cnn_name else None
        cnn_channels: list[int] = []
        cnn_reductions: list[int] = []
        if self.cnn is not None:
            cnn_channels = list(self.cnn.feature_info.channels())
            cnn_reductions = list(self.cnn.feature_info.reduction())

        # cross-attention injection: ViT layer -> CNN level (levels cycled over the layers)
        self.fusion_layer_to_level = {
            int(layer): i % max(len(cnn_channels), 1) for i, layer in enumerate(config.fusion_layers)
        }
        self.fusion_blocks = nn.ModuleList(
            CrossAttentionFusion(vit_dim, cnn_channels[level], config.fusion_latent_dim, config.fusion_num_heads)
            for _, level in sorted(self.fusion_layer_to_level.items())
        )
        self._fusion_index = {layer: i for i, layer in enumerate(sorted(self.fusion_layer_to_level))}

        d = config.fusion_hidden_size
        self.token_proj = nn.Sequential(nn.Linear(vit_dim, d), nn.LayerNorm(d))

        self.text_embeddings = None
        if config.text_config is not None:
            from transformers.models.altclip.modeling_altclip import (
                AltRobertaEmbeddings,
            )

            self.text_embeddings = AltRobertaEmbeddings(config.text_config)
            self.text_proj = nn.Sequential(nn.Linear(config.text_config.hidden_size, d), nn.LayerNorm(d))
        self.self_attention_blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, config.fusion_num_heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
            for _ in range(config.num_self_attention_blocks)
        )
        self.post_fusion_norm = nn.LayerNorm(d) if config.num_self_attention_blocks else nn.Identity()

        # decoder skips: for each upsampling stage, the unused CNN level nearest in resolution
        grid = config.patch_grid
        self.skip_levels: list[int | None] = []
        used: set[int] = set()
        for stage in range(1, len(config.decoder_channels)):
            level = None
            if config.decoder_use_skips and cnn_reductions:
                size = grid * 2**stage
                dist = [abs(math.log2((config.image_size / r) / size)) for r in cnn_reductions]
                best = int(np.argmin(dist))
                if dist[best] <= 1.0 and best not in used:
                    level = best
                    used.add(best)
            self.skip_levels.append(level)
        self.decoder = HeatmapDecoder(
            d,
            config.decoder_channels,
            config.decoder_upsample,
            [cnn_channels[lv] if lv is not None else None for lv in self.skip_levels],
            config.heatmap_size,
        )
        self.score_head = ScoreHead(d, config.score_hidden_size, config.score_head_type)

        self.post_init()
        if load_pretrained_backbones:
            self.load_pretrained_backbones()
        self.apply_config_freezing()

    def apply_config_freezing(self) -> None:
        """Freeze the backbones the config freezes (at construction, and again after ``from_pretrained``)."""
        self.freeze_backbones(vit=self.config.freeze_vit, cnn=self.config.freeze_cnn, text=self.config.freeze_text)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then the config's freezing: transformers re-creates every loaded
        parameter as trainable, which would silently train frozen backbones when fine-tuning a loaded model."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_config_freezing()
        return loaded

    # ---------------------------------------------------------------- backbones and freezing

    def load_pretrained_backbones(self) -> None:
        """Copy pretrained weights into the backbones: the ViT from ``config.vit_pretrained_id``, the
        text embeddings from ``config.text_pretrained_id`` (a Hub id or a local folder; a full
        dual-encoder checkpoint such as ``BAAI/AltCLIP`` or a CLIP model gives its towers) and
        timm's pretrained CNN when ``config.cnn_pretrained`` (``config.cnn_checkpoint_path`` for a
        local file)."""
        cfg = self.config
        if cfg.vit_pretrained_id:
            tower = _pretrained_tower(cfg.vit_pretrained_id, "vision", cfg.vit_config.model_type)
            _copy_weights(self.vit, tower.state_dict(), cfg.vit_pretrained_id)
        if cfg.text_pretrained_id and self.text_embeddings is not None:
            tower = _pretrained_tower(cfg.text_pretrained_id, "text", cfg.text_config.model_type)
            embeddings = tower.roberta.embeddings if hasattr(tower, "roberta") else tower.embeddings
            _copy_weights(self.text_embeddings, embeddings.state_dict(), cfg.text_pretrained_id)
        if cfg.cnn_pretrained and self.cnn is not None:
            self.cnn.load_state_dict(_build_cnn(cfg, pretrained=True).state_dict())

    def _frozen_modules(self) -> list[nn.Module]:
        frozen = []
        for name in ("vit", "cnn", "text_embeddings"):
            module = getattr(self, name)
            if module is not None and not any(p.requires_grad for p in module.parameters()):
                frozen.append(module)
        return frozen

    def freeze_backbones(self, vit: bool = True, cnn: bool = True, text: bool = True) -> None:
        """Freeze (``True``) or unfreeze (``False``) each backbone; frozen ones stay in eval mode."""
        for module, frozen in ((self.vit, vit), (self.cnn, cnn), (self.text_embeddings, text)):
            if module is not None:
                module.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    # ---------------------------------------------------------------- inputs

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A valid batch of 2 for this config (random pixels; token ids when the preset uses text)."""
        size = self.config.image_size
        generator = torch.Generator().manual_seed(0)
        inputs = {"pixel_values": torch.randn(2, 3, size, size, generator=generator)}
        if self.config.uses_text:
            vocab = self.config.text_config.vocab_size
            ids = torch.randint(3, vocab, (2, 8), generator=generator)
            ids[:, 0] = self.config.text_config.bos_token_id or 0
            mask = torch.ones_like(ids)
            mask[1, 6:] = 0
            ids[1, 6:] = self.config.text_config.pad_token_id
            inputs.update(input_ids=ids, attention_mask=mask)
        return inputs

    # ---------------------------------------------------------------- forward

    def _backbone_context(self, module: nn.Module | None):
        frozen = module is not None and not any(p.requires_grad for p in module.parameters())
        return torch.no_grad() if frozen else contextlib.nullcontext()

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features: list[torch.Tensor] = []
        if self.cnn is not None:
            with self._backbone_context(self.cnn):
                features = list(self.cnn(pixel_values))
        runner = _ViTRunner(self.vit)
        n_layers = len(runner.layers)
        first_fusion = min(self._fusion_index) if self._fusion_index else n_layers - 1
        # a frozen ViT needs no graph up to (and including) the layer before the first injection
        with self._backbone_context(self.vit):
            hidden = runner.embed(pixel_values)
            for i in range(first_fusion + 1):
                hidden = runner.layer(i, hidden)
        kv_grid = self.config.fusion_kv_grid or self.config.patch_grid
        for i in range(first_fusion, n_layers):
            if i > first_fusion:
                hidden = runner.layer(i, hidden)
            if i in self._fusion_index:
                level = self.fusion_layer_to_level[i]
                hidden = self.fusion_blocks[self._fusion_index[i]](hidden, features[level], kv_grid)
        if runner.final_norm is not None:
            hidden = runner.final_norm(hidden)
        return hidden, features

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        heatmap_labels: torch.Tensor | None = None,
        score_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EvalMuseStructureOutput | tuple:
        r"""
        Args:
            pixel_values: ``(batch, 3, image_size, image_size)`` from [`EvalMuseStructureProcessor`].
            input_ids / attention_mask: prompt tokens (presets with text only).
            heatmap_labels: ``(batch, 512, 512)`` target heatmap in [0, 1] (the baseline's
                0/64/127/180/255 levels divided by 255).
            score_labels: ``(batch,)`` target MOS on 1-5; NaN marks an unlabelled image.
        """
        cfg = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (batch, 3, H, W), got {tuple(pixel_values.shape)}")
        patch = cfg.vit_config.patch_size
        gh, gw = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        hidden, features = self._encode(pixel_values)
        tokens = self.token_proj(hidden)
        n_image = tokens.shape[1]

        if self.self_attention_blocks:
            padding = None
            if self.text_embeddings is not None:
                if input_ids is None:
                    raise ValueError("this preset embeds the prompt: pass input_ids (use EvalMuseStructureProcessor)")
                with self._backbone_context(self.text_embeddings):
                    text = self.text_embeddings(input_ids=input_ids)
                tokens = torch.cat([tokens, self.text_proj(text.to(tokens.dtype))], dim=1)
                if attention_mask is not None:
                    image_valid = torch.ones(tokens.shape[0], n_image, dtype=torch.bool, device=tokens.device)
                    padding = ~torch.cat([image_valid, attention_mask.bool()], dim=1)
            for block in self.self_attention_blocks:
                tokens = block(tokens, src_key_padding_mask=padding)
            tokens = self.post_fusion_norm(tokens[:, :n_image])

        grid = tokens[:, n_image - gh * gw :].transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
        skips = [features[lv] if lv is not None else None for lv in self.skip_levels]
        heatmap_logits = self.decoder(grid, skips)
        score_logits = self.score_head(tokens, grid)
        heatmap = torch.sigmoid(heatmap_logits)
        structure_score = 1 + 4 * torch.sigmoid(score_logits)

        loss = heatmap_loss = score_loss = None
        if heatmap_labels is not None or score_labels is not None:
            zero = heatmap_logits.float().sum() * 0.0
            heatmap_loss = zero
            score_loss = zero
            if heatmap_labels is not None:
                target = heatmap_labels.to(heatmap_logits.device, torch.float32)
                if target.dim() == 4:
                    target = target[:, 0]
                if target.shape[-2:] != heatmap_logits.shape[-2:]:
                    raise ValueError(
                        f"heatmap_labels must be (batch, {cfg.heatmap_size}, {cfg.heatmap_size}), got {tuple(target.shape)}"
                    )
                logits = heatmap_logits.float()
                if cfg.heatmap_loss == "bce":
                    pixel = F.binary_cross_entropy_with_logits(logits, target)
                else:
                    pixel = F.mse_loss(torch.sigmoid(logits), target)
                heatmap_loss = cfg.heatmap_loss_weight * pixel
                if cfg.dice_loss_weight:
                    heatmap_loss = heatmap_loss + cfg.dice_loss_weight * dice_loss(torch.sigmoid(logits), target)
            if score_labels is not None:
                target = score_labels.to(score_logits.device, torch.float32)
                valid = torch.isfinite(target)
                if torch.any(valid):
                    pred = torch.sigmoid(score_logits.float()[valid])
                    norm = ((target[valid] - 1) / 4).clamp(0, 1)
                    score_loss = cfg.score_loss_weight * F.mse_loss(pred, norm)
                    if cfg.plcc_loss_weight:
                        score_loss = score_loss + cfg.plcc_loss_weight * plcc_loss(pred, norm)
                    if cfg.rank_loss_weight:
                        score_loss = score_loss + cfg.rank_loss_weight * rank_loss(pred, norm, cfg.rank_loss_margin)
            loss = heatmap_loss + score_loss

        output = EvalMuseStructureOutput(
            loss=loss,
            heatmap=heatmap,
            structure_score=structure_score,
            heatmap_logits=heatmap_logits,
            score_logits=score_logits,
            heatmap_loss=heatmap_loss,
            score_loss=score_loss,
            fused_tokens=tokens,
        )
        return_dict = return_dict if return_dict is not None else cfg.return_dict
        return output if return_dict else output.to_tuple()

    # ---------------------------------------------------------------- inference

    def predict(
        self,
        images: Sequence[Any],
        prompts: Sequence[str] | None = None,
        *,
        processor: Any,
        batch_size: int = 8,
        threshold: float | None = None,
        min_area: int | None = None,
        exif_transpose: bool = False,
    ) -> list[StructureResult]:
        """Assess images with the ``t2i-structure`` pipeline ([`EvalMuseStructurePipeline`]): the
        processor's inputs, this model, ``processor.post_process_distortion``; typed results.

        Args:
            images: PIL images, image paths or URLs (read as the official evaluation reads them).
            prompts: one prompt per image (needed by presets that embed the prompt).
            processor: the model's [`EvalMuseStructureProcessor`] (``AutoProcessor.from_pretrained(folder)``
                or ``EvalMuseStructureProcessor.from_model_config(model.config)``).
            batch_size: images per forward pass.
            threshold: heatmap level in [0, 1] (default ``config.threshold``).
            min_area: regions of the 512 x 512 mask with fewer pixels are dropped (default
                ``config.min_region_area``).
            exif_transpose: apply the images' EXIF orientation (the official evaluation does not).

        Returns:
            One [`StructureResult`] per image (score, heatmap, ``mask_512``, ``mask`` at the image's size,
            regions, threshold).
        """
        from .pipeline_evalmuse_structure import EvalMuseStructurePipeline

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pipe = EvalMuseStructurePipeline(model=self, processor=processor, device=self.device)
        was_training = self.training
        self.eval()
        try:
            outputs = pipe(
                list(images), prompts=prompts, batch_size=batch_size, threshold=threshold, min_area=min_area,
                exif_transpose=exif_transpose,
            )
        finally:
            self.train(was_training)
        return [StructureResult(**output) for output in outputs]


__all__ = [
    "EvalMuseStructureModel",
    "EvalMuseStructureOutput",
    "EvalMuseStructurePreTrainedModel",
]
