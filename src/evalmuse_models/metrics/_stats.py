"""Correlation helpers shared by both tracks: the VQEG 4-parameter logistic fit, PLCC/SRCC/KRCC
and a percentile bootstrap.

The logistic is the one of the released NTIRE 2025 scorers::

    f(x) = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))

fitted with :func:`scipy.optimize.curve_fit` (``maxfev=1e8``) from the initial guess
``[max(target), min(target), mean(x), std(x)]``.

Two bounds keep a hostile input from hanging the fit (the released scorers would spin there):
scores beyond ``1e100`` in magnitude, whose squares overflow, are fitted after dividing by their
largest magnitude (the logistic family absorbs the scale, so the fitted curve is the same), and a
fit still running after :data:`FIT_TIME_LIMIT` seconds stops and falls back to the plain Pearson
correlation, flagged. Neither touches an input of ordinary scale that converges.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..utils import UserInputError

MAXFEV = 100_000_000
#: Seconds a logistic fit may run before it is abandoned for the flagged Pearson fallback. A fit on
#: 40,000 images takes well under a second; only non-converging fits (which the released scorers
#: end with an exception after ``MAXFEV`` evaluations) come near it.
FIT_TIME_LIMIT = 30.0
#: Scores larger than this in magnitude are rescaled before fitting and correlating (their squares
#: would overflow float64).
SAFE_MAGNITUDE = 1e100


class _FitTimeout(Exception):
    pass


def _rescaled(values: np.ndarray) -> np.ndarray:
    """``values`` divided by their largest magnitude when that exceeds :data:`SAFE_MAGNITUDE`, else unchanged."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    return values / peak if peak > SAFE_MAGNITUDE else values


def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic ``b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return b2 + (b1 - b2) / (1 + np.exp(np.negative(np.divide(x - b3, np.abs(b4)))))


@dataclass
class FitResult:
    """A fitted mapping ``x -> target``; ``fallback`` is true when the logistic fit failed and the
    identity mapping was used instead (the PLCC is then the plain Pearson correlation)."""

    fitted: np.ndarray
    fallback: bool
    params: tuple[float, ...] | None = None


def fit_logistic(x: np.ndarray, target: np.ndarray, *, time_limit: float | None = None) -> FitResult:
    """Fit :func:`logistic_4` from ``x`` to ``target`` exactly as the official scorers do.

    Falls back to the identity (``fitted = x``, ``fallback=True``) when ``curve_fit`` does not
    converge, runs longer than ``time_limit`` seconds (default :data:`FIT_TIME_LIMIT`), returns a
    non-finite or constant curve, or has fewer points than parameters. Scores beyond
    :data:`SAFE_MAGNITUDE` are fitted rescaled (``fitted`` and ``params`` are then in the rescaled
    units; correlations do not change).
    """
    import time

    from scipy.optimize import OptimizeWarning, curve_fit

    x = _rescaled(np.asarray(x, dtype=np.float64))
    target = _rescaled(np.asarray(target, dtype=np.float64))
    p0 = [np.max(target), np.min(target), np.mean(x), np.std(x)]
    deadline = time.monotonic() + (FIT_TIME_LIMIT if time_limit is None else time_limit)

    def bounded_logistic(values, b1, b2, b3, b4):
        if time.monotonic() > deadline:
            raise _FitTimeout
        return logistic_4(values, b1, b2, b3, b4)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            with np.errstate(all="ignore"):
                popt, _ = curve_fit(bounded_logistic, x, target, p0=p0, maxfev=MAXFEV)
        fitted = logistic_4(x, *popt)
    except (RuntimeError, ValueError, TypeError, FloatingPointError, _FitTimeout):
        return FitResult(fitted=x, fallback=True)
    if not np.all(np.isfinite(fitted)) or np.ptp(fitted) == 0:
        return FitResult(fitted=x, fallback=True)
    return FitResult(fitted=fitted, fallback=False, params=tuple(float(p) for p in popt))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(_rescaled(np.asarray(a, np.float64)), _rescaled(np.asarray(b, np.float64)))[0])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0])


def plcc_logistic(predictions: np.ndarray, references: np.ndarray, direction: str) -> tuple[float, bool]:
    """PLCC after the logistic fit. Returns ``(plcc, fallback)``.

    ``direction="standard"``: fit predictions -> references, Pearson(f(pred), ref) (the usual
    VQEG protocol, and the structure track's scorer).
    ``direction="official"``: the alignment track's released script, which fits references ->
    predictions and returns Pearson(pred, f(ref)).
    """
    if direction == "standard":
        fit = fit_logistic(predictions, references)
        plcc, fallback = pearson(fit.fitted, references), fit.fallback
    elif direction == "official":
        fit = fit_logistic(references, predictions)
        plcc, fallback = pearson(predictions, fit.fitted), fit.fallback
    else:
        raise UserInputError(f"plcc_direction must be 'official' or 'standard', got {direction!r}")
    if not math.isfinite(plcc):
        raise UserInputError("PLCC is undefined on these scores (the fitted curve is constant); check the predictions")
    return plcc, fallback


def is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def check_correlatable(pred: np.ndarray, ref: np.ndarray, what: str = "scores") -> None:
    """SRCC and PLCC need at least 3 images and non-constant scores on both sides; say which is missing."""
    if pred.size < 3:
        raise UserInputError(f"at least 3 images are needed for the correlations, got {pred.size}")
    if is_constant(pred):
        raise UserInputError(
            f"predictions: all {pred.size} {what} equal {float(pred[0])}; SRCC and PLCC are undefined for "
            "constant predictions (the logistic fit cannot converge)"
        )
    if is_constant(ref):
        raise UserInputError(f"references: all {ref.size} {what} equal {float(ref[0])}; correlations are undefined")


def check_scores(values, name: str, image_ids: Sequence[str] | None = None) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array, or raise a :class:`UserInputError` that names
    the first offending image."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise UserInputError(
                    f"{name}: score of image {describe(i, image_ids)} is {v!r}; expected a number"
                ) from None
        raise UserInputError(f"{name}: expected one number per image ({exc})") from None
    if arr.ndim != 1:
        raise UserInputError(f"{name}: expected a flat list with one number per image, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        shown = "None" if values[i] is None else repr(float(arr[i]))
        raise UserInputError(
            f"{name}: score of image {describe(i, image_ids)} is {shown}; every score must be a finite number "
            f"({bad.size} missing or non-finite value(s) in total)"
        )
    return arr


def describe(index: int, image_ids: Sequence[str] | None) -> str:
    if image_ids is not None:
        return f"{image_ids[index]!r}"
    return f"#{index}"


def bootstrap_ci(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    keys: Sequence[str],
    n_resamples: int,
    seed: int,
    confidence_level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap over images: ``statistic(indices)`` recomputes the scores on a resample
    (indices drawn with replacement). Returns ``{key: [low, high]}``; resamples on which a score is
    undefined (e.g. a constant resample) are left out of that score's interval."""
    from tqdm.auto import tqdm

    if not 0 < confidence_level < 1:
        raise UserInputError(f"confidence_level must be in (0, 1), got {confidence_level}")
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in tqdm(range(n_resamples), desc="bootstrap", disable=n_resamples < 50, leave=False):
        idx = rng.integers(0, n, size=n)
        try:
            values = statistic(idx)
        except UserInputError:
            continue
        for k in keys:
            v = values.get(k)
            if v is not None and math.isfinite(v):
                samples[k].append(v)
    alpha = (1 - confidence_level) / 2
    ci = {}
    for k in keys:
        if not samples[k]:
            raise UserInputError(
                f"bootstrap: {k} is undefined on every one of the {n_resamples} resamples; use more images"
            )
        lo, hi = np.quantile(np.asarray(samples[k]), [alpha, 1 - alpha])
        ci[k] = [float(lo), float(hi)]
    return ci
