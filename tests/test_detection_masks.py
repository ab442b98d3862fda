"""Structure masks from an instance-segmentation model's COCO results (``--masks-from``) and min–max rescaled
submissions (``submit --rescale minmax``).

The detections are written here by hand in mmdetection's results format; the masks they should give are
drawn here independently (NumPy slices, ``cv2.fillPoly``) and encoded with pycocotools as a detector does.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from evalmuse_models.cli import main
from evalmuse_models.metrics import (
    binarize_prediction,
    read_structure_pickle,
    score_structure_files,
    structure_final_score,
    write_structure_truth,
)
from evalmuse_models.scoring import read_results, rle_to_mask, score
from evalmuse_models.scoring.detections import DEFAULT_CATEGORIES, DEFAULT_MIN_SCORE, load_detection_masks
from evalmuse_models.scoring.submission import rescale_minmax, write_submission
from evalmuse_models.utils import UserInputError

DISTORTION, HAND = 2, 1


def rect(size, x0, y0, x1, y1):
    """A (height, width) uint8 mask with pixels x0 <= x < x1, y0 <= y < y1 set."""
    mask = np.zeros(size, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def rle_str(mask):
    """The RLE a detector writes: pycocotools' compressed counts as a string."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def rle_list(mask):
    """COCO's uncompressed RLE (column-major runs, starting with zeros), counted here."""
    flat = mask.ravel(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def det(image_id, category, score, segmentation, **extra):
    return {"image_id": image_id, "bbox": [0, 0, 1, 1], "score": score, "category_id": category,
            "segmentation": segmentation, **extra}


# Three images: their sizes (height, width) and what the detector found.
SIZES = {"a.jpg": (30, 40), "b.png": (20, 25), "c.jpg": (16, 16)}
IDS = {"a.jpg": 11, "b.png": 7, "c.jpg": 3}
A1 = rect(SIZES["a.jpg"], 2, 3, 12, 15)
A2 = rect(SIZES["a.jpg"], 8, 10, 30, 20)  # overlaps A1
A3 = rect(SIZES["a.jpg"], 32, 0, 40, 6)  # score below 0.3
A4 = rect(SIZES["a.jpg"], 0, 25, 40, 30)  # another category
TRIANGLE = [[3.0, 2.0, 21.0, 4.0, 9.0, 17.0]]  # b.png, x/y pairs


def annotation_file(tmp_path):
    path = tmp_path / "test.json"
    images = [{"id": IDS[name], "file_name": name, "height": h, "width": w} for name, (h, w) in SIZES.items()]
    categories = [{"id": HAND, "name": "hand"}, {"id": DISTORTION, "name": "distortion"}]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    return path


def results_file(tmp_path, records, name="results.segm.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def detections():
    return [
        det(11, DISTORTION, 0.91, rle_str(A1)),
        det(11, DISTORTION, 0.3, rle_list(A2)),  # exactly at the threshold: kept
        det(11, DISTORTION, 0.29, rle_str(A3)),
        det(11, HAND, 0.99, rle_str(A4)),
        det(7, DISTORTION, 0.5, [[2, 3, 10, 3, 10, 8, 2, 8], *TRIANGLE]),  # a rectangle and a triangle
        det(3, DISTORTION, 0.1, rle_str(rect(SIZES["c.jpg"], 0, 0, 8, 8))),
    ]


def test_kept_instances_are_united_into_each_images_mask(tmp_path):
    masks = load_detection_masks(results_file(tmp_path, detections()), annotations=annotation_file(tmp_path))
    assert (DEFAULT_CATEGORIES, DEFAULT_MIN_SCORE) == ((2,), 0.3)  # HNU-VPAI's selection
    assert sorted(masks) == ["a", "b", "c"] and masks.complete
    np.testing.assert_array_equal(masks["a"], A1 | A2)
    assert masks.instances("a") == 2 and masks["a"].dtype == np.uint8
    np.testing.assert_array_equal(masks["c"], np.zeros(SIZES["c.jpg"], np.uint8))  # nothing kept: an empty mask
    assert masks.instances("c") == 0 and masks.size("b") == SIZES["b.png"]

    # Polygons are drawn at the image's size from the annotation file: pycocotools' rule takes the pixels
    # whose centres are inside (an axis-aligned rectangle [x0, x1) x [y0, y1)); cv2.fillPoly also takes the
    # pixels on the boundary, so the two may differ only along the polygon's outline.
    b = masks["b"]
    rectangle = rect(SIZES["b.png"], 2, 3, 10, 8)
    points = np.array(TRIANGLE[0]).reshape(-1, 2)
    filled = cv2.fillPoly(np.zeros(SIZES["b.png"], np.uint8), [np.round(points).astype(np.int32)], 1)
    outline = cv2.polylines(np.zeros(SIZES["b.png"], np.uint8), [np.round(points).astype(np.int32)], True, 1)
    outline = cv2.dilate(outline, np.ones((3, 3), np.uint8))
    assert np.all(b[rectangle == 1] == 1)
    differs = (b != (rectangle | filled)) & (rectangle == 0)
    assert differs.sum() < filled.sum() / 3 and np.all(outline[differs] == 1)
    interior = cv2.erode(filled, np.ones((3, 3), np.uint8))
    assert interior.sum() > 20 and np.all(b[interior == 1] == 1)

    # The selection: every category and score, or the hand category alone.
    everything = load_detection_masks(results_file(tmp_path, detections()), annotations=annotation_file(tmp_path),
                                      categories=None, min_score=0.0)
    np.testing.assert_array_equal(everything["a"], A1 | A2 | A3 | A4)
    assert everything.instances("c") == 1
    hands = load_detection_masks(results_file(tmp_path, detections()), annotations=annotation_file(tmp_path),
                                 categories=[HAND], min_score=0.5)
    np.testing.assert_array_equal(hands["a"], A4)
    assert hands.instances("b") == 0


@pytest.mark.parametrize("command", ["score", "submit"])
def test_cli_defaults_are_the_library_defaults(command):
    from evalmuse_models.cli import build_parser

    args = build_parser().parse_args([command, "input", "--out", "out", "--masks-from", "dets.json"])
    assert (tuple(args.mask_categories), args.mask_score) == (DEFAULT_CATEGORIES, DEFAULT_MIN_SCORE)
    assert args.mask_annotations is None


def test_file_name_variant_without_an_annotation_file(tmp_path):
    records = [
        {**det(0, DISTORTION, 0.8, rle_str(A1)), "file_name": "a.jpg"},
        {**det(0, DISTORTION, 0.6, rle_list(A2)), "file_name": "a.jpg"},
        {**det(1, DISTORTION, 0.9, [[2, 3, 10, 3, 10, 8, 2, 8]]), "file_name": "b.png"},  # polygons only
        {**det(2, DISTORTION, 0.05, rle_str(A3)), "file_name": "d.jpg"},  # nothing kept
    ]
    masks = load_detection_masks(results_file(tmp_path, records))
    assert not masks.complete and sorted(masks) == ["a", "b", "d"]
    np.testing.assert_array_equal(masks["a"], A1 | A2)
    assert masks.size("a") == SIZES["a.jpg"] and masks.size("b") is None
    assert "b" in masks and "c" not in masks  # without drawing b's polygons, whose size is unknown
    with pytest.raises(UserInputError, match="size of image 'b' is unknown"):
        masks["b"]
    np.testing.assert_array_equal(masks.mask("b", SIZES["b.png"]), rect(SIZES["b.png"], 2, 3, 10, 8))
    np.testing.assert_array_equal(masks.mask("d", (5, 6)), np.zeros((5, 6), np.uint8))
    np.testing.assert_array_equal(masks.mask("not-detected", (4, 3)), np.zeros((4, 3), np.uint8))
    with pytest.raises(UserInputError, match=r"image 'a' is 31x40 \(height x width\) but record 0's mask makes it 30x40"):
        masks.mask("a", (31, 40))
    masks.check_keys(["a", "zzz"])  # an image the detector found nothing in is fine
    with pytest.raises(UserInputError, match="none of the images .* is named by the detections"):
        masks.check_keys(["x", "y"])


def _error(tmp_path, records, annotations=True, **kwargs):
    path = tmp_path / "bad.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    with pytest.raises(UserInputError) as info:
        load_detection_masks(path, annotations=annotation_file(tmp_path) if annotations else None, **kwargs)
    return str(info.value)


def test_errors_name_the_file_and_the_record(tmp_path):
    assert "bad.json: expected a JSON list" in _error(tmp_path, {"results": []})
    assert "looks like a COCO annotation file" in _error(tmp_path, {"images": [], "annotations": []})
    assert "bad.json: not valid JSON at line 1" in _error(tmp_path, "[{")
    message = _error(tmp_path, [det(11, 2, 0.9, rle_str(A1)), det(99, 2, 0.9, rle_str(A1))])
    assert "bad.json: record 1: unknown image id 99" in message and "test.json has no such image" in message
    message = _error(tmp_path, [det(11, 2, 0.9, {"size": [30, 40], "counts": "not an rle"})])
    assert "record 0 (image 'a'): invalid RLE mask" in message
    assert "counts sum to 11 but size 30x40 needs 1200" in _error(
        tmp_path, [det(11, 2, 0.9, {"size": [30, 40], "counts": [10, 1]})])
    message = _error(tmp_path, [det(7, 2, 0.9, rle_str(A1))])
    assert "record 0 (image 'b'): the mask is 30x40 (height x width) but the image is 20x25" in message
    assert "(as test.json ('b.png') gives it)" in message
    assert "record 0 (image 'b'): invalid polygon" in _error(tmp_path, [det(7, 2, 0.9, [[1, 2, 3, 4]])])
    assert "no 'segmentation': these are box detections" in _error(
        tmp_path, [{"image_id": 11, "category_id": 2, "score": 0.9, "bbox": [1, 2, 3, 4]}])
    assert "'score' must be a finite number" in _error(tmp_path, [det(11, 2, "high", rle_str(A1))])
    assert "'category_id' must be an integer" in _error(tmp_path, [det(11, "2", 0.9, rle_str(A1))])
    assert "test.json: no category 5; its categories are 1 (hand), 2 (distortion)" in _error(
        tmp_path, [], categories=[5])
    message = _error(tmp_path, [det(11, 2, 0.9, rle_str(A1))], annotations=False)
    assert "record 0: no 'file_name' naming the image" in message and "--mask-annotations" in message
    message = _error(tmp_path, [{**det(0, 2, 0.9, rle_str(A1)), "file_name": "a.jpg"},
                                {**det(0, 2, 0.9, rle_str(A2[:, :20])), "file_name": "a.jpg"}], annotations=False)
    assert "record 1 (image 'a'): the mask is 30x20 (height x width) but the image is 30x40" in message
    assert "(as record 0's mask gives it)" in message
    with pytest.raises(UserInputError, match="no such detection results file"):
        load_detection_masks(tmp_path / "missing.json")

    masks = load_detection_masks(results_file(tmp_path, detections()), annotations=annotation_file(tmp_path))
    with pytest.raises(UserInputError, match=r"image 'e' is not in .*test.json \(its 3 images are keyed like 'a'"):
        masks.mask("e", (3, 3))
    with pytest.raises(UserInputError, match=r"2 of the input's images are not in .*test.json \('e', 'f'\)"):
        masks.check_keys(["a", "e", "f"], "the input's images")


def test_rescale_minmax_by_hand():
    assert rescale_minmax({"x": 0.2, "y": -0.6, "z": 1.0}) == {"x": 3.0, "y": 1.0, "z": 5.0}
    rescaled = rescale_minmax({"p": 10.0, "q": 12.5, "r": 20.0})
    assert rescaled == pytest.approx({"p": 1.0, "q": 2.0, "r": 5.0})  # 1 + 4 * 2.5 / 10
    with pytest.raises(UserInputError, match="all 1 score\\(s\\) are 0.4, so there is no range"):
        rescale_minmax({"only": 0.4})
    with pytest.raises(UserInputError, match="all 3 score"):
        rescale_minmax({"a": 2.0, "b": 2.0, "c": 2.0})
    with pytest.raises(UserInputError, match="1 image\\(s\\) have no score \\(b\\)"):
        rescale_minmax({"a": 2.0, "b": None})


# End to end: a tiny structure set scored by the tiny structure model, masks from the detections.

E2E_SIZES = {"img0.png": (48, 64), "img1.png": (40, 40), "img2.jpg": (56, 36), "img3.png": (32, 48)}


@pytest.fixture(scope="module")
def structure_set(tmp_path_factory):
    """Four images, the detector's results (file_name variant) with the expected united masks, and the truth."""
    from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureModel

    root = tmp_path_factory.mktemp("detections")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    records, expected = [], {}
    for i, (name, (h, w)) in enumerate(E2E_SIZES.items()):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
        first = rect((h, w), 2 + i, 3, w // 2, h // 2)
        second = rect((h, w), w - 10, h - 12, w - 2, h - 3)  # apart from the first
        records += [
            {**det(i, DISTORTION, 0.8, rle_str(first)), "file_name": name},
            {**det(i, DISTORTION, 0.45, rle_list(second)), "file_name": name},
            {**det(i, DISTORTION, 0.2, rle_str(rect((h, w), 0, 0, w, h))), "file_name": name},  # too weak
            {**det(i, HAND, 0.95, rle_str(rect((h, w), 0, 0, w, 4))), "file_name": name},  # another category
        ]
        expected[name] = (first | second, [first, second])
    (root / "dets.json").write_text(json.dumps(records))
    truth = {name.rsplit(".", 1)[0]: {"pred_area": binarize_prediction(rect(size, 0, 0, size[1] // 2, size[0] // 2)),
                                      "score": 1.0 + i} for i, (name, size) in enumerate(E2E_SIZES.items())}
    write_structure_truth(truth, root / "gt.pkl")
    EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny")).save_pretrained(root / "model")
    return root, expected


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_score_with_a_structure_model_and_detection_masks_then_submit(structure_set, tmp_path):
    root, expected = structure_set
    plain, combined = tmp_path / "plain.jsonl", tmp_path / "combined.jsonl"
    assert main(["score", str(root / "images"), "--structure", str(root / "model"), "--out", str(plain),
                 "--no-progress"]) == 0
    assert main(["score", str(root / "images"), "--structure", str(root / "model"), "--out", str(combined),
                 "--masks-from", str(root / "dets.json"), "--mask-categories", "2", "--mask-score", "0.3",
                 "--no-progress"]) == 0
    plain_rows, rows = read_results(plain), read_results(combined)
    assert [r["id"] for r in rows] == list(E2E_SIZES) and all(r["status"] == "ok" for r in rows)
    for row, model_row in zip(rows, plain_rows):
        union, parts = expected[row["id"]]
        structure = row["structure"]
        assert structure["score"] == model_row["structure"]["score"]  # the model's score, the detector's mask
        np.testing.assert_array_equal(rle_to_mask(structure["mask"]), union)
        np.testing.assert_array_equal(rle_to_mask(structure["mask_512"]), binarize_prediction(union))
        assert [r["bbox"] for r in structure["regions"]] == [_bbox(p) for p in parts]
        assert [r["area"] for r in structure["regions"]] == [float(p.sum()) for p in parts]
        assert structure["instances"] == 2 and "heatmap_png" not in structure and "threshold" not in structure
        assert row["meta"]["masks_from"] == {"results": str(root / "dets.json"), "annotations": None,
                                             "categories": [2], "min_score": 0.3}

    # Resuming with other detections is refused, as with another model.
    with pytest.raises(UserInputError, match="masks_from"):
        score(root / "images", out=combined, structure=str(root / "model"), progress=False,
              masks=load_detection_masks(root / "dets.json", min_score=0.5))

    # submit: output.pkl holds the detector's masks as the official scorer reads them; scores rescaled to [1, 5].
    assert main(["submit", str(combined), "--out", str(tmp_path / "sub"), "--rescale", "minmax"]) == 0
    submitted = read_structure_pickle(tmp_path / "sub" / "structure" / "output.pkl")
    raw = {r["id"].rsplit(".", 1)[0]: r["structure"]["score"] for r in rows}
    low, high = min(raw.values()), max(raw.values())
    for key, record in submitted.items():
        assert record["score"] == pytest.approx(1 + 4 * (raw[key] - low) / (high - low))
    assert min(r["score"] for r in submitted.values()) == 1.0 and max(r["score"] for r in submitted.values()) == 5.0
    # The official metric scores the submission as it scores the masks at the images' own sizes.
    official = score_structure_files(root / "gt.pkl", tmp_path / "sub" / "structure" / "output.pkl")
    gt = read_structure_pickle(root / "gt.pkl")
    names = list(gt)
    file_names = {name.rsplit(".", 1)[0]: name for name in E2E_SIZES}
    direct = structure_final_score([submitted[k]["score"] for k in names], [gt[k]["score"] for k in names],
                                   [expected[file_names[k]][0] for k in names],
                                   [gt[k]["pred_area"] for k in names])
    assert official == direct and official["recall"] > 0

    # submit --masks-from on the plain results: the same masks replace the model's.
    assert main(["submit", str(plain), "--out", str(tmp_path / "sub2"), "--masks-from", str(root / "dets.json")]) == 0
    replaced = read_structure_pickle(tmp_path / "sub2" / "structure" / "output.pkl")
    for row in plain_rows:
        key = row["id"].rsplit(".", 1)[0]
        np.testing.assert_array_equal(replaced[key]["pred_area"], binarize_prediction(expected[row["id"]][0]))
        assert replaced[key]["score"] == pytest.approx(row["structure"]["score"])


def test_masks_without_a_structure_model_and_submit_refusals(structure_set, tmp_path, capsys):
    root, expected = structure_set
    out = tmp_path / "masks.jsonl"
    masks = load_detection_masks(root / "dets.json")
    summary = score(root / "images", out=out, masks=masks, progress=False)
    assert summary["rows"] == len(E2E_SIZES)
    rows = read_results(out)
    assert all(r["structure"]["score"] is None and r["meta"]["structure_model"] is None for r in rows)
    for row in rows:
        np.testing.assert_array_equal(rle_to_mask(row["structure"]["mask"]), expected[row["id"]][0])
    with pytest.raises(UserInputError, match="4 structure row\\(s\\) have no score .* --structure MODEL"):
        write_submission(out, tmp_path / "sub")
    assert main(["submit", str(out), "--out", str(tmp_path / "sub")]) == 2
    assert "have no score" in capsys.readouterr().err

    # Images the detections do not name at all are refused up front (matched by file name without extension).
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps([{**det(0, 2, 0.9, rle_str(A1)), "file_name": "other.png"}]))
    assert main(["score", str(root / "images"), "--out", str(tmp_path / "x.jsonl"), "--masks-from", str(stray),
                 "--no-progress"]) == 2
    assert "none of the input's images" in capsys.readouterr().err
    assert main(["score", str(root / "images"), "--out", str(tmp_path / "x.jsonl"), "--mask-annotations",
                 str(stray), "--structure", str(root / "model"), "--no-progress"]) == 2
    assert "--mask-annotations is for --masks-from" in capsys.readouterr().err

    # A constant score model cannot be min-max rescaled; --masks-from needs a structure track.
    constant = tmp_path / "constant.jsonl"
    lines = [json.dumps({**r, "structure": {**r["structure"], "score": 2.0}}) for r in rows]
    constant.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match="all 4 score\\(s\\) are 2.0"):
        write_submission(constant, tmp_path / "sub", rescale="minmax")
    with pytest.raises(UserInputError, match="gives no structure submission"):
        write_submission(constant, tmp_path / "sub", track="alignment", masks=masks)
