"""Training of the alignment model on transformers' Trainer: official targets, data splits, the official
defaults under the Trainer's names, the LR schedule, the time budget, resume, the CLI, the 2-process run,
and a short CPU run of the tiny preset that must improve the validation Main Score."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evalmuse_models.models.evalmuse_align import (
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
)
from evalmuse_models.testing.align import build_tiny_processor
from evalmuse_models.training.align import (
    AlignRecipeArguments,
    AlignTrainer,
    AlignTrainingArguments,
    build_token_targets,
    hold_out_prompts,
    parse_args,
    train_align,
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


def test_official_defaults_give_the_lavis_schedule(tmp_path):
    """The Trainer's names carry FGA-BLIP2's values, and its scheduler built from them is LAVIS's linear
    warm-up + cosine, stepped per optimizer step, with the warm-up capped at a tenth of a short run."""
    from transformers import get_scheduler

    args = AlignTrainingArguments(output_dir=str(tmp_path))
    assert (args.learning_rate, args.weight_decay, args.warmup_steps, args.num_train_epochs) == (1e-5, 0.05, 100, 5)
    assert (args.per_device_train_batch_size, args.max_grad_norm, args.lr_scheduler_kwargs) == (14, 0.0, {"min_lr": 0.0})
    assert args.get_warmup_steps(5000) == 100 and args.get_warmup_steps(300) == 30 and args.get_warmup_steps(5) == 0

    def curve(total: int) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(total),
                                  num_training_steps=total, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        lrs = []
        for _ in range(total + 1):
            lrs.append(scheduler.get_last_lr()[0] / args.learning_rate)
            optimizer.step()
            scheduler.step()
        return lrs

    factor = curve(5000)
    assert factor[0] == 0.0 and factor[50] == pytest.approx(0.5) and factor[100] == pytest.approx(1.0)
    assert factor[100 + (5000 - 100) // 2] == pytest.approx(0.5)
    assert factor[101] < 1.0 and factor[2000] > factor[2001]  # decays every step, not once per epoch
    assert factor[5000] == pytest.approx(0.0, abs=1e-12)
    short = curve(5)  # no warm-up at all
    assert short[0] == pytest.approx(1.0) and short[4] < short[1] < 1.0


def test_weight_decay_spares_biases_norms_and_query_tokens():
    model = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny"))
    decayed = set(AlignTrainer.get_decay_parameter_names(None, model))
    names = dict(model.named_parameters())
    assert "itm_head.weight" in decayed and "vision_model.encoder.layers.0.mlp.fc1.weight" in decayed
    assert not [n for n in decayed if names[n].ndim < 2 or "bias" in n or "norm" in n.lower()]
    assert "query_tokens" in names and "query_tokens" not in decayed


def test_arguments_yaml_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny\nlearning_rate: 0.001\ndataset_dir: data\noutput_dir: out\nfreeze_vision: false\n"
                      "eval_strategy: steps\neval_steps: 5\n")
    recipe, training = parse_args(["--config", str(config), "--learning_rate", "0.002", "--max_steps", "7"])
    assert (recipe.preset, recipe.freeze_vision, recipe.dataset_dir) == ("tiny", False, "data")
    assert (training.learning_rate, training.max_steps, training.eval_steps) == (0.002, 7, 5)
    assert training.weight_decay == 0.05 and training.output_dir == "out"
    recipe, official = parse_args(["--config", str(REPO / "train_scripts/configs/align_fga_blip2.yaml"),
                                   "--dataset_dir", "d", "--output_dir", "o", "--bf16", "false"])
    assert (official.learning_rate, official.warmup_steps, official.weight_decay) == (1e-5, 100, 0.05)
    assert (official.num_train_epochs, official.per_device_train_batch_size, recipe.freeze_vision) == (5, 14, True)
    assert official.lr_scheduler_type == "cosine_with_min_lr" and official.lr_scheduler_kwargs == {"min_lr": 0.0}
    recipe, tiny = parse_args(["--config", str(REPO / "train_scripts/configs/align_tiny.yaml"),
                               "--dataset_dir", "d", "--output_dir", "o"])
    assert (recipe.preset, tiny.max_steps, tiny.eval_steps, tiny.save_steps) == ("tiny", 600, 200, 200)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1\n")
    with pytest.raises(UserInputError, match="learning_rat"):
        parse_args(["--config", str(bad), "--dataset_dir", "d", "--output_dir", "o"])
    with pytest.raises(UserInputError, match="loss_weighting"):
        AlignRecipeArguments(dataset_dir="d", loss_weighting="squared")
    with pytest.raises(UserInputError, match="output_dir"):
        AlignTrainingArguments()


def _tiny_args(dataset, out, *, recipe=None, **overrides):
    """(recipe, training) arguments of a short tiny run on CPU."""
    recipe_values = {"dataset_dir": str(dataset), "preset": "tiny", "freeze_vision": True, "augment": True,
                     "torch_num_threads": 1}
    recipe_values.update(recipe or {})
    values = {
        "output_dir": str(out), "learning_rate": 1e-3, "warmup_steps": 2, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16, "num_train_epochs": 50, "seed": 0, "disable_tqdm": True,
        "eval_strategy": "no", "save_strategy": "no", "use_cpu": True,
    }
    values.update(overrides)
    return AlignRecipeArguments(**recipe_values), AlignTrainingArguments(**values)


def test_max_steps_run_decays_the_learning_rate_to_the_minimum(prepared_dataset, tmp_path):
    """The schedule spans the run's real optimizer steps: max_steps overrides the epochs (the run goes on
    over several epochs) and the LR reaches its minimum at the last step."""
    out = tmp_path / "lr"
    metrics = train_align(*_tiny_args(
        prepared_dataset, out, max_steps=6, save_strategy="steps", save_steps=3, eval_on_start=False, warmup_steps=0,
        per_device_train_batch_size=48, logging_steps=1, recipe={"augment": False},
    ))
    assert metrics["steps"] == 6 and metrics["epochs_completed"] >= 1
    last = torch.load(out / "checkpoint-6" / "scheduler.pt", weights_only=True)
    middle = torch.load(out / "checkpoint-3" / "scheduler.pt", weights_only=True)
    assert last["last_epoch"] == 6 and last["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    assert middle["last_epoch"] == 3 and middle["_last_lr"][0] == pytest.approx(1e-3 * 0.5, rel=1e-6)
    rates = _learning_rates(out / "checkpoint-6" / "trainer_state.json")  # the rate each step used
    assert len(rates) == 6 and rates[0] == 1e-3 and rates == sorted(rates, reverse=True)


def test_time_budget_stops_the_run(prepared_dataset, tmp_path):
    """TimeBudgetCallback ends the run after its first step; that step is evaluated and checkpointed, and
    metrics.json records why the run stopped."""
    out = tmp_path / "budget"
    metrics = train_align(*_tiny_args(prepared_dataset, out, max_steps=1000, eval_on_start=False,
                                      save_strategy="steps", save_steps=10**6, recipe={"time_budget_s": 1e-3}))
    assert metrics["stopped_by_time_budget"] is True and metrics["steps"] == 1
    assert [h["step"] for h in metrics["history"]] == [1] and "main_score" in metrics["final"]
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stopped_by_time_budget"] is True and saved["steps"] == 1


def test_short_run_writes_model_metrics_and_resumes(prepared_dataset, tmp_path):
    out = tmp_path / "run"
    args = {"eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2}
    metrics = train_align(*_tiny_args(prepared_dataset, out, max_steps=4, eval_on_start=True, **args))
    assert metrics["steps"] == 4 and [h["step"] for h in metrics["history"]] == [2, 4]
    assert set(metrics["initial"]) >= {"srcc", "plcc", "acc", "main_score"}
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["final"]) >= {"srcc", "plcc", "acc", "main_score"} and saved["validation_images"] > 0
    assert saved["final"] == {k: v for k, v in saved["history"][-1].items() if k not in ("step", "epoch")}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_main_score" in e] == [0, 2, 4]
    model = EvalMuseAlignModel.from_pretrained(out / "model")
    assert (out / "model" / "README.md").is_file() and (out / "model" / "processor_config.json").is_file()
    # frozen ViT: its weights did not move; its post-LayerNorm (LAVIS ln_vision) and the Q-Former did
    torch.manual_seed(0)
    fresh = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny"))
    state, start = model.state_dict(), fresh.state_dict()
    assert torch.equal(state["vision_model.encoder.layers.0.mlp.fc1.weight"], start["vision_model.encoder.layers.0.mlp.fc1.weight"])
    assert not torch.equal(state["itm_head.weight"], start["itm_head.weight"])
    assert not torch.equal(state["vision_model.post_layernorm.weight"], start["vision_model.post_layernorm.weight"])

    resumed = train_align(*_tiny_args(prepared_dataset, out, max_steps=6, eval_on_start=True, **args))
    assert resumed["steps"] == 6 and resumed["resumed_from"] == str(out / "checkpoint-4")
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6]  # history carried over from the checkpoint
    assert resumed["initial"] == metrics["initial"]  # not evaluated again on resume
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    restarted = train_align(*_tiny_args(prepared_dataset, out, max_steps=2, eval_on_start=False,
                                        resume_from_checkpoint="none", **args))
    assert restarted["resumed_from"] is None and restarted["steps"] == 2


@pytest.mark.slow
def test_cli_script_runs(prepared_dataset, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_scripts/train_align.py"), "--config",
         str(REPO / "train_scripts/configs/align_tiny.yaml"), "--dataset_dir", str(prepared_dataset),
         "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2",
         "--disable_tqdm", "true", "--eval_on_start", "false"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["steps"] == 2 and "main_score" in printed["final"]
    assert json.loads((out / "metrics.json").read_text())["final"] == printed["final"]
    for bad_args, message in (
        (["--dataset_dir", str(tmp_path / "none"), "--output_dir", str(out / "x"), "--preset", "tiny"], "alignment"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ):
        bad = subprocess.run([sys.executable, str(REPO / "train_scripts/train_align.py"), *bad_args],
                             capture_output=True, text=True, timeout=600, check=False)
        assert bad.returncode == 2 and "error:" in bad.stderr and message in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_short_cpu_run_improves_the_validation_main_score(tmp_path_factory):
    """A bigger synthetic release than the shared fixture (its 32 validation images are too few to measure
    a change reliably): 160 prompts, ~110 validation images; 300 steps of the tiny preset on CPU."""
    from evalmuse_models.data import prepare_dataset
    from evalmuse_models.data.synthetic import write_alignment_release

    root = tmp_path_factory.mktemp("align_learning")
    write_alignment_release(root / "raw", num_prompts=160, seed=3)
    prepare_dataset(root / "prepared", alignment_dir=root / "raw")
    metrics = train_align(*_tiny_args(root / "prepared", root / "run", max_steps=300, warmup_steps=20,
                                      per_device_train_batch_size=16, eval_on_start=True,
                                      recipe={"freeze_vision": False}))
    initial, final = metrics["initial"], metrics["final"]
    assert final["num_images"] == initial["num_images"] > 100
    assert final["main_score"] > initial["main_score"] + 0.05, (initial, final)
    assert final["srcc"] > initial["srcc"]


def _learning_rates(state_file: Path) -> list[float]:
    state = json.loads(state_file.read_text())
    return [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]


@pytest.mark.slow
def test_two_process_cpu_run(prepared_dataset, tmp_path):
    """The multi-process path (DDP over gloo) on CPU, ``torchrun --nproc_per_node 2 -m
    evalmuse_models.training.align``: the Trainer's learning rate rises over the warm-up, then decays
    monotonically; both processes keep their RNG states; a rerun resumes on both."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
               "evalmuse_models.training.align", "--config", str(REPO / "train_scripts/configs/align_tiny.yaml"),
               "--dataset_dir", str(prepared_dataset), "--output_dir", str(out), "--warmup_steps", "2",
               "--logging_steps", "1", "--eval_strategy", "no", "--save_steps", "10", "--eval_on_start", "false",
               "--disable_tqdm", "true", "--max_steps", "20"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoint = out / "checkpoint-20"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["arguments"]["training"]["learning_rate"] == 1e-3
    rates = _learning_rates(checkpoint / "trainer_state.json")
    peak = rates.index(max(rates))
    assert len(rates) == 20 and max(rates) == pytest.approx(1e-3)
    assert peak == 2  # step 3 is the first at the full rate: steps 1-2 warm up (the Trainer logs each step's rate)
    assert all(a < b for a, b in itertools.pairwise(rates[: peak + 1]))  # rises over the warm-up
    assert all(a >= b for a, b in itertools.pairwise(rates[peak:])) and rates[-1] < 0.05 * rates[peak]
    assert EvalMuseAlignModel.from_pretrained(out / "model").config.model_type == "evalmuse_align"
    resumed = subprocess.run([*command[:-2], "--max_steps", "22"], capture_output=True, text=True, timeout=600,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {checkpoint}" in resumed.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 22
