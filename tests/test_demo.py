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
    # The held-out synthetic generator: its images are scored apart and the gap is printed and reported.
    gap = summary["alignment"]["generalisation"]
    assert gap["holdout_generators"] == ["PixelForge-Pastel"] and "generalisation gap" in printed
    assert gap["groups"]["seen"]["n_images"] == summary["alignment"]["num_images"]
    unseen = read_results(tmp_path / "a" / "results_alignment_unseen.jsonl")
    assert unseen and all(r["id"].startswith("PixelForge-Pastel/") for r in unseen)
    assert 'id="analysis-generalisation"' in (tmp_path / "a" / "report" / "index.html").read_text()
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


BAD_ARGUMENTS = [
    (["--num-prompts", "0"], "--num-prompts"),
    (["--num-prompts", "-3"], "--num-prompts"),
    (["--num-prompts", "2"], "--num-prompts"),  # too few for a train, a validation and a test prompt
    (["--num-structure-images", "0"], "--num-structure-images"),
    (["--num-structure-images", "16"], "--num-structure-images"),  # validation / test splits under 3 images
    (["--align-steps", "0"], "--align-steps"),
    (["--align-steps", "-1"], "--align-steps"),
    (["--structure-epochs", "0"], "--structure-epochs"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
]


@pytest.mark.parametrize(("extra", "option"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, extra, option):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", *SMALL, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and option in captured.err, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "[evalmuse demo]" not in captured.out  # no stage started
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_output_folder_that_is_not_a_demo_folder_is_refused(tmp_path, capsys):
    """--out may be new, empty or an earlier demo run; a file or a folder of other things is left alone."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["demo", "--out", str(a_file), *SMALL]) == 2
    assert "--out" in capsys.readouterr().err and a_file.read_text() == "mine"
    assert main(["demo", "--out", str(a_file / "demo"), *SMALL]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "mine"

    other = tmp_path / "work"
    (other / "dataset").mkdir(parents=True)
    (other / "dataset" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(other), "--device", "cpu", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--out" in err and "demo" in err
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*")) == ["dataset", "dataset/keep.txt"]


def test_an_earlier_demo_folder_is_checked_before_any_work(tmp_path, capsys):
    """A folder of an interrupted earlier run (its recipe, no other marker) is a demo folder: its settings
    are compared before anything is written."""
    out = tmp_path / "demo"
    (out / ".steps").mkdir(parents=True)
    (out / ".steps" / "recipe").write_text(json.dumps({"seed": 3, "num_prompts": 12}))
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["demo", "--out", str(out), "--seed", "4", "--device", "cpu", *SMALL]) == 2
    assert "seed: 3 -> 4" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize("overrides", [
    {"num_prompts": 0}, {"num_prompts": True}, {"num_prompts": 12.5}, {"align_learning_rate": 0.0},
    {"align_learning_rate": float("nan")}, {"align_batch_size": 0}, {"structure_batch_size": 0},
    {"time_budget_s": 0}, {"score_batch_size": 0}, {"num_workers": -1}, {"chance_draws": 0}, {"device": 3},
])
def test_run_demo_validates_every_setting(tmp_path, overrides):
    from evalmuse_models.demo import run_demo
    from evalmuse_models.utils import UserInputError

    with pytest.raises(UserInputError, match=next(iter(overrides)).replace("_", "[-_]")):
        run_demo(tmp_path / "demo", **{"device": "cpu", **overrides})
    assert list(tmp_path.iterdir()) == []
