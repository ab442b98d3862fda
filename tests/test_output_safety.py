"""Output folders: a command replaces only a folder this package wrote, never the user's files or its inputs.

``evalmuse report --out`` used to delete whatever was at the path (a folder of the user's files, the
current directory, the input itself) before writing; ``evalmuse push --stage-dir`` did the same (its
tests are in test_push.py).
"""

from __future__ import annotations

import json
import os

import pytest

from evalmuse_models.cli import main
from evalmuse_models.scoring.results import ResultsWriter
from evalmuse_models.utils import UserInputError
from evalmuse_models.utils.io import OUTPUT_MARKER, claim_output_directory, owned_directory


def _rows(count: int = 3) -> list[dict]:
    return [{"id": f"img_{i:04d}.png", "prompt": f"prompt {i}", "generator": "gen-a", "status": "ok",
             "source": {"path": "/nonexistent.png"},
             "alignment": {"overall": 1.0 + i, "elements": {"cat (animal)": 0.25 * i}}} for i in range(count)]


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "inputs" / "results.jsonl"
    path.parent.mkdir()
    with ResultsWriter(path) as writer:
        writer.write(_rows())
    return path


def _user_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _contents(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# evalmuse report --out
# ---------------------------------------------------------------------------------------------

def test_report_refuses_a_folder_of_user_files(results, tmp_path, capsys):
    folder = tmp_path / "my-files"
    before = _user_folder(folder)
    assert main(["report", str(results), "--out", str(folder)]) == 2
    err = _one_line_error(capsys)
    assert str(folder) in err and "not a report" in err
    assert _contents(folder) == before


def test_report_refuses_the_current_directory_and_what_holds_it(results, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work" / "here"
    before = _user_folder(work)
    monkeypatch.chdir(work)
    for out in (".", str(work), "..", str(tmp_path)):
        assert main(["report", str(results), "--out", out]) == 2, out
        assert "current directory" in _one_line_error(capsys)
    assert _contents(work) == before and results.is_file()


def test_report_refuses_an_existing_file_and_its_own_input(results, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["report", str(results), "--out", str(notes)]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert notes.read_text() == "keep me"

    data = results.read_bytes()
    assert main(["report", str(results), "--out", str(results)]) == 2
    assert "input" in _one_line_error(capsys)
    assert main(["report", str(results), "--out", str(results.parent)]) == 2
    assert "input" in _one_line_error(capsys)
    assert results.read_bytes() == data

    # even a report folder this package wrote is not replaced when the input now lives inside it
    assert main(["report", str(results), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    moved = tmp_path / "r" / "results.jsonl"
    moved.write_bytes(data)
    assert main(["report", str(moved), "--out", str(tmp_path / "r")]) == 2
    assert "input" in _one_line_error(capsys)
    assert moved.read_bytes() == data


def test_report_replaces_its_own_report_and_an_empty_folder(results, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(results), "--out", str(empty)]) == 0
    assert (empty / "index.html").is_file() and (empty / OUTPUT_MARKER).is_file()
    (empty / "images" / "stale.jpg").write_bytes(b"old")
    assert main(["report", str(results), "--out", str(empty), "--title", "second"]) == 0  # a rerun
    assert "second" in (empty / "index.html").read_text() and not (empty / "images" / "stale.jpg").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left over


# ---------------------------------------------------------------------------------------------
# The helper
# ---------------------------------------------------------------------------------------------

def test_claim_output_directory_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with owned_directory("out", "report") as build:
        (build / "a.txt").write_text("1")
    out = tmp_path / "out"
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "report"
    assert claim_output_directory("out", "report") == out  # absolute
    with pytest.raises(UserInputError, match="already exists"):
        claim_output_directory(out, "report", overwrite=False)
    with pytest.raises(UserInputError, match="a report folder"):
        claim_output_directory(out, "push stage")  # another command's output is not replaced either
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(UserInputError, match="symbolic link"):
        claim_output_directory(tmp_path / "link", "report")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / OUTPUT_MARKER).write_text("not json")
    (fake / "x").write_text("keep")
    with pytest.raises(UserInputError, match="not a report"):
        claim_output_directory(fake, "report")
    # a failure while building leaves the old folder as it was and no temporary behind
    with pytest.raises(RuntimeError), owned_directory(out, "report") as build:
        (build / "b.txt").write_text("2")
        raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == sorted([OUTPUT_MARKER, "a.txt"])
    assert sorted(os.listdir(tmp_path)) == ["fake", "link", "out"]
