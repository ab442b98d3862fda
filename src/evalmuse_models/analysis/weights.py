"""How much does the ranking of systems depend on the weights of the official score?

The Main Score (alignment) is ``0.25·SRCC + 0.25·PLCC + 0.5·ACC`` and the Final Score (structure)
``0.7·F1 + 0.15·PLCC + 0.15·SRCC``: a weighted sum of three parts. The parts of each system are
computed once (the expensive logistic fit runs once per system), then the systems are ranked under
every weighting of a grid over the simplex of weights (step 0.05: 231 weightings) and under named
alternatives (equal thirds, correlations only, the third part only).

* :func:`weight_sensitivity`: from the parts of each system: the ranking under every weighting,
  its Kendall tau against the official ranking, and the rank flips: each pair of systems whose
  order differs from the official one somewhere on the simplex, with the weightings where it does
  and the nearest weighting (to the official one) where the two tie;
* :func:`bootstrap_ranks`: how sure the official ranking is: images are resampled with
  replacement (the same resample for every system) and the systems ranked under the official
  weights, giving each system's probability of each rank;
* :func:`analyze_weights`: both, from a truth file and several submissions (``evalmuse analyze
  weights``).

Ties keep the official order (the official ranking breaks its own ties by name), so only a strict
reversal counts as a flip.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..utils import UserInputError
from .parts import TRACKS, AlignmentParts, StructureParts, Track, full_parts, load_parts

__all__ = [
    "NAMED_WEIGHTINGS",
    "analyze_weights",
    "bootstrap_ranks",
    "nearest_tie",
    "rank_systems",
    "simplex_grid",
    "weight_sensitivity",
]

#: Alternatives to the official weights, per track (in the track's part order).
NAMED_WEIGHTINGS: dict[str, dict[str, tuple[float, float, float]]] = {
    "alignment": {
        "official": TRACKS["alignment"].official_weights,
        "equal_thirds": (1 / 3, 1 / 3, 1 / 3),
        "correlation_only": (0.5, 0.5, 0.0),
        "acc_only": (0.0, 0.0, 1.0),
    },
    "structure": {
        "official": TRACKS["structure"].official_weights,
        "equal_thirds": (1 / 3, 1 / 3, 1 / 3),
        "correlation_only": (0.0, 0.5, 0.5),
        "f1_only": (1.0, 0.0, 0.0),
    },
}
#: Score differences smaller than this are ties.
TIE_TOLERANCE = 1e-12


def simplex_grid(step: float = 0.05) -> np.ndarray:
    """Every weighting ``(w1, w2, w3)`` with ``w_i = k_i * step``, ``k_i >= 0``, summing to 1, as a
    ``(m, 3)`` array, first weight varying slowest. ``1 / step`` must be a whole number; step 0.05
    gives 231 weightings.

    >>> simplex_grid(0.5).tolist()
    [[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    """
    divisions = round(1 / step) if step > 0 else 0
    if divisions < 1 or not math.isclose(divisions * step, 1.0, abs_tol=1e-9):
        raise UserInputError(f"the grid step must divide 1 into whole steps (0.05, 0.1, 0.25 ...), got {step}")
    points = [(i, j, divisions - i - j) for i in range(divisions + 1) for j in range(divisions + 1 - i)]
    return np.round(np.asarray(points, dtype=np.float64) / divisions, 12)


def rank_systems(scores: Mapping[str, float], order: Sequence[str]) -> list[str]:
    """The systems from best to worst score; ties (within :data:`TIE_TOLERANCE`) keep ``order``."""
    # Insertion by strict comparison keeps ties in the given order.
    result: list[str] = []
    for name in order:
        at = len(result)
        while at > 0 and scores[name] > scores[result[at - 1]] + TIE_TOLERANCE:
            at -= 1
        result.insert(at, name)
    return result


def _official_ranking(scores: Mapping[str, float]) -> list[str]:
    by_name = sorted(scores)
    return rank_systems(scores, by_name)


def _kendall_tau(official: Sequence[str], ranking: Sequence[str]) -> float:
    from ..metrics._stats import kendall

    return kendall(np.arange(len(official)), np.asarray([ranking.index(name) for name in official]))


def nearest_tie(delta: Sequence[float], weights: Sequence[float]) -> np.ndarray | None:
    """The weighting on the simplex closest (Euclidean) to ``weights`` where two systems whose parts
    differ by ``delta`` tie (``w · delta = 0``), or ``None`` when they tie nowhere on the simplex
    (every part favours the same one) or everywhere (``delta`` is zero)."""
    d = np.asarray(delta, dtype=np.float64)
    w0 = np.asarray(weights, dtype=np.float64)
    if not (d.min() < -TIE_TOLERANCE and d.max() > TIE_TOLERANCE):
        return None
    ones = np.ones(3)
    # The tie line {w : sum w = 1, w . d = 0}: its point closest to w0, then its direction.
    a = np.stack([ones, d])
    closest = w0 - a.T @ np.linalg.solve(a @ a.T, a @ w0 - np.array([1.0, 0.0]))
    direction = np.cross(ones, d)
    # Keep w = closest + t * direction inside the simplex (w >= 0): an interval of t.
    lo, hi = -np.inf, np.inf
    for c, v in zip(closest, direction):
        if abs(v) < 1e-15:
            continue
        bound = -c / v
        if v > 0:
            lo = max(lo, bound)
        else:
            hi = min(hi, bound)
    t = min(max(0.0, lo), hi)
    point = np.clip(closest + t * direction, 0.0, None)
    return point / point.sum()


def _weights_dict(track: Track, weights: Sequence[float]) -> dict[str, float]:
    return {part: round(float(w), 12) for part, w in zip(track.parts, weights)}


def _check_systems(systems: Mapping[str, Mapping[str, float]], track: Track) -> dict[str, np.ndarray]:
    if len(systems) < 2:
        raise UserInputError(f"a ranking needs at least 2 systems, got {len(systems)}")
    vectors = {}
    for name, parts in systems.items():
        missing = [p for p in track.parts if p not in parts]
        if missing:
            raise UserInputError(f"system {name!r}: missing part(s) {', '.join(missing)} of the {track.name} score")
        values = np.asarray([parts[p] for p in track.parts], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise UserInputError(f"system {name!r}: every part must be a finite number, got {dict(parts)}")
        vectors[str(name)] = values
    return vectors


def weight_sensitivity(
    systems: Mapping[str, Mapping[str, float]],
    *,
    track: str = "alignment",
    step: float = 0.05,
    weightings: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Rank ``systems`` under every weighting of the simplex grid and under named weightings.

    Args:
        systems: ``{name: {part: value}}`` with the track's three parts (alignment: ``srcc``,
            ``plcc``, ``acc``; structure: ``f1``, ``plcc``, ``srcc``).
        track: ``"alignment"`` or ``"structure"``.
        step: the grid step over the simplex (0.05: 231 weightings).
        weightings: named weightings ``{name: (w1, w2, w3)}`` in the track's part order (default:
            :data:`NAMED_WEIGHTINGS`; ``"official"`` is always included).

    Returns:
        A JSON-ready dict: ``track``, ``parts``, ``official_weights``, ``systems`` (the parts and
        the official score of each), ``official_ranking``, ``weightings`` (each ``{"name"`` (None
        for a grid point), ``"weights"``, ``"scores"``, ``"ranking"``, ``"kendall_tau"}``: the named
        ones first, then the grid), ``grid`` (``step``, ``points``, ``official_ranking_holds``: how
        many grid weightings keep the official ranking, ``winners``: how many each system tops,
        ``mean_kendall_tau``, ``min_kendall_tau``) and ``rank_flips`` (see
        :func:`_rank_flips`).
    """
    if track not in TRACKS:
        raise UserInputError(f"track must be 'alignment' or 'structure', got {track!r}")
    spec = TRACKS[track]
    vectors = _check_systems(systems, spec)
    w0 = np.asarray(spec.official_weights)
    official_scores = {name: float(v @ w0) for name, v in vectors.items()}
    official = _official_ranking(official_scores)
    named = dict(NAMED_WEIGHTINGS[track] if weightings is None else weightings)
    named.setdefault("official", spec.official_weights)
    named = {"official": named.pop("official"), **named}
    for name, w in named.items():
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (3,) or np.any(w < 0) or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
            raise UserInputError(f"weighting {name!r}: expected three non-negative weights summing to 1, "
                                 f"got {w.tolist()}")
    grid = simplex_grid(step)

    names = list(official)
    matrix = np.stack([vectors[n] for n in names])  # systems x parts

    def evaluate(weights: np.ndarray, label: str | None) -> dict[str, Any]:
        scores = dict(zip(names, (matrix @ weights).tolist()))
        ranking = rank_systems(scores, official)
        return {"name": label, "weights": _weights_dict(spec, weights), "scores": scores, "ranking": ranking,
                "kendall_tau": _kendall_tau(official, ranking)}

    named_rows = [evaluate(np.asarray(w, dtype=np.float64), label) for label, w in named.items()]
    grid_rows = [evaluate(w, None) for w in grid]
    taus = np.asarray([row["kendall_tau"] for row in grid_rows])
    winners = {name: 0 for name in names}
    for row in grid_rows:
        winners[row["ranking"][0]] += 1
    return {
        "analysis": "weights",
        "track": track,
        "parts": list(spec.parts),
        "part_labels": list(spec.labels),
        "score": spec.score,
        "official_weights": _weights_dict(spec, spec.official_weights),
        "systems": {name: {**{p: float(v) for p, v in zip(spec.parts, vectors[name])},
                           spec.score: official_scores[name]} for name in names},
        "official_ranking": official,
        "weightings": named_rows + grid_rows,
        "grid": {
            "step": step,
            "points": len(grid_rows),
            "official_ranking_holds": sum(row["ranking"] == official for row in grid_rows),
            "winners": winners,
            "mean_kendall_tau": float(taus.mean()),
            "min_kendall_tau": float(taus.min()),
        },
        "rank_flips": _rank_flips(official, vectors, spec, grid, named),
    }


def _rank_flips(official: list[str], vectors: Mapping[str, np.ndarray], spec: Track, grid: np.ndarray,
                named: Mapping[str, Sequence[float]]) -> list[dict[str, Any]]:
    """Each pair (``ahead`` above ``behind`` in the official ranking) that some weighting of the
    simplex reverses: the official margin, the grid weightings and named weightings where
    ``behind`` scores strictly higher (``grid_share``: their share of the grid), and the nearest
    weighting to the official one where the two tie (``nearest_tie``: ``weights`` and the Euclidean
    ``distance``)."""
    w0 = np.asarray(spec.official_weights)
    flips = []
    for i, ahead in enumerate(official):
        for behind in official[i + 1:]:
            delta = vectors[ahead] - vectors[behind]
            if not delta.min() < -TIE_TOLERANCE:
                continue  # every part favours `ahead` (or ties): no weighting reverses them
            reversed_grid = grid[grid @ delta < -TIE_TOLERANCE]
            tie = nearest_tie(delta, w0)
            flips.append({
                "ahead": ahead,
                "behind": behind,
                "official_margin": float(delta @ w0),
                "part_differences": _weights_dict(spec, delta),
                "grid_share": len(reversed_grid) / len(grid),
                "grid_weights": [_weights_dict(spec, w) for w in reversed_grid],
                "named": [label for label, w in named.items() if np.asarray(w) @ delta < -TIE_TOLERANCE],
                "nearest_tie": None if tie is None else {
                    "weights": _weights_dict(spec, tie), "distance": float(np.linalg.norm(tie - w0))},
            })
    return flips


def bootstrap_ranks(
    systems: Mapping[str, AlignmentParts | StructureParts],
    *,
    order: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Each system's probability of each rank under the official weights, over bootstrap resamples
    of the images (one resample, drawn as :func:`~evalmuse_models.metrics._stats.bootstrap_ci`
    draws them, scores every system: the comparison is paired).

    Args:
        systems: per-image statistics of each system on the SAME truth
            (:class:`~evalmuse_models.analysis.AlignmentParts` / ``StructureParts``).
        order: the official ranking (ties in a resample keep it).
        n_resamples, seed, confidence_level: the bootstrap.

    Returns:
        ``{"systems": {name: {"rank_probabilities": [P(rank 1), P(rank 2), ...], "score_ci": [low,
        high]}}, "n_resamples", "valid_resamples", "seed", "confidence_level"}``. Resamples on which
        a part of some system is undefined (e.g. constant scores) are left out (``valid_resamples``).
    """
    from tqdm.auto import tqdm

    if n_resamples < 1:
        raise UserInputError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence_level < 1:
        raise UserInputError(f"confidence_level must be in (0, 1), got {confidence_level}")
    names = list(order)
    first = systems[names[0]]
    for name in names[1:]:
        if systems[name].image_ids != first.image_ids:
            raise UserInputError(f"system {name!r} is scored on other images than {names[0]!r}; the bootstrap "
                                 "pairs the systems image by image, so give every submission the same truth")
    spec = first.track
    n = len(first)
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    samples: list[list[float]] = [[] for _ in names]
    show = n_resamples >= 50 if progress is None else progress
    for _ in tqdm(range(n_resamples), desc="bootstrap", disable=not show, leave=False):
        idx = rng.integers(0, n, size=n)
        try:
            scores = {name: spec.weighted(systems[name].parts(idx), spec.official_weights) for name in names}
        except UserInputError:
            continue
        for rank, name in enumerate(rank_systems(scores, names)):
            counts[names.index(name), rank] += 1
        for i, name in enumerate(names):
            samples[i].append(scores[name])
    valid = int(counts[0].sum())
    if valid == 0:
        raise UserInputError(f"bootstrap: a score is undefined on every one of the {n_resamples} resamples; use more "
                             "images")
    alpha = (1 - confidence_level) / 2
    return {
        "systems": {
            name: {"rank_probabilities": (counts[i] / valid).tolist(),
                   "score_ci": np.quantile(np.asarray(samples[i]), [alpha, 1 - alpha]).tolist()}
            for i, name in enumerate(names)
        },
        "n_resamples": n_resamples,
        "valid_resamples": valid,
        "seed": seed,
        "confidence_level": confidence_level,
    }


def detect_track(truth: str | os.PathLike) -> str:
    """``"alignment"`` for a ``.json`` truth, ``"structure"`` for a ``.pkl`` one."""
    suffix = os.path.splitext(str(truth))[1].lower()
    if suffix == ".json":
        return "alignment"
    if suffix == ".pkl":
        return "structure"
    raise UserInputError(f"{truth}: cannot tell the track from the file name (eval.json: alignment, gt.pkl: "
                         "structure); give the track (--track)")


def analyze_weights(
    truth: str | os.PathLike,
    submissions: Mapping[str, str | os.PathLike],
    *,
    track: str | None = None,
    step: float = 0.05,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    plcc_direction: str = "official",
    iou_threshold: float = 0.1,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Weight sensitivity and rank stability of several submissions scored against one truth.

    Args:
        truth: ``eval.json`` (alignment) or ``gt.pkl`` (structure).
        submissions: ``{system name: output.json / output.pkl / submission.zip}``, at least two.
        track: default: from the truth's extension.
        step: the simplex grid step.
        n_resamples: bootstrap resamples for the rank probabilities (0: none).
        plcc_direction: alignment PLCC (``"official"``: the released script's fit direction).
        iou_threshold: structure region match threshold.

    Returns:
        :func:`weight_sensitivity`'s dict, plus ``truth``, ``submissions`` and (when
        ``n_resamples > 0``) ``bootstrap``: ``{name: {"rank_probabilities", "score_ci"}}`` with the
        settings in ``bootstrap_settings``.
    """
    track = track or detect_track(truth)
    if track not in TRACKS:
        raise UserInputError(f"track must be 'alignment' or 'structure', got {track!r}")
    if len(submissions) < 2:
        raise UserInputError(f"give at least 2 submissions to rank, got {len(submissions)}")
    if n_resamples < 0:
        raise UserInputError(f"n_resamples must be >= 0, got {n_resamples}")
    options = {"plcc_direction": plcc_direction} if track == "alignment" else {"iou_threshold": iou_threshold}
    per_image = {name: load_parts(track, truth, path, **options) for name, path in submissions.items()}
    systems = {name: full_parts(parts, name) for name, parts in per_image.items()}
    result = weight_sensitivity(systems, track=track, step=step)
    result["truth"] = str(truth)
    result["submissions"] = {name: str(path) for name, path in submissions.items()}
    result["num_images"] = len(next(iter(per_image.values())))
    if n_resamples:
        boot = bootstrap_ranks(per_image, order=result["official_ranking"], n_resamples=n_resamples, seed=seed,
                               confidence_level=confidence_level, progress=progress)
        result["bootstrap"] = boot.pop("systems")
        result["bootstrap_settings"] = boot
    return result
