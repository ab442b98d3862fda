"""Training of the EvalMuse alignment model (FGA-BLIP2) on transformers' ``Trainer``: CPU, one GPU or several.

The recipe is FGA-BLIP2's (SPEC §4; LAVIS ``fga_blip2.yaml``), as the defaults of
:class:`AlignTrainingArguments` (the Trainer's own names) and :class:`AlignRecipeArguments`:

* loss: the model's own (``|overall - target| + 0.1 * mean|P(match)_text * mask - token_target| + 0.1 *
  mean|mask_pred - mask|``), where ``mask`` marks the element tokens (and CLS) and ``token_target`` carries
  each element's mean vote on its span (overlapping spans averaged) and ``(target - 1) / 4`` at CLS. Targets
  are built like the official ``element2mask.py`` (:func:`build_token_targets`): spans are located on the
  full prompt ids, then cut to ``max_text_length`` (32); a training sample with an element that cannot be
  located is skipped (``skip_unmatched_elements``). Optional per-sample weighting of the score term by the
  prompt variance (``loss_weighting``).
* AdamW, lr 1e-5, weight decay 0.05 (not on biases / norms / 1-D tensors / the query tokens), 100 linear
  warm-up steps (at most a tenth of a short run) then a cosine decay to ``min_lr`` (0) over the run's
  optimizer steps (``cosine_with_min_lr``: LAVIS ``linear_warmup_cosine_lr`` sampled per step), 5 epochs,
  batch 14, no gradient clipping, frozen ViT (its post-LayerNorm, LAVIS's ``ln_vision``, stays trainable)
  when starting from pretrained weights (a preset built from random weights trains its ViT unless
  ``freeze_vision=True``); ``bf16`` / ``fp16`` autocast on GPUs (the official YAML turns bf16 on).
* training images: random resized crop (scale 0.5-1, bicubic) + horizontal flip (``blip2_image_train``),
  each sample's drawn from its own seed (seed, epoch, index); evaluation images: plain bicubic resize.

Every evaluation (``eval_strategy``; ``eval_on_start`` scores the untrained model) is the NTIRE 2025 Main
Score of the validation split (:func:`evalmuse_models.evaluation.alignment.evaluate_alignment`), logged as
``eval_main_score``, ``eval_srcc``, ``eval_plcc``, ``eval_acc`` (usable as ``metric_for_best_model``). The
step a run stops at (``max_steps``, the last epoch or ``time_budget_s``) is always evaluated and, unless
``save_strategy="no"``, checkpointed. Checkpoints are the Trainer's (``output_dir/checkpoint-N``); a rerun
resumes from the last one (``resume_from_checkpoint="auto"``) after its files have been opened with the
loaders the Trainer uses (``weights_only`` for torch files): a file that is not what it should be stops
the run with one line naming the folder. The end result is ``output_dir/model`` (``save_pretrained`` folder
with processor and model card) and ``output_dir/metrics.json``.

Example::

    from evalmuse_models.training.align import AlignRecipeArguments, AlignTrainingArguments, train_align

    metrics = train_align(AlignRecipeArguments(dataset_dir="data/evalmuse", preset="tiny"),
                          AlignTrainingArguments(output_dir="runs/tiny", learning_rate=1e-3, max_steps=300))
    print(metrics["final"]["main_score"])
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from ..data.alignment import element_record_key
from ..evaluation.alignment import evaluate_alignment
from ..utils import UserInputError, atomic_directory, atomic_write_text
from .arguments import parse_recipe_arguments
from .callbacks import EpochCallback, TimeBudgetCallback, check_checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

ALIGNMENT_COLUMNS = ("image", "prompt", "total_score", "elements")


@dataclass
class AlignRecipeArguments:
    """What the recipe needs besides the Trainer's arguments (:class:`AlignTrainingArguments`)."""

    dataset_dir: str = field(metadata={"help": "prepared dataset folder or Hub id (config 'alignment')"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this model folder / Hub id (e.g. a converted FGA-BLIP2)"}
    )
    preset: str = field(default="fga-blip2", metadata={"help": "architecture when no model is given: tiny, fga-blip2"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "tokenizer (default: bert-base-uncased; the offline tiny one for 'tiny')"}
    )
    freeze_vision: bool | None = field(
        default=None,
        metadata={"help": "freeze the ViT (its post-LayerNorm stays trainable); default: frozen (official) when "
                  "starting from pretrained weights, trainable for a preset built from random weights"},
    )
    loss_weighting: str = field(default="none", metadata={"help": "none, var, exp_var (per-prompt variance weights)"})
    max_text_length: int = 32
    augment: bool = field(default=True, metadata={"help": "random resized crop + flip on training images"})
    skip_unmatched_elements: bool = field(
        default=True, metadata={"help": "drop training samples with an element not found in the prompt (official)"}
    )
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    validation_fraction: float = field(
        default=0.1, metadata={"help": "share of train prompts held out when the dataset has no validation split"}
    )
    plcc_direction: str = field(default="official", metadata={"help": "official or standard (see the metric)"})
    time_budget_s: float | None = field(default=None, metadata={"help": "stop training after this many seconds"})
    torch_num_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads for CPU runs"})

    def __post_init__(self):
        if self.loss_weighting not in ("none", "var", "exp_var"):
            raise UserInputError(f"loss_weighting must be none, var or exp_var, got {self.loss_weighting!r}")
        if self.plcc_direction not in ("official", "standard"):
            raise UserInputError(f"plcc_direction must be official or standard, got {self.plcc_direction!r}")
        if not 0 < self.validation_fraction < 1:
            raise UserInputError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UserInputError(f"time_budget_s must be a positive number of seconds, got {self.time_budget_s}")


@dataclass
class AlignTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the official FGA-BLIP2 defaults (every other field is the Trainer's)."""

    output_dir: str | None = field(
        default=None, metadata={"help": "run folder: checkpoint-N/, model/, metrics.json (required)"}
    )
    learning_rate: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: float = field(
        default=100,
        metadata={"help": "linear warm-up steps (< 1: a fraction of the run), at most a tenth of the run's steps"},
    )
    num_train_epochs: float = 5.0
    per_device_train_batch_size: int = 14
    per_device_eval_batch_size: int = 16
    lr_scheduler_type: SchedulerType | str = "cosine_with_min_lr"
    lr_scheduler_kwargs: dict | str | None = field(default_factory=lambda: {"min_lr": 0.0})
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping (0: none, as LAVIS)"})
    eval_strategy: IntervalStrategy | str = "epoch"
    eval_on_start: bool = True
    save_strategy: SaveStrategy | str = "epoch"
    save_total_limit: int | None = 2
    logging_steps: float = 10
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "drop the last partial batch (kept when the data is smaller than one batch)"}
    )
    remove_unused_columns: bool = False
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "every trainable parameter gets a gradient (the ITC projections are frozen)"}
    )
    resume_from_checkpoint: str | None = field(
        default="auto", metadata={"help": "auto: the last checkpoint-N in output_dir; none: start over; or a folder"}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise UserInputError("output_dir is required (the run folder)")
        super().__post_init__()

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """``warmup_steps``, at most a tenth of the run: the official 100 steps are a sliver of FGA-BLIP2's
        ~14,000; a 300-step run warms up for 30."""
        return max(0, min(super().get_warmup_steps(num_training_steps), num_training_steps // 10))


# ---------------------------------------------------------------------------------------------- data


def build_token_targets(processor, prompt: str, elements: list[dict], total_score: float, max_length: int):
    """Official training targets (``element2mask.py`` + ``AlignmentDataset``) for one sample.

    Returns ``(token_mask, token_score, unmatched_keys)``: lists of ``max_length`` floats. Element spans are
    located in the full cleaned prompt ids; overlapping spans average their scores; position 0 (CLS) has
    mask 1 and score ``(total_score - 1) / 4``.
    """
    ids = processor.prompt_ids(prompt)
    mask = [0.0] * len(ids)
    score = [0.0] * len(ids)
    counts = [0] * len(ids)
    keys = [element_record_key(e) for e in elements]
    unmatched = []
    for key, element, span in zip(keys, elements, processor.match_elements(ids, keys)):
        if span is None:
            unmatched.append(key)
            continue
        for position in range(*span):
            counts[position] += 1
            score[position] += float(element["score"])
    for position, count in enumerate(counts):
        if count:
            score[position] /= count
            mask[position] = 1.0
    mask = (mask + [0.0] * max_length)[:max_length]
    score = (score + [0.0] * max_length)[:max_length]
    mask[0] = 1.0
    score[0] = (float(total_score) - 1.0) / 4.0
    return mask, score, unmatched


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training sample's augmentation in one epoch: independent of the loading order,
    of prefetching, of ``dataloader_num_workers`` and of where a run was interrupted."""
    mask = (1 << 64) - 1
    sequence = np.random.SeedSequence([int(seed) & mask, int(epoch) & mask, int(index) & mask])
    return int(sequence.generate_state(1, np.uint64)[0])


class AlignTrainDataset:
    """Map-style torch dataset over the prepared ``alignment`` split with official targets.

    A sample's augmentation is drawn from its own seed (``seed``, the ``epoch`` attribute that
    :class:`EpochCallback` sets, its index), not from the global RNG."""

    def __init__(self, split, processor, max_text_length: int, augment: bool, image_size: int, skip_unmatched: bool,
                 seed: int = 0):
        self.split = split
        self.processor = processor
        self.max_text_length = max_text_length
        self.seed = seed
        self.epoch = 0
        self.transform = None
        if augment:
            from torchvision import transforms
            from torchvision.transforms import InterpolationMode

            self.transform = transforms.Compose(
                [
                    transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
                    transforms.RandomHorizontalFlip(),
                ]
            )
        text_split = split.select_columns(["prompt", "total_score", "elements"])
        self.indices = []
        self.targets = []
        self.skipped = 0
        for index, row in enumerate(text_split):
            if row["total_score"] is None:
                continue
            elements = [e for e in row["elements"] if e.get("score") is not None]
            mask, score, unmatched = build_token_targets(
                processor, row["prompt"], elements, row["total_score"], max_text_length
            )
            if unmatched and skip_unmatched:
                self.skipped += 1
                continue
            self.indices.append(index)
            self.targets.append((mask, score))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict:
        import torch

        row = self.split[self.indices[item]]
        image = row["image"].convert("RGB")
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU generator
                torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, item))
                image = self.transform(image)
        variance = row.get("prompt_variance")
        mask, score = self.targets[item]
        return {
            "image": image,
            "prompt": row["prompt"],
            "total_score": float(row["total_score"]),
            "prompt_variance": float("nan") if variance is None else float(variance),
            "token_mask": mask,
            "token_score": score,
        }


class AlignCollator:
    """Batches :class:`AlignTrainDataset` items into model inputs (padding to ``max_text_length`` as official)."""

    def __init__(self, processor, max_text_length: int):
        self.processor = processor
        self.max_text_length = max_text_length

    def __call__(self, items: list[dict]) -> dict:
        import torch

        batch = self.processor(
            images=[item["image"] for item in items],
            text=[item["prompt"] for item in items],
            padding="max_length",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": torch.tensor([item["total_score"] for item in items], dtype=torch.float32),
            "prompt_variance": torch.tensor([item["prompt_variance"] for item in items], dtype=torch.float32),
            "token_mask_labels": torch.tensor([item["token_mask"] for item in items], dtype=torch.float32),
            "token_labels": torch.tensor([item["token_score"] for item in items], dtype=torch.float32),
        }


def hold_out_prompts(split, fraction: float, seed: int):
    """Split ``split`` into ``(train, held_out)`` by PROMPT (every image of a prompt on one side), holding
    out ``fraction`` of the prompts (at least one), chosen with ``seed``."""
    import random

    prompts = sorted(set(split["prompt"]))
    if len(prompts) < 2:
        raise UserInputError("cannot hold out a validation split from a single prompt; add a validation split")
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: min(len(prompts) - 1, max(1, round(len(prompts) * fraction)))])
    flags = [prompt in held for prompt in split["prompt"]]
    return (
        split.select([i for i, flag in enumerate(flags) if not flag]),
        split.select([i for i, flag in enumerate(flags) if flag]),
    )


def load_alignment_splits(recipe: AlignRecipeArguments, seed: int):
    """``(train, validation)`` of the prepared dataset; holds out a seeded fraction of train PROMPTS
    when there is no validation split (all images of a prompt stay on one side)."""
    import datasets

    try:
        dataset = datasets.load_dataset(recipe.dataset_dir, "alignment")
    except (FileNotFoundError, ValueError) as error:
        raise UserInputError(
            f"could not load the 'alignment' config of {recipe.dataset_dir} ({error}); prepare it with "
            "`evalmuse prepare-data` or pass a prepared dataset folder"
        ) from error
    if "train" not in dataset:
        raise UserInputError(f"{recipe.dataset_dir}: the alignment config has no 'train' split (found {list(dataset)})")
    train = dataset["train"]
    missing = [c for c in ALIGNMENT_COLUMNS if c not in train.column_names]
    if missing:
        raise UserInputError(f"{recipe.dataset_dir}: alignment split 'train' lacks columns {missing}")
    if "validation" in dataset:
        validation = dataset["validation"]
    else:
        train, validation = hold_out_prompts(train, recipe.validation_fraction, seed)
        logger.info("no validation split: held out %d images of train as validation", len(validation))
    if recipe.max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(recipe.max_train_samples, len(train))))
    if recipe.max_eval_samples is not None:
        validation = validation.select(range(min(recipe.max_eval_samples, len(validation))))
    return train, validation


# ---------------------------------------------------------------------------------------------- model


def build_model_and_processor(recipe: AlignRecipeArguments):
    """The model (pretrained folder, or a preset with random weights) and its processor."""
    from ..models.evalmuse_align import (
        EvalMuseAlignConfig,
        EvalMuseAlignModel,
        EvalMuseAlignProcessor,
    )
    from ..testing.align import build_tiny_processor

    if recipe.model_name_or_path:
        model = EvalMuseAlignModel.from_pretrained(recipe.model_name_or_path)
        source = recipe.tokenizer_name_or_path or recipe.model_name_or_path
        try:
            processor = EvalMuseAlignProcessor.from_pretrained(source)
        except (OSError, ValueError):
            processor = EvalMuseAlignProcessor.from_config(model.config, tokenizer_name_or_path=source)
    else:
        config = EvalMuseAlignConfig.from_preset(recipe.preset)
        if recipe.preset != "tiny":
            logger.warning("training the %r preset from random weights; pass model_name_or_path to fine-tune",
                           recipe.preset)
        model = EvalMuseAlignModel(config)
        if recipe.tokenizer_name_or_path is None and recipe.preset == "tiny":
            processor = build_tiny_processor(config)
        else:
            from ..models.evalmuse_align import DEFAULT_TOKENIZER

            processor = EvalMuseAlignProcessor.from_config(
                config, tokenizer_name_or_path=recipe.tokenizer_name_or_path or DEFAULT_TOKENIZER
            )
    model.config.loss_weighting = recipe.loss_weighting
    if len(processor.tokenizer) > model.config.qformer_config.vocab_size:
        raise UserInputError(
            f"the tokenizer has {len(processor.tokenizer)} ids but the model's vocabulary only "
            f"{model.config.qformer_config.vocab_size}; use the model's own tokenizer"
        )
    return model, processor


# ---------------------------------------------------------------------------------------------- trainer


class AlignTrainer(Trainer):
    """``Trainer`` with the FGA-BLIP2 parameter groups, the frozen ViT kept in eval mode, and the official
    Main Score as its evaluation (``eval_main_score``, ``eval_srcc``, ``eval_plcc``, ``eval_acc``)."""

    def __init__(self, *args, freeze_vision: bool = False, plcc_direction: str = "official", **kwargs):
        super().__init__(*args, **kwargs)
        self.freeze_vision = freeze_vision
        self.plcc_direction = plcc_direction
        # The model's loss is a per-batch mean: the Trainer averages it over accumulation steps itself and
        # must not rescale it by token counts (its forward takes **kwargs, which the Trainer would read so).
        self.model_accepts_loss_kwargs = False

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on matrices only: not on biases, norms, 1-D tensors or the query tokens (LAVIS)."""
        return [
            name for name, param in model.named_parameters()
            if not (param.ndim < 2 or "bias" in name or "norm" in name.lower() or name.endswith("query_tokens"))
        ]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.freeze_vision and model.training:
            self.accelerator.unwrap_model(model).vision_model.eval()  # frozen: no dropout either
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The Main Score of ``eval_dataset`` (default: the validation split), computed by the main process
        and shared with the others, logged and handed to the callbacks like the Trainer's own."""
        split = self.eval_dataset if eval_dataset is None else eval_dataset
        started = time.time()
        metrics = None
        if self.args.process_index == 0:
            model = self.accelerator.unwrap_model(self.model)
            scorer = SimpleNamespace(score=partial(model.score, processor=self.processing_class))
            with self.accelerator.autocast():
                scores = evaluate_alignment(scorer, split, batch_size=self.args.per_device_eval_batch_size,
                                            plcc_direction=self.plcc_direction)
            metrics = {f"{metric_key_prefix}_{key}": value for key, value in scores.items()}
        if self.args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            metrics = broadcast_object_list([metrics])[0]
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - started, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class StopCallback(TrainerCallback):
    """Evaluate the step a run stops at (``max_steps``, the last epoch or a time budget) and checkpoint it
    (unless ``save_strategy`` is ``no`` or ``best``), once, whichever strategy would or would not have."""

    def __init__(self):
        self.evaluated = self.saved = -1

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated = state.global_step

    def on_save(self, args, state, control, **kwargs):
        self.saved = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop:
            control.should_evaluate = True
            control.should_save = control.should_save or args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # The epoch's end after a stop: the Trainer asks again for what was just done.
        control.should_evaluate = control.should_evaluate and self.evaluated != state.global_step
        control.should_save = control.should_save and self.saved != state.global_step
        return control


# ---------------------------------------------------------------------------------------------- recipe


def train_align(recipe_args: AlignRecipeArguments, training_args: AlignTrainingArguments) -> dict:
    """Train (or fine-tune) the alignment model; returns the metrics (also written to
    ``output_dir/metrics.json``; empty on processes other than the main one): ``initial`` (the untrained
    model, with ``eval_on_start``), ``history`` (each evaluation), ``final`` (the last), ``steps``,
    ``epochs_completed``, ``train_loss`` (``[step, mean loss]`` per logging step), ``stopped_by_time_budget``,
    ``runtime_s``, ``arguments``."""
    import torch

    previous_threads = torch.get_num_threads()
    if recipe_args.torch_num_threads:
        torch.set_num_threads(recipe_args.torch_num_threads)
    try:
        return _train_align(recipe_args, training_args)
    finally:
        torch.set_num_threads(previous_threads)


def _train_align(recipe: AlignRecipeArguments, training_args: AlignTrainingArguments) -> dict:
    from transformers import set_seed

    started = time.monotonic()
    output_dir = Path(training_args.output_dir)
    checkpoint = resolve_checkpoint(training_args)
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    set_seed(training_args.seed)  # the model's random initial weights

    model, processor = build_model_and_processor(recipe)
    train_split, validation_split = load_alignment_splits(recipe, training_args.seed)
    image_size = model.config.vision_config.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    train_dataset = AlignTrainDataset(
        train_split, processor, recipe.max_text_length, recipe.augment, image_size, recipe.skip_unmatched_elements,
        seed=training_args.seed,
    )
    if len(train_dataset) == 0:
        raise UserInputError(f"{recipe.dataset_dir}: no labelled training sample left (skipped {train_dataset.skipped})")
    if train_dataset.skipped:
        logger.warning("skipped %d training samples with an element not found in the prompt", train_dataset.skipped)

    freeze_vision = recipe.freeze_vision if recipe.freeze_vision is not None else bool(recipe.model_name_or_path)
    if freeze_vision:
        model.vision_model.requires_grad_(False)
        model.vision_model.post_layernorm.requires_grad_(True)
    # The ITC projections kept from BLIP-2 are not part of the FGA-BLIP2 loss: freeze them (DDP requires
    # every trainable parameter to receive a gradient).
    model.vision_projection.requires_grad_(False)
    model.text_projection.requires_grad_(False)

    args = copy.copy(training_args)  # the caller's arguments stay as they were
    if checkpoint is not None:
        args.eval_on_start = False  # "initial" comes with the checkpoint's history
    if args.dataloader_drop_last and len(train_dataset) < args.per_device_train_batch_size * args.world_size:
        args.dataloader_drop_last = False  # smaller than one batch: train on what there is

    callbacks: list[TrainerCallback] = [EpochCallback(train_dataset)]
    budget = TimeBudgetCallback(recipe.time_budget_s) if recipe.time_budget_s is not None else None
    if budget is not None:
        callbacks.append(budget)
    callbacks.append(StopCallback())
    trainer = AlignTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=validation_split,
        data_collator=AlignCollator(processor, recipe.max_text_length),
        processing_class=processor,
        callbacks=callbacks,
        freeze_vision=freeze_vision,
        plcc_direction=recipe.plcc_direction,
    )
    if checkpoint is not None and trainer.is_world_process_zero():
        print(f"resumed from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)
    if not any(e.get("step") == trainer.state.global_step and "eval_main_score" in e for e in trainer.state.log_history):
        trainer.evaluate()  # a resumed run that had nothing left to train, from a checkpoint without it

    if not trainer.is_world_process_zero():
        return {}
    metrics = _run_metrics(trainer.state.log_history)
    metrics.update({
        "steps": trainer.state.global_step,
        "epochs_completed": math.floor(trainer.state.epoch or 0),
        "train_samples": len(train_dataset),
        "skipped_train_samples": train_dataset.skipped,
        "validation_images": metrics["final"].get("num_images"),
        "stopped_by_time_budget": bool(budget is not None and budget.stopped),
        "resumed_from": checkpoint,
        "runtime_s": round(time.monotonic() - started, 2),
        "freeze_vision": freeze_vision,
        "arguments": {"recipe": asdict(recipe), "training": training_args.to_dict()},
    })
    _save_final_model(trainer.accelerator.unwrap_model(trainer.model), processor, output_dir / "model", metrics, recipe)
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics


def _run_metrics(log_history: list[dict]) -> dict[str, Any]:
    """``initial``, ``history``, ``final`` and ``train_loss`` from the Trainer's log history."""
    evaluations = []
    for entry in log_history:
        if "eval_main_score" in entry:
            scores = {key[5:]: value for key, value in entry.items()
                      if key.startswith("eval_") and key not in ("eval_runtime",)}
            evaluations.append({"step": entry["step"], "epoch": entry.get("epoch"), **scores})
    initial = next(({k: v for k, v in e.items() if k not in ("step", "epoch")} for e in evaluations
                    if e["step"] == 0), None)
    history = [e for e in evaluations if e["step"] > 0]
    final = {k: v for k, v in (history or evaluations)[-1].items() if k not in ("step", "epoch")}
    return {
        "initial": initial,
        "final": final,
        "history": history,
        "train_loss": [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry],
    }


def _save_final_model(model, processor, folder: Path, metrics: dict, recipe: AlignRecipeArguments) -> None:
    from huggingface_hub import ModelCardData

    from ..cards import render_model_card

    model.vision_model.requires_grad_(True)
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        card = render_model_card(
            "evalmuse-align",
            ModelCardData(library_name="transformers", tags=["evalmuse", "text-to-image-evaluation", "fga-blip2"]),
            preset=recipe.preset if not recipe.model_name_or_path else None,
            source=f"trained with train_scripts/train_align.py on {os.path.basename(str(recipe.dataset_dir).rstrip('/'))}",
            num_parameters=sum(int(p.numel()) for p in model.parameters()),
            metrics={k: round(v, 4) if isinstance(v, float) else v for k, v in metrics["final"].items()},
        )
        card.save(str(tmp / "README.md"))


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> tuple[AlignRecipeArguments, AlignTrainingArguments]:
    """``--config file.yaml`` (keys of both dataclasses) then ``--field value`` overrides, by TRL's parser."""
    return parse_recipe_arguments((AlignRecipeArguments, AlignTrainingArguments), argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m evalmuse_models.training.align`` and ``train_scripts/train_align.py``;
    prints the initial and final scores as JSON."""
    metrics = train_align(*parse_args(argv))
    if metrics:
        print(json.dumps({"initial": metrics["initial"], "final": metrics["final"], "steps": metrics["steps"]},
                         indent=2))
    return 0


__all__ = [
    "AlignCollator",
    "AlignRecipeArguments",
    "AlignTrainDataset",
    "AlignTrainer",
    "AlignTrainingArguments",
    "EpochCallback",
    "StopCallback",
    "build_model_and_processor",
    "build_token_targets",
    "check_checkpoint",
    "hold_out_prompts",
    "load_alignment_splits",
    "main",
    "parse_args",
    "resolve_checkpoint",
    "sample_seed",
    "train_align",
]


if __name__ == "__main__":
    import sys

    try:
        sys.exit(main())
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
