"""COCO masks: the run-length encoding of the results file, and decoding of any COCO segmentation.

The results file stores masks as COCO's *uncompressed* RLE, ``{"size": [height, width], "counts":
[n0, n1, n2, ...]}``: the mask read in column-major (Fortran) order, the counts alternating runs of 0
and runs of 1, always starting with a (possibly empty) run of 0. :func:`mask_to_rle` writes it
(``pycocotools`` only writes the compressed form). Everything else goes through ``pycocotools.mask``:
:func:`coco_rle` turns any COCO segmentation (uncompressed RLE, compressed RLE with ``counts`` as a
string, as detectors such as mmdetection write it, or polygons) into pycocotools' compressed RLE,
refusing malformed input; :func:`rle_to_mask` and :func:`rle_area` decode and measure either RLE form, and
:func:`decode_rle` decodes what :func:`coco_rle` returned.

Example::

    >>> import numpy as np
    >>> mask = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    >>> rle = mask_to_rle(mask)
    >>> rle
    {'size': [2, 2], 'counts': [1, 3]}
    >>> bool((rle_to_mask(rle) == mask).all())
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..utils import UserInputError


def mask_to_rle(mask: Any) -> dict:
    """Encode a 2-D mask (any dtype; non-zero = 1) as ``{"size": [h, w], "counts": [...]}``."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask_to_rle expects a 2-D mask, got shape {array.shape}")
    height, width = array.shape
    flat = (array != 0).ravel(order="F").astype(np.int8)
    if flat.size == 0:
        return {"size": [int(height), int(width)], "counts": []}
    # Positions where the value changes, plus both ends.
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def _size(segmentation: Mapping[str, Any]) -> tuple[int, int]:
    size = segmentation.get("size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
    ):
        raise UserInputError(f"invalid RLE mask: 'size' must be [height, width] (two integers >= 0), got {size!r}")
    return int(size[0]), int(size[1])


def decode_rle(rle: Any) -> np.ndarray:
    """``pycocotools.mask.decode`` of an RLE :func:`coco_rle` returned (not checked again): a uint8 0/1 array
    (column-major in memory, as RLEs are)."""
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():
        # pycocotools 2.0.x under NumPy 2 warns about its own __array__ on every decode: nothing to act on
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        return mask_utils.decode(rle)


def _decode_compressed(rle: dict) -> np.ndarray:
    """Decode a compressed RLE, refusing counts that do not describe exactly ``size`` pixels.

    pycocotools decodes a string that ends early by leaving the rest of the mask unset, so the mask
    is encoded again and compared: every writer of this form (pycocotools' ``encode``) produces the
    one canonical string of its mask."""
    from pycocotools import mask as mask_utils

    try:
        decoded = decode_rle(rle)
        canonical = mask_utils.encode(np.asfortranarray(decoded))["counts"]
    except (ValueError, TypeError, OverflowError) as err:
        raise UserInputError(f"invalid RLE mask: the counts cannot be decoded ({err})") from None
    if canonical != rle["counts"]:
        height, width = rle["size"]
        raise UserInputError(
            f"invalid RLE mask: the counts string {rle['counts'][:40].decode('ascii', 'replace')!r} does not encode a "
            f"{height}x{width} mask"
        )
    return decoded


def coco_rle(segmentation: Any, height: int | None = None, width: int | None = None) -> dict:
    """pycocotools' compressed RLE (``{"size": [h, w], "counts": bytes}``) of a COCO segmentation.

    Args:
        segmentation: an RLE ``{"size": [h, w], "counts": ...}`` with ``counts`` a list of run lengths
            (uncompressed) or a string / bytes (compressed), or polygons ``[[x0, y0, x1, y1, ...], ...]``
            (each at least three points, in pixel coordinates).
        height, width: the image's size; required for polygons, and checked against an RLE's ``size``
            when given.

    Raises:
        UserInputError: the segmentation is malformed, its counts do not describe ``size`` pixels, or
            its size is not ``(height, width)``. Callers add where the segmentation came from.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation:
            raise UserInputError("invalid RLE mask: expected {'size': [h, w], 'counts': ...}, found no 'counts'")
        h, w = _size(segmentation)
        if height is not None and (h, w) != (height, width):
            raise UserInputError(f"the mask is {h}x{w} (height x width) but the image is {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            try:
                rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            except UnicodeEncodeError:
                raise UserInputError("invalid RLE mask: a compressed counts string is ASCII text") from None
            _decode_compressed(rle)
            return rle
        runs = np.asarray(counts) if isinstance(counts, list) and counts else np.zeros(0, np.int64)
        if not isinstance(counts, list) or runs.dtype.kind not in "iu" or (runs.size and runs.min() < 0):
            raise UserInputError(
                f"invalid RLE mask {str(dict(segmentation))[:80]!r}: 'counts' must be a string or a list of integers >= 0"
            )
        total = int(runs.sum(dtype=np.int64))
        if total != h * w:
            raise UserInputError(f"invalid RLE mask: counts sum to {total} but size {h}x{w} needs {h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(segmentation, list) and segmentation:
        if height is None or width is None:
            raise UserInputError("polygons need the image's size to be drawn")
        for polygon in segmentation:
            if (
                not isinstance(polygon, list)
                or len(polygon) < 6
                or len(polygon) % 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon)
            ):
                raise UserInputError(
                    f"invalid polygon {str(polygon)[:60]}: expected [x0, y0, x1, y1, ...], at least three points of "
                    "finite numbers"
                )
        return mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in segmentation], height, width))
    raise UserInputError(
        f"invalid segmentation {str(segmentation)[:60]!r}: expected an RLE {{'size': [h, w], 'counts': ...}} or a "
        "list of polygons"
    )


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode an RLE (the results file's uncompressed form, or a compressed one) to a ``uint8`` 0/1 array of
    shape ``size``."""
    return decode_rle(coco_rle(rle))


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of an encoded mask, without decoding it."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(coco_rle(rle)))
