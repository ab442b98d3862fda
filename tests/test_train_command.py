"""``evalmuse train align|structure|mllm``: help, arguments handed to the recipe untouched, the missing
``train`` extra, and a real tiny MLLM run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalmuse_models.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE_MODULES = {
    "align": "evalmuse_models.training.align",
    "structure": "evalmuse_models.training.structure",
    "mllm": "evalmuse_models.mllm.train",
}


def test_train_lists_the_three_recipes_and_stays_cheap_to_import():
    exe = shutil.which("evalmuse", path=str(Path(sys.executable).parent))
    assert exe is not None, "the `evalmuse` console script is not installed in this environment"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    run = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, check=True, env=env)
    for recipe in RECIPE_MODULES:
        assert f"    {recipe}" in run.stdout, run.stdout
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    assert "evalmuse_models.cli" in imported  # the import log is real
    assert not {"torch", "transformers", "trl", "peft"} & imported
    assert "train" in subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout


def test_bare_train_prints_its_help_and_fails(capsys):
    assert main(["train"]) == 2
    assert "RECIPE" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", sorted(RECIPE_MODULES))
def test_recipe_arguments_reach_the_recipe_untouched(recipe, monkeypatch):
    import importlib

    module = importlib.import_module(RECIPE_MODULES[recipe])
    seen = []
    monkeypatch.setattr(module, "main", lambda argv: seen.append(argv) or 7)
    argv = ["--config", "train_scripts/configs/x.yaml", "--max_steps", "3", "--help", "--", "-x", "+y"]
    assert main(["train", recipe, *argv]) == 7
    assert seen == [argv]


@pytest.mark.parametrize("recipe", sorted(RECIPE_MODULES))
def test_recipe_help_is_the_recipes_own(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset_dir", "--output_dir", "--learning_rate", "--seed"):  # recipe and Trainer fields
        assert option in out, out[:2000]
    if recipe == "mllm":
        assert "--lora_towers" in out and "--model_name_or_path" in out and "--lora_r" in out


def test_a_missing_train_extra_is_one_line(monkeypatch, capsys):
    import importlib.util

    import evalmuse_models.commands.train as command

    real = importlib.util.find_spec
    monkeypatch.setattr(command.importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    assert main(["train", "mllm", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "peft" in err and "pip install 'evalmuse-models[train]'" in err


def test_recipe_input_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: tiny\nlora_rank: 4\n")
    assert main(["train", "mllm", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "lora_rank" in err and err.count("\n") == 0


@pytest.mark.slow
def test_tiny_mllm_run_through_the_command(prepared_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "mllm", "--config", str(REPO / "train_scripts" / "configs" / "sft_tiny.yaml"),
                 "--dataset_dir", str(prepared_dataset), "--output_dir", str(out), "--max_steps", "1",
                 "--max_train_samples", "2", "--max_eval_samples", "3", "--save_merged", "false"])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["epoch"] == pytest.approx(1.0)  # 1 step x batch 2 = the 2 training records
    assert json.loads(printed[printed.rindex('{\n  "metrics"'):])["paths"] == {"adapter": str(out / "adapter")}
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "merged").exists()
    assert "main_score" in summary["metrics"]
