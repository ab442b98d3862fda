"""Truth masks and heatmaps as the organisers made them.

Every expectation here is drawn directly with OpenCV/NumPy the way ``data_process.py`` of
DYEvaLab/EvalMuse-Structure draws it (float64 masks, slicing per rectangle, ``cv2.fillPoly`` per
polygon, sum, levels, ``cv2.resize``), re-written for the test from that script, not taken from
the library. Where the script fails (fractional or negative rectangle coordinates, 5+ annotators)
the reference is fed the input the library's documented departure turns it into.
"""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalmuse_models.data import parse_structure_record
from evalmuse_models.data.masks import baseline_heatmap, binary_mask, truth_maps, vote_map


def official(bbox_info, width, height):
    """``data_process.py`` for one image: (summed annotator masks, level map, 512x512 heatmap)."""
    part_mask = np.zeros([height, width])
    for person in bbox_info:
        cur_mask = np.zeros([height, width])
        if not person:
            continue
        for bbox in person:
            if bbox["bbox_type"] == 1:
                top_left, bottom_right = bbox["bbox"]
                cur_mask[top_left["y"]:bottom_right["y"], top_left["x"]:bottom_right["x"]] = 1
            elif bbox["bbox_type"] == 2:
                cv2.fillPoly(cur_mask, [np.array(bbox["bbox"])], 1)
        part_mask = part_mask + cur_mask
    error_mask = part_mask.astype(np.uint8)
    error_mask[error_mask == 1] = 64
    error_mask[error_mask == 2] = 127
    error_mask[error_mask == 3] = 180
    error_mask[error_mask == 4] = 255
    return part_mask, error_mask, cv2.resize(error_mask, (512, 512))


def official_truth(part_mask, min_votes=1, size=(512, 512)):
    """The scored truth: the 0/1 mask at the original size through the scorer's own resize (bilinear, > 0)."""
    return (cv2.resize((part_mask >= min_votes).astype(np.uint8), size) > 0).astype(np.uint8)


def as_official_input(bbox_info, width, height):
    """What the library's departures amount to, written as input the official script can take:
    coordinates truncated like ``int()``, rectangle corners clipped to the image, vertices as pairs."""
    out = []
    for person in bbox_info:
        shapes = []
        for bbox in person:
            if bbox["bbox_type"] == 1:
                shapes.append({"bbox_type": 1, "bbox": [
                    {"x": min(max(int(p["x"]), 0), width), "y": min(max(int(p["y"]), 0), height)}
                    for p in bbox["bbox"]]})
            else:
                pairs = [(p["x"], p["y"]) if isinstance(p, dict) else p for p in bbox["bbox"]]
                shapes.append({"bbox_type": 2, "bbox": [[int(x), int(y)] for x, y in pairs]})
        out.append(shapes)
    return out


def record_of(bbox_info, width, height):
    record = parse_structure_record("img", {"prompt_en": "p", "mos": 3.0, "bbox_info": bbox_info})
    record.width, record.height = width, height
    return record


def rect(x1, y1, x2, y2):
    return {"bbox_type": 1, "bbox": [{"x": x1, "y": y1}, {"x": x2, "y": y2}]}


def poly(*points, dicts=False):
    return {"bbox_type": 2, "bbox": [{"x": x, "y": y} if dicts else [x, y] for x, y in points]}


def assert_matches_official(bbox_info, width, height, reference_input=None):
    """Votes, levels, 512 heatmap and 512 truth (union and majority) equal the official drawing."""
    part, levels, heat = official(reference_input or bbox_info, width, height)
    record = record_of(bbox_info, width, height)
    maps = truth_maps(record)
    np.testing.assert_array_equal(maps.votes, part)
    np.testing.assert_array_equal(truth_maps(record, size=None).heatmap, levels)
    np.testing.assert_array_equal(maps.heatmap, heat)
    np.testing.assert_array_equal(baseline_heatmap(record), heat)
    np.testing.assert_array_equal(maps.mask, part >= 1)
    np.testing.assert_array_equal(maps.truth, official_truth(part))
    np.testing.assert_array_equal(binary_mask(record, size=(512, 512)), official_truth(part))
    np.testing.assert_array_equal(binary_mask(record, min_votes=2, size=(512, 512)), official_truth(part, 2))
    return maps


def test_official_shapes_exactly():
    bbox_info = [
        [rect(10, 20, 60, 45), poly((70, 10), (110, 30), (90, 70), (60, 50))],
        [],
        [poly((15, 25), (55, 25), (55, 60), (15, 60)), rect(100, 5, 120, 70)],
    ]
    maps = assert_matches_official(bbox_info, 130, 90)
    assert maps.votes.max() == 2 and maps.votes[30, 20] == 2
    # boundary pixels are in: the 4-point polygon covers columns 15..55 and rows 25..60 inclusive,
    # the rectangle with the same corners would stop one short (bottom-right exclusive)
    third = truth_maps(record_of([bbox_info[2][:1]], 130, 90), size=None).mask
    assert third[25:61, 15:56].all() and third.sum() == 41 * 36


def test_polygons_partly_outside_the_image():
    bbox_info = [
        [poly((-30, -10), (40, -20), (25, 35), (-5, 30))],
        [poly((50, 20), (200, 10), (90, 300))],
        [poly((-50, -50), (-10, -50), (-30, -5))],  # wholly outside: nothing
    ]
    maps = assert_matches_official(bbox_info, 64, 48)
    assert maps.votes[0, 0] == 1 and maps.votes[47, 63] == 1 and maps.votes.max() == 1


def test_coordinates_far_outside_any_image_are_refused():
    """Up to +-MAX_COORDINATE a polygon is drawn as the official script draws it; beyond, the parser
    and the rasteriser refuse it (cv2.fillPoly would take seconds per shape)."""
    from evalmuse_models.data import RecordError
    from evalmuse_models.data.masks import MAX_COORDINATE

    edge = [[poly((2, 3), (MAX_COORDINATE, 3), (MAX_COORDINATE, MAX_COORDINATE), (-MAX_COORDINATE, 30))]]
    assert_matches_official(edge, 40, 36)
    far = [[poly((2, 3), (MAX_COORDINATE + 1, 3), (2, 30))]]
    with pytest.raises(RecordError, match=r"annotator 0 shape 0\.bbox\[1\]\[0\] = 1048577.0 is no pixel position"):
        record_of(far, 40, 36)
    with pytest.raises(ValueError, match="within"):
        vote_map([[{"type": "polygon", "points": [[2, 3], [-1e9, 3], [2, 30]]}]], 40, 36)


def test_rectangles_with_reversed_corners_cover_nothing():
    bbox_info = [[rect(40, 30, 10, 5)], [rect(10, 30, 40, 5)], [rect(40, 5, 10, 30)], [rect(5, 5, 5, 20)]]
    maps = assert_matches_official(bbox_info, 50, 40)
    assert maps.votes.sum() == 0 and maps.truth.sum() == 0
    # the same corners in the right order do cover
    assert vote_map(record_of([[rect(10, 5, 40, 30)]], 50, 40)).sum() == 30 * 25


def test_rectangles_outside_the_image_are_clipped_not_wrapped():
    bbox_info = [[rect(-5, -8, 12, 10)], [rect(30, 20, 70, 90)], [rect(-20, 5, -2, 15)], [rect(60, 50, 80, 60)]]
    width, height = 50, 40
    reference = as_official_input(bbox_info, width, height)
    maps = assert_matches_official(bbox_info, width, height, reference)
    expected = np.zeros((height, width))
    expected[0:10, 0:12] += 1
    expected[20:40, 30:50] += 1
    np.testing.assert_array_equal(maps.votes, expected)
    # the official script's negative indices count from the far edge: not what was marked
    assert not np.array_equal(official(bbox_info, width, height)[0], expected)


def test_fractional_coordinates_are_truncated_like_int():
    bbox_info = [
        [rect(10.7, 5.2, 30.9, 20.99)],
        [poly((12.5, 8.9), (40.99, 9.1), (25.3, 33.7)), rect(-3.7, -0.5, 4.2, 6.6)],
        [poly((-10.6, 30.2), (15.8, 25.5), (5.1, 45.9), dicts=True)],
    ]
    width, height = 48, 40
    reference = as_official_input(bbox_info, width, height)
    assert_matches_official(bbox_info, width, height, reference)
    votes = vote_map(record_of(bbox_info, width, height))
    assert votes[5:20, 10:30].all() and votes[20, 10] == 0 and votes[5, 30] == 0  # [10, 30) x [5, 20)
    # the official script itself cannot take them (why a rule is needed at all)
    with pytest.raises(TypeError):
        official(bbox_info[:1], width, height)
    with pytest.raises(cv2.error):
        official([[poly((12.5, 8.9), (40.99, 9.1), (25.3, 33.7))]], width, height)


def test_both_polygon_vertex_shapes_give_the_same_mask():
    points = [(5, 5), (40, 8), (33, 30), (8, 26)]
    pairs, dicts = [[poly(*points)]], [[poly(*points, dicts=True)]]
    assert_matches_official(dicts, 48, 36, reference_input=pairs)
    np.testing.assert_array_equal(vote_map(record_of(pairs, 48, 36)), vote_map(record_of(dicts, 48, 36)))


def test_empty_annotators():
    for bbox_info in ([[], [], []], [], [None, [], {}]):
        record = record_of(bbox_info, 40, 30)
        maps = truth_maps(record)
        assert maps.votes.shape == (30, 40) and maps.votes.sum() == 0
        assert maps.truth.shape == (512, 512) and maps.truth.sum() == 0 and maps.heatmap.sum() == 0
    assert_matches_official([[], [rect(2, 3, 20, 25)], []], 40, 30)


def test_four_and_more_overlapping_annotators():
    square = rect(4, 4, 36, 28)
    four = [[square], [rect(4, 4, 20, 28)], [poly((4, 4), (36, 4), (20, 27))], [square]]
    maps = assert_matches_official(four, 40, 32)
    assert maps.votes.max() == 4 and set(np.unique(truth_maps(record_of(four, 40, 32), size=None).heatmap)) == {
        0, 64, 127, 180, 255}
    # five or six: the official script leaves 5, 6 unmapped (nearly background); here they saturate at 255
    six = [[square]] * 6
    part, levels, _ = official(six, 40, 32)
    assert levels.max() == 6
    _, expected_levels, expected_heat = official([[square]] * 4, 40, 32)
    maps = truth_maps(record_of(six, 40, 32))
    np.testing.assert_array_equal(maps.votes, part)
    np.testing.assert_array_equal(maps.heatmap, expected_heat)
    np.testing.assert_array_equal(truth_maps(record_of(six, 40, 32), size=None).heatmap, expected_levels)
    for k in range(1, 8):
        np.testing.assert_array_equal(binary_mask(record_of(six, 40, 32), min_votes=k, size=(512, 512)),
                                      official_truth(part, k))


@pytest.mark.filterwarnings("ignore:the logistic fit did not converge")
def test_truth_is_what_the_scorer_makes_of_the_original_size_mask():
    """Submitting the original-size truth reproduces the stored truth: precision = recall = 1."""
    from evalmuse_models.metrics import binarize_prediction, structure_final_score

    images = [
        ([[rect(100, 120, 400, 380)], [poly((600, 600), (900, 650), (800, 950))], []], 1024, 1024),
        ([[rect(10, 10, 150, 90), rect(300, 200, 420, 300)], [], []], 437, 311),
        ([[poly((5, 5), (700, 40), (350, 500), dicts=True)], [rect(50, 50, 300, 200)], []], 769, 577),
    ]
    truths, originals = [], []
    for bbox_info, width, height in images:
        maps = truth_maps(record_of(bbox_info, width, height))
        np.testing.assert_array_equal(maps.truth, binarize_prediction(maps.mask))
        truths.append(maps.truth)
        originals.append(maps.mask)
    scores = structure_final_score([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], originals, truths, progress=False)
    assert scores["precision"] == pytest.approx(1.0) and scores["recall"] == pytest.approx(1.0)


def test_bad_input_is_refused_clearly():
    record = record_of([[rect(1, 1, 5, 5)]], 10, 10)
    with pytest.raises(ValueError, match="min_votes"):
        truth_maps(record, min_votes=0)
    with pytest.raises(ValueError, match="min_votes"):
        truth_maps(record, min_votes=1.5)
    with pytest.raises(ValueError, match="size must be"):
        truth_maps(record, size=(512,))
    with pytest.raises(ValueError, match="size must be positive"):
        truth_maps(record, size=(0, 512))
    with pytest.raises(ValueError, match="finite"):
        vote_map([[{"type": "polygon", "points": [[0, 0], [float("inf"), 0], [0, 5]]}]], 10, 10)
    with pytest.raises(ValueError, match="2 corners"):
        vote_map([[{"type": "rectangle", "points": [[0, 0], [3, 3], [5, 5]]}]], 10, 10)
    with pytest.raises(ValueError, match="unknown shape type"):
        vote_map([[{"type": "circle", "points": [[0, 0], [3, 3]]}]], 10, 10)


coordinate = st.integers(-30, 90)
shape = st.one_of(
    st.tuples(coordinate, coordinate, coordinate, coordinate).map(lambda v: rect(*v)),
    st.tuples(st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=7), st.booleans()).map(
        lambda a: poly(*a[0], dicts=a[1])),
)


@settings(max_examples=80, deadline=None)
@given(bbox_info=st.lists(st.lists(shape, max_size=3), max_size=4), width=st.integers(1, 70),
       height=st.integers(1, 70))
def test_random_annotations_match_the_official_drawing(bbox_info, width, height):
    assert_matches_official(bbox_info, width, height, as_official_input(bbox_info, width, height))


# --- every place a truth mask or heatmap is made ---------------------------------------------


def _raw_annotations(structure_release):
    raw = {}
    for name in ("train_info.json", "val_info.json", "test_info.json"):
        raw.update(json.loads((structure_release / name).read_text()))
    return raw


def test_dataset_columns_and_evaluation_truth_follow_the_official_rule(prepared_dataset, structure_release):
    """The prepared dataset's ``mask``/``heatmap`` columns, the training targets at another size and
    the truth masks of training, demo and CLI evaluation (``truth_masks``) against the drawing."""
    from datasets import load_dataset
    from PIL import Image

    from evalmuse_models.evaluation.structure import truth_masks
    from evalmuse_models.training.structure import _heatmap_array

    raw = _raw_annotations(structure_release)
    split = load_dataset(str(prepared_dataset), "structure", split="validation")
    truths, majority = truth_masks(split), truth_masks(split, min_votes=2)
    assert len(truths) == len(split) > 0
    compared = 0
    for i, row in enumerate(split):
        width, height = row["image"].size
        bbox_info = raw[row["image_name"]]["bbox_info"]
        part, levels, heat = official(as_official_input(bbox_info, width, height), width, height)
        np.testing.assert_array_equal(np.asarray(row["mask"]), np.where(part >= 1, 255, 0))
        np.testing.assert_array_equal(np.asarray(row["heatmap"]), heat)
        np.testing.assert_array_equal(truths[i], official_truth(part))
        np.testing.assert_array_equal(majority[i], official_truth(part, 2))
        np.testing.assert_array_equal(_heatmap_array(row, 128), cv2.resize(levels, (128, 128)))
        np.testing.assert_array_equal(_heatmap_array(row, 512), heat)
        compared += int(part.any())
    assert compared >= 3
    # a row whose image is not decoded gives the same truth (its size is read from the header)
    buffer = io.BytesIO()
    Image.new("RGB", split[0]["image"].size).save(buffer, format="PNG")
    row = {"shapes": split[0]["shapes"], "image": {"bytes": buffer.getvalue(), "path": None}}
    np.testing.assert_array_equal(binary_mask(row, size=(512, 512)), truths[0])

