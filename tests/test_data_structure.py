"""EvalMuse-Structure parser, mask rasterising and the synthetic structure release."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalmuse_models.data import (
    HEATMAP_LEVELS,
    RecordError,
    Shape,
    baseline_heatmap,
    binary_mask,
    find_structure_files,
    load_structure_records,
    parse_structure_record,
    rasterize_annotators,
    resolve_images,
    vote_map,
)
from evalmuse_models.utils import UserInputError

RECORD = {
    "prompt_en": "a girl holding a cat",
    "mos": 2.6666666666666665,
    "bbox_info": [
        [],
        [{"bbox_type": 1, "bbox": [{"x": 10, "y": 20}, {"x": 30.5, "y": 40}]}],
        [
            {"bbox_type": 2, "bbox": [[10, 20], [30, 20], [30, 40], [10, 40]]},
            {"bbox_type": 2, "bbox": [{"x": 50, "y": 50}, {"x": 60, "y": 50}, {"x": 55, "y": 58}]},
        ],
    ],
}


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_parse_record_with_every_shape_form():
    record = parse_structure_record("a2dc7a57", RECORD, source="train_info.json")
    assert record.image_name == "a2dc7a57" and record.prompt == "a girl holding a cat"
    assert record.mos == pytest.approx(8 / 3)
    assert record.num_annotators == 3 and record.shapes[0] == []
    assert record.shapes[1] == [Shape("rectangle", ((10.0, 20.0), (30.5, 40.0)))]
    assert record.shapes[2][0].type == "polygon" and len(record.shapes[2][0].points) == 4
    assert record.shapes[2][1].points == ((50.0, 50.0), (60.0, 50.0), (55.0, 58.0))
    assert record.shapes_as_dicts()[1] == [{"type": "rectangle", "points": [[10.0, 20.0], [30.5, 40.0]]}]


def test_rectangle_corners_kept_as_given_and_missing_mos():
    raw = {"prompt_en": "x", "bbox_info": [[{"bbox_type": "1", "bbox": [{"x": 30, "y": 5}, {"x": 10, "y": 25}]}]]}
    record = parse_structure_record("k.jpg", raw)
    assert record.image_name == "k"  # an extension in the key is dropped
    assert record.mos is None
    # top-left, bottom-right as annotated: the organisers' slicing gives nothing for reversed x
    assert record.shapes[0][0].points == ((30.0, 5.0), (10.0, 25.0))
    assert vote_map(record, width=40, height=40).sum() == 0
    flat = parse_structure_record("f", {"prompt_en": "x", "bbox_info": [[{"bbox_type": 1, "bbox": [1, 2, 3, 4]}]]})
    assert flat.shapes[0][0].points == ((1.0, 2.0), (3.0, 4.0))


@pytest.mark.parametrize(
    "change, field, reason",
    [
        ({"bbox_info": [[{"bbox_type": 2, "bbox": [[1, 2], [3, 4]]}]]}, "bbox_info", "at least 3 points"),
        ({"bbox_info": [[{"bbox_type": 3, "bbox": [[1, 2], [3, 4]]}]]}, "bbox_info", "bbox_type must be 1"),
        ({"bbox_info": [[{"bbox_type": 1, "bbox": [{"x": 1, "y": 2}]}]]}, "bbox_info", "2 corners"),
        ({"bbox_info": [[{"bbox_type": 1, "bbox": [{"x": 1}, {"x": 2, "y": 3}]}]]}, "bbox_info", "'x' and 'y'"),
        ({"bbox_info": [[{"bbox_type": 2, "bbox": [[1, 2], [3, "a"], [4, 4]]}]]}, "bbox_info", "must be a number"),
        ({"bbox_info": [[{"bbox_type": 2, "bbox": [[1, 2], [3, float("nan")], [4, 4]]}]]}, "bbox_info", "finite"),
        ({"bbox_info": [[{"bbox": [[1, 2]]}]]}, "bbox_info", "no 'bbox_type'"),
        ({"bbox_info": "none"}, "bbox_info", "one entry per annotator"),
        ({"mos": 7}, "mos", r"\[1, 5\]"),
        ({"mos": "bad"}, "mos", "must be a number"),
        ({"prompt_en": None}, "prompt_en", "must be a string"),
    ],
)
def test_bad_fields_name_file_key_and_field(change, field, reason):
    raw = dict(RECORD, **change)
    with pytest.raises(RecordError, match=reason) as info:
        parse_structure_record("img123", raw, source="val_info.json")
    assert info.value.field == field and info.value.record == "'img123'"
    message = str(info.value)
    assert "val_info.json" in message and "'img123'" in message and repr(field) in message


def test_polygon_error_names_annotator_and_shape(tmp_path):
    data = {"ok": RECORD, "bad": dict(RECORD, bbox_info=[[], [], [{"bbox_type": 2, "bbox": [[1, 2], [3, 4]]}]])}
    path = write_json(tmp_path / "train_info.json", data)
    with pytest.raises(RecordError, match="annotator 2 shape 0: a polygon needs at least 3 points"):
        load_structure_records(path)
    skipped = []
    records = load_structure_records(path, skip_invalid=True, skipped=skipped)
    assert [r.image_name for r in records] == ["ok"]
    assert skipped[0].record == "'bad'" and skipped[0].field == "bbox_info"


@pytest.mark.parametrize("field", ["prompt_en", "bbox_info"])
def test_missing_field(tmp_path, field):
    raw = dict(RECORD)
    del raw[field]
    with pytest.raises(RecordError, match="missing"):
        load_structure_records(write_json(tmp_path / "train_info.json", {"k": raw}))


def test_wrong_top_level(tmp_path):
    with pytest.raises(UserInputError, match="keyed by image name"):
        load_structure_records(write_json(tmp_path / "train_info.json", [RECORD]))
    (tmp_path / "val_info.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserInputError, match="val_info.json: not valid JSON"):
        load_structure_records(tmp_path / "val_info.json")


@pytest.mark.parametrize("layout", ["beside", "subfolder"])
def test_images_beside_or_in_split_folder(tmp_path, layout):
    from PIL import Image

    write_json(tmp_path / "val_info.json", {"abc": RECORD})
    folder = tmp_path if layout == "beside" else tmp_path / "val"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (70, 90)).save(folder / "abc.jpg")
    records = load_structure_records(tmp_path / "val_info.json")
    assert records[0].image_path == folder / "abc.jpg"
    resolve_images(records)
    assert (records[0].width, records[0].height) == (70, 90)
    assert {k: v.name for k, v in find_structure_files(tmp_path).items()} == {"validation": "val_info.json"}


def test_resolve_images_reports_a_missing_image(tmp_path):
    records = load_structure_records(write_json(tmp_path / "test_info.json", {"nope": RECORD}))
    assert records[0].image_path is None
    with pytest.raises(RecordError, match="no image nope.jpg"):
        resolve_images(records)


# --- rasterising ------------------------------------------------------------------------------


def rect(x1, y1, x2, y2):
    return Shape("rectangle", ((x1, y1), (x2, y2)))


def poly(*points):
    return Shape("polygon", tuple(points))


def test_rectangle_covers_exact_pixels():
    masks = rasterize_annotators([[rect(2, 3, 5, 7)], []], width=10, height=10)
    assert masks.shape == (2, 10, 10) and masks.dtype == np.uint8
    expected = np.zeros((10, 10), np.uint8)
    expected[3:7, 2:5] = 1  # mask[y1:y2, x1:x2]: the bottom-right corner is exclusive
    np.testing.assert_array_equal(masks[0], expected)
    assert masks[1].sum() == 0
    # fractional corners are truncated like int(): columns 2..3, row 3
    fractional = rasterize_annotators([[rect(2.5, 3.2, 4.1, 4.9)]], 10, 10)[0]
    assert fractional.sum() == 2 * 1 and fractional[3, 2:4].all()


def test_polygon_area_and_dict_form():
    triangle = poly((0, 0), (40, 0), (0, 40))
    area = int(rasterize_annotators([[triangle]], 50, 50)[0].sum())
    assert area == 41 * 42 // 2  # cv2.fillPoly includes the outline: every pixel with i + j <= 40
    # a rectangle given as a polygon also covers its bottom and right edges (the rectangle's
    # bottom-right corner is exclusive)
    np.testing.assert_array_equal(
        rasterize_annotators([[poly((10, 20), (30, 20), (30, 40), (10, 40))]], 50, 50),
        rasterize_annotators([[rect(10, 20, 31, 41)]], 50, 50),
    )
    as_dict = {"type": "polygon", "points": [[0, 0], [40, 0], [0, 40]]}
    np.testing.assert_array_equal(rasterize_annotators([[as_dict]], 50, 50), rasterize_annotators([[triangle]], 50, 50))


def test_shapes_outside_the_image_are_clipped():
    width, height = 20, 10
    masks = rasterize_annotators(
        [[rect(-5, -5, 4, 3)], [poly((15, 5), (1e6, 5), (1e6, 1e6), (15, 1e6))], [rect(30, 30, 40, 40)]],
        width, height,
    )
    expected = np.zeros((height, width), np.uint8)
    expected[0:3, 0:4] = 1
    np.testing.assert_array_equal(masks[0], expected)
    assert masks[1][5:, 15:].all() and masks[1][:5].sum() == 0 and masks[1][:, :15].sum() == 0
    assert masks[2].sum() == 0


def test_votes_binary_mask_and_heatmap_levels():
    shapes = [[rect(0, 0, 4, 4)], [rect(0, 0, 3, 3)], [rect(0, 0, 2, 2)], [rect(0, 0, 1, 1)], []]
    votes = vote_map(shapes, 8, 8)
    assert votes[0, 0] == 4 and votes[1, 1] == 3 and votes[2, 2] == 2 and votes[3, 3] == 1 and votes[5, 5] == 0
    np.testing.assert_array_equal(binary_mask(shapes, 8, 8), votes >= 1)
    np.testing.assert_array_equal(binary_mask(shapes, 8, 8, min_votes=2), votes >= 2)
    heat = baseline_heatmap(shapes, 8, 8, size=None)
    assert [heat[i, i] for i in range(5)] == [255, 180, 127, 64, 0]
    assert set(np.unique(heat)) == set(HEATMAP_LEVELS)
    # resized like the baseline: bilinear, so borders take values between the levels
    heat512 = baseline_heatmap(shapes, 8, 8)
    assert heat512.shape == (512, 512) and heat512.dtype == np.uint8
    assert heat512[0, 0] == 255 and heat512[511, 511] == 0 and len(np.unique(heat512)) > 5
    with pytest.raises(ValueError, match="min_votes"):
        binary_mask(shapes, 8, 8, min_votes=0)


def test_one_liners_on_records_and_dataset_rows():
    from PIL import Image

    record = parse_structure_record("k", RECORD)
    with pytest.raises(ValueError, match="image size is unknown"):
        binary_mask(record)
    record.width, record.height = 80, 60
    truth = binary_mask(record, size=(512, 512))
    assert truth.shape == (512, 512) and set(np.unique(truth)) == {0, 1}
    union = binary_mask(record)
    assert union.shape == (60, 80)
    assert union[30, 20] == 1 and union[54, 55] == 1 and union[0, 0] == 0
    assert binary_mask(record, min_votes=2).sum() < union.sum()
    row = {"shapes": record.shapes_as_dicts(), "image": Image.new("RGB", (80, 60))}
    np.testing.assert_array_equal(binary_mask(row, size=(512, 512)), truth)
    np.testing.assert_array_equal(baseline_heatmap(row), baseline_heatmap(record))


shape_strategy = st.one_of(
    st.tuples(st.floats(-100, 200), st.floats(-100, 200), st.floats(-100, 200), st.floats(-100, 200)).map(
        lambda v: rect(*v)),
    # far outside the image too (drawing time grows with the range; the coordinate limit is tested elsewhere)
    st.lists(st.tuples(st.floats(-1e5, 1e5), st.floats(-1e5, 1e5)), min_size=3, max_size=8).map(
        lambda pts: poly(*pts)),
)


@settings(max_examples=60, deadline=None)
@given(
    annotators=st.lists(st.lists(shape_strategy, max_size=3), min_size=1, max_size=4),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
)
def test_rasterising_never_crashes_and_is_consistent(annotators, width, height):
    masks = rasterize_annotators(annotators, width, height)
    assert masks.shape == (len(annotators), height, width) and set(np.unique(masks)) <= {0, 1}
    votes = vote_map(annotators, width, height)
    np.testing.assert_array_equal(votes, masks.sum(axis=0))
    previous = binary_mask(annotators, width, height, min_votes=1)
    for k in range(2, len(annotators) + 2):
        current = binary_mask(annotators, width, height, min_votes=k)
        assert (current <= previous).all()
        previous = current
    assert set(np.unique(baseline_heatmap(annotators, width, height, size=None))) <= set(HEATMAP_LEVELS)
    assert baseline_heatmap(annotators, width, height, size=(32, 16)).shape == (16, 32)
    union, majority = (binary_mask(annotators, width, height, min_votes=k, size=(32, 16)) for k in (1, 2))
    assert union.shape == (16, 32) and (majority <= union).all()


# --- the synthetic release -------------------------------------------------------------------


def _structure_records(release):
    files = find_structure_files(release)
    assert set(files) == {"train", "validation", "test"}
    out = {}
    for split, path in files.items():
        out[split] = load_structure_records(path)
        resolve_images(out[split])
    return out


def test_synthetic_structure_release_format(structure_release):
    raw = json.loads((structure_release / "train_info.json").read_text())
    value = next(iter(raw.values()))
    assert set(value) == {"prompt_en", "mos", "bbox_info"} and len(value["bbox_info"]) == 3
    types, vertex_forms = set(), set()
    for value in raw.values():
        for annotator in value["bbox_info"]:
            for shape in annotator:
                types.add(shape["bbox_type"])
                if shape["bbox_type"] == 1:
                    assert all(set(p) == {"x", "y"} for p in shape["bbox"])
                else:
                    vertex_forms.add(type(shape["bbox"][0]).__name__)
    assert types == {1, 2} and vertex_forms == {"list", "dict"}
    assert (structure_release / "train").is_dir() and (structure_release / "test").is_dir()


def test_synthetic_structure_release_content(structure_release):
    from evalmuse_models.data.synthetic import real_structure_mos

    splits = _structure_records(structure_release)
    records = [r for rs in splits.values() for r in rs]
    assert len(records) == 60 and all(r.mos is not None for r in records)  # test labelled too
    sizes = {(r.width, r.height) for r in records}
    assert len(sizes) > 20 and all(160 <= w <= 400 and 160 <= h <= 400 for w, h in sizes)
    assert {r.mos for r in records} <= set(real_structure_mos().tolist())
    assert any(all(not a for a in r.shapes) for r in records)  # some images have no problem at all
    # MOS is tied to the damage: the marked area grows as MOS falls
    area = np.array([binary_mask(r).mean() for r in records])
    mos = np.array([r.mos for r in records])
    assert np.corrcoef(area, mos)[0, 1] < -0.5


def test_synthetic_damage_is_visible_at_low_resolution(structure_release):
    """Inside the marked regions the 64x64 image is far busier than outside them."""
    import cv2
    from PIL import Image

    inside, outside = [], []
    for r in [r for rs in _structure_records(structure_release).values() for r in rs]:
        small = np.asarray(Image.open(r.image_path).convert("L").resize((64, 64), Image.BILINEAR), np.float64)
        detail = np.abs(cv2.Laplacian(small, cv2.CV_64F))
        mask = binary_mask(r, min_votes=2, size=(64, 64)).astype(bool)
        if mask.sum() > 20:
            inside.append(detail[mask].mean())
            outside.append(detail[~mask].mean())
    assert len(inside) > 15
    assert np.median(np.array(inside) / np.array(outside)) > 3


def test_synthetic_structure_is_deterministic_and_flat_layout(tmp_path):
    from evalmuse_models.data.synthetic import write_structure_release

    write_structure_release(tmp_path / "a", num_images=5, seed=1, layout="flat")
    write_structure_release(tmp_path / "b", num_images=5, seed=1, layout="flat")
    assert (tmp_path / "a" / "train_info.json").read_text() == (tmp_path / "b" / "train_info.json").read_text()
    jpgs = sorted(p.name for p in (tmp_path / "a").glob("*.jpg"))
    assert len(jpgs) == 5
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in jpgs)
    records = load_structure_records(tmp_path / "a" / "train_info.json")
    assert all(r.image_path is not None and r.image_path.parent == tmp_path / "a" for r in records)
