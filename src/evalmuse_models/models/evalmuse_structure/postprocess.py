"""Mask helpers for the library (not shipped as remote code): a heatmap binarised at a threshold and
the small regions of a mask removed, as checked wrappers over the model's own post-processing
(``post_processing_evalmuse_structure.py``, behind ``EvalMuseStructureProcessor.post_process_distortion``),
so that masks made here equal the processor's ``mask_512``. The official-score evaluation of
predictions and the threshold search are in :mod:`evalmuse_models.evaluation.structure`.

Example::

    import numpy as np
    from evalmuse_models.models.evalmuse_structure.postprocess import heatmap_to_mask, remove_small_regions

    heatmap = np.zeros((512, 512), np.float32); heatmap[100:200, 50:150] = 0.9
    mask = heatmap_to_mask(heatmap)              # baseline rule: round(h * 255) > 40
    remove_small_regions(mask, min_area=158)     # the 100 x 100 region stays
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...utils import UserInputError
from . import post_processing_evalmuse_structure as _post
from .processing_evalmuse_structure import BASELINE_THRESHOLD


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserInputError(f"threshold must be a heatmap level in [0, 1], got {threshold}")


def _as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise UserInputError(f"{name}: expected a 2-D mask, got shape {arr.shape}")
    return arr


def _as_heatmap(heatmap: Any, name: str = "heatmap") -> np.ndarray:
    arr = np.asarray(heatmap, dtype=np.float32)
    if arr.ndim != 2:
        raise UserInputError(f"{name}: expected a 2-D heatmap, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise UserInputError(f"{name}: the heatmap holds NaN or inf values")
    return arr


def heatmap_to_mask(heatmap: Any, threshold: float = BASELINE_THRESHOLD) -> np.ndarray:
    """Binary uint8 0/1 mask: ``round(heatmap * 255) > threshold * 255`` (the baseline's rule, which
    is ``> 40`` on 8-bit levels for the default threshold 40/255). ``heatmap`` is in [0, 1]."""
    _check_threshold(threshold)
    arr = _as_heatmap(heatmap)
    return _post.binarize_heatmap(torch.from_numpy(arr), float(threshold)).numpy()


def remove_small_regions(mask: Any, min_area: int) -> np.ndarray:
    """Drop 8-connected regions with fewer than ``min_area`` pixels (uint8 0/1 out)."""
    return _post.remove_small_regions(_as_mask(mask), min_area)


__all__ = ["BASELINE_THRESHOLD", "heatmap_to_mask", "remove_small_regions"]
