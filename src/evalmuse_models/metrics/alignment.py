"""NTIRE 2025 track 1 (EvalMuse-40K image-text alignment): Main Score = 0.25·SRCC + 0.25·PLCC + 0.5·ACC."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.alignment import split_element_key
from ..utils import UserInputError
from ._stats import (
    _rescaled,
    bootstrap_ci,
    check_correlatable,
    check_scores,
    describe,
    fit_logistic,
    is_constant,
    kendall,
    plcc_logistic,
    spearman,
)

__all__ = ["alignment_main_score", "element_category"]

def element_category(key: str) -> str:
    """The category of an element key ``"<phrase> (<category>)"``: the text inside the LAST
    parentheses (``"other"`` when the key has none).

    >>> element_category("pig giants (animal)")
    'animal'
    >>> element_category("cat (with hat) (object)")
    'object'
    """
    try:
        return split_element_key(key)[1]
    except ValueError:
        return "other"


def _flatten_elements(
    predictions: Sequence[Any],
    references: Sequence[Any],
    image_ids: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]] | None]:
    """Pool per-image element scores. Returns ``(pred, ref, counts, keys)``; ``keys`` holds each
    image's element keys when the references are dicts (aligned by key), else ``None``."""
    if len(predictions) != len(references):
        raise UserInputError(
            f"element scores: {len(predictions)} prediction lists but {len(references)} reference lists; "
            "give one list per image"
        )
    flat_pred: list[float] = []
    flat_ref: list[float] = []
    counts = np.empty(len(references), dtype=np.int64)
    keys: list[list[str]] | None = [] if references and isinstance(references[0], Mapping) else None
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        if isinstance(ref, Mapping):
            if not isinstance(pred, Mapping):
                raise UserInputError(
                    f"element scores of image {describe(i, image_ids)}: the reference is a dict keyed by element, "
                    "so the prediction must be one too"
                )
            missing = [k for k in ref if k not in pred]
            if missing:
                raise UserInputError(
                    f"element scores of image {describe(i, image_ids)}: missing element key(s) {missing}; "
                    "the submission must score every element of the truth"
                )
            ref_values = list(ref.values())
            pred_values = [pred[k] for k in ref]
            if keys is not None:
                keys.append(list(ref))
        else:
            if isinstance(pred, Mapping):
                raise UserInputError(
                    f"element scores of image {describe(i, image_ids)}: the prediction is a dict but the reference "
                    "is a list; give both as lists aligned with the truth's elements, or both as dicts"
                )
            ref_values, pred_values = list(ref), list(pred)
            if len(ref_values) != len(pred_values):
                raise UserInputError(
                    f"element scores of image {describe(i, image_ids)}: {len(pred_values)} predicted but "
                    f"{len(ref_values)} reference elements; the lists must be aligned with the truth's elements"
                )
            if keys is not None:
                raise UserInputError(f"element scores of image {describe(i, image_ids)}: mix of dicts and lists")
        counts[i] = len(ref_values)
        flat_pred.extend(pred_values)
        flat_ref.extend(ref_values)
    pred_arr = _element_array(flat_pred, counts, image_ids, "prediction_element_scores", keys)
    ref_arr = _element_array(flat_ref, counts, image_ids, "reference_element_scores", keys)
    return pred_arr, ref_arr, counts, keys


def _element_array(values, counts, image_ids, name, keys) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1:
        # Find the culprit for the message.
        for j, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise _element_error(name, j, v, counts, image_ids, keys, "is not a number") from None
        raise UserInputError(f"{name}: could not read the element scores as numbers")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        j = int(bad[0])
        raise _element_error(
            name, j, float(arr[j]), counts, image_ids, keys,
            "must be a finite number (the released scorer would silently count NaN as absent)",
        )
    outside = np.flatnonzero((arr < 0) | (arr > 1))
    if outside.size:
        # The released scorer only thresholds (>= 0.5), so such scores are scored, not refused.
        j = int(outside[0])
        where = _element_error(name, j, float(arr[j]), counts, image_ids, keys, "is outside [0, 1]")
        warnings.warn(
            f"{where} ({outside.size} element score(s) outside [0, 1] in total); they are scored as the released "
            "scorer does, by thresholding at the element threshold",
            stacklevel=4,
        )
    return arr


def _element_error(name, flat_index, value, counts, image_ids, keys, what) -> UserInputError:
    bounds = np.cumsum(counts)
    image = int(np.searchsorted(bounds, flat_index, side="right"))
    within = flat_index - (int(bounds[image - 1]) if image else 0)
    element = repr(keys[image][within]) if keys is not None else f"#{within}"
    return UserInputError(
        f"{name}: element {element} of image {describe(image, image_ids)} is {value!r}; it {what}"
    )


def _correlations(pred: np.ndarray, ref: np.ndarray, plcc_direction: str) -> tuple[float, float, bool]:
    plcc, fallback = plcc_logistic(pred, ref, plcc_direction)
    return spearman(pred, ref), plcc, fallback


def alignment_main_score(
    predictions: Sequence[float],
    references: Sequence[float],
    prediction_element_scores: Sequence[Sequence[float] | Mapping[str, float]] | None = None,
    reference_element_scores: Sequence[Sequence[float] | Mapping[str, float]] | None = None,
    *,
    plcc_direction: str = "official",
    element_threshold: float = 0.5,
    weights: tuple[float, float, float] = (0.25, 0.25, 0.5),
    element_categories: Sequence[Sequence[str]] | bool | None = None,
    generators: Sequence[str] | None = None,
    n_resamples: int = 0,
    seed: int = 0,
    confidence_level: float = 0.95,
    image_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The NTIRE 2025 alignment-track Main Score, as the released scorer computes it.

    Args:
        predictions: submitted overall alignment score per image (any scale).
        references: true overall score per image (mean rating, 1-5), in the same order.
        prediction_element_scores: per image, the submitted element probabilities: a list aligned
            with the truth's elements, or a dict ``{element key: probability}`` (then every key of
            the reference dict must be present; extra keys are ignored).
        reference_element_scores: per image, the true element scores (mean votes, 0-1), list or dict.
        plcc_direction: ``"official"`` reproduces the released script, which fits the logistic
            from the TRUE scores to the SUBMITTED ones and returns Pearson(submitted, f(true));
            ``"standard"`` fits submitted -> true (the Codalab demo and the usual VQEG protocol).
        element_threshold: both truth and prediction are binarised with ``>= element_threshold``.
        weights: ``(w_srcc, w_plcc, w_acc)`` of the Main Score.
        element_categories: per image, the category of each reference element (aligned lists),
            or ``True`` to read it from dict keys ``"<phrase> (<category>)"``; adds
            ``per_category_acc`` and ``per_category_count``.
        generators: per image, the generator's name; adds ``per_generator`` (``n_images``,
            ``srcc``, ``plcc``, ``acc``, ``main_score``; a correlation is ``None`` where it is
            undefined: fewer than 3 images, or constant scores).
        n_resamples: when > 0, adds ``ci``: a percentile bootstrap interval over images for every
            score (``{key: [low, high]}``), drawn with ``seed`` at ``confidence_level``.
        image_ids: names used in error messages (e.g. the ``img_path`` of each image).

    Returns:
        ``{"srcc", "plcc", "acc", "main_score", "krcc", "rmse"}`` as Python floats (``acc`` and
        ``main_score`` only when element scores are given). ``rmse`` is the root-mean-square error
        of the standard-direction logistic mapping of the predictions against the truth. When the
        logistic fit fails, PLCC falls back to the plain Pearson correlation and the output holds
        ``"plcc_fallback": True`` (a warning is also issued).

    Raises:
        UserInputError: lengths differ, a score is NaN/inf, an element key is missing, or the
            predictions (or the truth) are constant. Element scores outside [0, 1] are scored (the
            released scorer only thresholds them) with a warning.

    Example:
        >>> r = alignment_main_score([1.0, 2.0, 3.5, 3.0], [1.3, 2.0, 4.7, 3.3],
        ...                          [[0.9, 0.2], [0.7], [0.1], []], [[1.0, 0.0], [2 / 3], [1 / 3], []])
        >>> round(r["srcc"], 4), r["acc"], round(r["main_score"], 4)
        (1.0, 1.0, 1.0)
    """
    if len(predictions) != len(references):
        raise UserInputError(
            f"predictions has {len(predictions)} scores but references has {len(references)}; give one per image"
        )
    if image_ids is not None and len(image_ids) != len(references):
        raise UserInputError(f"image_ids has {len(image_ids)} names but there are {len(references)} images")
    if plcc_direction not in ("official", "standard"):
        raise UserInputError(f"plcc_direction must be 'official' or 'standard', got {plcc_direction!r}")
    if len(weights) != 3:
        raise UserInputError(f"weights must be (w_srcc, w_plcc, w_acc), got {weights!r}")
    pred = check_scores(predictions, "predictions", image_ids)
    ref = check_scores(references, "references", image_ids)
    check_correlatable(pred, ref, "overall scores")

    has_elements = prediction_element_scores is not None or reference_element_scores is not None
    if has_elements:
        if prediction_element_scores is None or reference_element_scores is None:
            raise UserInputError("give both prediction_element_scores and reference_element_scores, or neither")
        if len(reference_element_scores) != ref.size:
            raise UserInputError(
                f"reference_element_scores has {len(reference_element_scores)} entries for {ref.size} images"
            )
        el_pred, el_ref, counts, keys = _flatten_elements(
            prediction_element_scores, reference_element_scores, image_ids
        )
        if counts.sum() == 0:
            raise UserInputError("no element in the whole set: ACC is undefined")
        correct = (el_pred >= element_threshold) == (el_ref >= element_threshold)
        owner = np.repeat(np.arange(ref.size), counts)
        correct_per_image = np.bincount(owner, weights=correct, minlength=ref.size)
    elif element_categories is not None:
        raise UserInputError("element_categories needs the element scores")

    w_srcc, w_plcc, w_acc = (float(w) for w in weights)

    def scores(idx: np.ndarray | None) -> dict[str, float]:
        p = pred if idx is None else pred[idx]
        r = ref if idx is None else ref[idx]
        if is_constant(p) or is_constant(r):
            raise UserInputError("constant resample")
        srcc, plcc, fallback = _correlations(p, r, plcc_direction)
        out = {"srcc": srcc, "plcc": plcc}
        if has_elements:
            n = counts.sum() if idx is None else counts[idx].sum()
            if n == 0:
                raise UserInputError("no element in the resample")
            c = correct_per_image.sum() if idx is None else correct_per_image[idx].sum()
            out["acc"] = float(c / n)
            out["main_score"] = w_srcc * srcc + w_plcc * plcc + w_acc * out["acc"]
        out["_fallback"] = fallback
        return out

    result = scores(None)
    fallback = result.pop("_fallback")
    result["krcc"] = kendall(pred, ref)
    std_fit = fit_logistic(pred, ref)
    result["rmse"] = float(np.sqrt(np.mean((std_fit.fitted - ref) ** 2))) if not std_fit.fallback else _linear_rmse(
        pred, ref
    )
    result = {k: float(v) for k, v in result.items()}
    if fallback:
        warnings.warn("the logistic fit did not converge; PLCC is the plain Pearson correlation", stacklevel=2)
        result["plcc_fallback"] = True

    if element_categories is not None:
        result.update(_per_category(element_categories, keys, counts, correct, image_ids))
    if generators is not None:
        result["per_generator"] = _per_generator(
            generators, pred, ref, counts if has_elements else None,
            correct_per_image if has_elements else None, plcc_direction, (w_srcc, w_plcc, w_acc),
        )
    if n_resamples:
        if n_resamples < 0:
            raise UserInputError(f"n_resamples must be >= 0, got {n_resamples}")
        keys_ci = ["srcc", "plcc"] + (["acc", "main_score"] if has_elements else [])
        result["ci"] = bootstrap_ci(scores, ref.size, keys_ci, n_resamples, seed, confidence_level)
    return result


def _linear_rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    pred = _rescaled(pred)  # the fitted line's values do not depend on the scale of pred
    slope, intercept = np.polyfit(pred, ref, 1)
    return float(np.sqrt(np.mean((slope * pred + intercept - ref) ** 2)))


def _per_category(element_categories, keys, counts, correct, image_ids) -> dict[str, Any]:
    if element_categories is True:
        if keys is None:
            raise UserInputError(
                "element_categories=True reads the categories from element keys: give the element scores as dicts"
            )
        cats = [element_category(k) for image_keys in keys for k in image_keys]
    else:
        if len(element_categories) != counts.size:
            raise UserInputError(
                f"element_categories has {len(element_categories)} entries for {counts.size} images"
            )
        cats = []
        for i, (image_cats, n) in enumerate(zip(element_categories, counts)):
            if len(image_cats) != n:
                raise UserInputError(
                    f"element_categories of image {describe(i, image_ids)}: {len(image_cats)} categories for "
                    f"{n} elements"
                )
            cats.extend(str(c) for c in image_cats)
    names, inverse = np.unique(np.asarray(cats, dtype=object).astype(str), return_inverse=True)
    hits = np.bincount(inverse, weights=correct, minlength=names.size)
    totals = np.bincount(inverse, minlength=names.size)
    return {
        "per_category_acc": {str(n): float(h / t) for n, h, t in zip(names, hits, totals)},
        "per_category_count": {str(n): int(t) for n, t in zip(names, totals)},
    }


def _per_generator(generators, pred, ref, counts, correct_per_image, direction, weights) -> dict[str, Any]:
    if len(generators) != pred.size:
        raise UserInputError(f"generators has {len(generators)} entries for {pred.size} images")
    gens = np.asarray([str(g) for g in generators])
    out: dict[str, Any] = {}
    for name in np.unique(gens):
        idx = np.flatnonzero(gens == name)
        p, r = pred[idx], ref[idx]
        entry: dict[str, Any] = {"n_images": int(idx.size), "srcc": None, "plcc": None}
        if idx.size >= 3 and not is_constant(p) and not is_constant(r):
            srcc, plcc, fallback = _correlations(p, r, direction)
            entry["srcc"], entry["plcc"] = srcc, plcc
            if fallback:
                entry["plcc_fallback"] = True
        if counts is not None:
            n = int(counts[idx].sum())
            entry["acc"] = float(correct_per_image[idx].sum() / n) if n else None
            entry["main_score"] = (
                weights[0] * entry["srcc"] + weights[1] * entry["plcc"] + weights[2] * entry["acc"]
                if entry["srcc"] is not None and entry["acc"] is not None
                else None
            )
        out[str(name)] = entry
    return out
