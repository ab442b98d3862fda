"""The one structure evaluation: the official Final score of predictions (score + heatmap or mask) on a
labelled split, with the truth of the one truth rule, and the threshold search."""

from __future__ import annotations

import numpy as np
import pytest

from evalmuse_models.data import truth_maps
from evalmuse_models.evaluation import evaluate_structure, search_threshold
from evalmuse_models.evaluation.structure import BASELINE_THRESHOLD, truth_masks
from evalmuse_models.metrics import structure_final_score
from evalmuse_models.models.evalmuse_structure.postprocess import heatmap_to_mask
from evalmuse_models.utils import UserInputError


def _blob(y, x, r=40):
    mask = np.zeros((512, 512), np.uint8)
    mask[y - r : y + r, x - r : x + r] = 1
    return mask


TRUTH = [_blob(100, 100), _blob(300, 300), _blob(200, 400), np.zeros((512, 512), np.uint8)]
MOS = [2.0, 3.0, 1.5, 4.7]
SCORES = [2.1, 3.2, 1.4, 4.0]
ROWS = [{"image_name": f"img{i}", "mos": m} for i, m in enumerate(MOS)]  # a split whose truth is given


def heatmaps_with_floor() -> list[np.ndarray]:
    """0.8 on each true region over a uniform 0.3 floor: thresholds below the floor flood the image."""
    out = []
    for t in TRUTH:
        h = np.full((512, 512), 0.3, np.float32)
        h[t > 0] = 0.8
        out.append(h)
    return out


def test_threshold_search_and_total_evaluation():
    predictions = [{"score": s, "heatmap": h} for s, h in zip(SCORES, heatmaps_with_floor(), strict=True)]
    best, table = search_threshold(predictions, ROWS, thresholds=[0.1, 0.5, 0.9], truth=TRUTH)
    assert best == 0.5
    rows = {r["threshold"]: r for r in table}
    assert sorted(rows) == [0.1, round(40 / 255, 6), 0.5, 0.9]  # the baseline threshold is always tried
    assert rows[0.5]["f1"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0.9]["no_predicted_regions"] and rows[0.9]["f1"] == 0.0
    assert rows[0.9]["final_score"] == pytest.approx(0.15 * (rows[0.9]["plcc"] + rows[0.9]["srcc"]))
    assert {"threshold": 0.5, **evaluate_structure(predictions, ROWS, threshold=0.5, truth=TRUTH)} == rows[0.5]
    # constant scores: the correlations are undefined and count 0; the regions still count
    constant = [{"score": 3.0, "mask": heatmap_to_mask(h, 0.5)} for h in heatmaps_with_floor()]
    result = evaluate_structure(constant, ROWS, truth=TRUTH)
    assert result["constant_scores"] and result["plcc"] == 0.0 and result["final_score"] == pytest.approx(0.7 * result["f1"])
    # an untrained model: one huge constant score and empty masks still gets a number, not an error
    untrained = [{"score": 1e12, "mask": np.zeros((512, 512), np.uint8)}] * 4
    result = evaluate_structure(untrained, ROWS, truth=TRUTH)
    assert result["constant_scores"] and result["no_predicted_regions"] and result["final_score"] == 0.0
    with pytest.raises(UserInputError, match="3 predictions for a split of 4"):
        evaluate_structure(predictions[:3], ROWS, truth=TRUTH)


def test_the_arithmetic_is_the_official_metric():
    """Where the official function is defined, the evaluation is exactly it, on the masks the model's
    post-processing makes of the heatmaps."""
    heatmaps = heatmaps_with_floor()
    predictions = [{"score": s, "heatmap": h} for s, h in zip(SCORES, heatmaps, strict=True)]
    masks = [heatmap_to_mask(h, 0.5) for h in heatmaps]
    official = structure_final_score(SCORES, MOS, masks, TRUTH, progress=False)
    assert evaluate_structure(predictions, ROWS, threshold=0.5, truth=TRUTH) == official


def test_heatmap_levels_masks_and_names():
    floats = heatmaps_with_floor()
    levels = [np.round(h * 255).astype(np.uint8) for h in floats]
    as_floats = evaluate_structure([{"score": s, "heatmap": h} for s, h in zip(SCORES, floats, strict=True)],
                                   ROWS, threshold=0.5, truth=TRUTH)
    as_levels = [{"score": s, "heatmap": h} for s, h in zip(SCORES, levels, strict=True)]
    assert evaluate_structure(as_levels, ROWS, threshold=0.5, truth=TRUTH) == as_floats  # uint8: 8-bit levels
    # by default a prediction's own mask is scored (here: empty) and its heatmap only without one
    with_masks = [{**p, "mask": np.zeros((64, 64), np.uint8)} for p in as_levels]
    assert evaluate_structure(with_masks, ROWS, truth=TRUTH)["no_predicted_regions"]
    assert evaluate_structure(with_masks, ROWS, threshold=0.5, truth=TRUTH) == as_floats
    baseline = evaluate_structure(as_levels, ROWS, truth=TRUTH)  # no mask: the baseline's 40/255
    assert baseline == evaluate_structure(as_levels, ROWS, threshold=BASELINE_THRESHOLD, truth=TRUTH)
    # keyed by image name, in any order; objects with attributes too
    keyed = {row["image_name"]: p for row, p in reversed(list(zip(ROWS, as_levels, strict=True)))}
    assert evaluate_structure(keyed, ROWS, threshold=0.5, truth=TRUTH) == as_floats

    class Result:
        def __init__(self, score, heatmap):
            self.score, self.heatmap = score, heatmap

    objects = [Result(p["score"], p["heatmap"]) for p in as_levels]
    assert evaluate_structure(objects, ROWS, threshold=0.5, truth=TRUTH) == as_floats
    with pytest.raises(UserInputError, match="no prediction for 1 of the split's 4 images, e.g. 'img3'"):
        evaluate_structure({k: v for k, v in keyed.items() if k != "img3"}, ROWS, truth=TRUTH)
    with pytest.raises(UserInputError, match="img1 has neither a 'heatmap' nor a 'mask'"):
        evaluate_structure([as_levels[0], {"score": 1.0}, *as_levels[2:]], ROWS, truth=TRUTH)
    with pytest.raises(UserInputError, match="image img2 has none"):
        search_threshold([*with_masks[:2], {"score": 1.0, "mask": TRUTH[2]}, with_masks[3]], ROWS, truth=TRUTH)
    with pytest.raises(UserInputError, match="no 'mos'.*img1"):
        evaluate_structure(as_levels, [ROWS[0], {"image_name": "img1", "mos": None}, *ROWS[2:]], truth=TRUTH)
    with pytest.raises(UserInputError, match="threshold"):
        evaluate_structure(as_levels, ROWS, threshold=1.5, truth=TRUTH)


def test_truth_of_a_prepared_split(prepared_dataset):
    """The truth masks are the one truth rule's, drawn from the split's shapes; the truth submitted as the
    prediction scores 1 on every part."""
    from datasets import load_dataset

    split = load_dataset(str(prepared_dataset), "structure", split="validation")
    truth = truth_masks(split)
    majority = truth_masks(split, min_votes=2)
    rows = list(split)
    for row, mask, strict_mask in zip(rows, truth, majority, strict=True):
        np.testing.assert_array_equal(mask, truth_maps(row).truth)
        np.testing.assert_array_equal(strict_mask, truth_maps(row, min_votes=2).truth)
    assert any(m.any() for m in truth) and sum(int(m.sum()) for m in majority) < sum(int(m.sum()) for m in truth)
    perfect = {row["image_name"]: {"score": row["mos"], "mask": truth_maps(row, size=None).mask} for row in rows}
    result = evaluate_structure(perfect, split)
    assert result["f1"] == pytest.approx(1.0) and result["final_score"] == pytest.approx(1.0)
    assert evaluate_structure(perfect, split, truth=truth) == result  # drawn once, reused
    with pytest.raises(UserInputError, match="'shapes' and 'image' columns"):
        truth_masks(split.remove_columns("shapes"))
