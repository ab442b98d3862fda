"""The alignment-track Main Score: hand-computed cases, bad input, breakdowns, bootstrap, and
property tests against a straightforward implementation of the released scorer written here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from evalmuse_models.metrics import alignment_main_score, element_category
from evalmuse_models.utils import UserInputError

# --- an independent, literal implementation of the released scorer -------------------------

def _logistic(x, b1, b2, b3, b4):
    return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def reference_main_score(pred, true, pred_el, true_el, direction="official"):
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if direction == "official":  # the released script: x = truth, target = submission
            p0 = [np.max(pred), np.min(pred), np.mean(true), np.std(true)]
            popt, _ = optimize.curve_fit(_logistic, true, pred, p0=p0, maxfev=100000000)
            plcc = stats.pearsonr(pred, _logistic(true, *popt))[0]
        else:
            p0 = [np.max(true), np.min(true), np.mean(pred), np.std(pred)]
            popt, _ = optimize.curve_fit(_logistic, pred, true, p0=p0, maxfev=100000000)
            plcc = stats.pearsonr(_logistic(pred, *popt), true)[0]
    srcc = stats.spearmanr(pred, true)[0]
    hits = total = 0
    for p_img, t_img in zip(pred_el, true_el):
        for p, t in zip(p_img, t_img):
            hits += int((1 if p >= 0.5 else 0) == (1 if t >= 0.5 else 0))
            total += 1
    acc = hits / total
    return {"srcc": srcc, "plcc": plcc, "acc": acc, "main_score": plcc / 4 + srcc / 4 + acc / 2}


def _data(n, seed, elements=3):
    rng = np.random.default_rng(seed)
    true = np.round(rng.uniform(1, 5, n) * 3) / 3
    pred = true + rng.normal(0, 0.8, n)
    counts = rng.integers(0, elements + 1, n)
    true_el = [list(rng.integers(0, 4, c) / 3) for c in counts]
    pred_el = [list(np.clip(np.asarray(t) + rng.normal(0, 0.3, len(t)), 0, 1)) for t in true_el]
    return pred.tolist(), true.tolist(), pred_el, true_el


# --- hand-computed cases ----------------------------------------------------------------

def test_threshold_is_inclusive_at_one_half():
    # Element pairs: (0.5, 0.5) agree (both >= 0.5); (0.4999, 0.5) disagree; (0.5, 1/3) disagree;
    # (0.49, 0) agree; (1.0, 2/3) agree -> ACC 3/5.
    pred_el = [[0.5, 0.4999], [0.5], [0.49, 1.0], [], []]
    true_el = [[0.5, 0.5], [1 / 3], [0.0, 2 / 3], [], []]
    pred, true = [1.0, 2.0, 3.0, 2.5, 4.5], [1.0, 2.5, 4.0, 2.0, 3.0]
    r = alignment_main_score(pred, true, pred_el, true_el)
    assert r["acc"] == pytest.approx(3 / 5)
    # At 0.3: (0.4999, 0.5) and (0.5, 1/3) now agree, (0.49, 0) disagrees -> 4/5.
    r = alignment_main_score(pred, true, pred_el, true_el, element_threshold=0.3)
    assert r["acc"] == pytest.approx(4 / 5)


def test_main_score_weights_and_keys():
    pred, true, pred_el, true_el = _data(60, 1)
    r = alignment_main_score(pred, true, pred_el, true_el)
    assert set(r) == {"srcc", "plcc", "acc", "main_score", "krcc", "rmse"}
    assert all(type(v) is float for v in r.values())
    assert r["main_score"] == pytest.approx(0.25 * r["srcc"] + 0.25 * r["plcc"] + 0.5 * r["acc"])
    r2 = alignment_main_score(pred, true, pred_el, true_el, weights=(1.0, 0.0, 0.0))
    assert r2["main_score"] == pytest.approx(r["srcc"])
    assert r["krcc"] == pytest.approx(stats.kendalltau(pred, true)[0])


def test_official_direction_differs_from_standard_and_matches_released_formula():
    pred, true, pred_el, true_el = _data(300, 2)
    official = alignment_main_score(pred, true, pred_el, true_el)
    standard = alignment_main_score(pred, true, pred_el, true_el, plcc_direction="standard")
    assert official["srcc"] == standard["srcc"] and official["acc"] == standard["acc"]
    assert official["plcc"] != standard["plcc"]
    ref_o = reference_main_score(pred, true, pred_el, true_el, "official")
    ref_s = reference_main_score(pred, true, pred_el, true_el, "standard")
    assert official["plcc"] == pytest.approx(ref_o["plcc"], abs=1e-12)
    assert standard["plcc"] == pytest.approx(ref_s["plcc"], abs=1e-12)


def test_dict_element_scores_are_aligned_by_key_and_extra_keys_ignored():
    true_el = [{"cat (animal)": 1.0, "red (color)": 0.0}, {"two (counting)": 2 / 3}, {"dog (animal)": 0.0}, {}, {}]
    pred_el = [{"red (color)": 0.9, "cat (animal)": 0.8, "extra (object)": 0.1}, {"two (counting)": 0.2},
               {"dog (animal)": 0.1}, {}, {"other (object)": 1.0}]
    r = alignment_main_score([1.0, 2.0, 3.0, 2.2, 4.0], [1.5, 2.0, 3.0, 3.3, 4.3], pred_el, true_el,
                             element_categories=True)
    # cat: agree; red: disagree; two: disagree; dog: agree
    assert r["acc"] == pytest.approx(0.5)
    assert r["per_category_acc"] == {"animal": 1.0, "color": 0.0, "counting": 0.0}
    assert r["per_category_count"] == {"animal": 2, "color": 1, "counting": 1}


def test_element_category_uses_last_parentheses():
    assert element_category("pig giants (animal)") == "animal"
    assert element_category("a cat (with a hat) (object)") == "object"
    assert element_category("no category") == "other"


def test_per_generator_breakdown():
    pred, true, pred_el, true_el = _data(40, 3)
    gens = ["A"] * 20 + ["B"] * 18 + ["C"] * 2
    r = alignment_main_score(pred, true, pred_el, true_el, generators=gens)
    ga = r["per_generator"]["A"]
    sub = alignment_main_score(pred[:20], true[:20], pred_el[:20], true_el[:20])
    assert ga["n_images"] == 20
    for key in ("srcc", "plcc", "acc", "main_score"):
        assert ga[key] == pytest.approx(sub[key])
    gc = r["per_generator"]["C"]  # two images: correlations undefined, reported as None, never NaN
    assert gc["n_images"] == 2 and gc["srcc"] is None and gc["plcc"] is None and gc["main_score"] is None
    assert not math.isnan(gc["acc"]) if gc["acc"] is not None else True


def test_without_element_scores_reports_correlations_only():
    pred, true, _, _ = _data(30, 4)
    r = alignment_main_score(pred, true)
    assert set(r) == {"srcc", "plcc", "krcc", "rmse"}


def test_bootstrap_ci_is_reproducible_and_brackets_the_score():
    pred, true, pred_el, true_el = _data(120, 5)
    a = alignment_main_score(pred, true, pred_el, true_el, n_resamples=30, seed=7)
    b = alignment_main_score(pred, true, pred_el, true_el, n_resamples=30, seed=7)
    c = alignment_main_score(pred, true, pred_el, true_el, n_resamples=30, seed=8)
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    assert set(a["ci"]) == {"srcc", "plcc", "acc", "main_score"}
    for key, (low, high) in a["ci"].items():
        assert low <= high
        assert low - 0.05 <= a[key] <= high + 0.05
    assert "ci" not in alignment_main_score(pred, true, pred_el, true_el)


def test_fit_fallback_is_flagged_not_silent():
    # Three images: curve_fit cannot fit 4 parameters, PLCC falls back to plain Pearson, flagged.
    with pytest.warns(UserWarning, match="logistic fit"):
        r = alignment_main_score([1.0, 2.0, 4.0], [1.0, 3.0, 3.5], [[0.9], [0.1], [0.6]], [[1.0], [0.0], [1.0]])
    assert r["plcc_fallback"] is True
    assert r["plcc"] == pytest.approx(stats.pearsonr([1.0, 2.0, 4.0], [1.0, 3.0, 3.5])[0])


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"predictions": [1.0, float("nan"), 2.0, 3.0]}, r"predictions: score of image 'b.png' is nan"),
        ({"references": [1.0, 2.0, float("inf"), 3.0]}, r"references: score of image 'c.png' is inf"),
        ({"predictions": [2.0, 2.0, 2.0, 2.0]}, "constant predictions"),
        ({"predictions": [2.0, None, 2.0, 2.0]}, r"predictions: score of image 'b.png' is None; every score must be a finite"),
        ({"prediction_element_scores": [[0.5], [0.2], [float("nan")], [0.0]]}, r"image 'c.png' is nan"),
        ({"prediction_element_scores": [[0.5], [0.2, 0.3], [0.1], [0.0]]}, r"image 'b.png': 2 predicted but 1"),
        ({"predictions": [1.0, 2.0, 3.0]}, "3 scores but references has 4"),
        ({"plcc_direction": "sideways"}, "plcc_direction"),
    ],
)
def test_bad_input_names_the_image(kwargs, match):
    args = {
        "predictions": [1.0, 2.0, 2.5, 3.0],
        "references": [1.0, 2.0, 3.0, 4.0],
        "prediction_element_scores": [[0.5], [0.2], [0.1], [0.0]],
        "reference_element_scores": [[1.0], [0.0], [1 / 3], [0.0]],
        "image_ids": ["a.png", "b.png", "c.png", "d.png"],
    }
    args.update(kwargs)
    with pytest.raises(UserInputError, match=match):
        alignment_main_score(**args)


def test_element_scores_outside_unit_interval_are_scored_with_a_warning():
    # A real submission held element scores up to 1.036; the released scorer only thresholds them.
    pred, true = [1.0, 2.0, 2.5, 3.0], [1.0, 2.0, 3.0, 4.0]
    true_el = [[1.0], [0.0], [1 / 3], [2 / 3]]
    with pytest.warns(UserWarning, match=r"element #0 of image 'b.png' is 1.036; it is outside \[0, 1\] \(2 "):
        r = alignment_main_score(pred, true, [[0.5], [1.036], [-0.2], [0.7]], true_el,
                                 image_ids=["a.png", "b.png", "c.png", "d.png"])
    # 1.036 >= 0.5 disagrees with 0.0; -0.2 < 0.5 agrees with 1/3: ACC 3/4.
    assert r["acc"] == 0.75
    expected = reference_main_score(pred, true, [[0.5], [1.036], [-0.2], [0.7]], true_el)
    assert r["main_score"] == pytest.approx(expected["main_score"], abs=1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_element_score_is_an_error_naming_image_and_key(bad):
    with pytest.raises(UserInputError, match=r"element 'dog \(animal\)' of image 'x/2.png' is .*finite number"):
        alignment_main_score(
            [1.0, 2.0, 3.0], [1.0, 2.0, 3.5],
            [{"cat (animal)": 0.2}, {"dog (animal)": bad}, {}],
            [{"cat (animal)": 1.0}, {"dog (animal)": 0.0}, {}],
            image_ids=["x/1.png", "x/2.png", "x/3.png"],
        )


def test_missing_element_key_names_image_and_key():
    with pytest.raises(UserInputError, match=r"image 'x/2.png': missing element key\(s\) \['dog \(animal\)'\]"):
        alignment_main_score(
            [1.0, 2.0, 3.0], [1.0, 2.0, 3.5],
            [{"cat (animal)": 0.2}, {"cat (animal)": 0.2}, {}],
            [{"cat (animal)": 1.0}, {"cat (animal)": 1.0, "dog (animal)": 0.0}, {}],
            image_ids=["x/1.png", "x/2.png", "x/3.png"],
        )


# --- property tests -------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=8, max_value=120),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    noise=st.floats(min_value=0.05, max_value=3.0),
    scale=st.sampled_from([1.0, 0.01, 100.0]),
)
def test_matches_straightforward_implementation(n, seed, noise, scale):
    rng = np.random.default_rng(seed)
    true = np.round(rng.uniform(1, 5, n) * 3) / 3
    pred = (true + rng.normal(0, noise, n)) * scale  # any scale
    counts = rng.integers(1, 5, n)
    true_el = [list(rng.integers(0, 4, c) / 3) for c in counts]
    # Include exact 0.5s so the inclusive threshold is exercised.
    pred_el = [list(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], c)) for c in counts]
    if np.ptp(pred) == 0 or np.ptp(true) == 0:
        return
    expected = reference_main_score(pred, true, pred_el, true_el, "official")
    got = alignment_main_score(pred, true, pred_el, true_el)
    assert "plcc_fallback" not in got
    assert got["srcc"] == pytest.approx(expected["srcc"], abs=1e-12)
    assert got["acc"] == expected["acc"]
    assert got["plcc"] == pytest.approx(expected["plcc"], abs=1e-9)
    assert got["main_score"] == pytest.approx(expected["main_score"], abs=1e-9)


# --- hostile scales: bounded, never NaN ---------------------------------------------------------

def _with_alarm(seconds, fn):
    """Run ``fn`` and fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    import signal

    def fail(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("n", [5, 418])
def test_a_huge_score_neither_hangs_nor_gives_nan(n):
    # One submitted total_score of 1e308 made curve_fit spin (maxfev=1e8) on 5 images and gave a NaN
    # PLCC on 418.
    rng = np.random.default_rng(0)
    true = np.round(rng.uniform(1, 5, n) * 3) / 3
    pred = true + rng.normal(0, 0.5, n)
    pred[2] = 1e308
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = _with_alarm(60, lambda: alignment_main_score(pred.tolist(), true.tolist()))
    assert all(math.isfinite(v) for k, v in r.items() if k != "plcc_fallback")
    # Correlations do not depend on the scale: the same as the scores divided by their peak.
    scaled = alignment_main_score((pred / 1e308).tolist(), true.tolist()) if n > 5 else r
    assert r["plcc"] == pytest.approx(scaled["plcc"], abs=1e-9)
    assert r["srcc"] == scaled["srcc"]


def test_a_fit_past_its_time_limit_falls_back_flagged():
    from evalmuse_models.metrics._stats import fit_logistic

    x = np.linspace(1, 5, 50)
    assert not fit_logistic(x, x**2).fallback
    late = fit_logistic(x, x**2, time_limit=0.0)
    assert late.fallback and late.params is None
    np.testing.assert_array_equal(late.fitted, x)
