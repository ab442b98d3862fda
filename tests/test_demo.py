"""``evalmuse demo`` on a reduced budget: every stage runs, outputs are consistent, same seed → same numbers.

The full-size demo (``make demo``) is what shows the trained models beating chance; here the budgets
are cut so the pipeline runs in about a minute.
"""

from __future__ import annotations

import json

import pytest

from evalmuse_models.cli import main
from evalmuse_models.scoring import read_results

SMALL = ["--num-prompts", "12", "--num-structure-images", "60", "--align-steps", "3", "--structure-epochs", "1",
         "--no-progress"]


def test_small_demo_end_to_end_and_deterministic(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "a"), "--seed", "3", "--device", "cpu", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "Alignment track" in printed and "Structure track" in printed and "chance baseline" in printed
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    for track, key in (("alignment", "main_score"), ("structure", "final_score")):
        assert 0 <= summary[track]["trained"][key] <= 1 and 0 <= summary[track]["chance"][key] <= 1
    rows = read_results(tmp_path / "a" / "results.jsonl")
    align_rows = [r for r in rows if "alignment" in r]
    assert len(align_rows) == summary["alignment"]["num_images"]
    assert all(r["status"] == "ok" and r["reference"]["overall"] is not None for r in align_rows)
    assert len(rows) - len(align_rows) == summary["structure"]["num_images"]
    assert (tmp_path / "a" / "report" / "index.html").is_file()
    card_metrics = json.loads((tmp_path / "a" / "runs" / "align" / "model" / "eval_results.json").read_text())
    assert card_metrics["metrics"] == summary["alignment"]["trained"]

    # Same seed in a fresh folder: the same scores (to float round-off of multi-threaded CPU kernels).
    assert main(["demo", "--out", str(tmp_path / "b"), "--seed", "3", "--device", "cpu", "--no-report", *SMALL]) == 0
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    for track in ("alignment", "structure"):
        assert again[track]["trained"] == pytest.approx(summary[track]["trained"], rel=1e-6, abs=1e-9)
        assert again[track]["chance"] == pytest.approx(summary[track]["chance"], rel=1e-6, abs=1e-9)

    # A rerun in the same folder resumes: finished steps are skipped, the numbers stay.
    assert main(["demo", "--out", str(tmp_path / "b"), "--seed", "3", "--device", "cpu", "--no-report", *SMALL]) == 0
    resumed = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert resumed["alignment"]["trained"] == summary["alignment"]["trained"]
    assert resumed["timings_s"]["train_align"] < 1 and resumed["timings_s"]["train_structure"] < 1
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "b"), "--seed", "4", "--device", "cpu", "--no-report", *SMALL]) == 2
    assert "seed: 3 -> 4" in capsys.readouterr().err


def test_demo_rejects_a_missing_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--out", str(tmp_path / "x"), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
