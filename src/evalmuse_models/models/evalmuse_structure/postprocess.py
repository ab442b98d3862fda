"""Post-processing of structure heatmaps (library only, not shipped as remote code): heatmap ->
binary mask at a threshold, small-region removal, regions / boxes, mask at the original image size
(thin checked wrappers over the model file's own post-processing, so ``predict`` and these
functions agree exactly), the official-score evaluation of a set of predictions and the validation
threshold search that maximises the official structure Final score.

Example::

    import numpy as np
    from evalmuse_models.models.evalmuse_structure.postprocess import heatmap_to_mask, mask_to_regions

    heatmap = np.zeros((512, 512), np.float32); heatmap[100:200, 50:150] = 0.9
    mask = heatmap_to_mask(heatmap)              # baseline rule: round(h * 255) > 40
    mask_to_regions(mask)                        # [{"bbox": [50, 100, 150, 200], "area": 10000}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...utils import UserInputError
from . import modeling_evalmuse_structure as _model

BASELINE_THRESHOLD = 40 / 255
DEFAULT_THRESHOLDS = tuple(round(v / 255, 6) for v in range(10, 250, 10))


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
    return _model.binarize_heatmap(torch.from_numpy(arr), float(threshold)).numpy()


def remove_small_regions(mask: Any, min_area: int) -> np.ndarray:
    """Drop 8-connected regions with fewer than ``min_area`` pixels (uint8 0/1 out)."""
    return _model.remove_small_regions(_as_mask(mask), min_area)


def mask_to_regions(mask: Any) -> list[dict[str, Any]]:
    """``[{"bbox": [x0, y0, x1, y1], "area": pixels}]`` of the 8-connected regions of a mask (``x1``,
    ``y1`` exclusive), in raster order of each region's first pixel."""
    return _model.mask_to_regions(_as_mask(mask))


def resize_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of a 0/1 mask to ``(width, height)`` (e.g. back to the original image), pixel
    centres aligned: the model's own resize (:func:`~.modeling_evalmuse_structure.resize_mask`)."""
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise UserInputError(f"size must be (width, height) of at least 1 x 1, got {tuple(size)}")
    return _model.resize_mask((_as_mask(mask) > 0).astype(np.uint8), (width, height))


def postprocess_heatmap(
    heatmap: Any,
    threshold: float = BASELINE_THRESHOLD,
    min_area: int = 158,
    original_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Heatmap -> ``{"mask_512", "mask", "regions"}``: threshold, small-region removal (on the 512
    grid), the mask at ``original_size`` (``(width, height)``) and the regions of that mask. The
    model's own post-processing (:func:`~.modeling_evalmuse_structure.postprocess_heatmaps`), so
    ``model.predict`` returns exactly this for its heatmap."""
    _check_threshold(threshold)
    arr = _as_heatmap(heatmap)
    sizes = None
    if original_size is not None:
        width, height = (int(v) for v in original_size)
        if width < 1 or height < 1:
            raise UserInputError(f"original_size must be (width, height) of at least 1 x 1, got {tuple(original_size)}")
        sizes = [(width, height)]
    return _model.postprocess_heatmaps(torch.from_numpy(arr), threshold, min_area, sizes=sizes)[0]


def evaluate_structure(
    scores: Sequence[float],
    reference_scores: Sequence[float],
    prediction_masks: Sequence[np.ndarray],
    reference_masks: Sequence[np.ndarray],
    **kwargs: Any,
) -> dict[str, Any]:
    """The official structure Final score (:func:`evalmuse_models.metrics.structure_final_score`),
    made total for untrained or degenerate models:

    - no predicted region in the whole set (the released script divides by zero): precision,
      recall and F1 are reported as 0 and ``"no_predicted_regions": True`` is added;
    - constant predicted scores (the correlations are undefined): PLCC and SRCC are reported as 0
      and ``"constant_scores": True`` is added.

    Everything else (bad shapes, NaN scores) still raises :class:`UserInputError`.
    """
    from ...metrics import NoPredictedRegionsError, structure_final_score
    from ...metrics._stats import is_constant, plcc_logistic, spearman

    pred = np.asarray(scores, dtype=np.float64)
    ref = np.asarray(reference_scores, dtype=np.float64)
    constant = len(pred) > 0 and is_constant(pred)
    if constant:
        # break the tie invisibly (relative to the scores' magnitude) so the region part is still
        # computed by the official function
        pred = pred + np.linspace(0.0, 1e-9, len(pred)) * max(1.0, float(np.abs(pred).max()))
    weights = kwargs.get("weights", (0.7, 0.15, 0.15))
    try:
        result = structure_final_score(pred, ref, prediction_masks, reference_masks, **kwargs)
    except NoPredictedRegionsError:
        # the correlations do not depend on the masks: recompute them directly
        plcc, _ = plcc_logistic(pred, ref, "standard")
        srcc = spearman(pred, ref)
        result = {
            "precision": 0.0,
            "recall": 0.0,
            "f1": 0.0,
            "giou": float("nan"),
            "plcc": float(plcc),
            "srcc": float(srcc),
            "no_predicted_regions": True,
        }
        result["final_score"] = weights[0] * 0.0 + weights[1] * result["plcc"] + weights[2] * result["srcc"]
    if constant:
        result["plcc"] = 0.0
        result["srcc"] = 0.0
        result["constant_scores"] = True
        result["final_score"] = weights[0] * result["f1"]
    return result


def search_threshold(
    heatmaps: Sequence[np.ndarray],
    scores: Sequence[float],
    reference_masks: Sequence[np.ndarray],
    reference_scores: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_area: int = 158,
) -> tuple[float, list[dict[str, Any]]]:
    """Pick the heatmap threshold that maximises the official Final score on a validation set.

    Args:
        heatmaps: predicted 512 x 512 heatmaps in [0, 1].
        scores / reference_scores: predicted and true structure scores.
        reference_masks: true 512 x 512 0/1 masks.
        thresholds: candidates in [0, 1] (default 10/255 ... 240/255 in steps of 10/255); the
            baseline's 40/255 is always included.
        min_area: small-region removal applied before scoring.

    Returns:
        ``(best_threshold, table)``; ``table`` holds one row per threshold with its metrics. Ties go
        to the threshold closest to the baseline's 40/255.
    """
    if len(heatmaps) != len(reference_masks):
        raise UserInputError(f"{len(heatmaps)} heatmaps but {len(reference_masks)} reference masks")
    candidates = sorted({round(float(t), 6) for t in thresholds} | {round(BASELINE_THRESHOLD, 6)})
    heatmaps = [_as_heatmap(h, f"heatmaps[{i}]") for i, h in enumerate(heatmaps)]
    table = []
    for t in candidates:
        masks = [remove_small_regions(heatmap_to_mask(h, t), min_area) for h in heatmaps]
        metrics = evaluate_structure(scores, reference_scores, masks, reference_masks)
        table.append({"threshold": t, **metrics})
    best = max(table, key=lambda row: (row["final_score"], -abs(row["threshold"] - round(BASELINE_THRESHOLD, 6))))
    return best["threshold"], table


__all__ = [
    "BASELINE_THRESHOLD",
    "DEFAULT_THRESHOLDS",
    "evaluate_structure",
    "heatmap_to_mask",
    "mask_to_regions",
    "postprocess_heatmap",
    "remove_small_regions",
    "resize_mask",
    "search_threshold",
]
