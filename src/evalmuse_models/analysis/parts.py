"""The parts of the official scores, recomputed cheaply on any subset of the images.

An analysis that scores many subsets of one evaluation set (bootstrap resamples, seen and unseen
generators) reads and checks the files, matches the elements and counts the structure regions once,
keeping per image only what the scores need; each subset then costs the correlations (one logistic
fit) and a few sums:

* alignment (Main Score): the submitted and true overall scores, and per image the number of
  elements and of elements judged right (both sides binarised at 0.5) -> SRCC, PLCC, ACC;
* structure (Final Score): the submitted and true scores, and per image the kept and matched
  predicted and true regions -> F1 (pooled precision and recall), PLCC, SRCC.

On the whole set the parts equal those of :func:`~evalmuse_models.metrics.alignment_main_score`
and :func:`~evalmuse_models.metrics.structure_final_score` (the same helpers compute them).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils import UserInputError

__all__ = ["TRACKS", "AlignmentParts", "StructureParts", "Track", "load_parts"]


@dataclass(frozen=True)
class Track:
    """A challenge track's score: its three parts, their official weights and the score's name."""

    name: str
    parts: tuple[str, str, str]
    labels: tuple[str, str, str]
    official_weights: tuple[float, float, float]
    score: str

    def weighted(self, parts: Mapping[str, float], weights: Sequence[float]) -> float:
        return float(sum(w * parts[p] for w, p in zip(weights, self.parts)))


TRACKS = {
    "alignment": Track("alignment", ("srcc", "plcc", "acc"), ("SRCC", "PLCC", "ACC"), (0.25, 0.25, 0.5), "main_score"),
    "structure": Track("structure", ("f1", "plcc", "srcc"), ("F1", "PLCC", "SRCC"), (0.7, 0.15, 0.15), "final_score"),
}


def _correlations(pred: np.ndarray, ref: np.ndarray, direction: str) -> tuple[float, float, bool]:
    from ..metrics._stats import is_constant, plcc_logistic, spearman

    if pred.size < 3:
        raise UserInputError(f"at least 3 images are needed for the correlations, got {pred.size}")
    if is_constant(pred) or is_constant(ref):
        raise UserInputError("constant scores: the correlations are undefined")
    plcc, fallback = plcc_logistic(pred, ref, direction)
    return spearman(pred, ref), plcc, fallback


def _indices(idx: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n) if idx is None else np.asarray(idx, dtype=np.int64)


@dataclass
class AlignmentParts:
    """Per-image statistics of an alignment submission against its truth (see the module doc)."""

    image_ids: list[str]
    predictions: np.ndarray
    references: np.ndarray
    #: per image: elements of the truth, and elements whose prediction is on the truth's side of 0.5
    elements: np.ndarray
    correct: np.ndarray
    plcc_direction: str = "official"

    track = TRACKS["alignment"]

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_arrays(
        cls,
        predictions: Sequence[float],
        references: Sequence[float],
        prediction_element_scores: Sequence[Any],
        reference_element_scores: Sequence[Any],
        *,
        image_ids: Sequence[str] | None = None,
        plcc_direction: str = "official",
        element_threshold: float = 0.5,
    ) -> AlignmentParts:
        """From the inputs of :func:`~evalmuse_models.metrics.alignment_main_score` (checked the same way)."""
        from ..metrics._stats import check_scores
        from ..metrics.alignment import _flatten_elements

        if len(predictions) != len(references):
            raise UserInputError(f"predictions has {len(predictions)} scores but references has {len(references)}")
        if plcc_direction not in ("official", "standard"):
            raise UserInputError(f"plcc_direction must be 'official' or 'standard', got {plcc_direction!r}")
        ids = list(image_ids) if image_ids is not None else [f"#{i}" for i in range(len(references))]
        pred = check_scores(predictions, "predictions", image_ids)
        ref = check_scores(references, "references", image_ids)
        el_pred, el_ref, counts, _ = _flatten_elements(prediction_element_scores, reference_element_scores, image_ids)
        right = (el_pred >= element_threshold) == (el_ref >= element_threshold)
        owner = np.repeat(np.arange(ref.size), counts)
        correct = np.bincount(owner, weights=right, minlength=ref.size)
        return cls(ids, pred, ref, counts.astype(np.int64), correct, plcc_direction)

    @classmethod
    def from_records(
        cls,
        truth: Sequence[Mapping[str, Any]],
        submission: Sequence[Mapping[str, Any]],
        *,
        truth_source: str = "truth",
        submission_source: str = "submission",
        plcc_direction: str = "official",
    ) -> AlignmentParts:
        """From ``eval.json`` / ``output.json`` records (``img_path``, ``total_score``,
        ``element_score``), paired by ``img_path`` as the released scorer pairs them (sorted)."""
        from ..metrics.io import _alignment_pairs

        truth_sorted, sub_sorted = _alignment_pairs(list(truth), list(submission), truth_source, submission_source)
        ids = [r["img_path"] for r in truth_sorted]
        try:
            return cls.from_arrays(
                [r["total_score"] for r in sub_sorted], [r["total_score"] for r in truth_sorted],
                [r["element_score"] for r in sub_sorted], [r["element_score"] for r in truth_sorted],
                image_ids=ids, plcc_direction=plcc_direction,
            )
        except UserInputError as error:
            raise UserInputError(f"{submission_source}: {error}") from None

    @classmethod
    def from_files(cls, truth: str | os.PathLike, submission: str | os.PathLike, *,
                   plcc_direction: str = "official") -> AlignmentParts:
        """From an ``eval.json`` truth and an ``output.json`` (or ``submission.zip``) submission."""
        from ..metrics import read_alignment_file

        return cls.from_records(read_alignment_file(truth), read_alignment_file(submission), truth_source=str(truth),
                                submission_source=str(submission), plcc_direction=plcc_direction)

    def parts(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """SRCC, PLCC and ACC of the images ``idx`` (all when ``None``; repeats count, as in a
        bootstrap resample). ``plcc_fallback: True`` is added when the logistic fit failed.

        Raises:
            UserInputError: fewer than 3 images, constant scores, or no element.
        """
        idx = _indices(idx, len(self))
        srcc, plcc, fallback = _correlations(self.predictions[idx], self.references[idx], self.plcc_direction)
        n = int(self.elements[idx].sum())
        if n == 0:
            raise UserInputError("no element among these images: ACC is undefined")
        out = {"srcc": srcc, "plcc": plcc, "acc": float(self.correct[idx].sum() / n)}
        if fallback:
            out["plcc_fallback"] = True
        return out


@dataclass
class StructureParts:
    """Per-image statistics of a structure submission against its truth (see the module doc)."""

    image_ids: list[str]
    predictions: np.ndarray
    references: np.ndarray
    #: per image: kept predicted regions, kept true regions, matched predicted, matched true
    counts: np.ndarray

    track = TRACKS["structure"]

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_arrays(
        cls,
        predictions: Sequence[float],
        references: Sequence[float],
        prediction_masks: Sequence[np.ndarray],
        reference_masks: Sequence[np.ndarray],
        *,
        image_ids: Sequence[str] | None = None,
        iou_threshold: float = 0.1,
        progress: bool | None = None,
    ) -> StructureParts:
        """From the inputs of :func:`~evalmuse_models.metrics.structure_final_score`, with its
        official settings (512x512, the area filters) and ``iou_threshold``."""
        from tqdm.auto import tqdm

        from ..metrics._stats import check_scores, describe
        from ..metrics.structure import OFFICIAL_SIZE, _as_mask, binarize_prediction, image_region_counts

        n = len(references)
        if len(predictions) != n or len(prediction_masks) != n or len(reference_masks) != n:
            raise UserInputError(f"inputs differ in length: {len(predictions)} predictions, {n} references, "
                                 f"{len(prediction_masks)} prediction_masks, {len(reference_masks)} reference_masks")
        ids = list(image_ids) if image_ids is not None else [f"#{i}" for i in range(n)]
        pred = check_scores(predictions, "predictions", image_ids)
        ref = check_scores(references, "references", image_ids)
        counts = np.empty((n, 4), dtype=np.int64)
        show = n > 500 if progress is None else progress
        for i in tqdm(range(n), desc="structure regions", disable=not show, leave=False):
            name = describe(i, image_ids)
            truth = _as_mask(reference_masks[i], "reference_masks", name)
            if truth.shape != (OFFICIAL_SIZE, OFFICIAL_SIZE):
                raise UserInputError(f"reference_masks of image {name}: the truth mask must be "
                                     f"{OFFICIAL_SIZE}x{OFFICIAL_SIZE}, got {truth.shape}")
            binary = binarize_prediction(_as_mask(prediction_masks[i], "prediction_masks", name))
            rc = image_region_counts(binary, truth, iou_threshold=iou_threshold)
            counts[i] = (rc.n_pred, rc.n_true, rc.matched_pred, rc.matched_true)
        return cls(ids, pred, ref, counts)

    @classmethod
    def from_files(cls, truth: str | os.PathLike, submission: str | os.PathLike, *,
                   iou_threshold: float = 0.1) -> StructureParts:
        """From a ``gt.pkl`` truth and an ``output.pkl`` (or ``submission.zip``) submission; images
        the truth does not hold are ignored with a warning, as the released scorer ignores them."""
        from ..metrics import read_structure_pickle

        gt = read_structure_pickle(truth)
        sub = read_structure_pickle(submission, only=gt)
        missing = [k for k in gt if k not in sub]
        if missing:
            raise UserInputError(f"{submission}: {len(missing)} image(s) of the truth are missing from the "
                                 f"submission, e.g. {missing[:5]}")
        names = list(gt)  # the released scorer's order: the truth's
        try:
            return cls.from_arrays([sub[k]["score"] for k in names], [gt[k]["score"] for k in names],
                                   [sub[k]["pred_area"] for k in names], [gt[k]["pred_area"] for k in names],
                                   image_ids=names, iou_threshold=iou_threshold)
        except UserInputError as error:
            raise UserInputError(f"{submission}: {error}") from None

    def parts(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """F1 (precision and recall pooled over the images ``idx``), PLCC and SRCC, as the released
        scorer computes them; precision and recall are added.

        Raises:
            UserInputError: no predicted or no true region, fewer than 3 images, or constant scores.
        """
        from ..metrics.structure import NoPredictedRegionsError, region_f1

        idx = _indices(idx, len(self))
        n_pred, n_true, matched_pred, matched_true = (int(v) for v in self.counts[idx].sum(axis=0))
        if n_pred == 0:
            raise NoPredictedRegionsError("no predicted region among these images: precision is undefined")
        if n_true == 0:
            raise UserInputError("no true region among these images: recall is undefined")
        precision, recall, f1 = region_f1(n_pred, n_true, matched_pred, matched_true)
        srcc, plcc, fallback = _correlations(self.predictions[idx], self.references[idx], "standard")
        out = {"f1": f1, "plcc": plcc, "srcc": srcc, "precision": precision, "recall": recall}
        if fallback:
            out["plcc_fallback"] = True
        return out


def load_parts(track: str, truth, submission, **options) -> AlignmentParts | StructureParts:
    """:meth:`AlignmentParts.from_files` or :meth:`StructureParts.from_files` for ``track``."""
    if track == "alignment":
        return AlignmentParts.from_files(truth, submission, **options)
    if track == "structure":
        return StructureParts.from_files(truth, submission, **options)
    raise UserInputError(f"track must be 'alignment' or 'structure', got {track!r}")


def full_parts(parts: AlignmentParts | StructureParts, name: str) -> dict[str, float]:
    """The parts on every image, warning (naming ``name``) when PLCC fell back to Pearson.

    Raises:
        UserInputError: the parts are undefined (the message says why and names ``name``).
    """
    from ..metrics._stats import check_correlatable

    try:
        check_correlatable(parts.predictions, parts.references, "scores")
        values = parts.parts()
    except UserInputError as error:
        raise UserInputError(f"{name}: {error}") from None
    if values.pop("plcc_fallback", False):
        warnings.warn(f"{name}: the logistic fit did not converge; PLCC is the plain Pearson correlation",
                      stacklevel=2)
    return values
