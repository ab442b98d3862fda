"""Official file formats (eval.json/output.json, gt.pkl/output.pkl), the restricted unpickler,
submission writers, the ``evalmuse eval`` command and the ``evaluate`` module."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from evalmuse_models.cli import main as cli_main
from evalmuse_models.metrics import (
    EVALUATE_MODULE_PATH,
    alignment_main_score,
    read_alignment_file,
    read_structure_pickle,
    score_alignment_files,
    score_structure_files,
    structure_final_score,
    write_alignment_submission,
    write_alignment_truth,
    write_structure_submission,
    write_structure_truth,
)
from evalmuse_models.utils import UserInputError

REPO = Path(__file__).resolve().parents[1]


def _alignment_records(n=30, seed=0):
    rng = np.random.default_rng(seed)
    truth, sub = [], []
    cats = ["object", "color", "animal", "counting"]
    for i in range(n):
        gen = ["SDXL-Turbo", "PixArt-alpha", "DALLE3"][i % 3]
        keys = [f"thing{j} ({cats[(i + j) % 4]})" for j in range(int(rng.integers(1, 4)))]
        t_total = float(np.round(rng.uniform(1, 5) * 3) / 3)
        truth.append({"prompt": f"p{i}", "img_path": f"{gen}/{i:05d}.png", "total_score": t_total,
                      "element_score": {k: float(rng.integers(0, 4) / 3) for k in keys}})
        sub.append({"prompt": f"p{i}", "img_path": f"{gen}/{i:05d}.png",
                    "total_score": t_total + float(rng.normal(0, 0.7)),
                    "element_score": {k: float(rng.uniform()) for k in keys}})
    return truth, sub


def _structure_records(n=12, seed=0):
    rng = np.random.default_rng(seed)
    gt, sub = {}, {}
    for i in range(n):
        t = np.zeros((512, 512), np.uint8)
        y, x = rng.integers(0, 400, 2)
        t[y:y + 80, x:x + 60] = 1
        p = np.zeros((256, 256), np.uint8)
        p[(y + 10) // 2:(y + 90) // 2, x // 2:(x + 60) // 2] = 1
        gt[f"img_{i:04d}"] = {"pred_area": t, "score": float(rng.uniform(1, 5))}
        sub[f"img_{i:04d}"] = {"pred_area": p, "score": float(rng.normal())}
    return gt, sub


@pytest.fixture()
def alignment_files(tmp_path):
    truth, sub = _alignment_records()
    write_alignment_truth(truth, tmp_path / "eval.json")
    paths = write_alignment_submission(list(reversed(sub)), tmp_path / "sub", runtime_per_image=0.5, gpu=True,
                                       extra_data=False, llm=True, description="tiny test model")
    return tmp_path / "eval.json", paths, truth, sub


@pytest.fixture()
def structure_files(tmp_path):
    gt, sub = _structure_records()
    write_structure_truth(gt, tmp_path / "gt.pkl")
    paths = write_structure_submission(sub, tmp_path / "sub", runtime_per_image=1.25, gpu=False, extra_data=True)
    return tmp_path / "gt.pkl", paths, gt, sub


# --- alignment files ------------------------------------------------------------------------

def test_alignment_submission_layout(alignment_files):
    _, paths, _, sub = alignment_files
    with zipfile.ZipFile(paths["zip"]) as z:
        assert sorted(z.namelist()) == ["output.json", "readme.txt"]
        assert json.loads(z.read("output.json")) == json.loads(paths["output"].read_text())
    readme = paths["readme"].read_text().splitlines()
    assert readme == [
        "runtime per image [s] : 0.50",
        "CPU[1] / GPU[0] : 0",
        "Extra Data [1] / No Extra Data [0] : 0",
        "LLM[1] / Non-LLM[0] : 1",
        "Other description : tiny test model",
    ]
    records = read_alignment_file(paths["output"])
    assert {r["img_path"] for r in records} == {r["img_path"] for r in sub}
    assert set(records[0]) >= {"prompt", "img_path", "total_score", "element_score"}


def test_score_alignment_files_matches_by_img_path(alignment_files):
    truth_path, paths, truth, sub = alignment_files
    order = sorted(range(len(truth)), key=lambda i: truth[i]["img_path"])
    expected = alignment_main_score(
        [sub[i]["total_score"] for i in order], [truth[i]["total_score"] for i in order],
        [sub[i]["element_score"] for i in order], [truth[i]["element_score"] for i in order],
    )
    for submission in (paths["output"], paths["zip"]):  # the zip is read too
        assert score_alignment_files(truth_path, submission) == pytest.approx(expected)


def test_alignment_breakdown_from_files(alignment_files):
    truth_path, paths, truth, _ = alignment_files
    r = score_alignment_files(truth_path, paths["output"], breakdown=True)
    assert set(r["per_generator"]) == {"SDXL-Turbo", "PixArt-alpha", "DALLE3"}
    assert sum(g["n_images"] for g in r["per_generator"].values()) == len(truth)
    assert set(r["per_category_acc"]) == {"object", "color", "animal", "counting"}
    json.dumps(r)  # JSON-serialisable


def test_alignment_raw_release_strings_are_parsed(tmp_path):
    truth, _ = _alignment_records(5)
    for rec in truth:  # the raw release stores element_score as a Python-literal string of votes
        rec["element_score"] = str({k: [1, 0, 1] for k in rec["element_score"]})
        rec["total_score"] = [3, 4, 4]
    (tmp_path / "raw.json").write_text(json.dumps(truth))
    records = read_alignment_file(tmp_path / "raw.json")
    # The official preprocessing rounds the means to 6 decimals (SRCC ties depend on it).
    assert records[0]["total_score"] == 3.666667
    assert set(records[0]["element_score"].values()) == {0.666667}
    nullable = read_alignment_file(tmp_path / "raw.json", allow_null=True)
    assert nullable[0]["total_score"] == 3.666667 and set(nullable[0]["element_score"].values()) == {0.666667}


def test_submission_writer_accepts_numpy_scalars(tmp_path):
    _, sub = _alignment_records(3)
    for rec in sub:  # model outputs usually arrive as NumPy values
        rec["total_score"] = np.float32(rec["total_score"])
        rec["element_score"] = {k: np.float64(v) for k, v in rec["element_score"].items()}
    paths = write_alignment_submission(sub, tmp_path, runtime_per_image=1, gpu=True, extra_data=False, llm=False)
    written = read_alignment_file(paths["output"])
    assert [r["total_score"] for r in written] == pytest.approx([float(r["total_score"]) for r in sub])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t, s: s.pop(3), r"1 image\(s\) of the truth are missing from the submission, e.g. \['SDXL-Turbo/00003.png'\]"),
        (lambda t, s: s.append({**s[0], "img_path": "X/1.png"}), r"not in the truth .* \['X/1.png'\]"),
        (lambda t, s: s[4]["element_score"].pop(next(iter(s[4]["element_score"]))),
         r"image 'PixArt-alpha/00004.png' has no score for element 'thing0 \(object\)'"),
        (lambda t, s: s[2].__setitem__("total_score", "high"), r"record 2 \(DALLE3/00002.png\): total_score is 'high'"),
        (lambda t, s: s.append(dict(s[0])), r"duplicate img_path"),
    ],
)
def test_alignment_file_errors(tmp_path, edit, match):
    truth, sub = _alignment_records(8)
    edit(truth, sub)
    write_alignment_truth(truth, tmp_path / "eval.json")
    (tmp_path / "output.json").write_text(json.dumps(sub))
    with pytest.raises(UserInputError, match=match):
        score_alignment_files(tmp_path / "eval.json", tmp_path / "output.json")


def test_alignment_nan_in_submission_is_an_error(tmp_path):
    truth, sub = _alignment_records(8)
    write_alignment_truth(truth, tmp_path / "eval.json")
    text = json.dumps(sub).replace(str(sub[5]["total_score"]), "NaN", 1)
    (tmp_path / "output.json").write_text(text)
    with pytest.raises(UserInputError, match=r"record 5 .*total_score is nan"):
        score_alignment_files(tmp_path / "eval.json", tmp_path / "output.json")


def test_submission_writer_keeps_out_of_range_element_with_a_warning(tmp_path):
    # Real submissions hold element scores like 1.036; the official scorer accepts them.
    _, sub = _alignment_records(3)
    sub[1]["element_score"]["thing0 (object)"] = 1.036
    with pytest.warns(UserWarning, match=r"record 1 .*thing0 \(object\).* = 1.036 is outside \[0, 1\]"):
        paths = write_alignment_submission(sub, tmp_path, runtime_per_image=1, gpu=True, extra_data=False, llm=False)
    written = json.loads(paths["output"].read_text())
    assert written[1]["element_score"]["thing0 (object)"] == 1.036


@pytest.mark.parametrize("bad", ["NaN", "Infinity"])
def test_submission_writer_refuses_non_finite_element(tmp_path, bad):
    _, sub = _alignment_records(3)
    sub[1]["element_score"]["thing0 (object)"] = float(bad.replace("inity", ""))
    with pytest.raises(UserInputError, match=r"record 1 .*thing0 \(object\).*finite number"):
        write_alignment_submission(sub, tmp_path, runtime_per_image=1, gpu=True, extra_data=False, llm=False)
    assert not (tmp_path / "submission.zip").exists()


# --- structure files ------------------------------------------------------------------------

def test_structure_submission_layout_and_scoring(structure_files):
    gt_path, paths, gt, sub = structure_files
    with zipfile.ZipFile(paths["zip"]) as z:
        assert sorted(z.namelist()) == ["output.pkl", "readme.txt"]
    assert paths["readme"].read_text().splitlines()[:3] == [
        "runtime per image [s] : 1.25", "CPU[1] / GPU[0] : 1", "Extra Data [1] / No Extra Data [0] : 1",
    ]
    loaded = read_structure_pickle(paths["output"])
    assert loaded.keys() == sub.keys()
    assert loaded["img_0003"]["pred_area"].dtype == np.uint8
    names = sorted(gt)
    expected = structure_final_score([sub[k]["score"] for k in names], [gt[k]["score"] for k in names],
                                     [sub[k]["pred_area"] for k in names], [gt[k]["pred_area"] for k in names])
    assert score_structure_files(gt_path, paths["zip"]) == pytest.approx(expected)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_reads_every_protocol(tmp_path, protocol):
    data = {"a": {"pred_area": np.eye(4, dtype=np.uint8), "score": np.float32(2.5)},
            "b": {"pred_area": np.ones((3, 5), bool), "score": 3}}
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = read_structure_pickle(path)
    assert loaded["a"]["score"] == 2.5 and isinstance(loaded["a"]["score"], float)
    np.testing.assert_array_equal(loaded["a"]["pred_area"], np.eye(4))


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "output.pkl"
    path.write_bytes(pickle.dumps({"a": {"pred_area": np.zeros((2, 2)), "score": _Exploit(target)}}))
    with pytest.raises(UserInputError, match=r"refusing to load (posix|os|nt)\.system"):
        read_structure_pickle(path)
    assert not target.exists()
    path.write_bytes(pickle.dumps({"a": {"pred_area": np.array([object()] * 4, dtype=object).reshape(2, 2), "score": 1}}))
    with pytest.raises(UserInputError, match="refusing to load builtins.object"):
        read_structure_pickle(path)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"a": {"score": 1.0}}, r"image 'a': missing key 'pred_area'"),
        ({"a": {"pred_area": np.zeros(5), "score": 1.0}}, r"image 'a': pred_area must be a non-empty 2-D"),
        ({"a": {"pred_area": np.zeros((0, 4)), "score": 1.0}}, r"image 'a': pred_area must be a non-empty 2-D"),
        ({"a": {"pred_area": np.zeros((4, 4)), "score": float("inf")}}, r"image 'a': score is inf"),
        ([1, 2], "expected a dict"),
    ],
)
def test_structure_pickle_errors(tmp_path, obj, match):
    path = tmp_path / "output.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(UserInputError, match=match):
        read_structure_pickle(path)


def test_structure_writer_requires_binary_masks(tmp_path):
    with pytest.raises(UserInputError, match=r"image 'a'.*0/1 mask; binarise the heatmap"):
        write_structure_submission({"a": {"pred_area": np.full((4, 4), 0.7), "score": 1.0}}, tmp_path,
                                   runtime_per_image=1, gpu=True, extra_data=False)


def test_structure_missing_and_extra_images(structure_files, tmp_path):
    gt_path, _, _, sub = structure_files
    sub = dict(sub)
    sub.pop("img_0002")
    write_structure_truth(sub, tmp_path / "partial.pkl")
    with pytest.raises(UserInputError, match=r"missing from the submission, e.g. \['img_0002'\]"):
        score_structure_files(gt_path, tmp_path / "partial.pkl")
    # Extra submitted images are ignored, as the official scorer never reads them: same numbers.
    full = dict(structure_files[3])
    full["not_in_truth"] = {"pred_area": np.ones((8, 8), np.uint8), "score": 9.0}
    write_structure_truth(full, tmp_path / "extra.pkl")
    with pytest.warns(UserWarning, match=r"1 image\(s\) are not in the truth and are ignored.*\['not_in_truth'\]"):
        with_extra = score_structure_files(gt_path, tmp_path / "extra.pkl")
    assert with_extra == score_structure_files(gt_path, structure_files[1]["output"])


# --- the command line -------------------------------------------------------------------------

def test_cli_alignment_json_and_table(alignment_files, capsys):
    truth_path, paths, _, _ = alignment_files
    assert cli_main(["eval", "alignment", "--truth", str(truth_path), "--submission", str(paths["zip"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == pytest.approx(score_alignment_files(truth_path, paths["output"]))
    assert cli_main(["eval", "alignment", "--truth", str(truth_path), "--submission", str(paths["output"]),
                     "--breakdown", "--plcc-direction", "standard"]) == 0
    table = capsys.readouterr().out
    assert "main_score" in table and "per generator" in table and "SDXL-Turbo" in table


def test_cli_structure_json(structure_files, capsys):
    gt_path, paths, _, _ = structure_files
    assert cli_main(["eval", "structure", "--truth", str(gt_path), "--submission", str(paths["output"]), "--json",
                     "--n-resamples", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"precision", "recall", "f1", "giou", "plcc", "srcc", "final_score", "ci"}


def test_cli_reports_errors(tmp_path, capsys):
    (tmp_path / "eval.json").write_text("{not json")
    assert cli_main(["eval", "alignment", "--truth", str(tmp_path / "eval.json"), "--submission", "x.json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert cli_main(["eval"]) == 2  # a bare group prints its help


# --- the evaluate module ----------------------------------------------------------------------

def test_evaluate_module_from_repo_and_package(monkeypatch):
    import evaluate  # a required dependency: a missing install must fail here, not skip
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    truth, sub = _alignment_records(20)
    kwargs = {
        "predictions": [r["total_score"] for r in sub],
        "references": [r["total_score"] for r in truth],
        "prediction_element_scores": [list(r["element_score"].values()) for r in sub],
        "reference_element_scores": [list(r["element_score"].values()) for r in truth],
    }
    got = evaluate.load("metric/t2i_main_score", "alignment").compute(**kwargs, plcc_direction="standard")
    assert got == pytest.approx(alignment_main_score(**kwargs, plcc_direction="standard"))

    assert Path(EVALUATE_MODULE_PATH).is_dir()
    gt, subs = _structure_records(5)
    names = sorted(gt)
    skw = {
        "predictions": [subs[k]["score"] for k in names],
        "references": [gt[k]["score"] for k in names],
        "prediction_masks": [subs[k]["pred_area"] for k in names],
        "reference_masks": [gt[k]["pred_area"] for k in names],
    }
    got = evaluate.load(EVALUATE_MODULE_PATH, "structure").compute(**skw)
    assert got == pytest.approx(structure_final_score(**skw))


def test_cli_json_into_a_closed_pipe_stops_quietly(alignment_files):
    import subprocess
    import sys

    truth_path, paths, _, _ = alignment_files
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalmuse_models", "eval", "alignment", "--truth", str(truth_path),
         "--submission", str(paths["output"]), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `| head` that has already gone away
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_cli_json_never_prints_nan(tmp_path, capsys):
    truth, sub = _alignment_records(8)
    sub[3]["total_score"] = 1e308  # used to give a bare NaN in the JSON
    write_alignment_truth(truth, tmp_path / "eval.json")
    (tmp_path / "output.json").write_text(json.dumps(sub))
    assert cli_main(["eval", "alignment", "--truth", str(tmp_path / "eval.json"), "--submission",
                     str(tmp_path / "output.json"), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-finite {c} in the JSON"))
    assert np.isfinite(result["plcc"]) and np.isfinite(result["main_score"])


def test_official_json_is_read_strictly(tmp_path):
    truth, sub = _alignment_records(5)
    write_alignment_truth(truth, tmp_path / "eval.json")
    text = json.dumps(sub)
    # The same element key twice in one object: json keeps the last silently; refused here.
    key = next(iter(sub[2]["element_score"]))
    doubled = text.replace(json.dumps(key) + ":", json.dumps(key) + ": 0.0, " + json.dumps(key) + ":", 1)
    (tmp_path / "dup.json").write_text(doubled)
    with pytest.raises(UserInputError, match=r"dup.json: the key .* appears twice in one JSON object"):
        score_alignment_files(tmp_path / "eval.json", tmp_path / "dup.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserInputError, match="nested too deeply"):
        read_alignment_file(tmp_path / "deep.json")
    (tmp_path / "latin1.json").write_bytes('[{"img_path": "caf\xe9.png"}]'.encode("latin-1"))
    with pytest.raises(UserInputError, match="not valid JSON"):
        read_alignment_file(tmp_path / "latin1.json")
    with pytest.raises(UserInputError, match="not a regular file"):
        read_alignment_file(tmp_path)


def test_a_small_zip_holding_a_huge_member_is_refused_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "submission.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("output.pkl", b"\0" * (8 * 2**20))  # 8 MiB of zeros: a few KiB zipped
        archive.writestr("readme.txt", "x")
    assert big.stat().st_size < 2**16
    monkeypatch.setenv("EVALMUSE_MAX_FILE_BYTES", str(2**20))
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: read.append(a) or b"")
    with pytest.raises(UserInputError, match=r"output.pkl: 8,388,608 bytes, more than the 1,048,576 .*EVALMUSE_MAX_FILE"):
        read_structure_pickle(big)
    assert read == []  # refused from the archive's directory, before any byte was inflated


def test_element_score_literal_with_a_key_twice_is_refused(tmp_path):
    truth, _ = _alignment_records(5)
    truth[1]["element_score"] = "{'cat (animal)': [1, 0, 1], 'cat (animal)': [0, 0, 0]}"
    (tmp_path / "eval.json").write_text(json.dumps(truth))
    with pytest.raises(UserInputError, match=r"record 1 .*element_score: element key 'cat \(animal\)' appears twice"):
        read_alignment_file(tmp_path / "eval.json")
    truth[1]["element_score"] = "{'cat (animal)': [1, 0, 1], 'Cat (animal)': [0, 0, 0]}"  # distinct keys
    (tmp_path / "eval.json").write_text(json.dumps(truth))
    assert read_alignment_file(tmp_path / "eval.json")[1]["element_score"] == {"cat (animal)": 0.666667,
                                                                              "Cat (animal)": 0.0}
