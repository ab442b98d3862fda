"""Training of the alignment model: official targets, data splits, the CLI, resume, and a short CPU run
of the tiny preset that must improve the validation Main Score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evalmuse_models.models.evalmuse_align import (
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
    build_tiny_processor,
)
from evalmuse_models.training.align import (
    TrainAlignArguments,
    build_token_targets,
    effective_warmup_steps,
    hold_out_prompts,
    parse_args,
    train_align,
    warmup_cosine_lr_lambda,
)
from evalmuse_models.utils import UserInputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(EvalMuseAlignConfig.from_preset("tiny"))


def test_token_targets_follow_element2mask(processor):
    prompt = "Two red circles and a red square on the left."
    elements = [
        {"phrase": "red circles", "category": "object", "score": 1.0},
        {"phrase": "red", "category": "color", "score": 1 / 3},  # overlaps the first span: averaged
        {"phrase": "on the left", "category": "spatial", "score": 0.0},
        {"phrase": "purple", "category": "color", "score": 1.0},  # not in the prompt
    ]
    mask, score, unmatched = build_token_targets(processor, prompt, elements, total_score=4.0, max_length=12)
    tokens = processor.tokenizer.convert_ids_to_tokens(processor.prompt_ids(prompt))
    assert tokens[:4] == ["[CLS]", "two", "red", "circles"]
    assert len(mask) == len(score) == 12
    assert mask[0] == 1.0 and score[0] == pytest.approx(0.75)  # CLS carries (4 - 1) / 4
    assert mask[2] == 1.0 and score[2] == pytest.approx((1.0 + 1 / 3) / 2)  # FIRST "red" only, averaged
    assert mask[3] == 1.0 and score[3] == pytest.approx(1.0)
    red_square = tokens.index("red", 4)
    assert mask[red_square] == 0.0
    left = tokens.index("left")
    assert mask[left - 2 : left + 1] == [1.0, 1.0, 1.0] and score[left] == 0.0
    assert mask[1] == 0.0 and mask[left + 1 :] == [0.0] * (12 - left - 1)
    assert unmatched == ["purple (color)"]
    short_mask, _, _ = build_token_targets(processor, prompt, elements, 4.0, max_length=3)
    assert short_mask == [1.0, 0.0, 1.0]


def test_hold_out_by_prompt():
    import datasets

    rows = {"prompt": [f"p{i // 3}" for i in range(30)], "total_score": [3.0] * 30}
    train, held = hold_out_prompts(datasets.Dataset.from_dict(rows), 0.2, seed=1)
    assert len(train) + len(held) == 30 and len(held) == 6
    assert not set(train["prompt"]) & set(held["prompt"])
    again, _ = hold_out_prompts(datasets.Dataset.from_dict(rows), 0.2, seed=1)
    assert again["prompt"] == train["prompt"]
    with pytest.raises(UserInputError):
        hold_out_prompts(datasets.Dataset.from_dict({"prompt": ["a", "a"]}), 0.5, seed=0)


def test_warmup_cosine_schedule_steps_per_optimizer_step():
    args = TrainAlignArguments(dataset_dir="x", output_dir="y", learning_rate=1e-5, warmup_steps=100, num_epochs=5)
    factor = warmup_cosine_lr_lambda(args, total_steps=5000)
    assert effective_warmup_steps(100, 5000) == 100
    assert factor(0) * 1e-5 == pytest.approx(1e-8)
    assert factor(50) * 1e-5 == pytest.approx(1e-8 + (1e-5 - 1e-8) * 0.5)
    assert factor(100) == pytest.approx(1.0)
    halfway = 100 + (5000 - 100) // 2
    assert factor(halfway) == pytest.approx(0.5)
    assert factor(101) < 1.0 and factor(2000) > factor(2001)  # decays every step, not once per epoch
    assert factor(5000) == pytest.approx(0.0) and factor(6000) == pytest.approx(0.0)
    # a short run warms up for at most a tenth of its steps
    assert effective_warmup_steps(100, 300) == 30 and effective_warmup_steps(100, 5) == 0
    short = warmup_cosine_lr_lambda(args, total_steps=5)
    assert short(0) == pytest.approx(1.0) and short(4) < short(1) < 1.0


def test_max_steps_run_decays_the_learning_rate_to_the_minimum(prepared_dataset, tmp_path):
    """The schedule spans the run's real optimizer steps: max_steps overrides num_epochs (the run goes on
    over several epochs) and the LR reaches its minimum at the last step."""
    out = tmp_path / "lr"
    metrics = train_align(_tiny_args(
        prepared_dataset, out, max_steps=6, save_every=3, eval_every=10**6, eval_on_start=False, warmup_steps=0,
        min_learning_rate=0.0, num_epochs=1, per_device_train_batch_size=48, augment=False,
    ))
    assert metrics["steps"] == 6 and metrics["epochs_completed"] >= 1
    scheduler_state = json.loads((out / "checkpoints" / "step-6" / "scheduler.json").read_text())
    assert scheduler_state["last_epoch"] == 6
    assert scheduler_state["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    middle = json.loads((out / "checkpoints" / "step-3" / "scheduler.json").read_text())
    assert middle["last_epoch"] == 3 and middle["_last_lr"][0] == pytest.approx(1e-3 * 0.5, rel=1e-6)


def test_time_budget_stops_the_run_for_every_process(prepared_dataset, tmp_path):
    # The decision is gathered from every process (one process here), so all stop at the same step.
    metrics = train_align(_tiny_args(prepared_dataset, tmp_path / "budget", max_steps=1000, time_budget_s=1e-3,
                                     eval_on_start=False, eval_every=10**6, save_every=10**6))
    assert metrics["stopped_by_time_budget"] is True and metrics["steps"] == 1


def test_arguments_yaml_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny\nlearning_rate: 0.001\ndataset_dir: data\noutput_dir: out\nfreeze_vision: false\n")
    args = parse_args(["--config", str(config), "--learning_rate", "0.002", "--max_steps", "7"])
    assert (args.preset, args.learning_rate, args.max_steps, args.freeze_vision) == ("tiny", 0.002, 7, False)
    assert args.dataset_dir == "data" and args.weight_decay == 0.05
    official = parse_args(["--config", str(REPO / "train_scripts/configs/align_fga_blip2.yaml"),
                           "--dataset_dir", "d", "--output_dir", "o"])
    assert (official.learning_rate, official.warmup_steps, official.weight_decay) == (1e-5, 100, 0.05)
    assert (official.num_epochs, official.per_device_train_batch_size, official.freeze_vision) == (5, 14, True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1\n")
    with pytest.raises(UserInputError, match="learning_rat"):
        parse_args(["--config", str(bad), "--dataset_dir", "d", "--output_dir", "o"])
    with pytest.raises(UserInputError, match="mixed_precision"):
        TrainAlignArguments(dataset_dir="d", output_dir="o", mixed_precision="fp8")


def _tiny_args(dataset, out, **overrides) -> TrainAlignArguments:
    values = {
        "dataset_dir": str(dataset), "output_dir": str(out), "preset": "tiny", "learning_rate": 1e-3, "warmup_steps": 2,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "freeze_vision": True, "augment": True,
        "num_epochs": 50, "seed": 0, "show_progress": False, "torch_num_threads": 1,
    }
    values.update(overrides)
    return TrainAlignArguments(**values)


def test_short_run_writes_model_metrics_and_resumes(prepared_dataset, tmp_path):
    out = tmp_path / "run"
    metrics = train_align(_tiny_args(prepared_dataset, out, max_steps=4, save_every=2, eval_every=2, eval_on_start=False))
    assert metrics["steps"] == 4 and [h["step"] for h in metrics["history"]] == [2, 4]
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["final"]) >= {"srcc", "plcc", "acc", "main_score"} and saved["validation_images"] > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    model = EvalMuseAlignModel.from_pretrained(out / "model")
    assert (out / "model" / "README.md").is_file() and (out / "model" / "processor_config.json").is_file()
    # frozen ViT: its weights did not move; its post-LayerNorm (LAVIS ln_vision) and the Q-Former did
    torch.manual_seed(0)
    fresh = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny"))
    state, start = model.state_dict(), fresh.state_dict()
    assert torch.equal(state["vision_model.encoder.layers.0.mlp.fc1.weight"], start["vision_model.encoder.layers.0.mlp.fc1.weight"])
    assert not torch.equal(state["itm_head.weight"], start["itm_head.weight"])
    assert not torch.equal(state["vision_model.post_layernorm.weight"], start["vision_model.post_layernorm.weight"])

    resumed = train_align(_tiny_args(prepared_dataset, out, max_steps=6, save_every=2, eval_every=2, eval_on_start=False))
    assert resumed["steps"] == 6
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6]  # history carried over from the checkpoint
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]


@pytest.mark.slow
def test_cli_script_runs(prepared_dataset, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_scripts/train_align.py"), "--config",
         str(REPO / "train_scripts/configs/align_tiny.yaml"), "--dataset_dir", str(prepared_dataset),
         "--output_dir", str(out), "--max_steps", "2", "--eval_every", "2", "--save_every", "2",
         "--show_progress", "false", "--eval_on_start", "false"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert printed["steps"] == 2 and "main_score" in printed["final"]
    bad = subprocess.run(
        [sys.executable, str(REPO / "train_scripts/train_align.py"), "--dataset_dir", str(tmp_path / "none"),
         "--output_dir", str(out), "--preset", "tiny"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr


@pytest.mark.slow
def test_short_cpu_run_improves_the_validation_main_score(tmp_path_factory):
    """A bigger synthetic release than the shared fixture (its 32 validation images are too few to measure
    a change reliably): 160 prompts, ~130 validation images; 300 steps of the tiny preset on CPU."""
    from evalmuse_models.data import prepare_dataset
    from evalmuse_models.data.synthetic import write_alignment_release

    root = tmp_path_factory.mktemp("align_learning")
    write_alignment_release(root / "raw", num_prompts=160, seed=3)
    prepare_dataset(root / "prepared", alignment_dir=root / "raw")
    metrics = train_align(
        _tiny_args(root / "prepared", root / "run", max_steps=300, warmup_steps=20, per_device_train_batch_size=16,
                   freeze_vision=False, eval_every=100_000, save_every=100_000)
    )
    initial, final = metrics["initial"], metrics["final"]
    assert final["num_images"] == initial["num_images"] > 100
    assert final["main_score"] > initial["main_score"] + 0.05, (initial, final)
    assert final["srcc"] > initial["srcc"]


@pytest.mark.slow
def test_two_process_cpu_run(prepared_dataset, tmp_path):
    """The multi-process path (DDP over gloo) on CPU: ``torchrun --nproc_per_node 2``."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(REPO / "train_scripts/train_align.py"), "--config", str(REPO / "train_scripts/configs/align_tiny.yaml"),
               "--dataset_dir", str(prepared_dataset), "--output_dir", str(out),
               "--eval_every", "2", "--save_every", "2", "--show_progress", "false", "--eval_on_start", "false",
               "--max_steps", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoint = out / "checkpoints" / "step-2"
    assert (checkpoint / "rng_state_0.json").is_file() and (checkpoint / "rng_state_1.json").is_file()
    assert not [p.name for p in checkpoint.iterdir() if p.suffix in (".pkl", ".bin", ".pt")]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert EvalMuseAlignModel.from_pretrained(out / "model").config.model_type == "evalmuse_align"
    # Both processes resume from it (each with its own RNG states).
    resumed = subprocess.run([*command[:-2], "--max_steps", "4"], capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
