"""The MLLM SFT recipe end to end: data → TRL ``SFTTrainer`` + LoRA → adapter, merged model, Main Score, card.

Arguments are three dataclasses parsed together by ``trl.TrlParser`` (``--config file.yaml`` whose keys
are field names, then ``--field value`` overrides), as in TRL's own scripts:

* :class:`MLLMRecipeArguments` — what only this recipe knows: the dataset and splits, the conversations,
  soft labels, which towers and modules get LoRA, the pixel budget, the final evaluation;
* :class:`MLLMSFTConfig` — TRL's ``SFTConfig`` (optimisation, logging, checkpoints, precision,
  ``max_length``, ``resume_from_checkpoint``) with the recipe's defaults;
* ``trl.ModelConfig`` — the base model (``model_name_or_path``, ``dtype``, ``attn_implementation``) and the
  LoRA adapter (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules`` ...).

``train_scripts/sft_mllm.py`` and ``evalmuse train mllm`` call :func:`main`; configs live in
``train_scripts/configs/sft_*.yaml``. ``model_name_or_path: tiny`` (or ``tiny:small``) trains a random
offline Qwen2.5-VL (tests, demos, smoke runs).

Example::

    from trl import ModelConfig

    from evalmuse_models.mllm.train import MLLMRecipeArguments, MLLMSFTConfig, run_sft

    summary = run_sft(
        MLLMRecipeArguments(dataset_dir="data/evalmuse", soft_labels=True),
        MLLMSFTConfig(output_dir="runs/qwen-lora"),
        ModelConfig(model_name_or_path="Qwen/Qwen2.5-VL-7B-Instruct", dtype="bfloat16", use_peft=True),
    )
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

from transformers.trainer_utils import SchedulerType
from trl import ModelConfig, SFTConfig, TrlParser

from ..evaluation import evaluate_alignment
from ..utils import UserInputError, atomic_directory, atomic_write_text
from . import SCORER_SETTINGS
from .data import ConversationOptions
from .prompts import level_scale
from .scoring import DEFAULT_MODEL_ID, MLLMAlignmentScorer, set_pixel_budget, single_token_ids
from .sft import LANGUAGE_LORA_MODULES, VISION_LORA_MODULES, lora_target_regex

logger = logging.getLogger(__name__)

_OFF = {"", "none", "null"}


def _help(text: str, **metadata) -> dict:
    return {"help": text, **metadata}


@dataclass
class MLLMRecipeArguments:
    """The recipe's own arguments; training and model arguments are :class:`MLLMSFTConfig` and ``trl.ModelConfig``."""

    dataset_dir: str | None = field(default=None, metadata=_help(
        "Prepared EvalMuse dataset (folder or Hub id) with the `alignment` configuration. Required."))
    dataset_config: str = field(default="alignment", metadata=_help("Configuration of the dataset to train on."))
    train_split: str = field(default="train", metadata=_help("Split to train on."))
    eval_split: str | None = field(default="validation", metadata=_help(
        "Split scored with the Main Score after training; `none` to skip."))
    extra_train_files: list[str] = field(default_factory=list, metadata=_help(
        "Parquet files of extra training records (pseudo-labels), appended to the training split."))
    max_train_samples: int | None = field(default=None, metadata=_help("Train on the first N records only."))
    max_eval_samples: int | None = field(default=None, metadata=_help("Evaluate on the first N records only."))
    levels: int = field(default=5, metadata=_help("Number of level words of the rating answer: 5 or 15."))
    include_elements: bool = field(default=True, metadata=_help("Add the element Yes/No questions."))
    element_turns: str = field(default="multi_turn", metadata=_help(
        "Element questions as turns of one conversation or as separate conversations.",
        choices=["multi_turn", "separate"]))
    chain_of_thought: bool = field(default=False, metadata=_help(
        "The rating answer first lists the element answers, then the level word."))
    prompt_type_hint: bool = field(default=True, metadata=_help("Tell the model whether the prompt is real or synthetic."))
    score_noise: float = field(default=0.0, metadata=_help("Standard deviation of the noise added to the mean rating."))
    lighting: float = field(default=0.0, metadata=_help("Strength of the brightness/contrast jitter (0 = none)."))
    soft_labels: bool = field(default=False, metadata=_help(
        "Train the rating token on a distribution over the levels (KL loss) instead of one level word."))
    soft_label_weight: float = field(default=1.0, metadata=_help("Weight of the soft-label KL term."))
    soft_label_min_sigma: float = field(default=0.5, metadata=_help("Floor of the soft labels' spread, in levels."))
    lora_towers: list[str] = field(default_factory=lambda: ["language", "vision"], metadata=_help(
        "Towers whose linear layers get LoRA (language, vision); unused when `lora_target_modules` is set."))
    lora_language_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_LORA_MODULES), metadata=_help(
        "Module names adapted in the language tower."))
    lora_vision_modules: list[str] = field(default_factory=lambda: list(VISION_LORA_MODULES), metadata=_help(
        "Module names adapted in the vision tower."))
    min_pixels: int | None = field(default=None, metadata=_help("Smallest image area given to the processor."))
    max_pixels: int | None = field(default=448 * 448, metadata=_help("Largest image area given to the processor."))
    eval_batch_size: int = field(default=8, metadata=_help("Images per batch of the final evaluation."))
    save_merged: bool = field(default=True, metadata=_help("Also save the LoRA-merged model under `merged/`."))

    def __post_init__(self):
        if self.eval_split is not None and self.eval_split.strip().lower() in _OFF:
            self.eval_split = None
        self.conversation_options()  # checks levels, element_turns, noise and lighting
        lora_target_regex(self.lora_towers, self.lora_language_modules, self.lora_vision_modules)  # checks the towers

    def conversation_options(self, seed: int = 0) -> ConversationOptions:
        """How the training records become conversations (:func:`~evalmuse_models.mllm.data.build_sft_dataset`)."""
        return ConversationOptions(
            levels=self.levels, include_elements=self.include_elements, element_turns=self.element_turns,
            chain_of_thought=self.chain_of_thought, prompt_type_hint=self.prompt_type_hint,
            score_noise=self.score_noise, lighting=self.lighting, soft_labels=self.soft_labels,
            soft_label_min_sigma=self.soft_label_min_sigma, seed=seed,
        )


def _sft_help(name: str) -> dict:
    """``SFTConfig``'s own help for a field whose default the recipe changes."""
    return SFTConfig.__dataclass_fields__[name].metadata


@dataclass
class MLLMSFTConfig(SFTConfig):
    """``trl.SFTConfig`` with the recipe's defaults.

    ``bf16`` left unset means bf16 mixed precision when an accelerator is present and supports it
    (``accelerate.utils.is_bf16_available``), float32 on CPU; a machine without an accelerator trains
    on CPU (``use_cpu``), in several processes when launched so. Activation checkpointing is on unless
    ``activation_checkpointing`` (or its deprecated alias ``gradient_checkpointing``) turns it off. ``resume_from_checkpoint: auto`` resumes
    from the last checkpoint in ``output_dir``; ``none`` starts over. ``max_length`` defaults to no
    truncation (cutting a sequence could drop image tokens).
    """

    output_dir: str | None = field(default="runs/mllm-sft", metadata=_sft_help("output_dir"))
    learning_rate: float = field(default=4e-5, metadata=_sft_help("learning_rate"))
    per_device_train_batch_size: int = field(default=4, metadata=_sft_help("per_device_train_batch_size"))
    gradient_accumulation_steps: int = field(default=4, metadata=_sft_help("gradient_accumulation_steps"))
    warmup_steps: float = field(default=0.03, metadata=_sft_help("warmup_steps"))
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata=_sft_help("lr_scheduler_type"))
    save_total_limit: int | None = field(default=2, metadata=_sft_help("save_total_limit"))
    seed: int = field(default=0, metadata=_sft_help("seed"))
    max_length: int | None = field(default=None, metadata=_sft_help("max_length"))
    assistant_only_loss: bool = field(default=True, metadata=_sft_help("assistant_only_loss"))
    resume_from_checkpoint: str | None = field(default="auto", metadata=_help(
        "`auto`: resume from the last checkpoint in output_dir if there is one; a checkpoint folder; `none`: start over."))
    bf16: bool | None = field(default=None, metadata=_help(
        "bf16 mixed precision; unset: on when an accelerator supports it, off on CPU."))
    gradient_checkpointing: bool | None = field(default=None, metadata=_sft_help("gradient_checkpointing"))

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # on unless either name turns it off
        import torch

        if not torch.accelerator.is_available():
            self.use_cpu = True  # so that `torchrun` / `accelerate launch` start CPU processes (gloo) too
        if self.bf16 is None:
            from accelerate.utils import is_bf16_available

            self.bf16 = not self.fp16 and not self.use_cpu and is_bf16_available()
        if self.resume_from_checkpoint is not None and self.resume_from_checkpoint.strip().lower() in _OFF:
            self.resume_from_checkpoint = None
        super().__post_init__()


PARSER_DESCRIPTION = ("LoRA SFT of an MLLM alignment judge (Qwen2.5-VL) on EvalMuse-40K with TRL. "
                      "--config FILE.yaml sets any of the options below; flags override it.")


def make_parser() -> TrlParser:
    """The recipe's ``TrlParser`` (for scripts); ``use_peft`` defaults to true (the recipe trains a LoRA adapter)."""
    parser = TrlParser((MLLMRecipeArguments, MLLMSFTConfig, ModelConfig), description=PARSER_DESCRIPTION)
    parser.set_defaults(use_peft=True)
    return parser


def parse_arguments(argv: list[str] | None = None) -> tuple[MLLMRecipeArguments, MLLMSFTConfig, ModelConfig]:
    """``--config file.yaml`` then ``--field value`` overrides; a bad file, key or value is a ``UserInputError``."""
    from ..training.arguments import parse_recipe_arguments

    return parse_recipe_arguments((MLLMRecipeArguments, MLLMSFTConfig, ModelConfig), argv,
                                  description=PARSER_DESCRIPTION, defaults={"use_peft": True})


def load_model_and_processor(recipe: MLLMRecipeArguments, training_args: MLLMSFTConfig, model_args: ModelConfig):
    """The base model and processor: ``tiny[:preset]`` builds a random offline model, else ``from_pretrained``."""
    import torch

    model_id = model_args.model_name_or_path or DEFAULT_MODEL_ID
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if model_id.startswith("tiny"):
        from ..testing.mllm import build_tiny_qwen2_5_vl

        preset = model_id.split(":", 1)[1] if ":" in model_id else "tiny"
        model, processor = build_tiny_qwen2_5_vl(preset, seed=training_args.seed,
                                                 dtype=dtype if isinstance(dtype, torch.dtype) else None)
        model.train()
        return model, processor
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import get_quantization_config

    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "dtype": dtype,
        "attn_implementation": model_args.attn_implementation,
        "quantization_config": get_quantization_config(model_args),
        **(training_args.model_init_kwargs or {}),
    }
    model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)
    processor = AutoProcessor.from_pretrained(model_id, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    set_pixel_budget(processor, recipe.min_pixels, recipe.max_pixels)
    return model, processor


def training_chat_template(processor) -> str | None:
    """The chat template for assistant-only loss: ``None`` when the processor's own template marks the
    assistant turns with ``{% generation %}``, else TRL's training variant of it (Qwen2.5-VL and others)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = getattr(processor, "chat_template", None)
    if not template:
        raise UserInputError("the processor has no chat template; give it one, or set assistant_only_loss: false")
    if has_generation_markers(template):
        return None
    try:
        return get_training_chat_template(processor)
    except ValueError as err:
        raise UserInputError(f"{err} (or set assistant_only_loss: false)") from err


def lora_config(recipe: MLLMRecipeArguments, model_args: ModelConfig):
    """``ModelConfig``'s LoRA (``trl.get_peft_config``) on the recipe's towers unless ``lora_target_modules`` is set."""
    from trl import get_peft_config

    if not model_args.use_peft:
        raise UserInputError("the MLLM recipe trains a LoRA adapter: use_peft must be true")
    config = get_peft_config(model_args)
    if model_args.lora_target_modules is None:
        target = lora_target_regex(recipe.lora_towers, recipe.lora_language_modules, recipe.lora_vision_modules)
        config = dataclasses.replace(config, target_modules=target)
    return config


def _load_splits(recipe: MLLMRecipeArguments):
    import datasets

    if not recipe.dataset_dir:
        raise UserInputError("dataset_dir is required: the prepared EvalMuse dataset folder or Hub id")
    try:
        ds = datasets.load_dataset(recipe.dataset_dir, recipe.dataset_config)
    except (FileNotFoundError, ValueError) as err:
        raise UserInputError(
            f"cannot load the {recipe.dataset_config!r} configuration of {recipe.dataset_dir}: {err}") from err
    if recipe.train_split not in ds:
        raise UserInputError(f"{recipe.dataset_dir} has no split {recipe.train_split!r} (splits: {list(ds)})")
    train = ds[recipe.train_split]
    for path in recipe.extra_train_files:
        extra = datasets.load_dataset("parquet", data_files=path, split="train")
        extra = extra.select_columns([c for c in train.column_names if c in extra.column_names])
        train = datasets.concatenate_datasets([train.select_columns(extra.column_names), extra.cast(
            train.select_columns(extra.column_names).features)])
    if recipe.max_train_samples:
        train = train.select(range(min(recipe.max_train_samples, len(train))))
    evaluation = None
    if recipe.eval_split:
        if recipe.eval_split not in ds:
            raise UserInputError(f"{recipe.dataset_dir} has no split {recipe.eval_split!r} (splits: {list(ds)})")
        evaluation = ds[recipe.eval_split]
        if recipe.max_eval_samples:
            evaluation = evaluation.select(range(min(recipe.max_eval_samples, len(evaluation))))
    return train, evaluation


def _write_card(folder: Path, recipe: MLLMRecipeArguments, training_args: MLLMSFTConfig, model_args: ModelConfig,
                metrics: dict | None, kind: str) -> None:
    from huggingface_hub import ModelCardData

    from ..cards import render_model_card

    model_id = model_args.model_name_or_path or DEFAULT_MODEL_ID
    tiny = model_id.startswith("tiny")
    data = ModelCardData(
        license="apache-2.0",
        library_name="peft" if kind == "adapter" else "transformers",
        base_model=None if tiny else model_id,
        tags=["evalmuse", "text-to-image", "image-text-alignment", "trl", "sft", "lora"],
    )
    settings = {
        **{k: getattr(recipe, k) for k in ("chain_of_thought", "prompt_type_hint", "element_turns", "soft_labels",
                                           "soft_label_weight", "score_noise", "lighting")},
        **{k: getattr(model_args, k) for k in ("lora_r", "lora_alpha")},
        "lora_target_modules": model_args.lora_target_modules or {
            k: getattr(recipe, k) for k in ("lora_towers", "lora_language_modules", "lora_vision_modules")},
        **{k: getattr(training_args, k) for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                                                   "gradient_accumulation_steps")},
    }
    card = render_model_card(
        "evalmuse-mllm",
        data,
        base_model="random tiny Qwen2.5-VL (test preset)" if tiny else model_id,
        artefact=kind,
        levels=level_scale(recipe.levels).words,
        recipe=settings,
        metrics=metrics,
    )
    atomic_write_text(folder / "README.md", str(card))


def make_trainer(recipe: MLLMRecipeArguments, training_args: MLLMSFTConfig, model_args: ModelConfig, train_ds,
                 model, processor):
    """The ``LevelSFTTrainer`` (TRL ``SFTTrainer`` + LoRA + soft-label loss) for ``train_ds`` (from :func:`build_sft_dataset`)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from .sft import LevelTargetCollator, build_level_sft_trainer_class

    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    level_ids = single_token_ids(tokenizer, level_scale(recipe.levels).words, "level word")
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    base_collator = DataCollatorForVisionLanguageModeling(
        processor=processor,
        max_length=training_args.max_length,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
        assistant_only_loss=training_args.assistant_only_loss,
        chat_template=training_chat_template(processor) if training_args.assistant_only_loss else None,
    )
    collator = LevelTargetCollator(base_collator, level_ids, end_id, lighting=recipe.lighting, seed=training_args.seed)
    return build_level_sft_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        processing_class=processor,
        data_collator=collator,
        peft_config=lora_config(recipe, model_args),
        level_ids=level_ids,
        soft_label_weight=recipe.soft_label_weight,
    )


def run_sft(recipe: MLLMRecipeArguments, training_args: MLLMSFTConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Train, save ``<output_dir>/adapter`` (+ ``merged``), evaluate the Main Score, write the cards.

    Returns a summary ``{"train": trainer metrics, "metrics": Main Score dict or None, "paths": {...},
    "resumed_from": checkpoint or None}`` (also written to ``<output_dir>/summary.json``).
    """
    from transformers.trainer_utils import get_last_checkpoint

    from .data import build_sft_dataset

    lora_config(recipe, model_args)  # LoRA settings are checked before anything loads
    out = Path(training_args.output_dir)
    train_raw, eval_raw = _load_splits(recipe)
    train_ds = build_sft_dataset(train_raw, recipe.conversation_options(seed=training_args.seed))

    model, processor = load_model_and_processor(recipe, training_args, model_args)
    trainer = make_trainer(recipe, training_args, model_args, train_ds, model, processor)
    resume = training_args.resume_from_checkpoint
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
    if recipe.save_merged:
        merged_dir = out / "merged"
        with atomic_directory(merged_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        summary["paths"]["merged"] = str(merged_dir)

    overall_mode = "cot" if recipe.chain_of_thought else "direct"
    if eval_raw is not None and len(eval_raw) and eval_raw.select_columns(["total_score"])[0]["total_score"] is not None:
        scorer = MLLMAlignmentScorer(model, processor, levels=level_scale(recipe.levels),
                                     prompt_type_hint=recipe.prompt_type_hint, overall_mode=overall_mode)
        summary["metrics"] = evaluate_alignment(scorer, eval_raw, batch_size=recipe.eval_batch_size)
        logger.info("Main Score on %s: %s", recipe.eval_split, summary["metrics"])
    settings = json.dumps({"levels": recipe.levels, "prompt_type_hint": recipe.prompt_type_hint,
                           "overall_mode": overall_mode}, indent=2)
    for folder in [adapter_dir] + ([out / "merged"] if recipe.save_merged else []):
        atomic_write_text(folder / SCORER_SETTINGS, settings + "\n")
        _write_card(folder, recipe, training_args, model_args, summary["metrics"],
                    "adapter" if folder == adapter_dir else "merged")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``train_scripts/sft_mllm.py`` and ``evalmuse train mllm``; prints the metrics and paths as JSON."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"))
    summary = run_sft(*parse_arguments(argv))
    if summary["paths"]:  # the main process
        print(json.dumps({"metrics": summary["metrics"], "paths": summary["paths"]}, indent=2))
    return 0


__all__ = [
    "MLLMRecipeArguments",
    "MLLMSFTConfig",
    "load_model_and_processor",
    "lora_config",
    "main",
    "make_parser",
    "make_trainer",
    "parse_arguments",
    "run_sft",
    "training_chat_template",
]
