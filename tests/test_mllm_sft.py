"""TRL SFT of the MLLM scorer: soft-label loss by hand, collator targets, real LoRA steps, reload, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from trl import ModelConfig

from evalmuse_models.mllm.sft import (
    LevelTargetCollator,
    find_level_positions,
    level_kl_loss,
    lora_target_regex,
    make_lora_config,
    soft_label_sft_loss,
)
from evalmuse_models.mllm.train import MLLMRecipeArguments, MLLMSFTConfig, lora_config, parse_arguments, run_sft
from evalmuse_models.utils import UserInputError

torch.set_num_threads(2)


def test_level_kl_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(2.0), 0.0, 0.0, 0.0], [0.0] * 5])
    targets = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.0] * 5])  # second row: no target
    # p = [1, 2, 1, 1, 1] / 6 ; KL = .5 ln(.5 / (2/6)) + .5 ln(.5 / (1/6))
    expected = 0.5 * math.log(1.5) + 0.5 * math.log(3.0)
    assert level_kl_loss(logits, targets).item() == pytest.approx(expected, abs=1e-6)
    assert level_kl_loss(logits, targets, reduction="mean").item() == pytest.approx(expected, abs=1e-6)
    assert level_kl_loss(logits, targets, reduction="none").tolist() == pytest.approx([expected, 0.0], abs=1e-6)


def test_soft_label_sft_loss_by_hand():
    # vocab 6: tokens 0..4 are levels, 5 is the end token. One row of 4 tokens: [x, level, end, pad].
    logits = torch.zeros(1, 4, 6)
    logits[0, 0, :5] = torch.tensor([0.0, math.log(2.0), 0.0, 0.0, 0.0])  # predicts position 1 (the level)
    logits[0, 1, 5] = math.log(3.0)  # predicts position 2 (the end token): p(end) = 3 / (5 + 3)
    labels = torch.tensor([[-100, 1, 5, -100]])
    targets = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]])
    positions = torch.tensor([1])
    ce_end = -math.log(3.0 / 8.0)
    kl = 0.5 * math.log(1.5) + 0.5 * math.log(3.0)
    got = soft_label_sft_loss(logits, labels, targets, positions, [0, 1, 2, 3, 4], weight=0.7)
    assert got.item() == pytest.approx((ce_end + 0.7 * kl) / 2, abs=1e-6)
    got = soft_label_sft_loss(logits, labels, targets, positions, [0, 1, 2, 3, 4], weight=1.0, num_items_in_batch=4)
    assert got.item() == pytest.approx((ce_end + kl) / 4, abs=1e-6)


def test_find_level_positions():
    ids = torch.tensor([[9, 3, 7, 2, 7], [9, 9, 9, 9, 9], [2, 7, 9, 3, 7]])
    labels = torch.tensor([[-100, -100, -100, 2, 7], [-100] * 5, [-100, -100, -100, 3, 7]])
    pos = find_level_positions(ids, labels, level_ids=[2, 3], end_id=7)
    assert pos.tolist() == [3, -1, 3]  # position 1 of row 0 is a level closing a turn but not labelled


def test_lora_targets():
    lang = lora_target_regex(["language"])
    import re

    assert re.fullmatch(lang, "model.language_model.layers.3.self_attn.q_proj")
    assert not re.fullmatch(lang, "model.visual.blocks.0.attn.qkv")
    both = lora_target_regex(["language", "vision"])
    assert re.fullmatch(both, "model.visual.blocks.0.attn.qkv")
    assert re.fullmatch(both, "model.visual.blocks.0.mlp.down_proj")
    assert not re.fullmatch(both, "lm_head")
    with pytest.raises(ValueError):
        lora_target_regex(["audio"])
    assert make_lora_config(r=8).lora_alpha == 16


def test_collator_soft_targets_and_assistant_mask():
    from PIL import Image
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from evalmuse_models.mllm.data import ConversationOptions, build_conversations
    from evalmuse_models.mllm.scoring import single_token_ids
    from evalmuse_models.testing.mllm import build_tiny_processor

    proc = build_tiny_processor()
    tok = proc.tokenizer
    level_ids = single_token_ids(tok, ["bad", "poor", "fair", "good", "excellent"])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    record = {"prompt": "a red cat", "prompt_type": "real", "total_score": 3.7, "total_score_votes": [3, 4, 4],
              "elements": [{"phrase": "red cat", "category": "animal", "score": 1.0, "votes": [1, 1, 1]}]}
    examples = []
    for cot in (False, True):
        conv = build_conversations(record, ConversationOptions(chain_of_thought=cot, soft_labels=True))[0]
        examples.append({"image": Image.new("RGB", (40, 40), (10, 200, 30)), "messages": conv["messages"],
                         "level_target": conv["level_target"]})
    examples.append({"image": Image.new("RGB", (40, 40)), "messages": examples[0]["messages"],
                     "level_target": [0.0] * 5})
    base = DataCollatorForVisionLanguageModeling(processor=proc, assistant_only_loss=True)
    batch = LevelTargetCollator(base, level_ids, end, lighting=0.2)(examples)
    assert batch["level_targets"].shape == (3, 5)
    pos = batch["level_positions"].tolist()
    assert pos[2] == -1
    for row in (0, 1):
        assert batch["input_ids"][row, pos[row]].item() == tok.convert_tokens_to_ids("good")
        assert batch["labels"][row, pos[row]].item() == batch["input_ids"][row, pos[row]].item()
    # assistant-only loss: the user turn (with the image tokens) is masked out
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["labels"][batch["input_ids"] == image_id] == -100).all()
    labelled = tok.decode(batch["labels"][0][batch["labels"][0] != -100])
    assert labelled.startswith("good<|im_end|>") and "Yes<|im_end|>" in labelled and "Is the" not in labelled


def test_cli_arguments(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: tiny\nlora_r: 4\nsoft_labels: true\nlora_towers: [language]\n")
    recipe, training, model = parse_arguments([
        "--config", str(cfg), "--lora_r", "8", "--bf16", "false", "--eval_split", "none",
        "--lora_towers", "language", "vision", "--learning_rate", "1e-4", "--output_dir", str(tmp_path / "run"),
    ])
    assert (model.model_name_or_path, model.lora_r, recipe.soft_labels, training.bf16) == ("tiny", 8, True, False)
    assert recipe.lora_towers == ["language", "vision"] and training.learning_rate == 1e-4
    assert recipe.eval_split is None and model.use_peft  # the recipe trains a LoRA adapter
    # the recipe's own defaults for SFTConfig fields
    assert (training.lr_scheduler_type.value, training.seed, training.max_length) == ("cosine", 0, None)
    assert training.assistant_only_loss and training.activation_checkpointing
    assert training.resume_from_checkpoint == "auto"
    cfg.write_text("model_name_or_path: tiny\nlora_rank: 4\n")
    with pytest.raises(UserInputError, match="lora_rank"):
        parse_arguments(["--config", str(cfg)])
    with pytest.raises(UserInputError, match="towers"):
        parse_arguments(["--lora_towers", "audio"])
    with pytest.raises(UserInputError, match="use_peft must be true"):
        lora_config(MLLMRecipeArguments(), ModelConfig(model_name_or_path="tiny"))


def test_lora_config_from_model_config():
    import re

    recipe = MLLMRecipeArguments(lora_towers=["language"], lora_language_modules=["q_proj"])
    config = lora_config(recipe, ModelConfig(use_peft=True, lora_r=2, lora_alpha=6, lora_dropout=0.0, use_rslora=True))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (2, 6, 0.0, True)
    assert re.fullmatch(config.target_modules, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(config.target_modules, "model.language_model.layers.0.self_attn.k_proj")
    explicit = lora_config(recipe, ModelConfig(use_peft=True, lora_target_modules=["k_proj", "v_proj"]))
    assert explicit.target_modules == {"k_proj", "v_proj"}  # ModelConfig's own choice wins over the towers


def test_bf16_default_follows_the_hardware(tmp_path, monkeypatch):
    import accelerate.utils

    assert MLLMSFTConfig(output_dir=str(tmp_path)).bf16 is False  # CPU: float32
    assert MLLMSFTConfig(output_dir=str(tmp_path), bf16=False).bf16 is False
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(accelerate.utils, "is_bf16_available", lambda *a, **k: False)
    assert MLLMSFTConfig(output_dir=str(tmp_path)).bf16 is False  # an accelerator without bf16
    assert MLLMSFTConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False


def test_shipped_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "train_scripts" / "configs"
    for name in ("sft_h200.yaml", "sft_8gpu.yaml", "sft_tiny.yaml"):
        recipe, training, model = parse_arguments(["--config", str(root / name), "--bf16", "false"])
        assert recipe.levels == 5 and model.use_peft and training.activation_checkpointing
    _, training, model = parse_arguments(["--config", str(root / "sft_8gpu.yaml"), "--bf16", "false"])
    assert training.gradient_accumulation_steps == 2
    assert (model.model_name_or_path, model.dtype, model.lora_r) == ("Qwen/Qwen2.5-VL-7B-Instruct", "bfloat16", 16)


@pytest.mark.slow
def test_sft_lora_steps_save_reload_score_resume(prepared_dataset, tmp_path):
    from peft import PeftModel

    from evalmuse_models.mllm import MLLMAlignmentScorer, load_scorer
    from evalmuse_models.testing.mllm import build_tiny_qwen2_5_vl

    out = tmp_path / "run"
    recipe = MLLMRecipeArguments(
        dataset_dir=str(prepared_dataset), soft_labels=True, chain_of_thought=True, lighting=0.2, score_noise=0.1,
        max_train_samples=6, max_eval_samples=6, eval_batch_size=3,
    )
    training = MLLMSFTConfig(
        output_dir=str(out), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
        learning_rate=5e-3, logging_steps=1, save_steps=1, bf16=False,
    )
    model_args = ModelConfig(model_name_or_path="tiny", use_peft=True, lora_r=4, lora_alpha=8)
    summary = run_sft(recipe, training, model_args)
    assert math.isfinite(summary["train"]["train_loss"]) and summary["train"]["train_loss"] > 0
    metrics = summary["metrics"]
    assert {"srcc", "plcc", "acc", "main_score"} <= set(metrics) and metrics["num_images"] == 6
    assert metrics["main_score"] == pytest.approx(0.25 * metrics["srcc"] + 0.25 * metrics["plcc"] + 0.5 * metrics["acc"])
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert "Main Score" in (adapter / "README.md").read_text() and (out / "merged" / "README.md").is_file()
    assert json.loads((out / "summary.json").read_text())["metrics"]["main_score"] == metrics["main_score"]

    # reload: base (same seed) + adapter vs. the merged folder give the same scores; LoRA changed the model
    base, processor = build_tiny_qwen2_5_vl(seed=0)
    ref = MLLMAlignmentScorer(base, processor)
    import datasets

    val = datasets.load_dataset(str(prepared_dataset), "alignment", split="validation").select(range(3))
    keys = [[f"{e['phrase']} ({e['category']})" for e in els] for els in val["elements"]]
    before = ref.score(val["image"], val["prompt"], keys, prompt_types=val["prompt_type"])
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    with_adapter = MLLMAlignmentScorer(tuned, processor, overall_mode="cot", prompt_type_hint=True)
    merged = load_scorer(str(out / "merged"), device="cpu")  # settings come from evalmuse_mllm.json
    assert (merged.overall_mode, merged.prompt_type_hint) == ("cot", True)
    a = with_adapter.score(val["image"], val["prompt"], keys, prompt_types=val["prompt_type"], batch_size=2)
    b = merged.score(val["image"], val["prompt"], keys, prompt_types=val["prompt_type"], batch_size=3)
    for x, y in zip(a, b):
        assert x.overall == pytest.approx(y.overall, abs=1e-4)
        assert x.elements.keys() == y.elements.keys()
    assert any(abs(x.overall - y.overall) > 1e-4 for x, y in zip(a, before))

    # resume from the last checkpoint and train one more step
    resumed = run_sft(dataclasses.replace(recipe, eval_split=None), dataclasses.replace(training, max_steps=3),
                      model_args)
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["metrics"] is None


@pytest.mark.slow
def test_train_script_runs(prepared_dataset, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "train_scripts" / "sft_mllm.py"), "--config",
           str(root / "train_scripts" / "configs" / "sft_tiny.yaml"), "--dataset_dir", str(prepared_dataset),
           "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--max_train_samples", "2",
           "--max_eval_samples", "3", "--save_merged", "false"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout[proc.stdout.rindex('{\n  "metrics"'):])
    assert "main_score" in printed["metrics"] and "merged" not in printed["paths"]
    from evalmuse_models.mllm.train import main

    with pytest.raises(UserInputError, match="dataset_dir is required"):
        main(["--model_name_or_path", "tiny", "--output_dir", str(tmp_path / "none")])


@pytest.mark.slow
def test_train_script_ddp_two_cpu_processes(prepared_dataset, tmp_path):
    """The multi-GPU path (DDP) exercised with two CPU processes (gloo), launched by torchrun."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    import signal
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           str(root / "train_scripts" / "sft_mllm.py"), "--config", str(root / "train_scripts" / "configs" / "sft_tiny.yaml"),
           "--dataset_dir", str(prepared_dataset), "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
           "--max_train_samples", "8", "--max_eval_samples", "3", "--save_merged", "false"]
    # own process group, so that a hang kills the workers too
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = popen.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate()
        raise
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # 2 steps x batch 2 x 2 processes = 8 conversations = one epoch of the 8 training records
    assert summary["train"]["epoch"] == pytest.approx(1.0)
    assert proc.stdout.count('"metrics"') == 1  # only the main process reports
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_lora_config_wraps_the_chosen_towers():
    from peft import get_peft_model

    from evalmuse_models.testing.mllm import build_tiny_qwen2_5_vl

    for towers, want_vision, want_language in ((["language"], False, True), (["language", "vision"], True, True),
                                              (["vision"], True, False)):
        model, _ = build_tiny_qwen2_5_vl(seed=0)
        peft_model = get_peft_model(model, make_lora_config(r=2, towers=towers))
        names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        assert all("lora_" in n for n in names)
        assert any(".visual." in n for n in names) == want_vision
        assert any(".language_model." in n for n in names) == want_language
    model, _ = build_tiny_qwen2_5_vl(seed=0)
    only_q = get_peft_model(model, make_lora_config(r=2, towers=["language"], language_modules=["q_proj"]))
    assert {n.split(".")[-4] for n, p in only_q.named_parameters() if p.requires_grad} == {"q_proj"}


def test_compact_soft_label_loss_matches_the_full_logits_loss():
    from PIL import Image
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from evalmuse_models.mllm.data import ConversationOptions, build_conversations
    from evalmuse_models.mllm.scoring import single_token_ids
    from evalmuse_models.mllm.sft import compact_soft_label_sft_loss
    from evalmuse_models.testing.mllm import build_tiny_qwen2_5_vl

    model, proc = build_tiny_qwen2_5_vl(seed=0)
    tok = proc.tokenizer
    level_ids = single_token_ids(tok, ["bad", "poor", "fair", "good", "excellent"])
    examples = []
    for i, total in enumerate((1.4, 3.7, 4.6)):
        record = {"prompt": f"scene {i}", "prompt_type": "real", "total_score": total, "total_score_votes": [3, 4, 4],
                  "elements": [{"phrase": "cat", "category": "animal", "score": 1.0, "votes": [1, 1, 1]}] * (i + 1)}
        conv = build_conversations(record, ConversationOptions(chain_of_thought=i == 1, soft_labels=True))[0]
        examples.append({"image": Image.new("RGB", (40 + 8 * i, 40), (10 * i, 200, 30)), "messages": conv["messages"],
                         "level_target": conv["level_target"] if i != 2 else [0.0] * 5})
    base = DataCollatorForVisionLanguageModeling(processor=proc, assistant_only_loss=True)
    batch = LevelTargetCollator(base, level_ids, tok.convert_tokens_to_ids("<|im_end|>"))(examples)
    targets, positions, labels = batch.pop("level_targets"), batch.pop("level_positions"), batch.pop("labels")
    assert positions[2] == -1 and (positions[:2] > 0).all()
    with torch.no_grad():
        full = model(**batch).logits
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        flat = model(**batch, logits_to_keep=keep).logits
    assert flat.shape == (int(keep.sum()), full.shape[-1])
    torch.testing.assert_close(flat, full[keep], atol=1e-5, rtol=1e-5)
    ref = soft_label_sft_loss(full, labels, targets, positions, level_ids, 0.5)
    got, level_logits, level_targets = compact_soft_label_sft_loss(flat, labels, keep, targets, positions, level_ids, 0.5)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert level_logits.shape == (2, 5) and level_targets.shape == (2, 5)
