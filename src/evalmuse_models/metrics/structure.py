"""NTIRE 2025 track 2 (EvalMuse-Structure): Final = 0.7·F1 + 0.15·(PLCC + SRCC).

Region matching follows the released scorer: predictions are resized to 512×512 (OpenCV's default
bilinear ``cv2.resize``) and binarised with ``> 0``; regions are external contours
(``RETR_EXTERNAL``, ``CHAIN_APPROX_SIMPLE``) filtered by ``cv2.contourArea``; two regions match
when the IoU of their FILLED contours is above the threshold.

The released matching is greedy and not one-to-one (each predicted region marks the first true
region it matches, then each unmatched true region marks the first predicted region it matches).
Its counts reduce to: a predicted region is matched iff it matches at least one true region, and
a true region is matched iff at least one predicted region matches it. That lets this module
compute only the IoUs it needs: each region is filled once, inside its own bounding box, and a
pair is compared only when the boxes overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils import UserInputError
from ._stats import (
    bootstrap_ci,
    check_correlatable,
    check_scores,
    describe,
    is_constant,
    plcc_logistic,
    spearman,
)

__all__ = [
    "NoPredictedRegionsError",
    "RegionCounts",
    "binarize_prediction",
    "image_region_counts",
    "region_f1",
    "structure_final_score",
]

OFFICIAL_SIZE = 512
OFFICIAL_MIN_PRED_AREA = 0.0006 * 512 * 512
OFFICIAL_MIN_TRUE_AREA = 150


class NoPredictedRegionsError(UserInputError):
    """The whole set has no predicted region: precision is undefined (the released script divides by zero)."""


@dataclass(frozen=True)
class RegionCounts:
    """Per-image region statistics: regions kept on each side, how many of them are matched, and the
    foreground IoU ``(∩ + 1e-4) / (∪ + 1e-4)`` of the binary masks."""

    n_pred: int
    n_true: int
    matched_pred: int
    matched_true: int
    fg_iou: float


def _as_mask(mask: Any, name: str, image: str) -> np.ndarray:
    try:
        arr = np.asarray(mask)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise UserInputError(f"{name} of image {image}: not an array ({exc})") from None
    if arr.ndim != 2:
        raise UserInputError(f"{name} of image {image}: expected a 2-D mask, got shape {arr.shape}")
    if arr.size == 0:
        raise UserInputError(f"{name} of image {image}: the mask is empty (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise UserInputError(f"{name} of image {image}: mask dtype {arr.dtype} is not numeric")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise UserInputError(f"{name} of image {image}: the mask holds NaN or inf values")
    return arr


def binarize_prediction(mask: np.ndarray, size: int = OFFICIAL_SIZE) -> np.ndarray:
    """Resize a predicted mask to ``size``×``size`` with ``cv2.resize`` (bilinear) and binarise
    with ``> 0``, as the released scorer does. Returns a uint8 0/1 array.

    Values are resized as given (so a 0/255 mask grows slightly more than a 0/1 mask, exactly as
    in the released scorer); dtypes OpenCV cannot resize are converted first (bool and small
    integers to uint8, other integers to float64).

    >>> int(binarize_prediction(np.array([[0, 1], [0, 0]], dtype=np.uint8), size=4).sum())
    4
    """
    import cv2

    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    elif mask.dtype.kind in "iu" and mask.dtype not in (np.uint8, np.uint16, np.int16):
        if mask.min() >= 0 and mask.max() <= 255:
            mask = mask.astype(np.uint8)
        else:
            mask = mask.astype(np.float64)
    elif mask.dtype == np.float16:
        mask = mask.astype(np.float32)
    if mask.shape != (size, size):
        mask = cv2.resize(np.ascontiguousarray(mask), (size, size))
    return (mask > 0).astype(np.uint8)


class _Region:
    """One kept external contour: its bounding box and, on demand, its filled mask inside the box."""

    __slots__ = ("_area", "_filled", "contour", "x0", "x1", "y0", "y1")

    def __init__(self, contour: np.ndarray):
        import cv2

        x, y, w, h = cv2.boundingRect(contour)
        self.contour = contour
        self.x0, self.y0, self.x1, self.y1 = x, y, x + w, y + h
        self._filled: np.ndarray | None = None
        self._area = 0

    def filled(self) -> np.ndarray:
        if self._filled is None:
            import cv2

            canvas = np.zeros((self.y1 - self.y0, self.x1 - self.x0), dtype=np.uint8)
            cv2.drawContours(canvas, [self.contour], -1, 1, thickness=cv2.FILLED, offset=(-self.x0, -self.y0))
            self._filled = canvas.view(np.bool_)
            self._area = int(np.count_nonzero(canvas))
        return self._filled

    @property
    def area(self) -> int:
        self.filled()
        return self._area


def _regions(binary: np.ndarray, min_area: float) -> list[_Region]:
    import cv2

    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [_Region(c) for c in contours if cv2.contourArea(c) > min_area]


def _iou(a: _Region, b: _Region) -> float:
    x0, y0 = max(a.x0, b.x0), max(a.y0, b.y0)
    x1, y1 = min(a.x1, b.x1), min(a.y1, b.y1)
    if x0 >= x1 or y0 >= y1:
        return 0.0
    fa = a.filled()[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
    fb = b.filled()[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    inter = int(np.count_nonzero(fa & fb))
    return inter / (a.area + b.area - inter)


def image_region_counts(
    pred_binary: np.ndarray,
    true_mask: np.ndarray,
    *,
    min_pred_area: float = OFFICIAL_MIN_PRED_AREA,
    min_true_area: float = OFFICIAL_MIN_TRUE_AREA,
    iou_threshold: float = 0.1,
) -> RegionCounts:
    """Region statistics of one image from a binarised prediction and the truth mask (same shape).

    The truth is read as the released scorer reads it: its regions are those of
    ``true_mask.astype(np.uint8)`` (any non-zero value after that cast), its foreground for the
    IoU is ``true_mask == 1``. For the usual 0/1 truth both are the mask itself.
    """
    true_binary = (true_mask.astype(np.uint8) != 0).astype(np.uint8)
    true_fg = true_mask == 1
    pred_fg = pred_binary != 0
    inter = np.count_nonzero(pred_fg & true_fg)
    union = np.count_nonzero(pred_fg | true_fg)
    fg_iou = (inter + 1e-4) / (union + 1e-4)

    preds = _regions(pred_binary, min_pred_area)
    trues = _regions(true_binary, min_true_area)
    pred_hit = np.zeros(len(preds), dtype=bool)
    true_hit = np.zeros(len(trues), dtype=bool)
    for i, p in enumerate(preds):
        for j, t in enumerate(trues):
            if pred_hit[i] and true_hit[j]:
                continue  # nothing left to learn from this pair
            if _iou(p, t) > iou_threshold:
                pred_hit[i] = True
                true_hit[j] = True
    return RegionCounts(
        n_pred=len(preds),
        n_true=len(trues),
        matched_pred=int(pred_hit.sum()),
        matched_true=int(true_hit.sum()),
        fg_iou=float(fg_iou),
    )


def region_f1(n_pred: int, n_true: int, matched_pred: int, matched_true: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of region counts pooled over a set, as the released scorer computes them:
    P = matched predicted / predicted regions, R = 1 − unmatched true / true regions,
    F1 = 2PR / (P + R + 1e-10). Both totals must be positive (the callers say why they are not)."""
    precision = float(matched_pred / n_pred)
    recall = float(1 - (n_true - matched_true) / n_true)
    return precision, recall, float(2 * precision * recall / (precision + recall + 1e-10))


def structure_final_score(
    predictions: Sequence[float],
    references: Sequence[float],
    prediction_masks: Sequence[np.ndarray],
    reference_masks: Sequence[np.ndarray],
    *,
    min_pred_area: float = OFFICIAL_MIN_PRED_AREA,
    min_true_area: float = OFFICIAL_MIN_TRUE_AREA,
    iou_threshold: float = 0.1,
    size: int = OFFICIAL_SIZE,
    weights: tuple[float, float, float] = (0.7, 0.15, 0.15),
    n_resamples: int = 0,
    seed: int = 0,
    confidence_level: float = 0.95,
    image_ids: Sequence[str] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The NTIRE 2025 structure-track Final Score, as the released scorer computes it.

    Args:
        predictions: submitted structure score per image (any scale).
        references: true score per image (MOS), same order.
        prediction_masks: per image, a 2-D predicted mask of any resolution (0/1, or any values:
            it is resized to ``size``×``size`` bilinearly and binarised with ``> 0``).
        reference_masks: per image, the true 2-D 0/1 mask, ``size``×``size`` (used as stored).
        min_pred_area / min_true_area: regions are kept when ``cv2.contourArea`` is above these.
        iou_threshold: two regions match when the IoU of their filled contours is above it.
        weights: ``(w_f1, w_plcc, w_srcc)``.
        n_resamples, seed, confidence_level: when ``n_resamples > 0``, adds ``ci`` (percentile
            bootstrap over images, ``{key: [low, high]}``) for every score.
        image_ids: names used in error messages.
        progress: show a tqdm bar (default: when there are more than 500 images).

    Returns:
        ``{"precision", "recall", "f1", "giou", "plcc", "srcc", "final_score"}`` as Python floats.
        Precision = matched / kept predicted regions and recall = 1 − unmatched / kept true regions,
        both pooled over the whole set; F1 = 2PR / (P + R + 1e-10); ``giou`` is the mean over images
        of the foreground IoU (reported, not scored). PLCC is the Pearson correlation after the
        logistic fit predictions -> references; when that fit fails PLCC falls back to the plain
        Pearson correlation and ``"plcc_fallback": True`` is added.

    Raises:
        UserInputError: lengths differ, a score is NaN/inf, a mask is not 2-D or is empty, a truth
            mask is not ``size``×``size``, constant predictions, or no predicted (or true) region in
            the whole set.

    Example:
        >>> import numpy as np
        >>> truth = np.zeros((512, 512), np.uint8); truth[100:200, 100:200] = 1
        >>> pred = np.zeros((256, 256), np.uint8); pred[50:100, 50:100] = 1
        >>> r = structure_final_score([0.1, 0.5, 0.7, 0.9, 0.3], [1.0, 2.0, 3.0, 4.0, 1.7], [pred] * 5, [truth] * 5)
        >>> r["precision"], r["recall"], round(r["f1"], 6), round(r["srcc"], 6)
        (1.0, 1.0, 1.0, 1.0)
    """
    n = len(references)
    if len(predictions) != n or len(prediction_masks) != n or len(reference_masks) != n:
        raise UserInputError(
            f"inputs differ in length: {len(predictions)} predictions, {n} references, "
            f"{len(prediction_masks)} prediction_masks, {len(reference_masks)} reference_masks; give one per image"
        )
    if image_ids is not None and len(image_ids) != n:
        raise UserInputError(f"image_ids has {len(image_ids)} names but there are {n} images")
    if len(weights) != 3:
        raise UserInputError(f"weights must be (w_f1, w_plcc, w_srcc), got {weights!r}")
    pred = check_scores(predictions, "predictions", image_ids)
    ref = check_scores(references, "references", image_ids)
    check_correlatable(pred, ref)

    from tqdm.auto import tqdm

    counts = np.empty((n, 4), dtype=np.int64)
    fg_iou = np.empty(n, dtype=np.float64)
    show = n > 500 if progress is None else progress
    for i in tqdm(range(n), desc="structure regions", disable=not show):
        name = describe(i, image_ids)
        true_mask = _as_mask(reference_masks[i], "reference_masks", name)
        if true_mask.shape != (size, size):
            raise UserInputError(
                f"reference_masks of image {name}: the truth mask must be {size}x{size}, got {true_mask.shape}"
            )
        pred_binary = binarize_prediction(_as_mask(prediction_masks[i], "prediction_masks", name), size)
        rc = image_region_counts(
            pred_binary, true_mask, min_pred_area=min_pred_area, min_true_area=min_true_area,
            iou_threshold=iou_threshold,
        )
        counts[i] = (rc.n_pred, rc.n_true, rc.matched_pred, rc.matched_true)
        fg_iou[i] = rc.fg_iou

    w_f1, w_plcc, w_srcc = (float(w) for w in weights)

    def scores(idx: np.ndarray | None, strict: bool = False) -> dict[str, Any]:
        c = counts if idx is None else counts[idx]
        n_pred, n_true, matched_pred, matched_true = c.sum(axis=0)
        if n_pred == 0:
            raise NoPredictedRegionsError(
                "no predicted region in the whole set (after resizing, binarising and the area filter "
                f"contourArea > {min_pred_area:g}): precision is undefined. Check the prediction masks "
                "(are they all empty, or is the heatmap threshold too high?)"
            )
        if n_true == 0:
            raise UserInputError(
                f"no true region in the whole set (area filter contourArea > {min_true_area:g}): recall is undefined"
            )
        precision, recall, f1 = region_f1(n_pred, n_true, matched_pred, matched_true)
        p = pred if idx is None else pred[idx]
        r = ref if idx is None else ref[idx]
        if is_constant(p) or is_constant(r):
            raise UserInputError("constant resample")
        plcc, fallback = plcc_logistic(p, r, "standard")
        srcc = spearman(p, r)
        return {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "giou": float((fg_iou if idx is None else fg_iou[idx]).mean()),
            "plcc": plcc,
            "srcc": srcc,
            "final_score": float(
                w_f1 * f1 + w_plcc * (plcc + srcc) if w_plcc == w_srcc else w_f1 * f1 + w_plcc * plcc + w_srcc * srcc
            ),
            "_fallback": fallback,
        }

    result = scores(None)
    if result.pop("_fallback"):
        import warnings

        warnings.warn("the logistic fit did not converge; PLCC is the plain Pearson correlation", stacklevel=2)
        result["plcc_fallback"] = True
    if n_resamples:
        if n_resamples < 0:
            raise UserInputError(f"n_resamples must be >= 0, got {n_resamples}")
        keys = ["precision", "recall", "f1", "giou", "plcc", "srcc", "final_score"]
        result["ci"] = bootstrap_ci(scores, n, keys, n_resamples, seed, confidence_level)
    return result
