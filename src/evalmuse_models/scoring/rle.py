"""Run-length encoding of binary masks (COCO's *uncompressed* RLE).

Format: ``{"size": [height, width], "counts": [n0, n1, n2, ...]}`` where the mask is read in
column-major (Fortran) order and the counts alternate between runs of 0 and runs of 1, always
starting with a (possibly empty) run of 0. This is exactly what ``pycocotools`` accepts as an
uncompressed RLE, so results files can be read with COCO tooling too.

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


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode :func:`mask_to_rle`'s output back to a ``uint8`` 0/1 array of shape ``size``."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = [int(c) for c in rle["counts"]]
    except (KeyError, TypeError, ValueError) as err:
        raise UserInputError(
            f"invalid RLE mask {str(dict(rle))[:80]!r}: expected {{'size': [h, w], 'counts': [int, ...]}} ({err})"
        ) from None
    total = height * width
    if sum(counts) != total or any(c < 0 for c in counts):
        raise UserInputError(
            f"invalid RLE mask: counts sum to {sum(counts)} but size {height}x{width} needs {total}"
        )
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of an encoded mask, without decoding it."""
    return int(sum(rle["counts"][1::2]))
