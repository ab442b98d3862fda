"""Speed of the official NTIRE 2025 scores (prints JSON, writes bench/results/metrics.json).

- structure Final Score on 1,000 images at 512×512, realistic masks and a noisy variant with many
  small regions: this package's implementation against the straightforward per-region-pair
  algorithm (every IoU on two full-image filled-contour canvases, literal greedy matching); both
  must give the same numbers, the ratio is reported;
- alignment Main Score on 40,000 images.

Usage: python bench/bench_metrics.py [--images 1000] [--noisy-images 1000] [--alignment-images 40000]
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from evalmuse_models.metrics import alignment_main_score, structure_final_score
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent


def naive_structure(pred_scores, true_scores, pred_masks, true_masks, size=512):
    """The straightforward algorithm: for every region pair, fill both contours on full canvases."""
    from scipy import optimize, stats

    min_pred, min_true, thr = 0.0006 * size * size, 150, 0.1
    n_pred = n_true = hit_pred = miss_true = 0
    ious = []

    def filled(c):
        canvas = np.zeros((size, size), np.uint8)
        cv2.drawContours(canvas, [c], -1, 1, -1)
        return canvas

    def iou(a, b):
        fa, fb = filled(a), filled(b)
        return np.logical_and(fa, fb).sum() / np.logical_or(fa, fb).sum()

    for pm, tm in zip(pred_masks, true_masks):
        p = (cv2.resize(pm, (size, size)) > 0).astype(np.uint8)
        inter, union = np.logical_and(p, tm).sum(), np.logical_or(p, tm).sum()
        ious.append((inter + 1e-4) / (union + 1e-4))
        pc = [c for c in cv2.findContours(p, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0] if cv2.contourArea(c) > min_pred]
        tc = [c for c in cv2.findContours(tm, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0] if cv2.contourArea(c) > min_true]
        pf, tf = [0] * len(pc), [0] * len(tc)
        for i, a in enumerate(pc):
            for j, b in enumerate(tc):
                if iou(a, b) > thr:
                    pf[i] = tf[j] = 1
                    break
        for j, b in enumerate(tc):
            if not tf[j]:
                for i, a in enumerate(pc):
                    if iou(a, b) > thr:
                        pf[i] = tf[j] = 1
                        break
        n_pred, n_true = n_pred + len(pc), n_true + len(tc)
        hit_pred, miss_true = hit_pred + sum(pf), miss_true + len(tc) - sum(tf)
    precision, recall = hit_pred / n_pred, 1 - miss_true / n_true
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    x, y = np.asarray(pred_scores, float), np.asarray(true_scores, float)

    def logistic(v, b1, b2, b3, b4):
        return b2 + (b1 - b2) / (1 + np.exp(-(v - b3) / np.abs(b4)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        popt, _ = optimize.curve_fit(logistic, x, y, p0=[y.max(), y.min(), x.mean(), x.std()], maxfev=100000000)
    plcc, srcc = stats.pearsonr(logistic(x, *popt), y)[0], stats.spearmanr(x, y)[0]
    return {"precision": precision, "recall": recall, "f1": f1, "giou": float(np.mean(ious)), "plcc": float(plcc),
            "srcc": float(srcc), "final_score": 0.7 * f1 + 0.15 * (plcc + srcc)}


def _mos(n, rng):
    from evalmuse_models.data.synthetic import real_structure_mos

    return rng.choice(real_structure_mos(), n)


def _shape(mask, rng, scale):
    cy, cx = (int(v) for v in rng.integers(0, 512, 2))
    if rng.random() < 0.5:  # annotator rectangle
        h, w = (int(v) for v in rng.integers(scale // 3, scale, 2))
        mask[max(cy - h, 0):cy + h, max(cx - w, 0):cx + w] = 1
    else:  # annotator polygon
        n = int(rng.integers(4, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(scale / 3, scale, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)


def make_structure_set(n, seed, noisy):
    """Truth: 0-3 annotator shapes per image (about 25% of images have none). Prediction: a blurred,
    shifted, thresholded version of the truth plus false alarms, at 512×512; the noisy variant adds
    many small speckle regions."""
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    mos = _mos(n, rng)
    for i in range(n):
        t = np.zeros((512, 512), np.uint8)
        for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
            _shape(t, rng, 70)
        heat = cv2.GaussianBlur(np.roll(t.astype(np.float32), tuple(int(v) for v in rng.integers(-20, 21, 2)), (0, 1)),
                                (0, 0), 8)
        p = (heat > rng.uniform(0.2, 0.6)).astype(np.uint8)
        for _ in range(int(rng.integers(0, 3))):
            _shape(p, rng, 40)
        if noisy:
            speckle = (cv2.GaussianBlur(rng.random((512, 512)).astype(np.float32), (0, 0), 3) > 0.535)
            p |= speckle.astype(np.uint8)
        truths.append(t)
        preds.append(p)
    pred_scores = (mos - 1) / 4 + rng.normal(0, 0.2, n)
    return pred_scores, mos, preds, truths


def bench_structure(n, seed, noisy):
    from evalmuse_models.metrics.structure import _regions, binarize_prediction

    ps, ts, preds, truths = make_structure_set(n, seed, noisy)
    # Warm up both (imports, OpenCV's first calls) so that only the scoring is timed.
    structure_final_score(ps[:5], ts[:5], preds[:5], truths[:5], progress=False)
    naive_structure(ps[:5], ts[:5], preds[:5], truths[:5])
    n_regions = sum(len(_regions(binarize_prediction(p), 0.0006 * 512 * 512)) for p in preds)
    t0 = time.perf_counter()
    fast = structure_final_score(ps, ts, preds, truths, progress=False)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = naive_structure(ps, ts, preds, truths)
    t_naive = time.perf_counter() - t0
    identical = all(fast[k] == naive[k] for k in ("precision", "recall", "f1")) and all(
        abs(fast[k] - naive[k]) <= 1e-12 for k in naive
    )
    return {
        "n_images": n,
        "predicted_regions_per_image": round(n_regions / n, 2),
        "fast_s": round(t_fast, 3),
        "naive_s": round(t_naive, 3),
        "speedup": round(t_naive / t_fast, 2),
        "identical": bool(identical),
        "max_abs_diff": max(abs(fast[k] - naive[k]) for k in naive),
        "scores": fast,
    }


def bench_alignment(n, seed=0, repeats=3):
    rng = np.random.default_rng(seed)
    true = np.round(rng.uniform(1, 5, n) * 3) / 3
    pred = true + rng.normal(0, 0.7, n)
    counts = rng.integers(1, 10, n)
    true_el = [list(rng.integers(0, 4, c) / 3) for c in counts]
    pred_el = [list(rng.uniform(0, 1, c)) for c in counts]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = alignment_main_score(pred, true, pred_el, true_el)
        times.append(time.perf_counter() - t0)
    return {"n_images": n, "n_elements": int(counts.sum()), "best_s": round(min(times), 4),
            "median_s": round(float(np.median(times)), 4), "scores": result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--noisy-images", type=int, default=1000)
    parser.add_argument("--alignment-images", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: single-core numbers)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    results = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                    "opencv": cv2.__version__, "opencv_threads": args.threads},
        "structure_realistic": bench_structure(args.images, 0, noisy=False),
        "structure_noisy": bench_structure(args.noisy_images, 1, noisy=True),
        "alignment": bench_alignment(args.alignment_images),
    }
    text = json.dumps(results, indent=2)
    print(text)
    atomic_write_text(HERE / "results" / "metrics.json", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
