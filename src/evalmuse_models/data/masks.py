"""Rasterising EvalMuse-Structure annotations: per-annotator masks, vote counts, binary truth
masks and the baseline training heatmap.

Every function takes the annotations in any of these forms:

- a :class:`~evalmuse_models.data.structure.StructureRecord` (its ``width``/``height`` are used),
- a row of the prepared ``structure`` dataset (a dict with ``shapes`` and ``image`` or ``mask``;
  the image size is read from the PIL image),
- a list (one entry per annotator) of lists of :class:`Shape` or ``{"type", "points"}`` dicts,
  together with ``width`` and ``height``.

Pixel conventions: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``; a rectangle from ``(x1, y1)``
to ``(x2, y2)`` covers columns ``floor(x1) .. ceil(x2) - 1`` (at least one); a polygon covers the
pixels whose centre lies inside it (exact, sub-pixel), so a rectangle given as a 4-point polygon
covers the same pixels. Shapes partly or wholly outside the image
are clipped. ``size=(width, height)`` resizes the result with nearest-neighbour interpolation, so
vote counts and heatmap levels stay exact (pass ``interpolation="bilinear"`` to
:func:`baseline_heatmap` for the baseline's smoother resize).

Examples::

    from evalmuse_models.data import binary_mask, baseline_heatmap

    truth = binary_mask(record, size=(512, 512))            # 0/1 uint8 (union of annotators)
    majority = binary_mask(record, min_votes=2)              # at least 2 annotators agree
    target = baseline_heatmap(record) / 255.0                # 512x512, levels 0/64/127/180/255
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Heatmap value for 0, 1, 2, 3 and 4+ overlapping annotators (the baseline's levels).
HEATMAP_LEVELS = (0, 64, 127, 180, 255)


def _image_size(obj) -> tuple[int, int] | None:
    size = getattr(obj, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _resolve(shapes, width, height) -> tuple[list[list[Any]], int, int]:
    """Normalise the accepted inputs to (annotators, width, height)."""
    if hasattr(shapes, "shapes") and not isinstance(shapes, dict):  # StructureRecord
        width = width if width is not None else shapes.width
        height = height if height is not None else shapes.height
        shapes = shapes.shapes
    elif isinstance(shapes, dict):  # a dataset row
        row = shapes
        if "shapes" not in row:
            raise ValueError("a dataset row needs a 'shapes' column")
        if width is None or height is None:
            size = None
            for column in ("image", "mask"):
                if column in row and (size := _image_size(row[column])) is not None:
                    break
            if size is None and "width" in row and "height" in row:
                size = (row["width"], row["height"])
            if size is not None:
                width, height = size
        shapes = row["shapes"]
    if width is None or height is None:
        raise ValueError("the image size is unknown: pass width and height (or a record that has them)")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return list(shapes or []), width, height


def _shape_parts(shape) -> tuple[str, Sequence]:
    if isinstance(shape, dict):
        return shape["type"], shape["points"]
    return shape.type, shape.points


def _fill_shape(mask: np.ndarray, shape) -> None:
    height, width = mask.shape
    kind, points = _shape_parts(shape)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if kind == "rectangle":
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        x_lo, y_lo = math.floor(x1), math.floor(y1)
        x_hi, y_hi = max(math.ceil(x2), x_lo + 1), max(math.ceil(y2), y_lo + 1)
        x_lo, x_hi = min(max(x_lo, 0), width), min(max(x_hi, 0), width)
        y_lo, y_hi = min(max(y_lo, 0), height), min(max(y_hi, 0), height)
        mask[y_lo:y_hi, x_lo:x_hi] = 1
    elif kind == "polygon":
        if len(points) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
        _fill_polygon(mask, points)
    else:
        raise ValueError(f"unknown shape type {kind!r} (expected 'rectangle' or 'polygon')")


def _fill_polygon(mask: np.ndarray, points: np.ndarray) -> None:
    """Set the pixels whose centre lies inside the polygon (even-odd rule), row by row.

    Each pixel row's centre line is intersected with every edge (half-open in y, so a vertex is
    counted once); pixels with ``x1 <= centre < x2`` between successive crossings are set.
    Vertices far outside the image need no special care: only rows and columns inside are filled.
    """
    height, width = mask.shape
    x, y = points[:, 0], points[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    first = max(0, math.floor(y.min() - 0.5))
    last = min(height - 1, math.ceil(y.max() - 0.5))
    if first > last:
        return
    rows = np.arange(first, last + 1)
    cy = (rows + 0.5)[:, None]
    crosses = ((y <= cy) & (y2 > cy)) | ((y2 <= cy) & (y > cy))
    dy = np.where(y2 != y, y2 - y, 1.0)
    xs = np.where(crosses, x + (cy - y) / dy * (x2 - x), np.inf)
    if xs.shape[1] % 2:
        xs = np.concatenate([xs, np.full((len(rows), 1), np.inf)], axis=1)
    xs.sort(axis=1)
    starts = np.clip(np.ceil(xs[:, 0::2] - 0.5), 0, width).astype(np.int64)
    ends = np.clip(np.ceil(xs[:, 1::2] - 0.5), 0, width).astype(np.int64)
    diff = np.zeros((len(rows), width + 1), np.int32)
    index = np.broadcast_to(np.arange(len(rows))[:, None], starts.shape)
    np.add.at(diff, (index, starts), 1)
    np.add.at(diff, (index, ends), -1)
    mask[rows] |= (np.cumsum(diff[:, :width], axis=1) > 0).astype(np.uint8)


def _resize_nearest(array: np.ndarray, size) -> np.ndarray:
    import cv2

    width, height = int(size[0]), int(size[1])
    if array.shape[-2:] == (height, width):
        return array
    if array.ndim == 3:
        return np.stack([_resize_nearest(a, size) for a in array]) if len(array) else np.zeros(
            (0, height, width), dtype=array.dtype)
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_NEAREST)


def rasterize_annotators(shapes, width: int | None = None, height: int | None = None, *, size=None) -> np.ndarray:
    """One 0/1 ``uint8`` mask per annotator, shape ``(annotators, height, width)``.

    An annotator with no shapes gets an all-zero mask. ``size=(w, h)`` resizes (nearest).
    """
    annotators, width, height = _resolve(shapes, width, height)
    masks = np.zeros((len(annotators), height, width), dtype=np.uint8)
    for a, annotator in enumerate(annotators):
        for shape in annotator or []:
            _fill_shape(masks[a], shape)
    return masks if size is None else _resize_nearest(masks, size)


def vote_map(shapes, width: int | None = None, height: int | None = None, *, size=None) -> np.ndarray:
    """How many annotators marked each pixel (``uint8``, ``(height, width)``)."""
    masks = rasterize_annotators(shapes, width, height)
    votes = masks.sum(axis=0, dtype=np.uint8) if len(masks) else np.zeros(masks.shape[1:], np.uint8)
    return votes if size is None else _resize_nearest(votes, size)


def binary_mask(
    shapes, width: int | None = None, height: int | None = None, *, min_votes: int = 1, size=None
) -> np.ndarray:
    """The 0/1 ``uint8`` truth mask: pixels marked by at least ``min_votes`` annotators.

    ``min_votes=1`` (default) is the union of annotators, ``2`` the majority of 3.
    ``binary_mask(record, size=(512, 512))`` gives the mask the structure score compares with.
    """
    if min_votes < 1:
        raise ValueError(f"min_votes must be at least 1, got {min_votes}")
    mask = (vote_map(shapes, width, height) >= min_votes).astype(np.uint8)
    return mask if size is None else _resize_nearest(mask, size)


def heatmap_levels(votes: np.ndarray) -> np.ndarray:
    """Map vote counts 0/1/2/3/4+ to the baseline levels 0/64/127/180/255 (``uint8``)."""
    lut = np.array(HEATMAP_LEVELS + (HEATMAP_LEVELS[-1],) * (256 - len(HEATMAP_LEVELS)), dtype=np.uint8)
    return lut[np.asarray(votes, dtype=np.uint8)]


def baseline_heatmap(
    shapes,
    width: int | None = None,
    height: int | None = None,
    *,
    size=(512, 512),
    interpolation: str = "nearest",
) -> np.ndarray:
    """The baseline's training heatmap as ``uint8`` levels (divide by 255 for the target).

    Vote counts 1/2/3/4+ map to 64/127/180/255, then the map is resized to ``size``
    (``(width, height)``, default 512x512; ``None`` keeps the original size). With the default
    nearest-neighbour resize only the five levels occur; ``interpolation="bilinear"`` resizes
    like the baseline's ``cv2.resize`` and yields intermediate values at region borders.
    """
    levels = heatmap_levels(vote_map(shapes, width, height))
    if size is None:
        return levels
    if interpolation == "nearest":
        return _resize_nearest(levels, size)
    if interpolation == "bilinear":
        import cv2

        return cv2.resize(levels, (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
