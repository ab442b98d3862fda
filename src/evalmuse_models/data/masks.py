"""Rasterising EvalMuse-Structure annotations exactly as the organisers did: per-annotator masks,
vote counts, the binary truth masks and the baseline training heatmap.

Every function takes the annotations in any of these forms:

- a :class:`~evalmuse_models.data.structure.StructureRecord` (its ``width``/``height`` are used),
- a row of the prepared ``structure`` dataset (a dict with ``shapes`` and ``image`` or ``mask``;
  the image size is read from the image, decoded or not),
- a list (one entry per annotator) of lists of :class:`Shape` or ``{"type", "points"}`` dicts,
  together with ``width`` and ``height``;
- the annotators' 0/1 masks already drawn, an ``(annotators, height, width)`` array (what
  :func:`rasterize_annotators` returns, or masks refined from it, as ``evalmuse refine-masks`` does):
  the votes, levels and truth rules below then apply to them unchanged.

The official rule (``data_process.py`` of DYEvaLab/EvalMuse-Structure), per annotator a 0/1 mask
at the original image size:

- a rectangle (top-left, bottom-right, as given) is ``mask[tl.y:br.y, tl.x:br.x] = 1``: the
  bottom-right corner is exclusive, and reversed corners cover nothing;
- a polygon is ``cv2.fillPoly(mask, [vertices], 1)``: every pixel its outline touches is
  included (not a pixel-centre rule), so a 4-point polygon covers one more row and column than
  the rectangle with the same corners.

The annotators' masks are summed (:func:`vote_map`); the baseline heatmap maps 1/2/3/4 annotators
to 64/127/180/255 and resizes with ``cv2.resize(levels, (512, 512))`` (OpenCV's default bilinear).

Where the official script fails, this module departs from it, always the same way:

- fractional coordinates (the script raises on them and drops the image) are truncated toward
  zero, as ``int()`` or ``astype(np.int32)`` would;
- rectangle corners outside the image are clipped to it (in the script a negative slice index
  counts from the far edge); polygons need nothing, ``cv2.fillPoly`` draws only inside the image
  (coordinates beyond +-:data:`MAX_COORDINATE` are refused: they would take seconds to draw);
- 5 or more overlapping annotators give 255 (the script leaves 5, 6, ... unmapped; the release
  has 3 annotators per image, so the real data never reach it).

The 512x512 truth mask that the official structure score compares with is derived by one rule,
:func:`truth_maps`: the 0/1 mask at the original size (pixels marked by at least ``min_votes``
annotators; 1 = union, the default, since the organisers' binarisation is unpublished) resized
with ``cv2.resize`` (bilinear) and binarised with ``> 0``. That is exactly what the official
scorer does to a submitted mask, so submitting the original-size truth scores as the truth
itself; a nearest-neighbour resize would shift region borders and drop thin regions.

Examples::

    from evalmuse_models.data import binary_mask, baseline_heatmap

    truth = binary_mask(record, size=(512, 512))            # 0/1 uint8 (union of annotators)
    majority = binary_mask(record, min_votes=2)              # original size, 2 annotators agree
    target = baseline_heatmap(record) / 255.0                # 512x512, the baseline's target
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

#: Heatmap value for 0, 1, 2, 3 and 4+ overlapping annotators (the baseline's levels).
HEATMAP_LEVELS = (0, 64, 127, 180, 255)
#: The size (width, height) of the official truth masks and of the baseline heatmap.
TRUTH_SIZE = (512, 512)

#: The largest coordinate magnitude accepted (pixels): ``cv2.fillPoly`` takes time in proportion to
#: the coordinate range (seconds for a vertex a billion pixels away), and no image is this large.
MAX_COORDINATE = 1 << 20


def _image_size(obj) -> tuple[int, int] | None:
    """``(width, height)`` of a PIL image, or of an undecoded ``{"bytes", "path"}`` image (header only)."""
    size = getattr(obj, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(obj, dict) and (obj.get("bytes") or obj.get("path")):
        from PIL import Image

        with Image.open(io.BytesIO(obj["bytes"]) if obj.get("bytes") else obj["path"]) as image:
            return image.size
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


def _pixel_points(points) -> np.ndarray:
    """``(n, 2)`` whole pixel coordinates (as float64), fractions truncated toward zero like ``int()``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.abs(points) <= MAX_COORDINATE):  # NaN fails too
        raise ValueError(
            f"shape coordinates must be finite pixel positions within +-{MAX_COORDINATE}, got {points.tolist()}")
    return np.trunc(points)


def _fill_shape(mask: np.ndarray, shape) -> None:
    """Set one annotated shape's pixels to 1 in ``mask`` by the official rule (see the module doc)."""
    height, width = mask.shape
    kind, points = _shape_parts(shape)
    points = _pixel_points(points)
    if kind == "rectangle":
        if len(points) != 2:
            raise ValueError(f"a rectangle needs 2 corners (top-left, bottom-right), got {len(points)} points")
        (x1, x2) = np.clip(points[:, 0], 0, width).astype(np.int64)
        (y1, y2) = np.clip(points[:, 1], 0, height).astype(np.int64)
        mask[y1:y2, x1:x2] = 1
    elif kind == "polygon":
        if len(points) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
        import cv2

        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    else:
        raise ValueError(f"unknown shape type {kind!r} (expected 'rectangle' or 'polygon')")


def _check_size(size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height), got {size!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}x{height}")
    return width, height


def rasterize_annotators(shapes, width: int | None = None, height: int | None = None) -> np.ndarray:
    """One 0/1 ``uint8`` mask per annotator, shape ``(annotators, height, width)``, at the
    original size. An annotator with no shapes gets an all-zero mask."""
    annotators, width, height = _resolve(shapes, width, height)
    masks = np.zeros((len(annotators), height, width), dtype=np.uint8)
    for a, annotator in enumerate(annotators):
        for shape in annotator or []:
            _fill_shape(masks[a], shape)
    return masks


def _annotator_masks(masks: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    """Check drawn per-annotator masks: ``(annotators, height, width)``, 0/1, of the size given (if any)."""
    if masks.ndim != 3:
        raise ValueError(f"per-annotator masks must be an (annotators, height, width) array, got shape {masks.shape}")
    if (width is not None and int(width) != masks.shape[2]) or (height is not None and int(height) != masks.shape[1]):
        raise ValueError(f"per-annotator masks are {masks.shape[2]}x{masks.shape[1]}, not the {width}x{height} given")
    if masks.dtype != np.bool_ and not np.isin(masks, (0, 1)).all():
        raise ValueError("per-annotator masks must hold only 0 and 1")
    return masks.astype(np.uint8, copy=False)


def vote_map(shapes, width: int | None = None, height: int | None = None) -> np.ndarray:
    """How many annotators marked each pixel (``uint8``, ``(height, width)``, original size). ``shapes``
    may also be the annotators' drawn masks, an ``(annotators, height, width)`` 0/1 array."""
    if isinstance(shapes, np.ndarray):
        masks = _annotator_masks(shapes, width, height)
    else:
        masks = rasterize_annotators(shapes, width, height)
    return np.minimum(masks.sum(axis=0, dtype=np.int64), 255).astype(np.uint8)


def heatmap_levels(votes: np.ndarray) -> np.ndarray:
    """Map vote counts 0/1/2/3/4+ to the baseline levels 0/64/127/180/255 (``uint8``)."""
    lut = np.array(HEATMAP_LEVELS + (HEATMAP_LEVELS[-1],) * (256 - len(HEATMAP_LEVELS)), dtype=np.uint8)
    return lut[np.asarray(votes, dtype=np.uint8)]


class TruthMaps(NamedTuple):
    """What :func:`truth_maps` makes of one image's annotations (all ``uint8``)."""

    votes: np.ndarray  #: annotators per pixel, original size
    mask: np.ndarray  #: 0/1, ``votes >= min_votes``, original size
    truth: np.ndarray  #: 0/1 at ``size``: ``cv2.resize(mask, size) > 0`` (the scored truth at 512x512)
    heatmap: np.ndarray  #: baseline levels at ``size``: ``cv2.resize(heatmap_levels(votes), size)``


def truth_maps(
    shapes, width: int | None = None, height: int | None = None, *, min_votes: int = 1, size=TRUTH_SIZE
) -> TruthMaps:
    """The one place truth masks and heatmaps are made: the dataset's ``mask`` and ``heatmap``
    columns, training targets and the truth masks of every evaluation come from here.

    ``min_votes`` annotators make a truth pixel (1 = union, the default; 2 = majority of 3).
    ``size=(width, height)`` (default 512x512) is the size of ``truth`` and ``heatmap``, both
    resized with ``cv2.resize``'s default bilinear interpolation, the mask then binarised with
    ``> 0`` as the official scorer treats a submitted mask; ``size=None`` keeps the original size.
    """
    if isinstance(min_votes, bool) or not isinstance(min_votes, (int, np.integer)) or min_votes < 1:
        raise ValueError(f"min_votes must be an integer >= 1, got {min_votes!r}")
    votes = vote_map(shapes, width, height)
    mask = (votes >= min_votes).astype(np.uint8)
    levels = heatmap_levels(votes)
    if size is None:
        return TruthMaps(votes, mask, mask, levels)
    import cv2

    size = _check_size(size)
    truth = (cv2.resize(mask, size) > 0).astype(np.uint8)
    return TruthMaps(votes, mask, truth, cv2.resize(levels, size))


def binary_mask(
    shapes, width: int | None = None, height: int | None = None, *, min_votes: int = 1, size=None
) -> np.ndarray:
    """The 0/1 ``uint8`` truth mask: pixels marked by at least ``min_votes`` annotators.

    ``min_votes=1`` (default) is the union of annotators, ``2`` the majority of 3. By default at
    the original size; ``binary_mask(record, size=(512, 512))`` is the mask the structure score
    compares with (see :func:`truth_maps` for the resize rule).
    """
    maps = truth_maps(shapes, width, height, min_votes=min_votes, size=size)
    return maps.mask if size is None else maps.truth


def baseline_heatmap(shapes, width: int | None = None, height: int | None = None, *, size=TRUTH_SIZE) -> np.ndarray:
    """The baseline's training heatmap as ``uint8`` levels (divide by 255 for the target).

    Vote counts 1/2/3/4+ map to 64/127/180/255, then ``cv2.resize`` (bilinear, as the baseline's
    ``data_process.py``) to ``size`` (``(width, height)``, default 512x512), so region borders
    take intermediate values; ``size=None`` keeps the original size and the five levels.
    """
    return truth_maps(shapes, width, height, size=size).heatmap
