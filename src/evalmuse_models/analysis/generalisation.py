"""The generalisation gap: how much worse an alignment evaluator does on generators it never saw.

The images are split into groups by their :class:`~evalmuse_models.data.splits.HoldoutManifest`
subset (``prepare-data --holdout-generators`` writes it):

* ``seen``: images of generators of the training split;
* ``unseen``: images of the held-out generators (the ``test_unseen`` split), and within them
  ``unseen_prompt_seen`` (their prompt is in the training split, drawn by another generator) and
  ``unseen_prompt_unseen``.

Each group gets the Main Score and its parts; the gaps are ``seen − unseen`` (the generalisation
gap) and ``unseen_prompt_seen − unseen_prompt_unseen`` (what having seen the prompt is worth).
Confidence intervals are percentile bootstrap intervals over images
(:func:`~evalmuse_models.metrics._stats.bootstrap_ci`): the pooled images are resampled together,
every group and gap recomputed on each resample (so a group's size varies a little from one
resample to the next).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.splits import SEEN, UNSEEN_PROMPT_SEEN, UNSEEN_PROMPT_UNSEEN, HoldoutManifest, read_holdout_manifest
from ..utils import UserInputError
from .parts import AlignmentParts

__all__ = ["GAPS", "GROUPS", "format_generalisation", "generalisation_gap", "generalisation_gap_files"]

#: group -> the image subsets it pools
GROUPS: dict[str, tuple[str, ...]] = {
    "seen": (SEEN,),
    "unseen": (UNSEEN_PROMPT_SEEN, UNSEEN_PROMPT_UNSEEN),
    UNSEEN_PROMPT_SEEN: (UNSEEN_PROMPT_SEEN,),
    UNSEEN_PROMPT_UNSEEN: (UNSEEN_PROMPT_UNSEEN,),
}
#: gap -> (group, group it is measured against): value = first − second
GAPS: dict[str, tuple[str, str]] = {
    "generator": ("seen", "unseen"),
    "prompt": (UNSEEN_PROMPT_SEEN, UNSEEN_PROMPT_UNSEEN),
}
_LABELS = {
    "seen": "seen generators",
    "unseen": "unseen generators",
    UNSEEN_PROMPT_SEEN: "unseen, prompt seen",
    UNSEEN_PROMPT_UNSEEN: "unseen, prompt unseen",
}


def _scores(parts: AlignmentParts, idx: np.ndarray) -> dict[str, float]:
    values = parts.parts(idx)
    values.pop("plcc_fallback", None)
    values[parts.track.score] = parts.track.weighted(values, parts.track.official_weights)
    return values


def generalisation_gap(
    parts: AlignmentParts,
    subsets: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    holdout_generators: Sequence[str] = (),
) -> dict[str, Any]:
    """Scores of the seen and unseen groups and the gaps between them.

    Args:
        parts: per-image statistics of a submission against its truth
            (:meth:`AlignmentParts.from_files` / ``from_records`` / ``from_arrays``).
        subsets: per image (in ``parts.image_ids`` order), its subset: ``"seen"``,
            ``"unseen_prompt_seen"`` or ``"unseen_prompt_unseen"`` (``HoldoutManifest.subset``).
        n_resamples, seed, confidence_level: the bootstrap (0 resamples: no intervals).
        holdout_generators: recorded in the result.

    Returns:
        ``{"analysis": "generalisation", "track", "score", "parts", "holdout_generators",
        "num_images", "groups": {group: {"n_images", "srcc", "plcc", "acc", "main_score", "ci"}},
        "gaps": {"generator" | "prompt": {"of", "minus", "values": {key: float}, "ci"}},
        "bootstrap": {...settings}}``. A group's scores are ``None`` (with ``"undefined"``, the
        reason) where they cannot be computed (fewer than 3 images, constant scores, no image), and
        so are the gaps that need them.
    """
    from ..metrics._stats import bootstrap_ci

    if len(subsets) != len(parts):
        raise UserInputError(f"subsets has {len(subsets)} entries for {len(parts)} images")
    known = {s for members in GROUPS.values() for s in members}
    labels = np.asarray([str(s) for s in subsets])
    bad = sorted(set(labels.tolist()) - known)
    if bad:
        raise UserInputError(f"unknown subset(s) {bad}; expected {sorted(known)}")
    if n_resamples < 0:
        raise UserInputError(f"n_resamples must be >= 0, got {n_resamples}")
    spec = parts.track
    keys = [*spec.parts, spec.score]
    masks = {group: np.isin(labels, members) for group, members in GROUPS.items()}

    groups: dict[str, dict[str, Any]] = {}
    for group, mask in masks.items():
        entry: dict[str, Any] = {"n_images": int(mask.sum())}
        try:
            entry.update(_scores(parts, np.flatnonzero(mask)))
        except UserInputError as error:
            entry.update({key: None for key in keys}, undefined=str(error))
        groups[group] = entry
    gaps: dict[str, dict[str, Any]] = {}
    for gap, (first, second) in GAPS.items():
        a, b = groups[first], groups[second]
        gaps[gap] = {"of": first, "minus": second,
                     "values": {k: None if a[k] is None or b[k] is None else a[k] - b[k] for k in keys}}

    result = {
        "analysis": "generalisation",
        "track": spec.name,
        "score": spec.score,
        "parts": list(spec.parts),
        "part_labels": list(spec.labels),
        "holdout_generators": list(holdout_generators),
        "num_images": len(parts),
        "groups": groups,
        "gaps": gaps,
    }
    if not n_resamples:
        return result

    defined = [g for g, entry in groups.items() if "undefined" not in entry]
    wanted = [f"{g}.{k}" for g in defined for k in keys]
    wanted += [f"gap.{gap}.{k}" for gap, entry in gaps.items() for k in keys if entry["values"][k] is not None]

    def statistic(idx: np.ndarray) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        per_group = {}
        for group in defined:
            try:
                per_group[group] = _scores(parts, idx[masks[group][idx]])
            except UserInputError:
                continue
        for group, scores in per_group.items():
            values.update({f"{group}.{k}": v for k, v in scores.items() if k in keys})
        for gap, (first, second) in GAPS.items():
            if first in per_group and second in per_group:
                values.update({f"gap.{gap}.{k}": per_group[first][k] - per_group[second][k] for k in keys})
        return values

    if wanted:
        ci = bootstrap_ci(statistic, len(parts), wanted, n_resamples, seed, confidence_level)
        for key, interval in ci.items():
            head, k = key.rsplit(".", 1)
            target = gaps[head.split(".", 1)[1]] if head.startswith("gap.") else groups[head]
            target.setdefault("ci", {})[k] = interval
    result["bootstrap"] = {"n_resamples": n_resamples, "seed": seed, "confidence_level": confidence_level}
    return result


def _read_pooled(paths: Sequence[str | os.PathLike], what: str) -> list[dict[str, Any]]:
    from ..metrics import read_alignment_file

    records: list[dict[str, Any]] = []
    origin: dict[str, str] = {}
    for path in paths:
        for record in read_alignment_file(path):
            if record["img_path"] in origin:
                raise UserInputError(f"{path}: image {record['img_path']!r} is also in {origin[record['img_path']]}; "
                                     f"each {what} image must be in one file")
            origin[record["img_path"]] = str(path)
            records.append(record)
    return records


def generalisation_gap_files(
    truths: Sequence[str | os.PathLike],
    submissions: Sequence[str | os.PathLike],
    holdout: str | os.PathLike | HoldoutManifest,
    *,
    plcc_direction: str = "official",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, Any]:
    """:func:`generalisation_gap` of alignment files: the truth files (``eval.json``) are pooled,
    and so are the submissions (``output.json``); records pair by ``img_path``. Typically the
    truth of an evaluation split of the seen generators and that of ``test_unseen``, with the
    submission of each. ``holdout``: the manifest (``OUT_DIR/official/alignment/holdout.json``).

    Raises:
        UserInputError: an image in two files, a truth image without a submission (or the reverse),
            or an image of a held-out generator (by its ``img_path`` folder) that the manifest does
            not list.
    """
    from ..data import generator_from_img_path

    if not truths or not submissions:
        raise UserInputError("give at least one truth file and one submission")
    manifest = holdout if isinstance(holdout, HoldoutManifest) else read_holdout_manifest(holdout)
    truth = _read_pooled(truths, "truth")
    submission = _read_pooled(submissions, "submission")
    parts = AlignmentParts.from_records(truth, submission, truth_source=" + ".join(map(str, truths)),
                                        submission_source=" + ".join(map(str, submissions)),
                                        plcc_direction=plcc_direction)
    held = set(manifest.holdout_generators)
    stray = [p for p in parts.image_ids if p not in manifest.images and generator_from_img_path(p) in held]
    if stray:
        raise UserInputError(f"{len(stray)} image(s) of the truth are by a held-out generator but not in the holdout "
                             f"manifest (its {manifest.split} images), e.g. {stray[0]!r}; is it the manifest of this "
                             "dataset?")
    subsets = [manifest.subset(p) for p in parts.image_ids]
    result = generalisation_gap(parts, subsets, n_resamples=n_resamples, seed=seed, confidence_level=confidence_level,
                                holdout_generators=manifest.holdout_generators)
    result["truth"] = [str(p) for p in truths]
    result["submissions"] = [str(p) for p in submissions]
    return result


def format_generalisation(result: dict[str, Any]) -> str:
    """The plain-text table of a :func:`generalisation_gap` result (what ``evalmuse eval alignment
    --by seen/unseen`` prints)."""
    keys = [*result["parts"], result["score"]]
    heads = [*result["part_labels"], "Main" if result["score"] == "main_score" else "Final"]
    has_ci = "bootstrap" in result
    cell = 28 if has_ci else 9

    def fmt(value: float | None, interval: list[float] | None, signed: bool = False) -> str:
        if value is None:
            return f"{'-':>{cell}}"
        text = f"{value:+.4f}" if signed else f"{value:.4f}"
        if has_ci:
            text += f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval and signed else (
                f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else " " * 18)
        return f"{text:>{cell}}"

    width = 26
    lines = []
    generators = ", ".join(result.get("holdout_generators") or []) or "none given"
    lines.append(f"held-out generators: {generators}")
    if has_ci:
        b = result["bootstrap"]
        lines.append(f"{round(100 * b['confidence_level'])}% intervals: percentile bootstrap over images, "
                     f"{b['n_resamples']} resamples (seed {b['seed']})")
    lines.append(f"{'':<{width}}{'images':>7}" + "".join(f"{h:>{cell}}" for h in heads))
    for group, entry in result["groups"].items():
        ci = entry.get("ci", {})
        lines.append(f"{_LABELS.get(group, group):<{width}}{entry['n_images']:>7}"
                     + "".join(fmt(entry[k], ci.get(k)) for k in keys))
    for gap, entry in result["gaps"].items():
        label = "gap: seen - unseen" if gap == "generator" else "gap: prompt seen - unseen"
        ci = entry.get("ci", {})
        lines.append(f"{label:<{width}}{'':>7}" + "".join(fmt(entry["values"][k], ci.get(k), True) for k in keys))
    undefined = [(g, e["undefined"]) for g, e in result["groups"].items() if "undefined" in e]
    for group, reason in undefined:
        lines.append(f"note: {_LABELS.get(group, group)}: {reason}")
    return "\n".join(lines)
