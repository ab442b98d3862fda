"""Post-processing of the EvalMuse structure model: distortion heatmap -> binary mask -> 8-connected
regions -> mask and regions at the original image's size.

This is the one implementation behind [`EvalMuseStructureProcessor.post_process_distortion`] (and the
library's ``postprocess`` helpers). Components are labelled by OpenCV when it is importable, else by
SciPy, else in torch (batched on the tensors' device, so remote code needs neither); whichever labels
them, the components are put in one canonical order (raster order of each component's first pixel),
so every backend gives the same masks and regions. Masks are resized by one nearest rule (pixel
centres aligned).

This file imports only torch and numpy (OpenCV and SciPy inside ``try`` blocks, never required), so
it ships as remote code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

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
    The one resize of every mask (the processor and the library); OpenCV does it when importable
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
def masks_and_regions(
    heatmaps: torch.Tensor | np.ndarray,
    threshold: float,
    min_area: int,
    target_sizes: Sequence[tuple[int, int] | None] | None = None,
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """Heatmaps to masks and regions (the part of
    [`EvalMuseStructureProcessor.post_process_distortion`] that is not the score and the heatmap).

    Args:
        heatmaps: ``(batch, H, W)`` (or one ``(H, W)``) heatmaps in [0, 1], a tensor on any device
            (thresholded there) or an array.
        threshold: mask = ``round(heatmap * 255) > threshold * 255``.
        min_area: 8-connected regions of the mask with fewer pixels are removed.
        target_sizes: per heatmap, ``(height, width)`` of the original image (None: the heatmap's size).
        backend: component labelling: ``"auto"`` (OpenCV, else SciPy, else torch) or one of them;
            all give the same result.

    Returns:
        Per heatmap: ``mask_512`` (uint8 0/1 at the heatmap's size, small regions removed), ``mask``
        (``mask_512`` resized to ``target_sizes[i]`` by :func:`resize_mask`) and ``regions``: the
        8-connected components of ``mask``, ``[{"bbox": [x0, y0, x1, y1], "area": pixels}]`` in
        raster order of their first pixel, ``x1`` and ``y1`` exclusive.
    """
    heat = torch.as_tensor(heatmaps)
    if heat.dim() == 2:
        heat = heat[None]
    if heat.dim() != 3:
        raise ValueError(f"heatmaps must be (batch, H, W), got shape {tuple(heat.shape)}")
    if target_sizes is not None and len(target_sizes) != heat.shape[0]:
        raise ValueError(f"got {heat.shape[0]} heatmaps but {len(target_sizes)} target sizes")
    name = label_backend(backend)
    masks = binarize_heatmap(heat, threshold)
    masks_np = masks.cpu().numpy()
    components = _components_batch(masks, masks_np, name)
    results = []
    for i, (labels, stats, ordered) in enumerate(components):
        mask = masks_np[i]
        kept_ids, kept = _canonical(labels, stats, min_area, ordered)
        mask_512 = _kept_mask(mask, labels, stats, kept_ids)
        height, width = mask.shape
        if target_sizes is not None and target_sizes[i] is not None:
            height, width = (int(v) for v in target_sizes[i])
        full = resize_mask(mask_512, (width, height))
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
    batch, ``areas`` is the per-batch list). ``backend`` as in :func:`masks_and_regions`.
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


__all__ = [
    "LABEL_BACKENDS",
    "binarize_heatmap",
    "label_backend",
    "label_regions",
    "mask_to_regions",
    "masks_and_regions",
    "remove_small_regions",
    "resize_mask",
]
