"""The structure-track Final Score: hand-computed region cases, bad input, bootstrap, and property
tests against the straightforward per-region-pair algorithm of the released scorer, written here."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from evalmuse_models.metrics import (
    binarize_prediction,
    image_region_counts,
    structure_final_score,
)
from evalmuse_models.utils import UserInputError

PRED_AREA = 0.0006 * 512 * 512


# --- an independent, literal implementation of the released scorer -------------------------

def _logistic(x, b1, b2, b3, b4):
    return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def _filled(contour, size):
    canvas = np.zeros((size, size), np.uint8)
    cv2.drawContours(canvas, [contour], -1, 1, -1)
    return canvas


def reference_structure(pred_scores, true_scores, pred_masks, true_masks, size=512, min_pred=PRED_AREA,
                        min_true=150, thr=0.1):
    n_pred = n_true = hit_pred = miss_true = 0
    ious = []
    for pm, tm in zip(pred_masks, true_masks):
        p = (cv2.resize(pm, (size, size)) > 0).astype(np.uint8)
        t = tm
        inter, union = np.logical_and(p, t > 0).sum(), np.logical_or(p, t > 0).sum()
        ious.append((inter + 1e-4) / (union + 1e-4))
        pc = [c for c in cv2.findContours(p, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0] if cv2.contourArea(c) > min_pred]
        tc = [c for c in cv2.findContours(t, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0] if cv2.contourArea(c) > min_true]
        pf, tf = [0] * len(pc), [0] * len(tc)

        def iou(a, b):
            fa, fb = _filled(a, size), _filled(b, size)
            return np.logical_and(fa, fb).sum() / np.logical_or(fa, fb).sum()

        for i, a in enumerate(pc):  # each predicted region marks the first true region it matches
            for j, b in enumerate(tc):
                if iou(a, b) > thr:
                    tf[j] = pf[i] = 1
                    break
        for j, b in enumerate(tc):  # each unmatched true region searches all predicted regions
            if not tf[j]:
                for i, a in enumerate(pc):
                    if iou(a, b) > thr:
                        tf[j] = pf[i] = 1
                        break
        n_pred += len(pc)
        n_true += len(tc)
        hit_pred += sum(pf)
        miss_true += len(tc) - sum(tf)
    precision = hit_pred / n_pred
    recall = 1 - miss_true / n_true
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    x, y = np.asarray(pred_scores, float), np.asarray(true_scores, float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        popt, _ = optimize.curve_fit(_logistic, x, y, p0=[np.max(y), np.min(y), np.mean(x), np.std(x)],
                                     maxfev=100000000)
    plcc = stats.pearsonr(_logistic(x, *popt), y)[0]
    srcc = stats.spearmanr(x, y)[0]
    return {"precision": precision, "recall": recall, "f1": f1, "giou": float(np.mean(ious)), "plcc": plcc,
            "srcc": srcc, "final_score": 0.7 * f1 + 0.15 * (plcc + srcc)}


def _canvas(size=512):
    return np.zeros((size, size), np.uint8)


def _counts(pred, true, **kw):
    rc = image_region_counts(binarize_prediction(pred, kw.pop("size", 512)), true, **kw)
    return rc.n_pred, rc.n_true, rc.matched_pred, rc.matched_true


# --- hand-computed cases --------------------------------------------------------------------

def test_area_filters_are_strict_at_the_boundary():
    # cv2.contourArea of a filled w×h pixel rectangle is (w-1)(h-1).
    true = _canvas()
    true[10:21, 10:26] = 1  # 11×16 px -> area 10*15 = 150: NOT > 150, dropped
    true[100:120, 100:109] = 1  # 20×9 px -> area 19*8 = 152: kept
    pred = _canvas()
    pred[300:302, 300:458] = 1  # 2×158 px -> area 157 < 157.29: dropped
    pred[400:403, 300:380] = 1  # 3×80 px -> area 158 > 157.29: kept
    assert _counts(pred, true) == (1, 1, 0, 0)
    assert _counts(pred, true, min_true_area=149, min_pred_area=156) == (2, 2, 0, 0)


def test_greedy_matching_is_not_one_to_one():
    true = _canvas()
    true[100:120, 100:120] = 1  # A: 400 px
    true[100:120, 130:150] = 1  # B: 400 px
    pred = _canvas()
    pred[100:120, 100:150] = 1  # one region over both: IoU with each = 400/1000 > 0.1
    assert _counts(pred, true) == (1, 2, 1, 2)  # the second true region is matched in the second pass

    pred = _canvas()
    pred[100:120, 100:110] = 1  # 20×10 px (area 171): IoU with A = 200/400
    pred[100:120, 112:122] = 1  # 20×10 px: IoU with A = 160/440; no overlap with B
    pred[300:330, 300:330] = 1  # a false alarm
    # Both regions over A are matched predictions; B stays unmatched.
    assert _counts(pred, true) == (3, 2, 2, 1)


def test_iou_threshold_is_strict():
    true = _canvas()
    true[0:10, 0:100] = 1  # 1000 px (contour area 9*99 = 891 > 150)
    pred = _canvas()
    pred[0:10, 90:190] = 1  # overlap 10*10 = 100 px, union 1900: IoU = 100/1900 ≈ 0.0526
    assert _counts(pred, true, iou_threshold=0.05) == (1, 1, 1, 1)
    assert _counts(pred, true, iou_threshold=100 / 1900) == (1, 1, 0, 0)  # equal is not above


def test_holes_count_as_inside_the_region():
    true = _canvas()
    true[100:140, 100:140] = 1
    true[105:135, 105:135] = 0  # a ring: filled contour 40×40 = 1600 px, holes included
    pred = _canvas()
    pred[105:135, 105:135] = 1  # exactly the hole: no pixel in common with the ring
    rc = image_region_counts(pred, true)
    assert (rc.n_pred, rc.n_true, rc.matched_pred, rc.matched_true) == (1, 1, 1, 1)  # filled IoU 900/1600
    assert rc.fg_iou == pytest.approx(1e-4 / (1600 + 1e-4))
    # A true region inside a hole of another true region is not an external contour: ignored.
    true[110:130, 110:130] = 1
    assert image_region_counts(_canvas(), true).n_true == 1


def test_resize_then_binarise_follows_bilinear_rounding():
    one = np.zeros((256, 256), np.uint8)
    one[100, 60] = 1
    up = binarize_prediction(one)  # 2× bilinear: weights 0.75/0.25; uint8 rounds, so only the 2×2 block
    assert up.sum() == 4 and up[200:202, 120:122].all()
    assert binarize_prediction(one.astype(np.float32)).sum() == 16  # float keeps every non-zero weight
    assert binarize_prediction(one * 255).sum() == 16  # 255 * 0.1875 rounds to 48 > 0
    assert binarize_prediction(one.astype(bool)).sum() == 4
    down = np.zeros((1024, 1024), np.uint8)
    down[200, 120] = 1  # 2× down: weight 0.25 rounds to 0 -> the pixel vanishes
    assert binarize_prediction(down).sum() == 0
    down[200:202, 120:122] = 1
    assert binarize_prediction(down).sum() == 1
    same = np.zeros((512, 512), np.uint8)
    same[5, 5] = 7
    assert binarize_prediction(same).sum() == 1  # 512×512 is used as is, binarised with > 0


def test_small_prediction_is_scored_after_resizing():
    true = _canvas()
    true[100:200, 100:200] = 1
    pred = np.zeros((128, 128), np.uint8)
    pred[25:50, 25:50] = 1  # ×4 -> rows 100..199 (plus bilinear edge rounding)
    scores_p, scores_t = [0.1, 0.4, 0.5, 0.9, 0.3], [1.0, 2.0, 3.0, 4.0, 2.5]
    r = structure_final_score(scores_p, scores_t, [pred] * 5, [true] * 5)
    ref = reference_structure(scores_p, scores_t, [pred] * 5, [true] * 5)
    assert r["precision"] == r["recall"] == 1.0
    assert r == pytest.approx(ref, abs=1e-12)
    assert set(r) == {"precision", "recall", "f1", "giou", "plcc", "srcc", "final_score"}
    assert all(type(v) is float for v in r.values())


def test_pooling_and_images_without_regions():
    t1 = _canvas()
    t1[0:50, 0:50] = 1
    p1 = _canvas()
    p1[0:50, 0:50] = 1
    p1[200:260, 200:260] = 1  # one hit, one false alarm
    t2 = _canvas()
    t2[300:350, 300:350] = 1  # missed
    empty = _canvas()
    r = structure_final_score([1, 2, 3, 4], [1, 3, 2, 4], [p1, empty, empty, empty], [t1, t2, empty, empty])
    assert r["precision"] == pytest.approx(1 / 2)
    assert r["recall"] == pytest.approx(1 - 1 / 2)
    assert r["f1"] == pytest.approx(2 * 0.25 / (1 + 1e-10))
    # giou: image 1: 2500/6100; image 2: 1e-4/2500.0001; two empty images: 1 each.
    assert r["giou"] == pytest.approx((2500.0001 / 6100.0001 + 1e-4 / 2500.0001 + 2) / 4)


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    trues, preds = [], []
    for _ in range(20):
        t = _canvas(64)
        y, x = rng.integers(0, 40, 2)
        t[y:y + 20, x:x + 20] = 1
        trues.append(t)
        p = np.roll(t, rng.integers(-8, 8), axis=1)
        preds.append(p)
    ps, ts = rng.normal(size=20), rng.normal(size=20)
    kw = {"size": 64, "min_pred_area": 10, "min_true_area": 10}
    a = structure_final_score(ps, ts, preds, trues, n_resamples=20, seed=3, **kw)
    b = structure_final_score(ps, ts, preds, trues, n_resamples=20, seed=3, **kw)
    assert a["ci"] == b["ci"]
    assert set(a["ci"]) == {"precision", "recall", "f1", "giou", "plcc", "srcc", "final_score"}
    assert all(lo <= hi for lo, hi in a["ci"].values())


# --- bad input ----------------------------------------------------------------------------

def _ok_inputs():
    t = _canvas()
    t[0:50, 0:50] = 1
    return [0.1, 0.5, 0.9], [1.0, 2.0, 4.0], [t.copy() for _ in range(3)], [t.copy() for _ in range(3)]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a[2].__setitem__(1, np.zeros((2, 3, 4), np.uint8)), r"prediction_masks of image 'b'.*2-D"),
        (lambda a: a[2].__setitem__(2, np.zeros((0, 5), np.uint8)), r"prediction_masks of image 'c'.*empty"),
        (lambda a: a[3].__setitem__(0, np.zeros((256, 256), np.uint8)), r"reference_masks of image 'a'.*512x512"),
        (lambda a: a[0].__setitem__(1, float("nan")), r"predictions: score of image 'b' is nan"),
        (lambda a: a[0].__setitem__(slice(None), [0.3, 0.3, 0.3]), "constant predictions"),
        (lambda a: a[2].__setitem__(slice(None), [_canvas()] * 3), "no predicted region in the whole set"),
        (lambda a: a[2].pop(), "differ in length"),
    ],
)
def test_bad_input_names_the_image(change, match):
    args = list(_ok_inputs())
    change(args)
    with pytest.raises(UserInputError, match=match):
        structure_final_score(*args, image_ids=["a", "b", "c"])


# --- property tests -------------------------------------------------------------------------

def _random_mask(rng, size, blobs, noise):
    m = np.zeros((size, size), np.uint8)
    for _ in range(blobs):
        cy, cx = rng.integers(0, size, 2)
        if rng.random() < 0.5:
            h, w = rng.integers(2, size // 3, 2)
            m[max(cy - h, 0):cy + h, max(cx - w, 0):cx + w] = 1
        else:
            cv2.ellipse(m, (int(cx), int(cy)), tuple(int(v) for v in rng.integers(2, size // 4, 2)),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.random() < 0.3:  # punch a hole
            cv2.circle(m, (int(cx), int(cy)), int(rng.integers(1, 6)), 0, -1)
    if noise:
        m |= (rng.random((size, size)) < noise).astype(np.uint8)
    return m


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(5, 8),
    pred_size=st.sampled_from([48, 64, 80, 100]),
    blobs=st.integers(0, 5),
    noise=st.sampled_from([0.0, 0.0, 0.01, 0.05]),
    thr=st.sampled_from([0.1, 0.3]),
)
def test_matches_straightforward_per_pair_algorithm(seed, n, pred_size, blobs, noise, thr):
    rng = np.random.default_rng(seed)
    size = 64
    trues = [_random_mask(rng, size, int(rng.integers(0, blobs + 1)), 0) for _ in range(n)]
    preds = []
    for t in trues:
        if rng.random() < 0.7:  # a shifted, rescaled version of the truth, plus extras
            p = cv2.resize(np.roll(t, int(rng.integers(-6, 7)), axis=int(rng.integers(0, 2))), (pred_size, pred_size),
                           interpolation=cv2.INTER_NEAREST)
            p |= _random_mask(rng, pred_size, int(rng.integers(0, 2)), noise)
        else:
            p = _random_mask(rng, pred_size, blobs, noise)
        preds.append(p)
    ps = rng.normal(size=n)
    ts = rng.uniform(1, 5, n)
    kw = {"size": size, "min_pred_area": 6.0, "min_true_area": 5.0}
    try:
        expected = reference_structure(ps, ts, preds, trues, size=size, min_pred=6.0, min_true=5.0, thr=thr)
    except ZeroDivisionError:
        with pytest.raises(UserInputError, match="no (predicted|true) region"):
            structure_final_score(ps, ts, preds, trues, iou_threshold=thr, **kw)
        return
    got = structure_final_score(ps, ts, preds, trues, iou_threshold=thr, **kw)
    for key in ("precision", "recall", "f1", "giou", "srcc"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    if "plcc_fallback" not in got:
        assert got["plcc"] == pytest.approx(expected["plcc"], abs=1e-9)
        assert got["final_score"] == pytest.approx(expected["final_score"], abs=1e-9)


def test_matches_straightforward_algorithm_at_official_size():
    rng = np.random.default_rng(11)
    trues = [_random_mask(rng, 512, 4, 0) for _ in range(6)]
    preds = [np.clip(np.roll(t, 15, axis=1)[::2, ::2] + _random_mask(rng, 256, 2, 0.002), 0, 1) for t in trues]
    ps, ts = rng.normal(size=6), rng.uniform(1, 5, 6)
    got = structure_final_score(ps, ts, preds, trues)
    expected = reference_structure(ps, ts, preds, trues)
    assert got == pytest.approx(expected, abs=1e-9)
