"""EvalMuse structure model: a timm CNN and a transformers ViT fused by trainable attention blocks,
a U-Net-style decoder for a 512 x 512 distortion heatmap and an MLP head for the structure score.

Two public designs are presets of this one family (see ``configuration_evalmuse_structure.py``):

- ``hnu-vpai`` (NTIRE 2025 structure track, 1st): frozen DINOv2 ViT-L/14 at 518 px and a frozen
  ResNet-50 whose multi-scale features are injected into the ViT tokens by cross-attention
  blocks (the LoDa design: queries from the ViT tokens, keys/values from a CNN level, a narrow
  latent width and a zero-initialised output projection added to the residual stream);
- ``em-rahf`` (the EvalMuse-Structure baseline): AltCLIP vision tower at 448 px plus AltCLIP
  text embeddings of ``"human artifact " + prompt``, pre-norm self-attention blocks over image
  and text tokens, a transposed-convolution decoder and a sigmoid score.

This file imports only torch, numpy, PIL, transformers, timm (lazily) and its siblings, so it
ships as remote code: ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works without
this package installed. OpenCV or SciPy, when importable, label the mask regions faster (imported
in ``try`` blocks, so never required); the torch labelling gives the same result.
"""

from __future__ import annotations

import contextlib
import functools
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
        self.out_proj = nn.Linear(latent_dim, dim)
        self.out_proj._zero_init = True

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
# post-processing: heatmap -> mask -> 8-connected regions -> mask and regions at the image's size
#
# ONE implementation, used by ``predict`` and by the library's ``postprocess`` module. Components
# are labelled by OpenCV when it is importable, else by SciPy, else in torch (batched on the
# tensors' device, so remote code needs neither); whichever labels them, the components are put in
# one canonical order (raster order of each component's first pixel), so every backend gives the
# same masks and regions. Masks are resized by one nearest rule (pixel centres aligned).

LABEL_BACKENDS = ("cv2", "scipy", "torch")
_ORDER_CHUNK = 2048  # components whose first pixel is looked up at once (bounds the memory used)


@functools.cache
def _optional_module(name: str):
    """OpenCV (``"cv2"``) or ``scipy.ndimage`` (``"scipy"``), or None when it cannot be imported. The
    imports sit in ``try`` blocks, so transformers does not make them requirements of remote code."""
    try:
        if name == "cv2":
            import cv2

            return cv2
        from scipy import ndimage

        return ndimage
    except Exception:  # noqa: BLE001 (absent, or a broken install missing system libraries)
        return None


def label_backend(backend: str = "auto") -> str:
    """The labelling backend that ``backend`` stands for: ``"auto"`` is OpenCV when importable, else
    SciPy, else torch; a named one must be importable."""
    if backend == "auto":
        return next(name for name in LABEL_BACKENDS if name == "torch" or _optional_module(name) is not None)
    if backend not in LABEL_BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {LABEL_BACKENDS}, got {backend!r}")
    if backend != "torch" and _optional_module(backend) is None:
        raise ImportError(f"the {backend!r} labelling backend cannot be imported here; use 'auto' or 'torch'")
    return backend


@functools.lru_cache(maxsize=1024)
def _heatmap_cutoff(threshold: float) -> float:
    """The smallest float32 ``c`` with ``round(c * 255) > threshold * 255 + 1e-6`` in float32 (the
    baseline's rule). The rule only grows with the heatmap value, so it is exactly ``heatmap >= c``:
    one comparison instead of a multiplication, a rounding and a comparison."""
    level = float(threshold) * 255 + 1e-6

    def rule(bits: int) -> bool:
        value = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
        return bool(torch.round(value * 255) > level)

    # bisection over the bit patterns of the non-negative floats, which sort like the floats:
    # 0.0 never passes (level > 0), +inf always does
    low, high = 0, 0x7F800000
    while high - low > 1:
        middle = (low + high) // 2
        if rule(middle):
            high = middle
        else:
            low = middle
    return float(torch.tensor([high], dtype=torch.int32).view(torch.float32))


def binarize_heatmap(heatmap: torch.Tensor, threshold: float) -> torch.Tensor:
    """The baseline's rule generalised: ``round(heatmap * 255) > threshold * 255`` (uint8 0/1), on
    the heatmap's device; ``threshold`` is a heatmap level in [0, 1]."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a heatmap level in [0, 1], got {threshold}")
    return (heatmap.float() >= _heatmap_cutoff(float(threshold))).view(torch.uint8)


@functools.lru_cache(maxsize=1024)
def _nearest_map(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis of the nearest resize ``size_in -> size_out`` with pixel centres aligned (the rule of
    PIL's NEAREST and torch's ``nearest-exact``) in exact integer arithmetic: the source index
    ``floor((i + 0.5) * size_in / size_out)`` of each output pixel ``i``; and for each source pixel,
    the first output pixel taken from it and how many are."""
    source = (2 * np.arange(size_out, dtype=np.int64) + 1) * size_in // (2 * size_out)
    first = np.searchsorted(source, np.arange(size_in), side="left")
    count = np.searchsorted(source, np.arange(size_in), side="right") - first
    for array in (source, first, count):
        array.setflags(write=False)
    return source, first, count


@functools.lru_cache(maxsize=1024)
def _opencv_resize_agrees(size_in: int, size_out: int) -> bool:
    """Whether OpenCV's ``INTER_NEAREST_EXACT`` takes exactly the source pixels of :func:`_nearest_map`
    on an axis ``size_in -> size_out`` (its fixed-point arithmetic can be one pixel off for some
    sizes: those are resized by numpy instead)."""
    cv2 = _optional_module("cv2")
    if cv2 is None:
        return False
    ramp = np.arange(size_in, dtype=np.float32)
    try:
        across = cv2.resize(ramp[None], (size_out, 1), interpolation=cv2.INTER_NEAREST_EXACT)
        down = cv2.resize(ramp[:, None], (1, size_out), interpolation=cv2.INTER_NEAREST_EXACT)
    except cv2.error:
        return False
    source = _nearest_map(size_in, size_out)[0]
    return np.array_equal(across.reshape(-1), source) and np.array_equal(down.reshape(-1), source)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of a 2-D array to ``size = (width, height)`` with pixel centres aligned: output
    pixel ``(y, x)`` is input pixel ``(floor((y + 0.5) * h / height), floor((x + 0.5) * w / width))``.
    The one resize of every mask (``predict`` and ``postprocess``); OpenCV does it when importable
    and it takes the same pixels (checked once per size), else numpy. Always a new array."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be (width, height) of at least 1 x 1, got {tuple(size)}")
    h, w = mask.shape
    if (width, height) == (w, h):
        return mask.copy()
    if mask.dtype == np.uint8 and _opencv_resize_agrees(w, width) and _opencv_resize_agrees(h, height):
        cv2 = _optional_module("cv2")
        return cv2.resize(np.ascontiguousarray(mask), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    rows = np.take(mask, _nearest_map(h, height)[0], axis=0)
    return np.take(rows, _nearest_map(w, width)[0], axis=1)


# Components of one mask come as ``(labels, stats, ordered)``: int32 labels (0 = background; None
# when the mask is empty or full), one stats row per label ``[x, y, width, height, area]`` (row 0 is
# the background and unused) and whether the labels already follow the canonical order.


def _components_cv2(mask: np.ndarray):
    cv2 = _optional_module("cv2")
    # Grana's block-based algorithm: the fastest with statistics on 512 x 512 masks (OpenCV's
    # default is ~35% slower there); the labels' order does not matter (made canonical later)
    algorithm = getattr(cv2, "CCL_GRANA", cv2.CCL_DEFAULT)
    _n, labels, stats, _centroids = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, algorithm)
    return labels, stats[:, :5].astype(np.int64), False


def _components_scipy(mask: np.ndarray):
    ndimage = _optional_module("scipy")
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    labels = labels.astype(np.int32, copy=False)
    stats = np.zeros((n + 1, 5), dtype=np.int64)
    stats[:, 4] = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = np.array(
        [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)], dtype=np.int64
    ).reshape(-1, 4)
    stats[1:, :2] = boxes[:, :2]
    stats[1:, 2:4] = boxes[:, 2:] - boxes[:, :2]
    return labels, stats, False


@torch.no_grad()
def _components_torch(masks: torch.Tensor) -> list:
    """Components of a ``(B, H, W)`` batch of masks in torch, on their device, numbered in raster
    order of each component's first pixel."""
    m = masks.bool()
    b, h, w = m.shape
    n = h * w
    fg = m.reshape(b, n)
    # parent[p]: raster index of a pixel of p's component, never above p's own (slot n: background).
    # Each round hooks every pixel's parent, and the pixel itself, to the smallest parent around
    # it, then halves the paths twice; at the fixed point every pixel points at its component's
    # first pixel. Hooking the parent (not only the pixel) carries a label across a whole
    # component at once: a few rounds, whatever the shape (a 512 x 512 spiral takes 7)
    # (values in int32, which vectorises where int64 minima do not; indices in int64)
    if n >= 2**31 - 1:
        raise ValueError(f"masks of {h} x {w} pixels are too large for the torch labelling")
    slot = torch.cat([fg, fg.new_zeros(b, 1)], dim=1)
    parent = torch.where(slot, torch.arange(n + 1, device=m.device, dtype=torch.int32), n)
    padded = torch.full((b, h + 2, w + 2), n, dtype=torch.int32, device=m.device)
    while True:
        padded[:, 1:-1, 1:-1] = parent[:, :n].view(b, h, w)
        across = torch.minimum(torch.minimum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])
        around = torch.minimum(torch.minimum(across[:, :-2], across[:, 1:-1]), across[:, 2:])
        around = torch.where(fg, around.reshape(b, n), n)
        new = parent.clone()
        new[:, :n] = torch.minimum(new[:, :n], around)
        new.scatter_reduce_(1, parent[:, :n].long(), around, "amin")
        new = new.gather(1, new.long())
        new = new.gather(1, new.long())
        if torch.equal(new, parent):
            break
        parent = new
    root = parent[:, :n].clamp(max=n - 1).long()
    index = torch.arange(n, device=m.device)
    is_root = fg & (root == index)
    rank = torch.cumsum(is_root, dim=1)
    labels = torch.where(fg, rank.gather(1, root), 0)
    # statistics of all images at once: label k of image i is slot offset[i] + k
    counts = is_root.sum(1) + 1
    offset = torch.cumsum(counts, 0) - counts
    slots = (labels + offset[:, None]).reshape(-1)
    total = int(counts.sum())
    raster = index.expand(b, n).reshape(-1)
    column = raster % w

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        init = torch.full((total,), start, dtype=torch.int64, device=m.device)
        return init.scatter_reduce_(0, slots, values, how, include_self=True)

    area = torch.bincount(slots, minlength=total)
    first, last = reduce(raster, "amin", n), reduce(raster, "amax", -1)
    left, right = reduce(column, "amin", w), reduce(column, "amax", -1)
    top, bottom = first // w, last // w
    stats = torch.stack([left, top, right - left + 1, bottom - top + 1, area], dim=1).cpu().numpy()
    labels = labels.view(b, h, w).to(torch.int32).cpu().numpy()
    bounds = offset.cpu().tolist() + [total]
    return [(labels[i], stats[bounds[i] : bounds[i + 1]], True) for i in range(b)]


def _trivial_components(mask: np.ndarray):
    """Components of an empty or a full mask (no labelling needed), else None."""
    h, w = mask.shape
    count = int(np.count_nonzero(mask))
    if count == 0:
        return None, np.zeros((1, 5), dtype=np.int64), True
    if count == h * w:
        return None, np.array([[0, 0, 0, 0, 0], [0, 0, w, h, count]], dtype=np.int64), True
    return None


def _components(mask: np.ndarray, backend: str):
    """Components of one 2-D uint8 0/1 mask."""
    trivial = _trivial_components(mask)
    if trivial is not None:
        return trivial
    if backend == "cv2":
        return _components_cv2(mask)
    if backend == "scipy":
        return _components_scipy(mask)
    return _components_torch(torch.from_numpy(mask)[None])[0]


def _components_batch(masks: torch.Tensor, masks_np: np.ndarray, backend: str) -> list:
    """Components of a batch of masks (``masks_np`` is ``masks`` on the CPU); torch labels all
    the non-trivial ones in one batch on the masks' device."""
    if backend != "torch":
        return [_components(mask, backend) for mask in masks_np]
    components = [_trivial_components(mask) for mask in masks_np]
    rest = [i for i, c in enumerate(components) if c is None]
    if rest:
        for i, c in zip(rest, _components_torch(masks[rest]), strict=True):
            components[i] = c
    return components


def _canonical(labels, stats: np.ndarray, min_area: int, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
    """The labels of the components with at least ``min_area`` pixels, in raster order of each
    component's first pixel, and their stats rows."""
    ids = np.arange(1, len(stats), dtype=np.int64)
    kept = stats[1:]
    keep = kept[:, 4] >= max(int(min_area), 1)
    ids, kept = ids[keep], kept[keep]
    if ordered or len(ids) < 2:
        return ids, kept
    # a component's first pixel is the leftmost of its pixels in its top row
    first_x = np.empty(len(ids), dtype=np.int64)
    for start in range(0, len(ids), _ORDER_CHUNK):
        chunk = slice(start, start + _ORDER_CHUNK)
        first_x[chunk] = (labels[kept[chunk, 1]] == ids[chunk, None]).argmax(axis=1)
    order = np.argsort(kept[:, 1] * labels.shape[1] + first_x, kind="stable")
    return ids[order], kept[order]


def _kept_mask(mask: np.ndarray, labels, stats: np.ndarray, kept_ids: np.ndarray) -> np.ndarray:
    """``mask`` without the components not in ``kept_ids``."""
    if len(kept_ids) == len(stats) - 1:
        return mask.copy()
    if len(kept_ids) == 0:
        return np.zeros_like(mask)
    keep = np.zeros(len(stats), dtype=bool)
    keep[kept_ids] = True
    dropped = np.flatnonzero(~keep[1:]) + 1
    boxes = stats[dropped]
    if len(dropped) <= 256 and int((boxes[:, 2] * boxes[:, 3]).sum()) <= mask.size // 4:
        # a few small components: clear them inside their boxes
        out = mask.copy()
        for k, (x, y, bw, bh) in zip(dropped.tolist(), boxes[:, :4].tolist(), strict=True):
            window = out[y : y + bh, x : x + bw]
            window[labels[y : y + bh, x : x + bw] == k] = 0
        return out
    return keep.view(np.uint8)[labels]


def _regions(mask, labels, kept_ids, kept, full: np.ndarray, backend: str) -> list[dict[str, Any]]:
    """Regions of ``full`` (``mask`` resized): its 8-connected components, boxes and areas in its pixels."""
    if len(kept_ids) == 0:
        return []
    h, w = mask.shape
    height, width = full.shape
    if width >= w and height >= h:
        # a nearest upscale only repeats rows and columns: it keeps every component whole and
        # apart, and their order, so the boxes are the mask's boxes mapped to the new grid
        _, first_x, count_x = _nearest_map(w, width)
        _, first_y, count_y = _nearest_map(h, height)
        x0, y0, bw, bh, area = kept.T
        right, bottom = x0 + bw - 1, y0 + bh - 1
        boxes = np.stack(
            [first_x[x0], first_y[y0], first_x[right] + count_x[right], first_y[bottom] + count_y[bottom]], axis=1
        )
        if (width, height) != (w, h):
            if len(kept_ids) == 1:
                area = np.array([np.count_nonzero(full)])
            elif int((bw * bh).sum()) <= h * w:
                # every mask pixel counts as the output pixels taken from it: inside each box,
                # area = count_y . [labels == k] . count_x
                cy, cx = count_y.astype(np.float64), count_x.astype(np.float64)
                area = np.array([
                    cy[y : y + hh] @ (labels[y : y + hh, x : x + ww] == k) @ cx[x : x + ww]
                    for k, x, y, ww, hh in zip(kept_ids.tolist(), *kept[:, :4].T.tolist(), strict=True)
                ])
                area = np.rint(area).astype(np.int64)
            else:  # boxes overlapping a lot: one weighted count over the rows they span
                top, end = int(y0.min()), int((y0 + bh).max())
                weights = np.multiply.outer(count_y[top:end], count_x).astype(np.float64).ravel()
                sums = np.bincount(labels[top:end].ravel(), weights=weights, minlength=len(kept_ids) + 1)
                area = np.rint(sums[kept_ids]).astype(np.int64)
    else:
        # a downscale drops rows or columns, which can split or join components: label ``full``
        labels, stats, ordered = _components(full, backend)
        _, kept = _canonical(labels, stats, 0, ordered)
        boxes = np.concatenate([kept[:, :2], kept[:, :2] + kept[:, 2:4]], axis=1)
        area = kept[:, 4]
    return [{"bbox": [int(v) for v in box], "area": int(a)} for box, a in zip(boxes, area, strict=True)]


@torch.no_grad()
def postprocess_heatmaps(
    heatmaps: torch.Tensor | np.ndarray,
    threshold: float = 40 / 255,
    min_area: int = 158,
    sizes: Sequence[tuple[int, int] | None] | None = None,
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """Heatmaps to masks and regions: what ``predict`` returns besides the score and the heatmap.

    Args:
        heatmaps: ``(batch, H, W)`` (or one ``(H, W)``) heatmaps in [0, 1], a tensor on any device
            (thresholded there) or an array.
        threshold: mask = ``round(heatmap * 255) > threshold * 255``.
        min_area: 8-connected regions of the mask with fewer pixels are removed.
        sizes: per heatmap, ``(width, height)`` of the original image (None: the heatmap's size).
        backend: component labelling: ``"auto"`` (OpenCV, else SciPy, else torch) or one of them;
            all give the same result.

    Returns:
        Per heatmap: ``mask_512`` (uint8 0/1 at the heatmap's size, small regions removed), ``mask``
        (``mask_512`` resized to ``sizes[i]`` by :func:`resize_mask`) and ``regions``: the
        8-connected components of ``mask``, ``[{"bbox": [x0, y0, x1, y1], "area": pixels}]`` in
        raster order of their first pixel, ``x1`` and ``y1`` exclusive.
    """
    heat = torch.as_tensor(heatmaps)
    if heat.dim() == 2:
        heat = heat[None]
    if heat.dim() != 3:
        raise ValueError(f"heatmaps must be (batch, H, W), got shape {tuple(heat.shape)}")
    if sizes is not None and len(sizes) != heat.shape[0]:
        raise ValueError(f"got {heat.shape[0]} heatmaps but {len(sizes)} sizes")
    name = label_backend(backend)
    masks = binarize_heatmap(heat, threshold)
    masks_np = masks.cpu().numpy()
    components = _components_batch(masks, masks_np, name)
    results = []
    for i, (labels, stats, ordered) in enumerate(components):
        mask = masks_np[i]
        kept_ids, kept = _canonical(labels, stats, min_area, ordered)
        mask_512 = _kept_mask(mask, labels, stats, kept_ids)
        size = sizes[i] if sizes is not None and sizes[i] is not None else (mask.shape[1], mask.shape[0])
        full = resize_mask(mask_512, size)
        results.append({"mask_512": mask_512, "mask": full, "regions": _regions(mask_512, labels, kept_ids, kept, full, name)})
    return results


def remove_small_regions(mask: np.ndarray, min_area: int, backend: str = "auto") -> np.ndarray:
    """Drop the 8-connected regions of a 2-D mask with fewer than ``min_area`` pixels (uint8 0/1 out)."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if min_area <= 1:
        return binary
    labels, stats, _ordered = _components(binary, label_backend(backend))
    kept_ids, _ = _canonical(labels, stats, min_area, True)  # the order does not matter here
    return _kept_mask(binary, labels, stats, kept_ids)


def mask_to_regions(mask: np.ndarray, backend: str = "auto") -> list[dict[str, Any]]:
    """``[{"bbox": [x0, y0, x1, y1], "area": pixels}]`` of the 8-connected regions of a 2-D mask
    (``x1``, ``y1`` exclusive), in raster order of each region's first pixel."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    name = label_backend(backend)
    labels, stats, ordered = _components(binary, name)
    kept_ids, kept = _canonical(labels, stats, 0, ordered)
    return _regions(binary, labels, kept_ids, kept, binary, name)


@torch.no_grad()
def label_regions(mask: torch.Tensor, min_area: int = 0, backend: str = "auto") -> tuple[torch.Tensor, Any]:
    """8-connected components of ``(H, W)`` or ``(B, H, W)`` 0/1 masks.

    Returns ``(labels, areas)``: labels ``int64`` on the mask's device, 0 for background and ``1..K``
    numbered in raster order of each component's first pixel; regions with fewer than ``min_area``
    pixels are removed. ``areas[k - 1]`` is the pixel count of region ``k`` (single mask only; for a
    batch, ``areas`` is the per-batch list). ``backend`` as in :func:`postprocess_heatmaps`.
    """
    single = mask.dim() == 2
    m = ((mask[None] if single else mask) != 0).to(torch.uint8)
    components = _components_batch(m, m.cpu().numpy(), label_backend(backend))
    all_labels, all_areas = [], []
    for labels, stats, ordered in components:
        kept_ids, kept = _canonical(labels, stats, min_area, ordered)
        out = np.zeros(m.shape[1:], dtype=np.int64)
        if len(kept_ids) and labels is None:  # a full mask: one region
            out[:] = 1
        elif len(kept_ids):
            renumber = np.zeros(len(stats), dtype=np.int64)
            renumber[kept_ids] = np.arange(1, len(kept_ids) + 1)
            out = renumber[labels]
        all_labels.append(out)
        all_areas.append(torch.from_numpy(kept[:, 4].copy()))
    labels = torch.from_numpy(np.stack(all_labels)).to(mask.device)
    return (labels[0], all_areas[0]) if single else (labels, all_areas)


def regions_from_labels(labels: np.ndarray) -> list[dict[str, Any]]:
    """``[{"bbox": [x0, y0, x1, y1], "area": pixels}]`` per label 1..K (``x1``/``y1`` exclusive)."""
    labels = np.asarray(labels)
    ys, xs = np.nonzero(labels > 0)
    if len(ys) == 0:
        return []
    lab = labels[ys, xs].astype(np.int64)
    order = np.argsort(lab, kind="stable")
    lab, ys, xs = lab[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    area = np.diff(np.r_[starts, len(lab)])
    x0, y0 = np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts)
    x1, y1 = np.maximum.reduceat(xs, starts) + 1, np.maximum.reduceat(ys, starts) + 1
    return [
        {"bbox": [int(a), int(b), int(c), int(d)], "area": int(e)}
        for a, b, c, d, e in zip(x0, y0, x1, y1, area, strict=True)
    ]


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
        super()._init_weights(module)
        if module.__class__.__name__ == "AltRobertaEmbeddings":
            # non-persistent buffers: not in checkpoints, so they must be rebuilt on every load
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        if getattr(module, "_zero_init", False):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


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
    >>> result = model.predict([Image.new("RGB", (300, 200))])[0]
    >>> result["mask"].shape, sorted(result)
    ((200, 300), ['heatmap', 'mask', 'mask_512', 'regions', 'score'])

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
        self.freeze_backbones(vit=config.freeze_vit, cnn=config.freeze_cnn, text=config.freeze_text)

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

    def _default_processor(self, processor_class):
        cached = getattr(self, "_cached_processor", None)
        if cached is not None:
            return cached
        processor = None
        source = getattr(self, "name_or_path", None)
        if source and os.path.isdir(source) and os.path.isfile(os.path.join(source, "processor_config.json")):
            processor = processor_class.from_pretrained(source)
        if processor is None:
            processor = processor_class.from_model_config(self.config)
        self._cached_processor = processor
        return processor

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[Any],
        prompts: Sequence[str] | None = None,
        batch_size: int = 8,
        processor: Any = None,
        threshold: float | None = None,
        min_region_area: int | None = None,
        show_progress: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Score images: structure score, heatmap, binary mask (512 and original size) and regions.

        Args:
            images: PIL images or paths.
            prompts: one prompt per image (needed by presets that embed the prompt).
            batch_size: images per forward pass.
            processor: an [`EvalMuseStructureProcessor`]; default: the processor saved with the
                checkpoint this model was loaded from, else one built from the config (with the
                tokenizer of ``config.text_pretrained_id`` for text presets).
            threshold: heatmap threshold in [0, 1] (default ``config.threshold``, the baseline's 40/255).
            min_region_area: regions of the 512 x 512 mask with fewer pixels are dropped
                (default ``config.min_region_area``).
            show_progress: tqdm bar (default: more than one batch).

        Returns:
            One dict per image: ``score`` (float, 1-5), ``heatmap`` (float32 512 x 512 in [0, 1]),
            ``mask_512`` (uint8 0/1, 512 x 512), ``mask`` (uint8 0/1 at the image's size) and
            ``regions`` (``[{"bbox": [x0, y0, x1, y1], "area": int}]`` in original pixels, ``x1``
            and ``y1`` exclusive): the masks and regions are exactly
            :func:`postprocess_heatmaps` of the heatmap.
        """
        from PIL import Image
        from tqdm.auto import tqdm

        from .processing_evalmuse_structure import EvalMuseStructureProcessor

        images = list(images)
        if prompts is not None:
            prompts = list(prompts)
            if len(prompts) != len(images):
                raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        threshold = self.config.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (a heatmap level), got {threshold}")
        min_area = self.config.min_region_area if min_region_area is None else int(min_region_area)
        if processor is None:
            processor = self._default_processor(EvalMuseStructureProcessor)
        if self.config.uses_text and prompts is None:
            raise ValueError("this preset embeds the prompt: pass prompts=[...] (one per image)")

        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        was_training = self.training
        self.eval()
        results: list[dict[str, Any]] = []
        n_batches = (len(images) + batch_size - 1) // batch_size
        show = n_batches > 1 if show_progress is None else show_progress
        try:
            for start in tqdm(range(0, len(images), batch_size), total=n_batches, desc="structure", disable=not show):
                batch = []
                for item in images[start : start + batch_size]:
                    if isinstance(item, (str, os.PathLike)):
                        if not os.path.isfile(item):
                            raise FileNotFoundError(f"image file not found: {item}")
                        with Image.open(item) as img:
                            item = img.convert("RGB")
                    elif not isinstance(item, Image.Image):
                        raise TypeError(f"images must be PIL images or paths, got {type(item).__name__}")
                    batch.append(item if item.mode == "RGB" else item.convert("RGB"))
                text = prompts[start : start + batch_size] if prompts is not None and self.config.uses_text else None
                inputs = processor(images=batch, text=text, return_tensors="pt")
                inputs = {
                    k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()
                }
                out = self(**inputs)
                heat = out.heatmap.float()
                post = postprocess_heatmaps(heat, threshold, min_area, sizes=[img.size for img in batch])
                heat = heat.cpu().numpy()
                scores = out.structure_score.float().cpu().tolist()
                for j, extra in enumerate(post):
                    results.append({"score": scores[j], "heatmap": heat[j].copy(), **extra})
        finally:
            self.train(was_training)
        return results


__all__ = [
    "EvalMuseStructureModel",
    "EvalMuseStructureOutput",
    "EvalMuseStructurePreTrainedModel",
    "binarize_heatmap",
    "label_backend",
    "label_regions",
    "mask_to_regions",
    "postprocess_heatmaps",
    "regions_from_labels",
    "remove_small_regions",
    "resize_mask",
]
