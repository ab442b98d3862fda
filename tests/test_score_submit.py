"""``evalmuse submit``: results rows → the official submission files, read back by the official readers."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from test_score_engine import FakeAlign, FakeStructure, write_image_folder

from evalmuse_models.cli import main
from evalmuse_models.metrics import read_alignment_file, read_structure_pickle
from evalmuse_models.scoring import read_results, rle_to_mask, score
from evalmuse_models.scoring.submission import write_submission
from evalmuse_models.utils import UserInputError


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("submit")
    write_image_folder(tmp / "images", count=6)
    out = tmp / "results.jsonl"
    score(tmp / "images", out=out, align=FakeAlign(), structure=FakeStructure(), progress=False)
    return out


def test_submission_files_match_the_results(results, tmp_path):
    with pytest.raises(UserInputError, match="2 image\\(s\\) have no alignment result"):
        write_submission(results, tmp_path / "sub")
    written = write_submission(results, tmp_path / "sub", allow_missing=True, description="fake  models")
    rows = {r["id"]: r for r in read_results(results) if r["status"] == "ok"}
    submitted = {rec["img_path"]: rec for rec in read_alignment_file(written["alignment"]["output"])}
    assert set(submitted) == set(rows)
    for key, rec in submitted.items():
        assert rec["total_score"] == pytest.approx(rows[key]["alignment"]["overall"])
        assert rec["element_score"] == pytest.approx(rows[key]["alignment"]["elements"])
    masks = read_structure_pickle(written["structure"]["output"])
    assert set(masks) == {key[: -len(".png")] for key in rows}
    for key, row in rows.items():
        entry = masks[key[: -len(".png")]]
        np.testing.assert_array_equal(entry["pred_area"], rle_to_mask(row["structure"]["mask_512"]))
        assert entry["score"] == pytest.approx(row["structure"]["score"])
    readme = written["alignment"]["readme"].read_text()
    assert "CPU[1] / GPU[0] : 1" in readme and "LLM[1] / Non-LLM[0] : 0" in readme and "fake models" in readme
    with zipfile.ZipFile(written["structure"]["zip"]) as archive:
        assert sorted(archive.namelist()) == ["output.pkl", "readme.txt"]


def test_submit_cli(results, tmp_path, capsys):
    assert main(["submit", str(results), "--out", str(tmp_path / "s"), "--track", "structure"]) == 2
    assert "--allow-missing" in capsys.readouterr().err
    assert main(["submit", str(results), "--out", str(tmp_path / "s"), "--track", "structure", "--allow-missing",
                 "--gpu", "--runtime-per-image", "0.5"]) == 0
    readme = (tmp_path / "s" / "structure" / "readme.txt").read_text()
    assert "runtime per image [s] : 0.50" in readme and "CPU[1] / GPU[0] : 0" in readme
    assert not (tmp_path / "s" / "alignment").exists()


def test_a_file_mixing_two_scoring_runs_is_explained(results, tmp_path):
    from evalmuse_models.scoring import ResultsWriter

    structure_only = tmp_path / "structure.jsonl"
    score(results.parent / "images", out=structure_only, structure=FakeStructure(), progress=False)
    combined = tmp_path / "combined.jsonl"  # what the demo writes for its report
    with ResultsWriter(combined) as writer:
        writer.write([r for r in read_results(results) if r["status"] == "ok"])
        writer.write([{**r, "id": "s_" + r["id"]} for r in read_results(structure_only) if r["status"] == "ok"])
    with pytest.raises(UserInputError, match=r"row\(s\) were scored without --align .* mixes several scoring runs"):
        write_submission(combined, tmp_path / "sub")


def test_rescale_minmax_maps_each_tracks_scores_onto_1_to_5(results, tmp_path):
    written = write_submission(results, tmp_path / "sub", allow_missing=True, rescale="minmax")
    rows = {r["id"]: r for r in read_results(results) if r["status"] == "ok"}
    overall = {key: row["alignment"]["overall"] for key, row in rows.items()}
    low, high = min(overall.values()), max(overall.values())
    submitted = {rec["img_path"]: rec for rec in read_alignment_file(written["alignment"]["output"])}
    for key, rec in submitted.items():
        assert rec["total_score"] == pytest.approx(1 + 4 * (overall[key] - low) / (high - low))
        assert rec["element_score"] == pytest.approx(rows[key]["alignment"]["elements"])  # probabilities: kept
    assert sorted(rec["total_score"] for rec in submitted.values())[::len(submitted) - 1] == pytest.approx([1, 5])
    structure = {key[: -len(".png")]: row["structure"]["score"] for key, row in rows.items()}
    low, high = min(structure.values()), max(structure.values())
    for key, rec in read_structure_pickle(written["structure"]["output"]).items():
        assert rec["score"] == pytest.approx(1 + 4 * (structure[key] - low) / (high - low))
    with pytest.raises(UserInputError, match="unknown rescaling 'zscore'"):
        write_submission(results, tmp_path / "sub2", allow_missing=True, rescale="zscore")
