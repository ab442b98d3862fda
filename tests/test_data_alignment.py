"""EvalMuse-40K parser: hand-written records reproducing each quirk of the release, error
messages, and the synthetic release."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from evalmuse_models.data import (
    ELEMENT_CATEGORIES,
    RecordError,
    element_key_parts,
    find_alignment_files,
    generator_from_img_path,
    load_alignment_records,
    normalize_category,
    parse_alignment_record,
    parse_element_score,
    read_generator_map,
    split_element_key,
)
from evalmuse_models.utils import UserInputError

# A row as it appears in the real test.json: labels null, element values None, flags averaged.
REAL_TEST_ROW = {
    "prompt_id": 3021,
    "prompt": "pig giants attack a medieval city, concept art",
    "type": "real",
    "img_path": "SDXL-Turbo/03021.png",
    "total_score": None,
    "element_score": "{'pig giants (animal)': None, 'attack (activity)': None, 'medieval city (location)': None}",
    "promt_meaningless": 0.333333,
    "split_confidence": 0,
    "attribute_confidence": 0.666667,
    "fidelity_label": ["none", "none", "none"],
}


def train_row(img_path="SDXL-Turbo/00805.png", prompt="pig giants attack", scores=(3, 4, 4), **overrides):
    row = {
        "prompt_id": "00805",
        "prompt": prompt,
        "type": "synthetic",
        "img_path": img_path,
        "total_score": list(scores),
        "element_score": "{'pig giants (animal)': [1, 0, 1], 'attack (activity)': [0, 0, 0]}",
        "promt_meaningless": [0, 0, 1],
        "split_confidence": [0, 0, 0],
        "attribute_confidence": [1, 1, 0],
        "fidelity_label": ["none", "hand", "none"],
    }
    row.update(overrides)
    return row


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_real_test_row_keeps_null_labels():
    record = parse_alignment_record(REAL_TEST_ROW, source="test.json", index=0)
    assert record.prompt_id == "3021"  # ints become strings
    assert record.generator == "SDXL-Turbo"
    assert record.prompt_type == "real"
    assert record.total_score is None and record.total_score_votes is None
    assert [(e.phrase, e.category, e.score, e.votes) for e in record.elements] == [
        ("pig giants", "animal", None, None),
        ("attack", "activity", None, None),
        ("medieval city", "location", None, None),
    ]
    assert record.prompt_meaningless == pytest.approx(0.333333)
    assert record.split_confidence == 0.0
    assert record.attribute_confidence == pytest.approx(0.666667)
    assert record.element_scores() == {"pig giants (animal)": None, "attack (activity)": None,
                                       "medieval city (location)": None}


def test_train_row_is_averaged_like_the_official_preprocessing():
    record = parse_alignment_record(train_row(), source="train_list.json", index=3)
    assert record.total_score == round((3 + 4 + 4) / 3, 6) == 3.666667
    assert record.total_score_votes == [3, 4, 4]
    assert record.elements[0].score == 0.666667 and record.elements[0].votes == [1, 0, 1]
    assert record.elements[1].score == 0.0
    assert record.prompt_meaningless == 0.333333
    assert record.split_confidence == 0.0
    assert record.attribute_confidence == 0.666667
    assert record.fidelity_label == ["none", "hand", "none"] and record.extra == {}
    assert record.to_row()["elements"][0] == {"phrase": "pig giants", "category": "animal", "subcategory": "",
                                              "score": 0.666667, "votes": [1, 0, 1], "key": "pig giants (animal)"}
    assert record.to_row()["fidelity_label"] == ["none", "hand", "none"]


@pytest.mark.parametrize(
    "key, expected",
    [
        ("pig giants (animal)", ("pig giants", "animal")),
        ("man (in red) (human)", ("man (in red)", "human")),  # the category is in the LAST parentheses
        ("a cat(animal)", ("a cat", "animal")),
        ("  two  (counting) ", ("two", "counting")),
        # the category is normalised: raw.split("-")[0].strip().lower()
        ("Pale (Color) ", ("Pale", "color")),
        ("car (object-vehicle)", ("car", "object")),
        ("hat (object-cloth&accessories)", ("hat", "object")),
        ("wood ( Material )", ("wood", "material")),
        # no parenthesised category at the end: the whole key is the phrase, the category "other"
        ("no category", ("no category", "other")),
        ("cat ()", ("cat", "other")),
        ("cat (animal) extra", ("cat (animal) extra", "other")),
        ("x (-vehicle)", ("x", "other")),
    ],
)
def test_split_element_key(key, expected):
    assert split_element_key(key) == expected


@pytest.mark.parametrize(
    "key, expected",
    [
        ("car (object-vehicle)", ("car", "object", "vehicle")),
        ("cup (object-household goods)", ("cup", "object", "household goods")),
        ("hat (object-cloth&accessories)", ("hat", "object", "cloth&accessories")),
        ("Pale (Color) ", ("Pale", "color", "")),
        ("bin (Object - Kitchen-Ware )", ("bin", "object", "Kitchen-Ware")),  # only the first '-' splits
        ("thing", ("thing", "other", "")),
    ],
)
def test_element_key_parts_gives_the_subcategory(key, expected):
    assert element_key_parts(key) == expected
    assert normalize_category(key[key.rfind("(") + 1:key.rfind(")")] if "(" in key else None) == expected[1:]


@pytest.mark.parametrize("key", ["(animal)", "", "   ", " (object-vehicle) "])
def test_split_element_key_rejects_keys_without_a_phrase(key):
    with pytest.raises(ValueError, match="has no phrase"):
        split_element_key(key)


def test_raw_element_keys_are_kept_exactly():
    # Submissions are matched on the truth's keys: a key spelled without the usual space (or with
    # extra spaces) must come back unchanged, not rebuilt from phrase and category.
    elements = parse_element_score("{'a cat(animal)': [1, 1, 0], '  two  (counting) ': [0, 0, 1], 'dog (animal)': [1, 1, 1]}")
    assert [e.key for e in elements] == ["a cat(animal)", "  two  (counting) ", "dog (animal)"]
    assert [(e.phrase, e.category) for e in elements] == [("a cat", "animal"), ("two", "counting"), ("dog", "animal")]
    from evalmuse_models.data.alignment import element_record_key

    assert [element_record_key(row) for row in (e.__dict__ for e in elements)] == [e.key for e in elements]
    assert element_record_key({"phrase": "dog", "category": "animal"}) == "dog (animal)"


def test_element_score_is_parsed_as_a_literal_never_evaluated(tmp_path):
    marker = tmp_path / "executed"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(ValueError, match="Python-literal"):
        parse_element_score(payload)
    assert not marker.exists()
    # an already parsed dict (eval.json style) is accepted too
    assert parse_element_score({"cat (animal)": 0.5})[0].score == 0.5


def test_prompt_variance_groups_by_prompt_text_with_ddof_1(tmp_path):
    rows = [
        train_row("A/1.png", prompt="p1", scores=(3, 4, 4)),
        train_row("B/1.png", prompt="p1", scores=(1, 2, 2)),
        train_row("C/1.png", prompt="p1", scores=(5, 5, 5)),
        train_row("A/2.png", prompt="p2", scores=(2, 2, 2)),  # single image: undefined
    ]
    rows[3]["prompt_id"] = rows[0]["prompt_id"]  # same id, different text: still its own group
    records = load_alignment_records(write_json(tmp_path / "train_list.json", rows))
    means = [3.666667, 1.666667, 5.0]
    expected = statistics.variance(means)
    assert expected == pytest.approx(np.var(means, ddof=1))
    assert [r.prompt_variance for r in records[:3]] == [pytest.approx(expected)] * 3
    assert records[3].prompt_variance is None


def test_test_file_has_no_variance(tmp_path):
    rows = [dict(REAL_TEST_ROW), dict(REAL_TEST_ROW, img_path="PixArt-alpha/03021_1.png")]
    records = load_alignment_records(write_json(tmp_path / "test.json", rows))
    assert [r.prompt_variance for r in records] == [None, None]
    assert records[1].generator == "PixArt-alpha"


def test_re_rated_items_with_six_ratings_are_averaged():
    record = parse_alignment_record(train_row(scores=(1, 3, 3, 4, 4, 4)))
    assert record.total_score == 3.166667 and record.total_score_votes == [1, 3, 3, 4, 4, 4]


def test_correct_spelling_of_prompt_meaningless_is_accepted():
    row = train_row()
    row["prompt_meaningless"] = row.pop("promt_meaningless")
    assert parse_alignment_record(row).prompt_meaningless == 0.333333


def test_missing_confidence_flags_become_none():
    row = train_row()
    for name in ("promt_meaningless", "split_confidence", "attribute_confidence"):
        del row[name]
    record = parse_alignment_record(row)
    assert (record.prompt_meaningless, record.split_confidence, record.attribute_confidence) == (None, None, None)


@pytest.mark.parametrize(
    "change, field, reason",
    [
        ({"img_path": None}, "img_path", "non-empty relative path"),
        ({"img_path": "../secret.png"}, "img_path", "stay inside"),
        ({"img_path": "/abs/x.png"}, "img_path", "relative"),
        ({"prompt_id": 1.5}, "prompt_id", "string or an integer"),
        ({"prompt": 3}, "prompt", "must be a string"),
        ({"type": ""}, "type", "non-empty string"),
        ({"total_score": [3, 7, 4]}, "total_score", r"\[1, 5\]"),
        ({"total_score": []}, "total_score", "empty list"),
        ({"total_score": "4"}, "total_score", "list of integer votes"),
        ({"element_score": "{'cat (animal)': [1, 0"}, "element_score", "Python-literal"),
        ({"element_score": "[1, 2]"}, "element_score", "expected a dict"),
        ({"element_score": "{'(animal)': [1, 1, 1]}"}, "element_score", "has no phrase"),
        ({"element_score": "{3: [1, 1, 1]}"}, "element_score", "is not a string"),
        ({"fidelity_label": "非真实场景"}, "fidelity_label", "list of strings"),
        ({"fidelity_label": [["hand"], []]}, "fidelity_label", "list of strings"),
        ({"element_score": "{'cat (animal)': [1, 2, 0]}"}, "element_score", r"\[0, 1\]"),
        ({"element_score": "{'cat (animal)': [1.0, 0.0]}"}, "element_score", "integer votes"),
        ({"split_confidence": [0, "x"]}, "split_confidence", "integer votes"),
    ],
)
def test_bad_fields_name_file_record_and_field(change, field, reason):
    row = train_row(**change)
    with pytest.raises(RecordError, match=reason) as info:
        parse_alignment_record(row, source="train_list.json", index=7)
    error = info.value
    assert isinstance(error, UserInputError)
    assert error.file == "train_list.json" and error.field == field
    assert error.record.startswith("#7")
    assert "train_list.json" in str(error) and repr(field) in str(error) and "record #7" in str(error)
    assert "--skip-invalid" in str(error)


@pytest.mark.parametrize("field", ["prompt_id", "prompt", "type", "img_path", "total_score", "element_score"])
def test_missing_field(tmp_path, field):
    rows = [train_row("A/0.png"), train_row("A/1.png")]
    del rows[1][field]
    path = write_json(tmp_path / "train_list.json", rows)
    with pytest.raises(RecordError) as info:
        load_alignment_records(path)
    assert info.value.field == field and info.value.reason == "missing"
    assert str(path) in str(info.value) and "#1" in str(info.value)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "train_list.json"
    path.write_text('[{"prompt_id": "1",\n  "prompt": }]', encoding="utf-8")
    with pytest.raises(UserInputError, match=r"train_list.json: not valid JSON at line 2"):
        load_alignment_records(path)


def test_structure_file_given_as_alignment_file(tmp_path):
    path = write_json(tmp_path / "train_list.json", {"abc": {"prompt_en": "x"}})
    with pytest.raises(UserInputError, match="expected a JSON list"):
        load_alignment_records(path)


def test_duplicate_img_path_is_invalid(tmp_path):
    path = write_json(tmp_path / "train_list.json", [train_row("A/0.png"), train_row("A/0.png")])
    with pytest.raises(RecordError, match="duplicate of record #0"):
        load_alignment_records(path)


def test_skip_invalid_collects_reasons(tmp_path):
    rows = [train_row("A/0.png"), train_row("A/1.png", element_score="{oops"), train_row("A/2.png")]
    del rows[2]["prompt"]
    skipped = []
    records = load_alignment_records(write_json(tmp_path / "train_list.json", rows), skip_invalid=True,
                                     skipped=skipped)
    assert [r.img_path for r in records] == ["A/0.png"]
    assert [(s.record, s.field) for s in skipped] == [("#1 (img_path='A/1.png')", "element_score"),
                                                      ("#2 (img_path='A/2.png')", "prompt")]
    assert all(s.file.endswith("train_list.json") and s.reason for s in skipped)


def test_split_files_are_found(tmp_path):
    for name in ("train_list.json", "val.json", "test.json", "prompt_t2i.json"):
        (tmp_path / name).write_text("[]")
    assert {k: v.name for k, v in find_alignment_files(tmp_path).items()} == {
        "train": "train_list.json", "validation": "val.json", "test": "test.json"}


# --- generators: folder of img_path, or a generator map ---------------------------------------


def test_flat_img_path_has_an_unknown_generator_not_its_file_name():
    record = parse_alignment_record(dict(REAL_TEST_ROW, img_path="img_0001.png"))
    assert record.generator == ""
    assert generator_from_img_path("img_0001.png") == ""
    assert generator_from_img_path("SDXL-Turbo\\00805.png") == "SDXL-Turbo"
    assert generator_from_img_path("img_0001.png", {"img_0001.png": "DALLE3"}) == "DALLE3"
    assert generator_from_img_path("./SDXL/1.png", {"SDXL/1.png": "SDXL-Turbo"}) == "SDXL-Turbo"  # map wins


def test_generator_map_csv_and_json_agree(tmp_path):
    csv_path = tmp_path / "generators.csv"
    # a BOM (spreadsheet export), an extra column, columns in another order, a blank line
    csv_path.write_text("\ufeffnote,generator,img_path\nx,SDXL-Turbo,img_0001.png\n\n,DALLE3 ,sub\\img_0002.png\n",
                        encoding="utf-8")
    json_path = write_json(tmp_path / "generators.json", {"img_0001.png": "SDXL-Turbo", "sub/img_0002.png": "DALLE3"})
    expected = {"img_0001.png": "SDXL-Turbo", "sub/img_0002.png": "DALLE3"}
    assert read_generator_map(csv_path) == expected
    assert read_generator_map(json_path) == expected
    tsv_path = tmp_path / "generators.tsv"
    tsv_path.write_text("img_path\tgenerator\nimg_0001.png\tSDXL-Turbo\n", encoding="utf-8")
    assert read_generator_map(tsv_path) == {"img_0001.png": "SDXL-Turbo"}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("g.csv", "img_path,generator\na.png,X\nb.png,Y\na.png,X\n", r"g.csv: row 4: img_path 'a.png' is listed twice \(first at row 2\)"),
        ("g.json", '{"a.png": "X", "a.png": "Y"}', r"g.json: key 'a.png': img_path 'a.png' is listed twice"),
        ("g.csv", "image,model\na.png,X\n", r"g.csv: missing column\(s\) img_path, generator.*found: 'image', 'model'"),
        ("g.csv", "img_path,name\na.png,X\n", r"missing column\(s\) generator"),
        ("g.csv", "", "empty file"),
        ("g.csv", "img_path,generator\n", "lists no image"),
        ("g.csv", "img_path,generator\na.png,\n", r"row 2 \(img_path='a.png'\): the generator must be a non-empty"),
        ("g.csv", "img_path,generator\n../a.png,X\n", "row 2: img_path .*stay inside"),
        ("g.json", '{"a.png": 3}', "must be a non-empty string, got 3"),
        ("g.json", '[{"img_path": "a.png", "generator": "X"}]', "expected one JSON object .*got a list"),
        ("g.json", '{"a.png": "X",}', "g.json: not valid JSON at line 1"),
        ("g.txt", "a.png X", r"must be a .csv file .* or a .json object"),
    ],
)
def test_generator_map_errors_name_file_and_entry(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError, match=message):
        read_generator_map(path)


def test_generator_map_missing_or_not_utf8(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        read_generator_map(tmp_path / "nope.csv")
    (tmp_path / "latin.csv").write_bytes("img_path,generator\ncaf\xe9.png,X\n".encode("latin-1"))
    with pytest.raises(UserInputError, match="not UTF-8"):
        read_generator_map(tmp_path / "latin.csv")


# --- the synthetic release -------------------------------------------------------------------


def _all_records(release):
    files = find_alignment_files(release)
    assert set(files) == {"train", "validation", "test"}
    assert files["validation"].name == "val_list.json"
    return {split: load_alignment_records(path) for split, path in files.items()}


def test_synthetic_release_matches_the_raw_format(alignment_release):
    raw = json.loads((alignment_release / "train_list.json").read_text())
    row = raw[0]
    assert set(row) == {"prompt_id", "prompt", "type", "img_path", "total_score", "element_score",
                        "promt_meaningless", "split_confidence", "attribute_confidence", "fidelity_label"}
    assert isinstance(row["element_score"], str) and row["element_score"].startswith("{'")
    assert len(row["total_score"]) == 3 and all(isinstance(v, int) for v in row["total_score"])
    test_row = json.loads((alignment_release / "test.json").read_text())[0]
    assert test_row["total_score"] is None
    assert "None" in test_row["element_score"] and "[" not in test_row["element_score"]
    assert isinstance(test_row["split_confidence"], float)


def test_synthetic_release_content(alignment_release):
    splits = _all_records(alignment_release)
    records = [r for rs in splits.values() for r in rs]
    prompts = {split: {r.prompt_id for r in rs} for split, rs in splits.items()}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["train"] & prompts["validation"])
    assert len(set().union(*prompts.values())) == 48
    generators = {r.generator for r in records}
    assert len(generators) >= 3
    assert any(r.img_path.endswith("_1.png") for r in records)
    assert {e.category for r in records for e in r.elements} <= set(ELEMENT_CATEGORIES)
    assert {r.prompt_type for r in records} == {"real", "synthetic"}
    for r in records:
        assert (alignment_release / r.img_path).is_file()
        for e in r.elements:
            assert e.phrase in r.prompt.lower()  # phrases are spans of the prompt
    assert all(r.total_score is None and all(e.score is None for e in r.elements) for r in splits["test"])
    assert all(r.total_score is not None for r in splits["train"] + splits["validation"])
    # the hidden truth of the test split, in the official eval.json format
    truth = json.loads((alignment_release / "test_eval.json").read_text())
    assert sorted(t["img_path"] for t in truth) == sorted(r.img_path for r in splits["test"])


def test_synthetic_ratings_follow_drawn_elements_and_generators_differ(alignment_release):
    records = [r for rs in _all_records(alignment_release).values() for r in rs if r.total_score is not None]
    present = np.array([np.mean([e.score for e in r.elements]) for r in records])
    overall = np.array([r.total_score for r in records])
    assert np.corrcoef(present, overall)[0, 1] > 0.6
    by_generator = {}
    for r in records:
        by_generator.setdefault(r.generator, []).append(r.total_score)
    means = sorted(np.mean(v) for v in by_generator.values())
    assert means[-1] - means[0] > 0.8
    # annotators disagree sometimes, but not always
    votes = [tuple(e.votes) for r in records for e in r.elements]
    split_votes = sum(len(set(v)) > 1 for v in votes) / len(votes)
    assert 0.05 < split_votes < 0.5


def test_synthetic_colour_elements_are_visible(alignment_release):
    from PIL import Image

    from evalmuse_models.data.synthetic import COLORS

    hits = {True: [], False: []}
    for r in load_alignment_records(alignment_release / "train_list.json"):
        pixels = np.asarray(Image.open(alignment_release / r.img_path).convert("RGB")).reshape(-1, 3).astype(int)
        for e in r.elements:
            if e.category != "color" or e.score not in (0.0, 1.0):
                continue
            close = np.abs(pixels - np.array(COLORS[e.phrase])).sum(axis=1) < 30
            hits[e.score == 1.0].append(close.mean() > 0.002)
    assert len(hits[True]) > 20 and all(hits[True])  # voted present -> drawn
    assert np.mean(hits[False]) < 0.6  # voted absent -> mostly not drawn


def test_synthetic_release_is_deterministic(tmp_path):
    from evalmuse_models.data.synthetic import write_alignment_release

    write_alignment_release(tmp_path / "a", num_prompts=4, seed=3)
    write_alignment_release(tmp_path / "b", num_prompts=4, seed=3)
    write_alignment_release(tmp_path / "c", num_prompts=4, seed=4)
    a = (tmp_path / "a" / "train_list.json").read_text()
    assert a == (tmp_path / "b" / "train_list.json").read_text()
    assert a != (tmp_path / "c" / "train_list.json").read_text()
    for path in (tmp_path / "a").rglob("*.png"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_a_generator_map_given_as_a_dict_is_checked_like_a_file():
    from evalmuse_models.data import read_generator_map

    assert read_generator_map({"val\\img_0001.png": " SDXL "}) == {"val/img_0001.png": "SDXL"}
    with pytest.raises(UserInputError, match=r"generator map: key 'img_0002.png'.*non-empty string"):
        read_generator_map({"img_0002.png": ""})
    with pytest.raises(UserInputError, match=r"generator map: key '../x.png': img_path"):
        read_generator_map({"../x.png": "SDXL"})
