"""The official structure score (NTIRE 2025 track 2: Final = 0.7·F1 + 0.15·(PLCC + SRCC)) of
predictions on a labelled split, and the heatmap threshold that maximises it.

Training (every evaluation and the threshold search at the end), the demo and the CLI score
structure predictions here, against the truth of the one rule
(:func:`evalmuse_models.data.truth_maps`), with the arithmetic of
:func:`evalmuse_models.metrics.structure_final_score`.

A prediction is one image's structure score with either a heatmap or a mask: an object with those
attributes (a ``StructureResult``, what ``EvalMuseStructureProcessor.post_process_distortion`` and the
``t2i-structure`` pipeline return) or a mapping with those keys (``{"score": 2.7, "heatmap": h}``).
``predictions`` is a sequence in the split's order or a mapping from image name to prediction.

- ``heatmap``: 2-D distortion probabilities in [0, 1] (float), or their 8-bit levels (``uint8``,
  ``round(p * 255)``). It is binarised at ``threshold`` by the baseline's rule
  (:func:`~evalmuse_models.models.evalmuse_structure.postprocess.heatmap_to_mask`) and regions
  smaller than ``min_area`` pixels are removed, as the model's own post-processing does.
- ``mask``: a 2-D 0/1 mask of any size (e.g. the image's), scored as submitted.

Example::

    from datasets import load_dataset
    from evalmuse_models.evaluation import evaluate_structure, search_threshold

    split = load_dataset("data/evalmuse", "structure", split="validation")
    results = pipe(list(split["image"]))                 # a t2i-structure pipeline: StructureResults
    evaluate_structure(results, split)["final_score"]    # the masks the pipeline made
    best, table = search_threshold(results, split)       # the heatmap threshold to keep
    evaluate_structure(results, split, threshold=best)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..models.evalmuse_structure.configuration_evalmuse_structure import BASELINE_THRESHOLD, MIN_REGION_AREA
from ..models.evalmuse_structure.postprocess import heatmap_to_mask, remove_small_regions
from ..utils import UserInputError

#: The threshold search's default candidates: 10/255, 20/255, ... 240/255 (the baseline's 40/255 among them).
DEFAULT_THRESHOLDS = tuple(round(v / 255, 6) for v in range(10, 250, 10))

__all__ = [
    "BASELINE_THRESHOLD",
    "DEFAULT_THRESHOLDS",
    "MIN_REGION_AREA",
    "evaluate_structure",
    "search_threshold",
    "truth_masks",
]


# --------------------------------------------------------------------------------------------- the split


def _column(split, name: str) -> list[Any]:
    """One column of a ``datasets.Dataset`` (without decoding the others) or of a sequence of rows."""
    if hasattr(split, "column_names"):
        if name not in split.column_names:
            raise UserInputError(
                f"the split has no {name!r} column (columns: {split.column_names}); evaluate a labelled split of "
                "the 'structure' config of a prepared EvalMuse dataset"
            )
        return list(split[name])
    values = []
    for i, row in enumerate(split):
        if name not in row:
            raise UserInputError(f"row {i} of the split has no {name!r} field (fields: {sorted(row)})")
        values.append(row[name])
    return values


def _image_names(split) -> list[str] | None:
    if hasattr(split, "column_names"):
        return list(split["image_name"]) if "image_name" in split.column_names else None
    names = [row.get("image_name") for row in split]
    return names if all(isinstance(n, str) for n in names) else None


def _reference_scores(split, names: list[str] | None) -> np.ndarray:
    mos = _column(split, "mos")
    missing = [i for i, m in enumerate(mos) if m is None]
    if missing:
        first = names[missing[0]] if names else f"row {missing[0]}"
        raise UserInputError(
            f"{len(missing)} image(s) of the split have no 'mos' (e.g. {first}): the structure score needs a "
            "labelled split (the released test split has no labels)"
        )
    return np.asarray(mos, dtype=np.float64)


def truth_masks(split, *, min_votes: int = 1) -> list[np.ndarray]:
    """The 512 x 512 0/1 truth masks of a labelled split, in its order, drawn from each row's ``shapes``
    and image size by the one truth rule (:func:`evalmuse_models.data.truth_maps`): pixels that at least
    ``min_votes`` annotators marked (1 = union of annotators), bilinear resize to 512 x 512, ``> 0``.

    ``split``: a ``datasets.Dataset`` of the ``structure`` config (its images are not decoded: their
    size is read from the file header) or a sequence of rows with ``shapes`` and ``image``.
    """
    from ..data.masks import TRUTH_SIZE, truth_maps

    if hasattr(split, "column_names"):
        missing = sorted({"shapes", "image"} - set(split.column_names))
        if missing:
            raise UserInputError(
                f"the truth masks are drawn from the 'shapes' and 'image' columns, and this split has no {missing}; "
                "evaluate a labelled split of the 'structure' config of a prepared EvalMuse dataset"
            )
        from datasets import Image as ImageFeature

        split = split.select_columns(["shapes", "image"]).cast_column("image", ImageFeature(decode=False))
    masks = []
    for i, row in enumerate(split):
        try:
            masks.append(truth_maps(row, min_votes=min_votes, size=TRUTH_SIZE).truth)
        except (ValueError, OSError) as error:
            name = row.get("image_name") if isinstance(row, Mapping) else None
            raise UserInputError(f"cannot draw the truth mask of image {name or f'row {i}'}: {error}") from None
    return masks


# --------------------------------------------------------------------------------------------- predictions


def _field(prediction: Any, name: str) -> Any:
    if isinstance(prediction, Mapping):
        return prediction.get(name)
    return getattr(prediction, name, None)


def _in_split_order(predictions, names: list[str] | None, n: int) -> list[Any]:
    if isinstance(predictions, Mapping):
        if names is None:
            raise UserInputError(
                "predictions keyed by image name need a split with an 'image_name' column; give a sequence in the "
                "split's order instead"
            )
        missing = [name for name in names if name not in predictions]
        if missing:
            raise UserInputError(
                f"no prediction for {len(missing)} of the split's {n} images, e.g. {missing[0]!r}"
            )
        return [predictions[name] for name in names]
    predictions = list(predictions)
    if len(predictions) != n:
        raise UserInputError(f"{len(predictions)} predictions for a split of {n} images: give one per image, in order")
    return predictions


def _heatmap(value: Any, where: str) -> np.ndarray:
    heatmap = np.asarray(value)
    if heatmap.dtype == np.uint8:  # 8-bit levels, round(p * 255)
        heatmap = heatmap.astype(np.float32) / 255.0
    if heatmap.ndim != 2:
        raise UserInputError(f"{where}: expected a 2-D heatmap, got shape {heatmap.shape}")
    return heatmap


def _scores_and_masks(
    predictions: list[Any], names: list[str] | None, threshold: float | None, min_area: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    scores, masks = [], []
    for i, prediction in enumerate(predictions):
        where = f"the prediction for image {names[i] if names else i}"
        score = _field(prediction, "score")
        if score is None:
            raise UserInputError(f"{where} has no 'score'")
        scores.append(float(score))
        heatmap, mask = _field(prediction, "heatmap"), _field(prediction, "mask")
        if threshold is None and mask is not None:
            masks.append(np.asarray(mask))
        elif heatmap is not None:
            level = BASELINE_THRESHOLD if threshold is None else float(threshold)
            masks.append(remove_small_regions(heatmap_to_mask(_heatmap(heatmap, where), level), min_area))
        elif threshold is not None:
            raise UserInputError(f"{where} has no 'heatmap' to binarise at threshold {threshold}")
        else:
            raise UserInputError(f"{where} has neither a 'heatmap' nor a 'mask'")
    return np.asarray(scores, dtype=np.float64), masks


# --------------------------------------------------------------------------------------------- scores


def _final_score(scores, references, masks, truth, names, weights, **metric_kwargs) -> dict[str, Any]:
    """:func:`~evalmuse_models.metrics.structure_final_score`, made total for untrained or degenerate
    models (see :func:`evaluate_structure`)."""
    from ..metrics import NoPredictedRegionsError, structure_final_score
    from ..metrics._stats import is_constant, plcc_logistic, spearman

    constant = len(scores) > 0 and is_constant(scores)
    if constant:
        # break the tie invisibly (relative to the scores' magnitude) so that the region part is still
        # computed by the official function
        scores = scores + np.linspace(0.0, 1e-9, len(scores)) * max(1.0, float(np.abs(scores).max()))
    metric_kwargs.setdefault("progress", False)
    try:
        result = structure_final_score(scores, references, masks, truth, weights=weights, image_ids=names,
                                       **metric_kwargs)
    except NoPredictedRegionsError:
        # the correlations do not depend on the masks: compute them on their own
        plcc, _ = plcc_logistic(scores, references, "standard")
        result = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "giou": float("nan"), "plcc": float(plcc),
                  "srcc": float(spearman(scores, references)), "no_predicted_regions": True}
        result["final_score"] = weights[1] * result["plcc"] + weights[2] * result["srcc"]
    if constant:
        result.update(plcc=0.0, srcc=0.0, constant_scores=True, final_score=weights[0] * result["f1"])
    return result


def evaluate_structure(
    predictions: Sequence[Any] | Mapping[str, Any],
    split,
    *,
    min_votes: int = 1,
    threshold: float | None = None,
    min_area: int = MIN_REGION_AREA,
    truth: Sequence[np.ndarray] | None = None,
    weights: tuple[float, float, float] = (0.7, 0.15, 0.15),
    **metric_kwargs: Any,
) -> dict[str, Any]:
    """The official structure Final score of ``predictions`` on a labelled ``split``.

    Args:
        predictions: one prediction per image (score + heatmap or mask, see the module docstring), a
            sequence in the split's order or a mapping ``{image_name: prediction}``.
        split: the labelled split (a ``datasets.Dataset`` of the ``structure`` config, or a sequence of
            rows): true scores from ``mos``, truth masks from ``shapes`` and ``image``.
        min_votes: annotators needed for a truth pixel (1 = union of annotators).
        threshold: binarise each prediction's heatmap at this level in [0, 1]. ``None``: use each
            prediction's ``mask`` when it has one, else its heatmap at the baseline's 40/255.
        min_area: regions of a binarised heatmap with fewer pixels are removed (the model's default).
        truth: the split's :func:`truth_masks` when already drawn (e.g. for repeated evaluations).
        weights: ``(w_f1, w_plcc, w_srcc)`` of the Final score.
        **metric_kwargs: passed to :func:`~evalmuse_models.metrics.structure_final_score` (area and IoU
            limits, bootstrap ``n_resamples``, ``progress``).

    Returns:
        ``{"precision", "recall", "f1", "giou", "plcc", "srcc", "final_score"}`` as floats. The score is
        total for untrained or degenerate models: no predicted region in the whole set (the released
        script divides by zero) gives precision = recall = F1 = 0 and ``"no_predicted_regions": True``;
        constant predicted scores give PLCC = SRCC = 0 and ``"constant_scores": True``. Other bad input
        (lengths, NaN scores, a split without labels) raises :class:`UserInputError`.
    """
    names = _image_names(split)
    references = _reference_scores(split, names)
    ordered = _in_split_order(predictions, names, len(references))
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise UserInputError(f"threshold must be a heatmap level in [0, 1], got {threshold}")
    scores, masks = _scores_and_masks(ordered, names, threshold, min_area)
    truth = truth_masks(split, min_votes=min_votes) if truth is None else list(truth)
    if len(truth) != len(references):
        raise UserInputError(f"{len(truth)} truth masks for a split of {len(references)} images")
    return _final_score(scores, references, masks, truth, names, tuple(weights), **metric_kwargs)


def search_threshold(
    predictions: Sequence[Any] | Mapping[str, Any],
    split,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_votes: int = 1,
    min_area: int = MIN_REGION_AREA,
    truth: Sequence[np.ndarray] | None = None,
    **metric_kwargs: Any,
) -> tuple[float, list[dict[str, Any]]]:
    """The heatmap threshold that maximises the official Final score of ``predictions`` on ``split``.

    Args:
        predictions: one prediction with a ``heatmap`` per image (see :func:`evaluate_structure`).
        split, min_votes, min_area, truth, metric_kwargs: as for :func:`evaluate_structure`.
        thresholds: candidate levels in [0, 1] (default 10/255 ... 240/255 in steps of 10/255); the
            baseline's 40/255 is always tried.

    Returns:
        ``(best_threshold, table)``: ``table`` holds one row per candidate, ``{"threshold", **metrics}``
        (the :func:`evaluate_structure` result), in increasing order. Ties go to the candidate closest to
        the baseline's 40/255.
    """
    candidates = sorted({round(float(t), 6) for t in thresholds} | {round(BASELINE_THRESHOLD, 6)})
    bad = [t for t in candidates if not 0.0 <= t <= 1.0]
    if bad:
        raise UserInputError(f"thresholds must be heatmap levels in [0, 1], got {bad}")
    names = _image_names(split)
    ordered = _in_split_order(predictions, names, len(split))
    missing = next((i for i, p in enumerate(ordered) if _field(p, "heatmap") is None), None)
    if missing is not None:
        raise UserInputError(
            f"the threshold search binarises heatmaps, and the prediction for image "
            f"{names[missing] if names else missing} has none"
        )
    truth = truth_masks(split, min_votes=min_votes) if truth is None else list(truth)
    table = [
        {"threshold": t, **evaluate_structure(ordered, split, threshold=t, min_area=min_area, truth=truth,
                                              **metric_kwargs)}
        for t in candidates
    ]
    baseline = round(BASELINE_THRESHOLD, 6)
    best = max(table, key=lambda row: (row["final_score"], -abs(row["threshold"] - baseline)))
    return best["threshold"], table
