"""prepare_dataset / `evalmuse prepare-data`: Parquet + dataset card, loaded back with `datasets`."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import yaml

from evalmuse_models.data import (
    alignment_features,
    baseline_heatmap,
    binary_mask,
    load_alignment_records,
    load_structure_records,
    prepare_dataset,
    resolve_images,
    structure_features,
)
from evalmuse_models.data.synthetic import DEFAULT_GENERATORS
from evalmuse_models.utils import UserInputError


def _load(path, config, tmp_path, **kwargs):
    from datasets import load_dataset

    return load_dataset(str(path), config, cache_dir=str(tmp_path / "hf_cache"), **kwargs)


def _card(path):
    text = (path / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---")[1]), text


def test_card_declares_both_configs_and_documents_the_schema(prepared_dataset):
    meta, text = _card(prepared_dataset)
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"alignment", "structure"}
    assert {f["split"] for f in configs["alignment"]["data_files"]} == {"train", "validation", "test"}
    assert configs["alignment"].get("default") is True
    for column in ("total_score_votes", "prompt_variance", "elements", "heatmap", "shapes", "mask"):
        assert f"`{column}`" in text
    assert sorted(p.name for p in (prepared_dataset / "alignment").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]


def test_alignment_round_trip_every_column(prepared_dataset, alignment_release, tmp_path):
    from datasets import Image

    dataset = _load(prepared_dataset, "alignment", tmp_path)
    assert set(dataset) == {"train", "validation", "test"}
    files = {"train": "train_list.json", "validation": "val_list.json", "test": "test.json"}
    for split, name in files.items():
        ds = dataset[split]
        assert ds.features == alignment_features()
        records = load_alignment_records(alignment_release / name)
        assert len(ds) == len(records)
        raw = ds.cast_column("image", Image(decode=False))
        for record, row, raw_row in zip(records, ds, raw):
            expected = record.to_row()
            assert {k: row[k] for k in expected} == expected
            assert raw_row["image"]["bytes"] == (alignment_release / record.img_path).read_bytes()
            side = DEFAULT_GENERATORS[row["generator"]][1]
            assert row["image"].size == (side, side)
        if split == "test":
            assert all(v is None for v in ds["total_score"]) and all(v is None for v in ds["prompt_variance"])
        else:
            assert all(isinstance(v, float) for v in ds["total_score"])
            assert any(v is not None for v in ds["prompt_variance"])
            row = ds[0]
            assert row["generator"] == row["img_path"].split("/")[0]
            assert all(len(e["votes"]) == 3 for e in row["elements"])


def test_structure_round_trip_every_column(prepared_dataset, structure_release, tmp_path):
    from datasets import Image

    dataset = _load(prepared_dataset, "structure", tmp_path)
    files = {"train": "train_info.json", "validation": "val_info.json", "test": "test_info.json"}
    assert set(dataset) == set(files)
    for split, name in files.items():
        ds = dataset[split]
        assert ds.features == structure_features()
        records = load_structure_records(structure_release / name)
        resolve_images(records)
        assert [r.image_name for r in records] == ds["image_name"]
        raw = ds.cast_column("image", Image(decode=False))
        for record, row, raw_row in zip(records, ds, raw):
            assert row["prompt"] == record.prompt and row["mos"] == record.mos
            assert row["shapes"] == record.shapes_as_dicts()
            assert raw_row["image"]["bytes"] == record.image_path.read_bytes()
            assert row["image"].size == (record.width, record.height)
            mask, heatmap = row["mask"], row["heatmap"]
            assert mask.mode == "L" and mask.size == (record.width, record.height)
            np.testing.assert_array_equal(np.asarray(mask), binary_mask(record) * 255)
            assert heatmap.mode == "L" and heatmap.size == (512, 512)
            np.testing.assert_array_equal(np.asarray(heatmap), baseline_heatmap(record))
            # the one-liner on a dataset row gives the same truth mask as on the record
            np.testing.assert_array_equal(binary_mask(row, size=(512, 512)), binary_mask(record, size=(512, 512)))
    levels = set()
    for row in dataset["train"]:
        levels |= set(np.unique(np.asarray(row["heatmap"])).tolist())
    # The bilinear 512x512 resize of the baseline: the five levels, and blends at region borders.
    assert {0, 64, 127, 180} <= levels and levels - {0, 64, 127, 180, 255}


def test_streaming_matches_the_loaded_rows(prepared_dataset, tmp_path):
    for config in ("alignment", "structure"):
        loaded = _load(prepared_dataset, config, tmp_path, split="validation")
        streamed = list(_load(prepared_dataset, config, tmp_path, split="validation", streaming=True))
        assert len(streamed) == len(loaded)
        for a, b in zip(loaded, streamed):
            for key, value in a.items():
                if hasattr(value, "tobytes"):
                    assert value.tobytes() == b[key].tobytes()
                else:
                    assert value == b[key]


def test_folder_named_evalmuse_loads_by_name_from_its_parent(prepared_dataset, tmp_path, monkeypatch):
    from datasets import load_dataset

    assert prepared_dataset.name == "evalmuse"
    monkeypatch.chdir(prepared_dataset.parent)
    ds = load_dataset("evalmuse", "structure", split="test", cache_dir=str(tmp_path / "c"))
    by_path = _load(prepared_dataset, "structure", tmp_path, split="test")
    assert len(ds) > 0 and ds["image_name"] == by_path["image_name"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_splits_follow_the_files_present(alignment_release, structure_release, tmp_path):
    al = _copy(alignment_release, tmp_path / "al")
    (al / "val_list.json").rename(al / "val.json")  # the other accepted validation name
    (al / "test.json").unlink()
    st = _copy(structure_release, tmp_path / "st")
    (st / "train_info.json").unlink()
    result = prepare_dataset(tmp_path / "out", alignment_dir=al, structure_dir=st, progress=False)
    assert {c: set(s) for c, s in result.num_rows.items()} == {
        "alignment": {"train", "validation"}, "structure": {"validation", "test"}}
    assert set(_load(tmp_path / "out", "alignment", tmp_path)) == {"train", "validation"}
    # only one config given: only that config in the card
    only = prepare_dataset(tmp_path / "only", structure_dir=st, progress=False)
    meta, _ = _card(only.path)
    assert [c["config_name"] for c in meta["configs"]] == ["structure"]


def _break_releases(alignment_release, structure_release, tmp_path):
    """Copies of both releases with one bad record of each kind."""
    al = _copy(alignment_release, tmp_path / "al")
    rows = json.loads((al / "train_list.json").read_text())
    rows[1]["element_score"] = "{'cat (animal)': [1, 0"  # unparsable element string
    del rows[2]["prompt"]  # missing field
    (al / rows[3]["img_path"]).unlink()  # missing image
    (al / rows[4]["img_path"]).write_bytes((al / rows[4]["img_path"]).read_bytes()[:200])  # truncated PNG
    (al / "train_list.json").write_text(json.dumps(rows))
    st = _copy(structure_release, tmp_path / "st")
    info = json.loads((st / "val_info.json").read_text())
    keys = list(info)
    info[keys[0]]["bbox_info"] = [[{"bbox_type": 2, "bbox": [[1, 1], [5, 5]]}], [], []]  # polygon < 3 points
    (st / "val" / f"{keys[1]}.jpg").write_bytes(b"not a jpeg at all")  # corrupt image
    (st / "val_info.json").write_text(json.dumps(info))
    return al, st, rows, keys


def test_bad_records_stop_with_file_record_and_field_and_nothing_is_written(
    alignment_release, structure_release, tmp_path
):
    al, st, rows, keys = _break_releases(alignment_release, structure_release, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(UserInputError) as info:
        prepare_dataset(out, alignment_dir=al, structure_dir=st, progress=False)
    message = str(info.value)
    assert "train_list.json" in message and "record #1" in message and "'element_score'" in message
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    rows[1]["element_score"] = "{}"
    rows[2]["prompt"] = "restored"
    (al / "train_list.json").write_text(json.dumps(rows))
    with pytest.raises(UserInputError, match=r"record #3 .*'img_path': image file .* does not exist"):
        prepare_dataset(out, alignment_dir=al, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(UserInputError, match=rf"val_info.json: record '{keys[0]}': field 'bbox_info'.*3 points"):
        prepare_dataset(out, structure_dir=st, progress=False)
    assert not out.exists()


def test_skip_invalid_writes_the_rest_and_a_report(alignment_release, structure_release, tmp_path):
    al, st, rows, keys = _break_releases(alignment_release, structure_release, tmp_path)
    result = prepare_dataset(tmp_path / "out", alignment_dir=al, structure_dir=st, skip_invalid=True, official_truth=True,
                             progress=False)
    assert len(result.skipped) == 6
    report = [json.loads(line) for line in result.skipped_report.read_text().splitlines()]
    found = {(r["file"].rsplit("/", 1)[-1], r["record"].split(" ")[0], r["field"]): r["reason"] for r in report}
    assert set(found) == {
        ("train_list.json", "#1", "element_score"), ("train_list.json", "#2", "prompt"),
        ("train_list.json", "#3", "img_path"), ("train_list.json", "#4", "img_path"),
        ("val_info.json", repr(keys[0]), "bbox_info"), ("val_info.json", repr(keys[1]), "<image>"),
    }
    assert "does not exist" in found["train_list.json", "#3", "img_path"]
    assert "corrupt" in found["train_list.json", "#4", "img_path"]
    assert "corrupt" in found["val_info.json", repr(keys[1]), "<image>"]
    ds = _load(tmp_path / "out", "alignment", tmp_path, split="train")
    assert len(ds) == len(rows) - 4
    assert set(ds["img_path"]) == {r["img_path"] for r in rows} - {r["img_path"] for r in rows[1:5]}
    val = _load(tmp_path / "out", "structure", tmp_path, split="validation")
    assert set(val["image_name"]) == set(keys) - set(keys[:2])
    _, text = _card(tmp_path / "out")
    assert "6 invalid record(s)" in text
    # the official truth files hold exactly the records written, skipped ones left out
    from evalmuse_models.metrics import read_alignment_file, read_structure_pickle

    official = tmp_path / "out" / "official"
    assert [t["img_path"] for t in read_alignment_file(official / "alignment" / "train" / "eval.json")] == ds["img_path"]
    assert list(read_structure_pickle(official / "structure" / "validation" / "gt.pkl")) == val["image_name"]


def test_shards_and_overwrite(alignment_release, tmp_path):
    out = tmp_path / "sharded"
    prepare_dataset(out, alignment_dir=alignment_release, num_shards=3, progress=False, num_workers=1)
    files = sorted(p.name for p in (out / "alignment").glob("train-*"))
    assert files == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    ds = _load(out, "alignment", tmp_path, split="train")
    records = load_alignment_records(alignment_release / "train_list.json")
    assert ds["img_path"] == [r.img_path for r in records]  # order kept across shards and threads
    with pytest.raises(UserInputError, match="already exists"):
        prepare_dataset(out, alignment_dir=alignment_release, progress=False)
    small = prepare_dataset(out, alignment_dir=alignment_release, overwrite=True, max_shard_size="20KB",
                            num_workers=2, progress=False)
    many = sorted((out / "alignment").glob("train-*"))
    assert len(many) > 3 and all(p.name.endswith(f"-of-{len(many):05d}.parquet") for p in many)
    assert small.num_rows["alignment"]["train"] == len(records)
    assert _load(out, "alignment", tmp_path / "again", split="train")["img_path"] == [r.img_path for r in records]


def test_mask_min_votes(structure_release, tmp_path):
    union = prepare_dataset(tmp_path / "u", structure_dir=structure_release, progress=False)
    major = prepare_dataset(tmp_path / "m", structure_dir=structure_release, mask_min_votes=2, progress=False)
    a = _load(union.path, "structure", tmp_path, split="train")
    b = _load(major.path, "structure", tmp_path, split="train")
    total_a = total_b = 0
    for ra, rb in zip(a, b):
        ma, mb = np.asarray(ra["mask"]) > 0, np.asarray(rb["mask"]) > 0
        assert (mb <= ma).all()
        total_a, total_b = total_a + ma.sum(), total_b + mb.sum()
    assert total_b < total_a


def test_arguments_are_checked(tmp_path):
    with pytest.raises(UserInputError, match="nothing to prepare"):
        prepare_dataset(tmp_path / "x")
    with pytest.raises(UserInputError, match="does not exist"):
        prepare_dataset(tmp_path / "x", alignment_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no structure split file"):
        prepare_dataset(tmp_path / "x", structure_dir=tmp_path / "empty")
    with pytest.raises(UserInputError, match="max_shard_size"):
        prepare_dataset(tmp_path / "x", structure_dir=tmp_path / "empty", max_shard_size="lots")


# --- the command line --------------------------------------------------------------------------


def test_cli_synthetic_then_prepare_data(tmp_path, capsys):
    from evalmuse_models.cli import main

    assert main(["synthetic", "alignment", str(tmp_path / "al"), "--num-prompts", "3", "--seed", "1"]) == 0
    assert main(["synthetic", "structure", str(tmp_path / "st"), "--num-images", "6", "--layout", "flat"]) == 0
    assert (tmp_path / "al" / "train_list.json").is_file() and list((tmp_path / "st").glob("*.jpg"))
    out = tmp_path / "evalmuse"
    code = main(["prepare-data", "--alignment", str(tmp_path / "al"), "--structure", str(tmp_path / "st"),
                 str(out), "--no-progress", "--num-shards", "2", "--official-truth-train"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "alignment: train" in printed and f"wrote {out}" in printed
    assert f"official truth: {out / 'official' / 'alignment' / 'train' / 'eval.json'}" in printed
    assert len(list((out / "structure").glob("train-*-of-00002.parquet"))) == 2
    assert (out / "official" / "structure" / "train" / "gt.pkl").is_file()
    # an existing folder is refused with a clear message, and --overwrite replaces it
    assert main(["prepare-data", "--structure", str(tmp_path / "st"), str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare-data", "--structure", str(tmp_path / "st"), str(out), "--overwrite", "--no-progress",
                 "--no-official-truth"]) == 0
    assert not (out / "alignment").exists() and not (out / "official").exists()
    assert main(["prepare-data", str(out)]) == 2


def test_cli_skip_invalid_prints_the_count(structure_release, tmp_path, capsys):
    from evalmuse_models.cli import main

    st = _copy(structure_release, tmp_path / "st")
    info = json.loads((st / "test_info.json").read_text())
    key = next(iter(info))
    info[key]["mos"] = "??"
    (st / "test_info.json").write_text(json.dumps(info))
    assert main(["prepare-data", "--structure", str(st), str(tmp_path / "o1"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "test_info.json" in err and key in err and "'mos'" in err
    assert main(["prepare-data", "--structure", str(st), str(tmp_path / "o2"), "--skip-invalid",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 invalid record(s)" in printed and "skipped_records.jsonl" in printed


def test_encoded_mask_png_is_grayscale(prepared_dataset, tmp_path):
    from datasets import Image
    from PIL import Image as PILImage

    ds = _load(prepared_dataset, "structure", tmp_path, split="test").cast_column("mask", Image(decode=False))
    png = ds[0]["mask"]["bytes"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and PILImage.open(io.BytesIO(png)).mode == "L"


def test_dataset_script_builds_with_its_template(alignment_release, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "dataset_scripts" / "build_evalmuse_dataset.py"
    spec = importlib.util.spec_from_file_location("build_evalmuse_dataset", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n\nCUSTOM CARD\n{{ split_table }}\n", encoding="utf-8")
    out = tmp_path / "evalmuse"
    assert module.main([str(out), "--alignment", str(alignment_release), "--card-template", str(template)]) == 0
    meta, text = _card(out)
    assert "CUSTOM CARD" in text and "| `alignment` | train |" in text
    assert [c["config_name"] for c in meta["configs"]] == ["alignment"]
    assert module.main([str(tmp_path / "x"), "--alignment", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the default template beside the script is the packaged one
    assert (script.parent / "dataset_card_template.md").read_text() == (
        Path(__import__("evalmuse_models.data.export").data.export.CARD_TEMPLATE).read_text())


def test_importing_the_data_package_is_light():
    import subprocess
    import sys

    code = (
        "import sys, evalmuse_models.data, evalmuse_models.commands.prepare_data, "
        "evalmuse_models.commands.synthetic; "
        "print(sorted(m for m in ('datasets', 'cv2', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def _rows_without_decoding(path, tmp_path):
    from datasets import Image

    out = {}
    for split, ds in _load(path, "alignment", tmp_path).items():
        out[split] = ds.cast_column("image", Image(decode=False)).to_dict()
    return out


def test_an_interrupted_build_resumes_after_the_last_complete_shard(alignment_release, tmp_path, monkeypatch,
                                                                   capsys):
    from evalmuse_models.data import export

    real = export.alignment_row
    calls = []

    def interrupted(record, root):
        calls.append(record.img_path)
        if len(calls) == 100:
            raise KeyboardInterrupt
        return real(record, root)

    def counted(record, root):
        calls.append(record.img_path)
        return real(record, root)

    options = {"alignment_dir": alignment_release, "max_shard_size": "30KB", "num_workers": 1, "progress": False,
               "official_truth": True}
    out = tmp_path / "evalmuse"
    monkeypatch.setattr(export, "alignment_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(out, **options)
    assert not out.exists()
    partial = tmp_path / ".evalmuse.partial"
    progress = json.loads((partial / ".progress.json").read_text())
    resumed_from = progress["splits"]["alignment/train"]["shards"][-1]["seen"]
    assert 50 < resumed_from < 100
    assert "run the same command again to resume" in capsys.readouterr().err

    total = sum(len(json.loads((alignment_release / n).read_text()))
                for n in ("train_list.json", "val_list.json", "test.json"))
    calls.clear()
    monkeypatch.setattr(export, "alignment_row", counted)
    prepare_dataset(out, **options)
    assert len(calls) == total - resumed_from  # only the records after the last complete shard
    assert not partial.exists() and not (out / ".progress.json").exists()
    fresh = prepare_dataset(tmp_path / "fresh", resume=False, **options)
    assert fresh.num_records == total
    assert _rows_without_decoding(out, tmp_path / "a") == _rows_without_decoding(tmp_path / "fresh", tmp_path / "b")
    for split in ("train", "validation"):  # the truth covers the shards written before the interruption too
        truth = out / "official" / "alignment" / split / "eval.json"
        assert truth.read_bytes() == (tmp_path / "fresh" / "official" / "alignment" / split / "eval.json").read_bytes()


def test_a_changed_release_is_not_resumed(alignment_release, tmp_path, monkeypatch):
    import os

    from evalmuse_models.data import export

    al = _copy(alignment_release, tmp_path / "al")
    real = export.alignment_row
    calls = []

    def interrupted(record, root):
        calls.append(record)
        if len(calls) == 60:
            raise KeyboardInterrupt
        return real(record, root)

    monkeypatch.setattr(export, "alignment_row", interrupted)
    options = {"alignment_dir": al, "max_shard_size": "20KB", "num_workers": 1, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(tmp_path / "out", **options)
    assert (tmp_path / ".out.partial" / ".progress.json").is_file()
    stat = (al / "train_list.json").stat()
    os.utime(al / "train_list.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the release changed
    calls.clear()
    monkeypatch.setattr(export, "alignment_row", lambda r, root: (calls.append(r), real(r, root))[1])
    result = prepare_dataset(tmp_path / "out", **options)
    assert len(calls) == result.num_records  # everything rebuilt


# --- the official truth files ------------------------------------------------------------------


def test_official_truth_files_score_perfectly_against_themselves(prepared_dataset, tmp_path, capsys):
    from datasets import Image

    from evalmuse_models.cli import main
    from evalmuse_models.data import truth_maps
    from evalmuse_models.metrics import read_alignment_file, read_structure_pickle

    official = prepared_dataset / "official"
    assert sorted(p.relative_to(official).as_posix() for p in official.rglob("*") if p.is_file()) == [
        "alignment/validation/eval.json",  # the test split has no labels; train only on request
        "structure/test/gt.pkl", "structure/validation/gt.pkl"]
    _, card = _card(prepared_dataset)
    assert card.count("## Official truth files") == 1 and "`official/structure/test/gt.pkl`" in card
    for split in ("validation",):
        path = official / "alignment" / split / "eval.json"
        rows = _load(prepared_dataset, "alignment", tmp_path, split=split).select_columns(
            ["img_path", "prompt", "total_score", "elements"])
        truth = read_alignment_file(path)
        assert [t["img_path"] for t in truth] == rows["img_path"]
        for entry, row in zip(truth, rows):
            assert entry["prompt"] == row["prompt"] and entry["total_score"] == row["total_score"]
            assert entry["element_score"] == {e["key"]: e["score"] for e in row["elements"]}  # raw keys, mean votes
        assert main(["eval", "alignment", "--truth", str(path), "--submission", str(path), "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["srcc"] == pytest.approx(1) and scores["plcc"] == pytest.approx(1) and scores["acc"] == 1
    for split in ("validation", "test"):
        path = official / "structure" / split / "gt.pkl"
        rows = _load(prepared_dataset, "structure", tmp_path, split=split).select_columns(
            ["image_name", "mos", "shapes", "image"]).cast_column("image", Image(decode=False))
        truth = read_structure_pickle(path)
        assert list(truth) == rows["image_name"]
        for row in rows:
            entry = truth[row["image_name"]]
            assert entry["pred_area"].dtype == np.uint8 and entry["pred_area"].shape == (512, 512)
            np.testing.assert_array_equal(entry["pred_area"], truth_maps(row).truth)  # the one truth rule
            assert entry["score"] == row["mos"]
        assert main(["eval", "structure", "--truth", str(path), "--submission", str(path), "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["srcc"] == pytest.approx(1) and scores["plcc"] == pytest.approx(1)
        assert scores["precision"] == 1 and scores["f1"] > 0.9


def test_write_official_truth_from_dataset_rows(prepared_dataset, tmp_path):
    from evalmuse_models.data import write_official_truth

    official = prepared_dataset / "official"
    structure = _load(prepared_dataset, "structure", tmp_path, split="validation")
    path = write_official_truth("structure", structure, tmp_path / "gt.pkl")
    assert path.read_bytes() == (official / "structure" / "validation" / "gt.pkl").read_bytes()
    alignment = _load(prepared_dataset, "alignment", tmp_path)
    path = write_official_truth("alignment", alignment["validation"], tmp_path / "eval.json")
    assert path.read_bytes() == (official / "alignment" / "validation" / "eval.json").read_bytes()
    with pytest.raises(UserInputError, match=r"row 0 \(img_path=.*\): no label"):
        write_official_truth("alignment", alignment["test"], tmp_path / "test.json")
    assert not (tmp_path / "test.json").exists()
    with pytest.raises(UserInputError, match="'alignment' or 'structure'"):
        write_official_truth("other", [], tmp_path / "x")


def test_official_truth_can_be_left_out(structure_release, tmp_path):
    result = prepare_dataset(tmp_path / "out", structure_dir=structure_release, official_truth=False, progress=False)
    assert result.official_truth == {} and not (tmp_path / "out" / "official").exists()
    # by default the evaluation splits only: the structure train truth alone would be 2.6 GB on the real release
    result = prepare_dataset(tmp_path / "default", structure_dir=structure_release, progress=False)
    assert set(result.official_truth["structure"]) == {"validation", "test"}
    assert not (tmp_path / "default" / "official" / "structure" / "train").exists()


def test_a_split_whose_every_record_is_skipped_is_still_reported(tmp_path):
    from PIL import Image

    release = tmp_path / "release"
    release.mkdir()
    record = {"prompt_en": "a cat", "mos": 3.0, "bbox_info": [[], [], []]}
    (release / "train_info.json").write_text(json.dumps({"a": record, "b": record}))
    (release / "val_info.json").write_text(json.dumps({"c": record, "d": record}))
    Image.new("RGB", (8, 8)).save(release / "a.jpg")
    for key in ("b", "c", "d"):
        (release / f"{key}.jpg").write_bytes(b"not an image")
    result = prepare_dataset(tmp_path / "out", structure_dir=release, skip_invalid=True, progress=False,
                             num_workers=1)
    assert sorted(s.record for s in result.skipped) == ["'b'", "'c'", "'d'"]
    assert len(result.skipped_report.read_text().splitlines()) == 3
    assert result.num_rows == {"structure": {"train": 1}}
