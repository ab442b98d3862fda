"""The MLLM SFT recipe end to end: data → TRL ``SFTTrainer`` + LoRA → adapter, merged model, Main Score, card.

``train_scripts/sft_mllm.py`` is a command-line shell over :func:`run_sft`; configs live in
``train_scripts/configs/sft_*.yaml``. ``model_id="tiny"`` (or ``"tiny:small"``) trains a random
offline Qwen2.5-VL (tests, demos, smoke runs).

Example::

    from evalmuse_models.mllm.train import MLLMSFTArguments, run_sft

    args = MLLMSFTArguments(dataset_dir="data/evalmuse", output_dir="runs/qwen-lora", soft_labels=True)
    summary = run_sft(args)
    summary["metrics"]["main_score"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils import UserInputError, atomic_directory, atomic_write_text
from . import SCORER_SETTINGS
from .prompts import level_scale
from .scoring import (
    DEFAULT_MODEL_ID,
    MLLMAlignmentScorer,
    set_pixel_budget,
    single_token_ids,
)
from .sft import LANGUAGE_LORA_MODULES, VISION_LORA_MODULES

logger = logging.getLogger(__name__)


@dataclass
class MLLMSFTArguments:
    """Every knob of the recipe (YAML keys and ``--flags`` have the same names)."""

    dataset_dir: str | None = None
    output_dir: str = "runs/mllm-sft"
    model_id: str = DEFAULT_MODEL_ID
    dataset_config: str = "alignment"
    train_split: str = "train"
    eval_split: str | None = "validation"
    extra_train_files: list[str] = field(default_factory=list)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # conversations
    levels: int = 5
    include_elements: bool = True
    element_turns: str = "multi_turn"
    chain_of_thought: bool = False
    prompt_type_hint: bool = True
    score_noise: float = 0.0
    lighting: float = 0.0
    soft_labels: bool = False
    soft_label_weight: float = 1.0
    soft_label_min_sigma: float = 0.5
    # LoRA
    lora_r: int = 16
    lora_alpha: int | None = 32
    lora_dropout: float = 0.05
    lora_towers: list[str] = field(default_factory=lambda: ["language", "vision"])
    lora_language_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_LORA_MODULES))
    lora_vision_modules: list[str] = field(default_factory=lambda: list(VISION_LORA_MODULES))
    # optimisation
    learning_rate: float = 4e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    warmup_steps: float = 0.03  # < 1: a fraction of the total steps
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    bf16: str | bool = "auto"
    gradient_checkpointing: bool = True
    max_length: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = 448 * 448
    attn_implementation: str | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = "auto"
    dataloader_num_workers: int = 0
    seed: int = 0
    report_to: str = "none"
    # outputs
    eval_batch_size: int = 8
    save_merged: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> MLLMSFTArguments:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserInputError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**values)


def _use_bf16(flag) -> bool:
    import torch

    if isinstance(flag, str):
        if flag != "auto":
            raise UserInputError(f"bf16 must be true, false or 'auto', got {flag!r}")
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(flag)


def load_model_and_processor(args: MLLMSFTArguments, bf16: bool):
    """The base model and processor: ``tiny[:preset]`` builds a random offline model, else ``from_pretrained``."""
    import torch

    if args.model_id.startswith("tiny"):
        from ..testing.mllm import build_tiny_qwen2_5_vl

        preset = args.model_id.split(":", 1)[1] if ":" in args.model_id else "tiny"
        model, processor = build_tiny_qwen2_5_vl(preset, seed=args.seed)
        model.train()
        return model, processor
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(args.model_id, **kwargs)
    processor = AutoProcessor.from_pretrained(args.model_id)
    set_pixel_budget(processor, args.min_pixels, args.max_pixels)
    return model, processor


def ensure_training_template(processor) -> None:
    """Give Qwen2-VL-family processors a chat template with ``{% generation %}`` markers (assistant-only loss)."""
    template = getattr(processor, "chat_template", None) or ""
    if "generation" in template:
        return
    from ..testing.mllm import QWEN2_VL_CHAT_TEMPLATE

    if "<|im_start|>" in template or not template:
        processor.chat_template = QWEN2_VL_CHAT_TEMPLATE
        return
    logger.warning("the chat template has no {%% generation %%} markers; TRL will try to patch it")


def _load_splits(args: MLLMSFTArguments):
    import datasets

    if not args.dataset_dir:
        raise UserInputError("dataset_dir is required: the prepared EvalMuse dataset folder or Hub id")
    try:
        ds = datasets.load_dataset(args.dataset_dir, args.dataset_config)
    except (FileNotFoundError, ValueError) as err:
        raise UserInputError(f"cannot load the {args.dataset_config!r} configuration of {args.dataset_dir}: {err}") from err
    if args.train_split not in ds:
        raise UserInputError(f"{args.dataset_dir} has no split {args.train_split!r} (splits: {list(ds)})")
    train = ds[args.train_split]
    for path in args.extra_train_files:
        extra = datasets.load_dataset("parquet", data_files=path, split="train")
        extra = extra.select_columns([c for c in train.column_names if c in extra.column_names])
        train = datasets.concatenate_datasets([train.select_columns(extra.column_names), extra.cast(
            train.select_columns(extra.column_names).features)])
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    evaluation = None
    if args.eval_split:
        if args.eval_split not in ds:
            raise UserInputError(f"{args.dataset_dir} has no split {args.eval_split!r} (splits: {list(ds)})")
        evaluation = ds[args.eval_split]
        if args.max_eval_samples:
            evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation


def evaluate_main_score(scorer, dataset, batch_size: int = 8, cache_path: str | None = None) -> dict[str, Any]:
    """Score a labelled split with ``scorer`` (chunked, resumable with ``cache_path``) and compute the Main Score."""
    from ..metrics import alignment_main_score
    from .data import dataset_element_keys, score_dataset

    preds = score_dataset(scorer, dataset, batch_size=batch_size, cache_path=cache_path)
    keys = dataset_element_keys(dataset)
    ref_elements = [
        {k: float(e["score"]) for k, e in zip(ks, els or []) if e.get("score") is not None}
        for ks, els in zip(keys, dataset["elements"])
    ]
    result = alignment_main_score(
        [p["overall"] for p in preds],
        [float(s) for s in dataset["total_score"]],
        [p["elements"] for p in preds],
        ref_elements,
    )
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in result.items()
            if k in {"srcc", "plcc", "acc", "main_score"}}


def _write_card(folder: Path, args: MLLMSFTArguments, metrics: dict | None, kind: str) -> None:
    from huggingface_hub import ModelCardData

    from ..cards import render_model_card

    base = args.model_id if not args.model_id.startswith("tiny") else "random tiny Qwen2.5-VL (test preset)"
    data = ModelCardData(
        license="apache-2.0",
        library_name="peft" if kind == "adapter" else "transformers",
        base_model=None if args.model_id.startswith("tiny") else args.model_id,
        tags=["evalmuse", "text-to-image", "image-text-alignment", "trl", "sft", "lora"],
    )
    card = render_model_card(
        "evalmuse-mllm",
        data,
        base_model=base,
        artefact=kind,
        levels=level_scale(args.levels).words,
        recipe={k: getattr(args, k) for k in (
            "chain_of_thought", "prompt_type_hint", "element_turns", "soft_labels", "soft_label_weight",
            "score_noise", "lighting", "lora_r", "lora_alpha", "lora_towers", "lora_language_modules",
            "lora_vision_modules", "learning_rate",
            "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps")},
        metrics=metrics,
    )
    atomic_write_text(folder / "README.md", str(card))


def make_trainer(args: MLLMSFTArguments, train_ds, model, processor, bf16: bool):
    """The ``LevelSFTTrainer`` (TRL ``SFTTrainer`` + LoRA + soft-label loss) for ``train_ds`` (from :func:`build_sft_dataset`)."""
    import torch
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from .sft import (
        LevelTargetCollator,
        build_level_sft_trainer_class,
        make_lora_config,
    )

    ensure_training_template(processor)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    level_ids = single_token_ids(tokenizer, level_scale(args.levels).words, "level word")
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    config = SFTConfig(
        output_dir=str(args.output_dir),
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.lr_scheduler_type,
        weight_decay=args.weight_decay,
        bf16=bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        assistant_only_loss=True,
        max_length=args.max_length,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        dataloader_num_workers=args.dataloader_num_workers,
        seed=args.seed,
        report_to=args.report_to,
        use_cpu=not torch.cuda.is_available(),
    )
    base_collator = DataCollatorForVisionLanguageModeling(
        processor=processor, max_length=args.max_length, assistant_only_loss=True,
    )
    collator = LevelTargetCollator(base_collator, level_ids, end_id, lighting=args.lighting, seed=args.seed)
    trainer_cls = build_level_sft_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=train_ds,
        processing_class=processor,
        data_collator=collator,
        peft_config=make_lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_towers,
                                     args.lora_language_modules, args.lora_vision_modules),
        level_ids=level_ids,
        soft_label_weight=args.soft_label_weight,
    )
    return trainer


def run_sft(args: MLLMSFTArguments) -> dict[str, Any]:
    """Train, save ``<output_dir>/adapter`` (+ ``merged``), evaluate the Main Score, write the cards.

    Returns a summary ``{"train": trainer metrics, "metrics": Main Score dict or None, "paths": {...}}``
    (also written to ``<output_dir>/summary.json``).
    """
    from transformers.trainer_utils import get_last_checkpoint

    from .data import ConversationOptions, build_sft_dataset

    bf16 = _use_bf16(args.bf16)
    out = Path(args.output_dir)
    train_raw, eval_raw = _load_splits(args)
    options = ConversationOptions(
        levels=args.levels, include_elements=args.include_elements, element_turns=args.element_turns,
        chain_of_thought=args.chain_of_thought, prompt_type_hint=args.prompt_type_hint,
        score_noise=args.score_noise, soft_labels=args.soft_labels,
        soft_label_min_sigma=args.soft_label_min_sigma, seed=args.seed,
    )
    train_ds = build_sft_dataset(train_raw, options)

    model, processor = load_model_and_processor(args, bf16)
    levels = level_scale(args.levels)
    trainer = make_trainer(args, train_ds, model, processor, bf16)
    resume = args.resume_from_checkpoint
    if resume == "auto":
        resume = get_last_checkpoint(str(out)) if out.is_dir() else None
    train_result = trainer.train(resume_from_checkpoint=resume)

    summary: dict[str, Any] = {"train": dict(train_result.metrics), "metrics": None, "paths": {},
                               "resumed_from": resume}
    if not trainer.accelerator.is_main_process:
        return summary
    adapter_dir = out / "adapter"
    with atomic_directory(adapter_dir, overwrite=True) as tmp:
        trainer.model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    summary["paths"]["adapter"] = str(adapter_dir)

    model = trainer.model.merge_and_unload()
    model.eval()
    if args.save_merged:
        merged_dir = out / "merged"
        with atomic_directory(merged_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        summary["paths"]["merged"] = str(merged_dir)

    if eval_raw is not None and len(eval_raw) and eval_raw.select_columns(["total_score"])[0]["total_score"] is not None:
        scorer = MLLMAlignmentScorer(model, processor, levels=levels, prompt_type_hint=args.prompt_type_hint,
                                     overall_mode="cot" if args.chain_of_thought else "direct")
        summary["metrics"] = evaluate_main_score(scorer, eval_raw, batch_size=args.eval_batch_size)
        logger.info("Main Score on %s: %s", args.eval_split, summary["metrics"])
    settings = json.dumps({"levels": args.levels, "prompt_type_hint": args.prompt_type_hint,
                           "overall_mode": "cot" if args.chain_of_thought else "direct"}, indent=2)
    for folder in [adapter_dir] + ([out / "merged"] if args.save_merged else []):
        atomic_write_text(folder / SCORER_SETTINGS, settings + "\n")
    _write_card(adapter_dir, args, summary["metrics"], "adapter")
    if args.save_merged:
        _write_card(out / "merged", args, summary["metrics"], "merged")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise UserInputError(f"expected a boolean, got {text!r}")


def arguments_from_cli(argv: list[str] | None = None) -> MLLMSFTArguments:
    """``--config file.yaml`` then ``--key value`` overrides (lists as comma-separated values)."""
    import argparse
    import typing

    import yaml

    parser = argparse.ArgumentParser(description="TRL SFT (LoRA) of an MLLM alignment scorer on EvalMuse-40K")
    parser.add_argument("--config", help="YAML file with MLLMSFTArguments keys")
    hints = typing.get_type_hints(MLLMSFTArguments)
    for f in dataclasses.fields(MLLMSFTArguments):
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, help=f"(type {hints[f.name]})")
    ns = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if ns.config:
        try:
            with open(ns.config, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserInputError(f"cannot read the config {ns.config}: {err}") from err
        if not isinstance(loaded, dict):
            raise UserInputError(f"{ns.config}: the YAML must be a mapping of argument names to values")
        values.update(loaded)
    for f in dataclasses.fields(MLLMSFTArguments):
        raw = getattr(ns, f.name)
        if raw is None:
            continue
        hint = str(hints[f.name])
        if raw.lower() in {"none", "null"} and "None" in hint:
            values[f.name] = None
        elif "list" in hint:
            values[f.name] = [x for x in raw.split(",") if x]
        elif "bool" in hint and "str" not in hint:
            values[f.name] = parse_bool(raw)
        elif "bool" in hint:  # str | bool (bf16)
            values[f.name] = raw if raw == "auto" else parse_bool(raw)
        elif "int" in hint and "float" not in hint:
            values[f.name] = int(raw)
        elif "float" in hint:
            values[f.name] = float(raw)
        else:
            values[f.name] = raw
    return MLLMSFTArguments.from_dict(values, where=ns.config or "command line")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"))
    args = arguments_from_cli(argv)
    summary = run_sft(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"metrics": summary["metrics"], "paths": summary["paths"]}, indent=2))
    return 0
