"""A raw release cannot reach outside its folder or hide a duplicate: structure keys and links that
lead out of the release folder, the same image in two splits, a key written twice in one JSON object.

Each case stops with an error naming the file and the record, and ``skip_invalid`` leaves the record
out with its reason in the skipped-records report."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from evalmuse_models.data import RecordError, load_alignment_records, load_structure_records, prepare_dataset
from evalmuse_models.utils import UserInputError

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs symbolic links")

STRUCTURE_RECORD = {"prompt_en": "a cat", "mos": 3.0,
                    "bbox_info": [[{"bbox_type": 1, "bbox": [{"x": 1, "y": 1}, {"x": 5, "y": 5}]}], [], []]}


def alignment_record(img_path, score=3):
    return {"prompt_id": "1", "prompt": "a red cat", "type": "real", "img_path": img_path,
            "total_score": [score, score, 4], "element_score": "{'cat (animal)': [1, 1, 0], 'red (color)': [0, 1, 1]}"}


def image(path, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def alignment_release(root, splits):
    """``splits``: raw file name -> list of img_path; every image is written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, paths in splits.items():
        (root / name).write_text(json.dumps([alignment_record(p, 1 + i % 5) for i, p in enumerate(paths)]))
        for p in paths:
            if not (root / p).exists():
                image(root / p)
    return root


def structure_release(root, splits):
    """``splits``: raw file name -> list of keys; images beside the files unless they exist already."""
    root.mkdir(parents=True, exist_ok=True)
    for name, keys in splits.items():
        (root / name).write_text(json.dumps({k: dict(STRUCTURE_RECORD, mos=1.0 + i % 5) for i, k in enumerate(keys)}))
    return root


def report(result):
    return [json.loads(line) for line in result.skipped_report.read_text(encoding="utf-8").splitlines()]


def _load(path, config, tmp_path, split):
    from datasets import load_dataset

    return load_dataset(str(path), config, split=split, cache_dir=str(tmp_path / "hf_cache"))


# --- item: every image stays inside the release folder --------------------------------------------


@pytest.mark.parametrize("key", ["../outside", "../../outside", "sub/../../outside", "..\\outside"])
def test_structure_key_leading_out_of_the_release_is_refused(tmp_path, key):
    release = structure_release(tmp_path / "release", {"val_info.json": ["ok", key]})
    image(release / "ok.jpg")
    image(tmp_path / "outside.jpg")  # what release/../outside.jpg (or release/val/../../outside.jpg) would read
    (release / "val").mkdir()
    with pytest.raises(RecordError) as info:
        load_structure_records(release / "val_info.json")
    assert info.value.record == repr(key) and info.value.field == "<key>"
    assert "val_info.json" in str(info.value) and "file name" in str(info.value)
    skipped = []
    records = load_structure_records(release / "val_info.json", skip_invalid=True, skipped=skipped)
    assert [r.image_name for r in records] == ["ok"]
    assert [(s.record, s.field) for s in skipped] == [(repr(key), "<key>")]


@needs_symlinks
def test_structure_image_linked_out_of_the_release_is_refused(tmp_path):
    release = structure_release(tmp_path / "release", {"train_info.json": ["inside", "outside", "ok"]})
    image(release / "ok.jpg")
    image(release / "store" / "real.jpg")
    (release / "inside.jpg").symlink_to(release / "store" / "real.jpg")  # a link within the release is fine
    secret = image(tmp_path / "elsewhere" / "secret.jpg")
    (release / "outside.jpg").symlink_to(secret)
    with pytest.raises(RecordError) as info:
        load_structure_records(release / "train_info.json")
    message = str(info.value)
    assert info.value.record == "'outside'" and info.value.field == "<image>"
    assert "train_info.json" in message and "outside the release folder" in message and "secret.jpg" in message

    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=r"train_info.json: record 'outside': field '<image>'.*outside the"):
        prepare_dataset(out, structure_dir=release, progress=False)
    assert not out.exists()
    result = prepare_dataset(out, structure_dir=release, skip_invalid=True, progress=False, num_workers=1)
    assert [(r["record"], r["field"]) for r in report(result)] == [("'outside'", "<image>")]
    assert "outside the release folder" in report(result)[0]["reason"]
    assert sorted(_load(out, "structure", tmp_path, "train")["image_name"]) == ["inside", "ok"]


@needs_symlinks
def test_structure_split_folder_linked_out_of_the_release_is_refused(tmp_path):
    release = structure_release(tmp_path / "release", {"val_info.json": ["abc"]})
    image(tmp_path / "elsewhere" / "abc.jpg")
    (release / "val").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(RecordError, match="outside the release folder"):
        load_structure_records(release / "val_info.json")


@needs_symlinks
def test_alignment_image_linked_out_of_the_release_is_refused(tmp_path):
    release = alignment_release(tmp_path / "release", {"train_list.json": ["A/0.png", "A/1.png", "B/2.png",
                                                                          "C/3.png"]})
    secret = image(tmp_path / "elsewhere" / "secret.png")
    (release / "A" / "1.png").unlink()
    (release / "A" / "1.png").symlink_to(secret)  # a linked file
    (release / "B" / "2.png").unlink()
    (release / "B").rmdir()
    (release / "B").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a linked folder
    image(tmp_path / "elsewhere" / "2.png")
    (release / "C" / "3.png").unlink()
    (release / "C" / "3.png").symlink_to(release / "A" / "0.png")  # inside the release: accepted

    out = tmp_path / "out"
    with pytest.raises(UserInputError) as info:
        prepare_dataset(out, alignment_dir=release, progress=False, num_workers=1)
    message = str(info.value)
    assert "train_list.json" in message and "record #1 (img_path='A/1.png')" in message and "'img_path'" in message
    assert "outside the release folder" in message and "secret.png" in message
    assert not out.exists()
    result = prepare_dataset(out, alignment_dir=release, skip_invalid=True, progress=False, num_workers=1)
    assert [(r["record"], r["field"]) for r in report(result)] == [
        ("#1 (img_path='A/1.png')", "img_path"), ("#2 (img_path='B/2.png')", "img_path")]
    assert _load(out, "alignment", tmp_path, "train")["img_path"] == ["A/0.png", "C/3.png"]


def test_alignment_paths_leading_out_are_refused_when_parsed(tmp_path):
    # `..` and absolute paths never reach the file system (the check on img_path)
    for bad in ("../x.png", "A/../../x.png", "/etc/x.png", "..\\x.png"):
        path = tmp_path / "train_list.json"
        path.write_text(json.dumps([alignment_record(bad)]))
        with pytest.raises(RecordError, match="stay inside"):
            load_alignment_records(path)


# --- item: duplicates ------------------------------------------------------------------------------


def test_same_img_path_in_two_alignment_splits(tmp_path):
    release = alignment_release(tmp_path / "release", {"train_list.json": ["A/0.png", "A/1.png"],
                                                       "val_list.json": ["A/2.png", "A/1.png"]})
    out = tmp_path / "out"
    with pytest.raises(UserInputError) as info:
        prepare_dataset(out, alignment_dir=release, progress=False)
    message = str(info.value)
    assert "val_list.json" in message and "record #1 (img_path='A/1.png')" in message
    assert "'train'" in message and "'validation'" in message and "train_list.json" in message
    assert not out.exists()
    result = prepare_dataset(out, alignment_dir=release, skip_invalid=True, progress=False)
    (entry,) = report(result)
    assert entry["file"].endswith("val_list.json") and entry["record"] == "#1 (img_path='A/1.png')"
    assert "'train'" in entry["reason"] and "'validation'" in entry["reason"]
    assert _load(out, "alignment", tmp_path, "train")["img_path"] == ["A/0.png", "A/1.png"]
    assert _load(out, "alignment", tmp_path, "validation")["img_path"] == ["A/2.png"]


def test_same_key_in_two_structure_splits(tmp_path):
    release = structure_release(tmp_path / "release", {"train_info.json": ["a", "b"], "test_info.json": ["b", "c"]})
    for key in ("a", "b"):
        image(release / "train" / f"{key}.jpg")
    for key in ("b", "c"):
        image(release / "test" / f"{key}.jpg")
    out = tmp_path / "out"
    with pytest.raises(UserInputError) as info:
        prepare_dataset(out, structure_dir=release, progress=False)
    message = str(info.value)
    assert "test_info.json: record 'b'" in message and "'train'" in message and "'test'" in message
    result = prepare_dataset(out, structure_dir=release, skip_invalid=True, progress=False)
    (entry,) = report(result)
    assert entry["file"].endswith("test_info.json") and entry["record"] == "'b'"
    assert "'train'" in entry["reason"] and "'test'" in entry["reason"]
    assert _load(out, "structure", tmp_path, "test")["image_name"] == ["c"]


def test_key_twice_in_one_structure_file(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    first, second = dict(STRUCTURE_RECORD, mos=2.0), dict(STRUCTURE_RECORD, mos=5.0)
    text = f'{{"a": {json.dumps(first)}, "b": {json.dumps(first)}, "a": {json.dumps(second)}}}'
    (release / "val_info.json").write_text(text)
    for key in ("a", "b"):
        image(release / f"{key}.jpg")
    with pytest.raises(RecordError) as info:
        load_structure_records(release / "val_info.json")
    assert info.value.record == "'a'" and "twice" in info.value.reason and "val_info.json" in str(info.value)
    skipped = []
    records = load_structure_records(release / "val_info.json", skip_invalid=True, skipped=skipped)
    assert [(r.image_name, r.mos) for r in records] == [("a", 2.0), ("b", 2.0)]  # the first entry is kept
    assert [(s.record, s.field) for s in skipped] == [("'a'", "<key>")]


def test_two_keys_naming_one_structure_image(tmp_path):
    release = structure_release(tmp_path / "release", {"train_info.json": ["a", "a.jpg"]})
    image(release / "a.jpg")
    with pytest.raises(RecordError, match=r"record 'a.jpg'.*same image as the key 'a'"):
        load_structure_records(release / "train_info.json")


def test_key_twice_inside_a_record(tmp_path):
    # alignment: a field twice, and an already parsed element_score dict with an element twice
    rows = [json.dumps(alignment_record("A/0.png")),
            json.dumps(alignment_record("A/1.png")).replace('"prompt": "a red cat"',
                                                            '"prompt": "a red cat", "prompt": "a dog"'),
            json.dumps(alignment_record("A/2.png")).replace(
                '"element_score": "{\'cat (animal)\': [1, 1, 0], \'red (color)\': [0, 1, 1]}"',
                '"element_score": {"cat (animal)": [1, 1, 0], "cat (animal)": [0, 0, 0]}')]
    path = tmp_path / "train_list.json"
    path.write_text("[" + ",\n".join(rows) + "]")
    with pytest.raises(RecordError) as info:
        load_alignment_records(path)
    assert info.value.record == "#1 (img_path='A/1.png')" and info.value.field == "prompt"
    assert "twice" in info.value.reason
    skipped = []
    records = load_alignment_records(path, skip_invalid=True, skipped=skipped)
    assert [r.img_path for r in records] == ["A/0.png"]
    assert [(s.record, s.field) for s in skipped] == [("#1 (img_path='A/1.png')", "prompt"),
                                                      ("#2 (img_path='A/2.png')", "element_score")]
    assert "'cat (animal)'" in skipped[1].reason

    # structure: a field twice, and a vertex with "x" twice
    mos_twice = json.dumps(STRUCTURE_RECORD).replace('"mos": 3.0', '"mos": 3.0, "mos": 1.0')
    x_twice = json.dumps(STRUCTURE_RECORD).replace('{"x": 1, "y": 1}', '{"x": 1, "x": 9, "y": 1}')
    (tmp_path / "val_info.json").write_text(f'{{"a": {mos_twice}, "b": {x_twice}, "c": {json.dumps(STRUCTURE_RECORD)}}}')
    with pytest.raises(RecordError) as info:
        load_structure_records(tmp_path / "val_info.json")
    assert info.value.record == "'a'" and info.value.field == "mos"
    skipped = []
    records = load_structure_records(tmp_path / "val_info.json", skip_invalid=True, skipped=skipped)
    assert [r.image_name for r in records] == ["c"]
    assert [(s.record, s.field) for s in skipped] == [("'a'", "mos"), ("'b'", "bbox_info")]
    assert "'x'" in skipped[1].reason
