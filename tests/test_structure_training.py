"""Training of the EvalMuse structure model on the synthetic structure release: it must beat the
untrained model on the official Final score, resume from checkpoints, follow the freezing
schedule, and reject bad input clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evalmuse_models.training import structure as training
from evalmuse_models.training.structure import (
    TrainStructureArguments,
    parse_args,
    train_structure,
)
from evalmuse_models.utils import UserInputError

torch.set_num_threads(1)  # small ops: one thread is faster on a shared 2-core machine
REPO = Path(__file__).resolve().parents[1]


def small_args(dataset_dir, output_dir, **overrides) -> TrainStructureArguments:
    values = {
        "dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "preset": "tiny", "max_steps": 4,
        "max_train_samples": 8, "per_device_train_batch_size": 4, "eval_split": None, "evaluate_test": False,
        "eval_before_training": False, "threshold_search": False, "show_progress": False,
    }
    values.update(overrides)
    return TrainStructureArguments(**values)


@pytest.mark.slow
def test_tiny_training_beats_the_untrained_model(prepared_dataset, tmp_path):
    from transformers import AutoModel

    from evalmuse_models.models.evalmuse_structure import EvalMuseStructureModel

    out = tmp_path / "run"
    result = train_structure(TrainStructureArguments(
        dataset_dir=str(prepared_dataset), output_dir=str(out), preset="tiny", max_steps=80,
        per_device_train_batch_size=8, learning_rate=3e-3, seed=0, show_progress=False,
    ))
    initial, final = result["initial"], result["final"]
    official = {"precision", "recall", "f1", "giou", "plcc", "srcc", "final_score"}
    assert official <= set(initial) and official <= set(final)
    # the official score on the validation split and, with the threshold chosen there, on the test split
    assert final["final_score"] > initial["final_score"] + 0.15, (initial, final)
    assert final["f1"] > initial["f1"]
    assert result["test"]["final_score"] > result["initial_test"]["final_score"] + 0.1
    assert result["train"]["loss_last"] < result["train"]["loss_first"]
    assert result["train"]["steps"] == 80 and len(result["epochs"]) >= 10
    assert all("final_score" in e for e in result["epochs"])
    # the chosen threshold is the best row of the search and is saved in the config
    best = max(row["final_score"] for row in result["threshold_table"])
    assert final["final_score"] == pytest.approx(best)
    model = AutoModel.from_pretrained(result["model_dir"])
    assert isinstance(model, EvalMuseStructureModel)
    assert model.config.threshold == pytest.approx(result["threshold"])
    assert json.loads((out / "metrics.json").read_text())["final"]["final_score"] == pytest.approx(final["final_score"])
    assert not (out / "checkpoints").exists()
    card = (out / "model" / "README.md").read_text()
    assert "EvalMuse structure model (`tiny` preset)" in card and "final_score (validation)" in card
    assert f"{round(final['final_score'], 4)}" in card
    from datasets import load_dataset

    row = load_dataset(str(prepared_dataset), "structure", split="test")[0]
    prediction = model.predict([row["image"]])[0]
    assert prediction["mask"].shape == (row["image"].height, row["image"].width)


def test_training_resumes_after_an_interruption(prepared_dataset, tmp_path, monkeypatch, capsys):
    real_call = training._Collator.__call__
    calls = {"n": 0}

    def crashing_call(self, rows):
        if self.train:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("simulated interruption")
        return real_call(self, rows)

    args = small_args(prepared_dataset, tmp_path / "run", max_steps=6, max_train_samples=12,
                      save_steps=2, keep_checkpoints=True)
    monkeypatch.setattr(training._Collator, "__call__", crashing_call)
    with pytest.raises(KeyboardInterrupt):
        train_structure(args)
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["epoch"] == 1  # 3 batches per epoch; saved at the epoch end
    assert not (tmp_path / "run" / "model").exists()
    monkeypatch.setattr(training._Collator, "__call__", real_call)
    result = train_structure(args)
    assert "resumed from" in capsys.readouterr().out
    assert result["train"]["steps"] == 6 and len(result["train"]) and result["train"]["samples"] == 24
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_freeze_schedule_unfreezes_the_backbones(prepared_dataset, tmp_path):
    from accelerate.utils import set_seed

    from evalmuse_models.models.evalmuse_structure import (
        EvalMuseStructureConfig,
        EvalMuseStructureModel,
    )

    overrides = {"freeze_vit": True, "freeze_cnn": True}
    set_seed(0)
    reference = EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny", **overrides))
    ref_vit = reference.vit.embeddings.patch_embeddings.projection.weight

    kept = train_structure(small_args(prepared_dataset, tmp_path / "frozen", config_overrides=overrides))
    frozen = EvalMuseStructureModel.from_pretrained(kept["model_dir"])
    assert torch.equal(frozen.vit.embeddings.patch_embeddings.projection.weight, ref_vit)
    assert not torch.equal(frozen.decoder.head.weight, reference.decoder.head.weight)

    moved = train_structure(small_args(prepared_dataset, tmp_path / "sched", config_overrides=overrides,
                                       freeze_schedule_fraction=0.5))
    assert moved["train"]["unfrozen_at_step"] == 2
    unfrozen = EvalMuseStructureModel.from_pretrained(moved["model_dir"])
    assert not torch.equal(unfrozen.vit.embeddings.patch_embeddings.projection.weight, ref_vit)
    # the saved config still describes the model as built (frozen backbones by default)
    assert unfrozen.config.freeze_vit and unfrozen.config.freeze_cnn


def test_gradient_accumulation_counts_optimizer_steps(prepared_dataset, tmp_path):
    result = train_structure(small_args(prepared_dataset, tmp_path / "acc", max_steps=3, per_device_train_batch_size=2,
                                        gradient_accumulation_steps=2))
    assert result["train"]["steps"] == 3 and result["train"]["samples"] == 12  # 2 batches of 2 per step


def test_time_budget_stops_training(prepared_dataset, tmp_path):
    result = train_structure(small_args(prepared_dataset, tmp_path / "budget", max_steps=1000, time_budget_s=0.01))
    assert result["train"]["stopped_by_time_budget"] and result["train"]["steps"] == 1
    assert (tmp_path / "budget" / "model" / "config.json").is_file()


def test_bad_input_is_reported(prepared_dataset, tmp_path):
    with pytest.raises(UserInputError, match="structure"):
        train_structure(small_args(tmp_path / "nowhere", tmp_path / "out"))
    with pytest.raises(UserInputError, match="no split 'dev'"):
        train_structure(small_args(prepared_dataset, tmp_path / "out", eval_split="dev"))
    with pytest.raises(UserInputError, match="per_device_train_batch_size"):
        train_structure(small_args(prepared_dataset, tmp_path / "out", per_device_train_batch_size=0))
    with pytest.raises(UserInputError, match="time_budget_s"):
        train_structure(small_args(prepared_dataset, tmp_path / "out", time_budget_s=0))
    with pytest.raises(UserInputError, match="preset"):
        train_structure(small_args(prepared_dataset, tmp_path / "out", preset="giant"))


def test_command_line_arguments(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny\nmax_steps: 7\nconfig_overrides:\n  rank_loss_weight: 0.2\n")
    args = parse_args(["--config", str(config), "--dataset_dir", "d", "--output_dir", "o",
                       "--thresholds", "0.1,0.2", "--hflip", "false", "--max_train_samples", "none"])
    assert args.max_steps == 7 and args.config_overrides == {"rank_loss_weight": 0.2}
    assert args.thresholds == [0.1, 0.2] and args.hflip is False and args.max_train_samples is None
    config.write_text("preset: tiny\nmax_stepz: 7\n")
    with pytest.raises(UserInputError, match="max_stepz"):
        parse_args(["--config", str(config), "--dataset_dir", "d", "--output_dir", "o"])
    with pytest.raises(UserInputError, match="--dataset_dir"):
        parse_args(["--output_dir", "o"])
    for name in ("structure_tiny", "structure_hnu_vpai", "structure_em_rahf"):
        parsed = parse_args(["--config", str(REPO / "train_scripts" / "configs" / f"{name}.yaml"), "--dataset_dir", "d"])
        parsed.validate()


@pytest.mark.slow
def test_training_script_runs(prepared_dataset, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_scripts" / "train_structure.py"),
         "--config", str(REPO / "train_scripts" / "configs" / "structure_tiny.yaml"),
         "--dataset_dir", str(prepared_dataset), "--output_dir", str(tmp_path / "cli"),
         "--max_steps", "2", "--max_train_samples", "8", "--eval_before_training", "false",
         "--threshold_search", "false", "--show_progress", "false", "--num_threads", "1"],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["final"]["final_score"] is not None and Path(summary["model_dir"]).is_dir()
    bad = subprocess.run(
        [sys.executable, str(REPO / "train_scripts" / "train_structure.py"), "--dataset_dir",
         str(tmp_path / "missing"), "--output_dir", str(tmp_path / "x")],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr
