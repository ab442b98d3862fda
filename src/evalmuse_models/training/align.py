"""Training of the EvalMuse alignment model (FGA-BLIP2) with accelerate: CPU, one GPU or several.

The recipe is FGA-BLIP2's (SPEC §4; LAVIS ``fga_blip2.yaml``):

* loss: ``|overall - target| + 0.1 * mean|P(match)_text * mask - token_target| + 0.1 * mean|mask_pred - mask|``,
  where ``mask`` marks the element tokens (and CLS) and ``token_target`` carries each element's mean vote on
  its span (overlapping spans averaged) and ``(target - 1) / 4`` at CLS. Targets are built like the official
  ``element2mask.py``: spans are located on the full prompt ids, then cut to ``max_text_length`` (32); a
  training sample with an element that cannot be located is skipped (``skip_unmatched_elements``).
  Optional per-sample weighting of the score term by the prompt variance (``loss_weighting``).
* AdamW, lr 1e-5, weight decay 0.05 (not on biases / norms / 1-D tensors), 100 linear warm-up steps (at
  most a tenth of a short run) then a cosine decay over the run's optimizer steps, stepped per optimizer
  step (LAVIS ``linear_warmup_cosine_lr``), 5 epochs, batch 14, frozen ViT (its
  post-LayerNorm, LAVIS's ``ln_vision``, stays trainable) when starting from pretrained weights (a preset
  built from random weights trains its ViT unless ``freeze_vision=True``), mixed precision on CUDA.
* training images: random resized crop (scale 0.5-1, bicubic) + horizontal flip (``blip2_image_train``);
  evaluation images: plain bicubic resize.

Every epoch (or every ``eval_every`` steps) the validation split is scored with the NTIRE 2025 Main Score.
Checkpoints (weights, optimizer, scheduler and RNG states, progress: safetensors and JSON, see
:mod:`evalmuse_models.training.checkpoint`; nothing in them is unpickled) are written atomically under
``output_dir/checkpoints`` and a rerun resumes from the latest one. The end result is ``output_dir/model`` (``save_pretrained`` folder with
processor and model card) and ``output_dir/metrics.json``.

Example::

    from evalmuse_models.training.align import TrainAlignArguments, train_align

    metrics = train_align(TrainAlignArguments(dataset_dir="data/evalmuse", output_dir="runs/tiny",
                                              preset="tiny", learning_rate=1e-3, max_steps=300))
    print(metrics["final"]["main_score"])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.alignment import element_record_key
from ..utils import UserInputError, atomic_directory, atomic_write_text, replace_directory
from .checkpoint import check_supported, load_training_state, read_progress, sample_seed, save_training_state

logger = logging.getLogger(__name__)

ALIGNMENT_COLUMNS = ("image", "prompt", "total_score", "elements")


@dataclass
class TrainAlignArguments:
    """Arguments of :func:`train_align` (defaults: the official FGA-BLIP2 hyper-parameters)."""

    dataset_dir: str = field(metadata={"help": "prepared dataset folder or Hub id (config 'alignment')"})
    output_dir: str = field(metadata={"help": "run folder: checkpoints/, model/, metrics.json"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this model folder / Hub id (e.g. a converted FGA-BLIP2)"}
    )
    preset: str = field(default="fga-blip2", metadata={"help": "architecture when no model is given: tiny, fga-blip2"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "tokenizer (default: bert-base-uncased; the offline tiny one for 'tiny')"}
    )
    learning_rate: float = 1e-5
    warmup_learning_rate: float = 1e-8
    min_learning_rate: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.05
    num_epochs: int = 5
    max_steps: int | None = field(
        default=None,
        metadata={"help": "train for this many optimizer steps, over as many epochs as it takes (overrides "
                  "num_epochs, like transformers' Trainer); the LR schedule spans them"},
    )
    per_device_train_batch_size: int = 14
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    freeze_vision: bool | None = field(
        default=None,
        metadata={"help": "freeze the ViT (its post-LayerNorm stays trainable); default: frozen (official) when "
                  "starting from pretrained weights, trainable for a preset built from random weights"},
    )
    gradient_checkpointing: bool = False
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16/fp16 on CUDA, none on CPU), no, fp16, bf16"})
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
    eval_every: int | None = field(default=None, metadata={"help": "evaluate every N steps (default: each epoch)"})
    eval_on_start: bool = field(default=True, metadata={"help": "score the untrained model first (reported as 'initial')"})
    save_every: int | None = field(default=None, metadata={"help": "checkpoint every N steps (default: each epoch)"})
    save_total_limit: int = 2
    resume: bool = field(default=True, metadata={"help": "resume from the latest checkpoint in output_dir"})
    time_budget_s: float | None = field(default=None, metadata={"help": "stop training after this many seconds"})
    plcc_direction: str = "official"
    logging_steps: int = 10
    num_workers: int = 0
    torch_num_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads for CPU runs"})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even when a GPU is present"})
    seed: int = 42
    show_progress: bool = True
    overwrite_output_model: bool = True

    def __post_init__(self):
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise UserInputError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.loss_weighting not in ("none", "var", "exp_var"):
            raise UserInputError(f"loss_weighting must be none, var or exp_var, got {self.loss_weighting!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "num_epochs"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserInputError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 < self.validation_fraction < 1:
            raise UserInputError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


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


class AlignTrainDataset:
    """Map-style torch dataset over the prepared ``alignment`` split with official targets.

    A sample's augmentation is drawn from its own seed (``seed``, the ``epoch`` attribute the loop sets, its
    index), not from the global RNG, so that it does not depend on loading order and a resumed run
    augments exactly as an uninterrupted one."""

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


def load_alignment_splits(args: TrainAlignArguments):
    """``(train, validation)`` of the prepared dataset; holds out a seeded fraction of train PROMPTS
    when there is no validation split (all images of a prompt stay on one side)."""
    import datasets

    try:
        dataset = datasets.load_dataset(args.dataset_dir, "alignment")
    except (FileNotFoundError, ValueError) as error:
        raise UserInputError(
            f"could not load the 'alignment' config of {args.dataset_dir} ({error}); prepare it with "
            "`evalmuse prepare-data` or pass a prepared dataset folder"
        ) from error
    if "train" not in dataset:
        raise UserInputError(f"{args.dataset_dir}: the alignment config has no 'train' split (found {list(dataset)})")
    train = dataset["train"]
    missing = [c for c in ALIGNMENT_COLUMNS if c not in train.column_names]
    if missing:
        raise UserInputError(f"{args.dataset_dir}: alignment split 'train' lacks columns {missing}")
    if "validation" in dataset:
        validation = dataset["validation"]
    else:
        train, validation = hold_out_prompts(train, args.validation_fraction, args.seed)
        logger.info("no validation split: held out %d images of train as validation", len(validation))
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        validation = validation.select(range(min(args.max_eval_samples, len(validation))))
    return train, validation


# ---------------------------------------------------------------------------------------------- evaluation


class _LazyImages:
    """Decode a split's images one slice at a time (``model.score`` reads them batch by batch)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [image.convert("RGB") for image in self.split[index]["image"]]
        return self.split[index]["image"].convert("RGB")


def evaluate_alignment(model, processor, split, batch_size: int = 16, plcc_direction: str = "official",
                       show_progress: bool = False) -> dict:
    """Score a labelled split with ``model.score`` and return the official Main Score (``srcc``, ``plcc``,
    ``acc``, ``main_score``) plus ``num_images``."""
    from ..metrics import alignment_main_score

    rows = split.select_columns(["prompt", "total_score", "elements"])
    keep = [i for i, row in enumerate(rows) if row["total_score"] is not None]
    if len(keep) < 3:
        raise UserInputError(f"the evaluation split has {len(keep)} labelled images; at least 3 are needed")
    labelled = split.select(keep)
    prompts = labelled["prompt"]
    references = [float(s) for s in labelled["total_score"]]
    element_lists = labelled["elements"]
    keys = [[element_record_key(e) for e in elements if e.get("score") is not None] for elements in element_lists]
    truth_elements = [
        {element_record_key(e): float(e["score"]) for e in elements if e.get("score") is not None} for elements in element_lists
    ]
    results = model.score(_LazyImages(labelled), prompts, elements=keys, batch_size=batch_size, processor=processor,
                          show_progress=show_progress)
    predictions = [r["overall"] for r in results]
    predicted_elements = [r["elements"] for r in results]
    metrics = alignment_main_score(
        predictions, references, predicted_elements, truth_elements, plcc_direction=plcc_direction
    )
    out = {k: float(metrics[k]) for k in ("srcc", "plcc", "acc", "main_score")}
    out["num_images"] = len(predictions)
    out["unmatched_elements"] = sum(len(r["unmatched_elements"]) for r in results)
    return out


# ---------------------------------------------------------------------------------------------- model


def build_model_and_processor(args: TrainAlignArguments):
    """The model (pretrained folder, or a preset with random weights) and its processor."""
    from ..models.evalmuse_align import (
        EvalMuseAlignConfig,
        EvalMuseAlignModel,
        EvalMuseAlignProcessor,
        build_tiny_processor,
    )

    if args.model_name_or_path:
        model = EvalMuseAlignModel.from_pretrained(args.model_name_or_path)
        source = args.tokenizer_name_or_path or args.model_name_or_path
        try:
            processor = EvalMuseAlignProcessor.from_pretrained(source)
        except (OSError, ValueError):
            processor = EvalMuseAlignProcessor.from_config(model.config, tokenizer_name_or_path=source)
    else:
        config = EvalMuseAlignConfig.from_preset(args.preset)
        if args.preset != "tiny":
            logger.warning("training the %r preset from random weights; pass model_name_or_path to fine-tune", args.preset)
        model = EvalMuseAlignModel(config)
        if args.tokenizer_name_or_path is None and args.preset == "tiny":
            processor = build_tiny_processor(config)
        else:
            from ..models.evalmuse_align import DEFAULT_TOKENIZER

            processor = EvalMuseAlignProcessor.from_config(
                config, tokenizer_name_or_path=args.tokenizer_name_or_path or DEFAULT_TOKENIZER
            )
    model.config.loss_weighting = args.loss_weighting
    if len(processor.tokenizer) > model.config.qformer_config.vocab_size:
        raise UserInputError(
            f"the tokenizer has {len(processor.tokenizer)} ids but the model's vocabulary only "
            f"{model.config.qformer_config.vocab_size}; use the model's own tokenizer"
        )
    return model, processor


def _parameter_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "bias" in name or "norm" in name.lower() or name.endswith("query_tokens"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def effective_warmup_steps(warmup_steps: int, total_steps: int) -> int:
    """Warm-up length actually used: ``warmup_steps``, capped at a tenth of the run for short runs (the
    official 100 steps are a sliver of FGA-BLIP2's ~14,000; a 300-step run warms up for 30)."""
    return max(0, min(warmup_steps, total_steps // 10))


def warmup_cosine_lr_lambda(args: TrainAlignArguments, total_steps: int):
    """The learning-rate multiplier of optimizer step ``step`` (LAVIS ``linear_warmup_cosine_lr``, per step):
    a linear warm-up from ``warmup_learning_rate`` to ``learning_rate`` over
    :func:`effective_warmup_steps`, then a cosine decay to ``min_learning_rate`` over the remaining
    optimizer steps of the run (``total_steps``: epochs x steps per epoch, or ``max_steps``).

    LAVIS steps the cosine once per epoch; stepping it per optimizer step gives the same curve sampled
    finely, and it also decays when a run is bounded by ``max_steps`` rather than by epochs.
    """
    base = args.learning_rate
    total_steps = max(1, total_steps)
    warmup = effective_warmup_steps(args.warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            lr = args.warmup_learning_rate + (base - args.warmup_learning_rate) * step / warmup
        else:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            lr = args.min_learning_rate + (base - args.min_learning_rate) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr / base

    return factor


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _resolve_mixed_precision(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


# ---------------------------------------------------------------------------------------------- loop


_CHECKPOINT = re.compile(r"^step-(\d+)$")


def _latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and (p / "progress.json").is_file()]
    return max(found)[1] if found else None


def train_align(args: TrainAlignArguments) -> dict:
    """Train (or fine-tune) the alignment model; returns the final metrics (also written to
    ``output_dir/metrics.json``): ``initial`` (untrained model, when ``eval_on_start``), ``history``
    (each evaluation), ``final`` (last evaluation), ``steps``, ``epochs``, ``train_loss``, ``runtime_s``."""
    import torch

    previous_threads = torch.get_num_threads()
    if args.torch_num_threads:
        torch.set_num_threads(args.torch_num_threads)
    try:
        return _train_align(args)
    finally:
        torch.set_num_threads(previous_threads)


def _train_align(args: TrainAlignArguments) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    started = time.monotonic()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision=_resolve_mixed_precision(args.mixed_precision),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # without an accelerator, `cpu=True` lets accelerate use torch.distributed (gloo) when launched
        # with several processes (`torchrun --nproc_per_node N`)
        cpu=args.use_cpu or not _has_accelerator(),
    )
    check_supported(accelerator)
    set_seed(args.seed)

    model, processor = build_model_and_processor(args)
    train_split, validation_split = load_alignment_splits(args)
    image_size = model.config.vision_config.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    train_dataset = AlignTrainDataset(
        train_split, processor, args.max_text_length, args.augment, image_size, args.skip_unmatched_elements,
        seed=args.seed,
    )
    if len(train_dataset) == 0:
        raise UserInputError(f"{args.dataset_dir}: no labelled training sample left (skipped {train_dataset.skipped})")
    if train_dataset.skipped:
        logger.warning("skipped %d training samples with an element not found in the prompt", train_dataset.skipped)

    freeze_vision = args.freeze_vision if args.freeze_vision is not None else bool(args.model_name_or_path)
    if freeze_vision:
        model.vision_model.requires_grad_(False)
        model.vision_model.post_layernorm.requires_grad_(True)
    # The ITC projections kept from BLIP-2 are not part of the FGA-BLIP2 loss: freeze them (DDP requires
    # every trainable parameter to receive a gradient).
    model.vision_projection.requires_grad_(False)
    model.text_projection.requires_grad_(False)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=len(train_dataset) > args.per_device_train_batch_size,
        collate_fn=AlignCollator(processor, args.max_text_length),
        num_workers=args.num_workers,
        generator=generator,
    )
    optimizer = torch.optim.AdamW(_parameter_groups(model, args.weight_decay), lr=args.learning_rate, betas=(0.9, 0.999))
    base_optimizer = optimizer
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # Counted on the prepared (per-process) loader: the optimizer steps this process really takes.
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * args.num_epochs if args.max_steps is None else args.max_steps
    # Stepped by hand once per optimizer step (not handed to accelerate, which would step it once per
    # process); its state is saved with the checkpoints.
    scheduler = torch.optim.lr_scheduler.LambdaLR(base_optimizer, warmup_cosine_lr_lambda(args, total_steps))

    checkpoints = output_dir / "checkpoints"
    # "running": the losses since the last logged mean (kept in checkpoints so a resumed run logs the same means)
    progress = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "history": [], "initial": None, "losses": [],
                "running": []}
    # The loader's generator as the current epoch began: a mid-epoch checkpoint keeps it, so that a resume
    # draws the same order and skips the batches already seen.
    epoch_start_state = generator.get_state()
    latest = _latest_checkpoint(checkpoints) if args.resume else None
    if latest is not None:
        hint = "--resume false (resume=False)"
        progress = read_progress(latest, "progress.json", progress, resume_hint=hint)
        load_training_state(accelerator, latest, model=model, optimizer=optimizer, scheduler=scheduler,
                            generators={"train_loader": generator}, resume_hint=hint)
        accelerator.print(f"resumed from {latest} (step {progress['step']})")

    def evaluate() -> dict:
        unwrapped = accelerator.unwrap_model(model)
        with accelerator.autocast():
            return evaluate_alignment(
                unwrapped, processor, validation_split, args.per_device_eval_batch_size, args.plcc_direction
            )

    def save_checkpoint() -> None:
        # Every process calls save_training_state (each writes its own RNG states); the folder is built
        # under a partial name and renamed into place by the main process, so a crash never leaves a
        # half-written checkpoint that a resume would pick up.
        target = checkpoints / f"step-{progress['step']}"
        partial = checkpoints / f".step-{progress['step']}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        loader_state = epoch_start_state if progress["batches_in_epoch"] else generator.get_state()
        save_training_state(accelerator, partial, model=model, optimizer=optimizer, scheduler=scheduler,
                            generator_states={"train_loader": loader_state})
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_text(partial / "progress.json", json.dumps(progress, indent=2))
            replace_directory(partial, target)
            kept = sorted((int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name)))
            for _, old in kept[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    if args.eval_on_start and progress["initial"] is None and accelerator.is_main_process:
        progress["initial"] = evaluate()
        accelerator.print(f"initial validation: {progress['initial']}")

    bar = tqdm(total=total_steps, initial=progress["step"], desc="train_align",
               disable=not (args.show_progress and accelerator.is_local_main_process))
    stop = progress["step"] >= total_steps
    out_of_time = False
    while not stop and (args.max_steps is not None or progress["epoch"] < args.num_epochs):
        model.train()
        if freeze_vision:
            accelerator.unwrap_model(model).vision_model.eval()
        epoch_loader = loader
        if progress["batches_in_epoch"]:
            epoch_loader = accelerator.skip_first_batches(loader, progress["batches_in_epoch"])
        epoch_start_state = generator.get_state()
        train_dataset.epoch = progress["epoch"]  # not a set_epoch method: accelerate's loaders call that with their own count
        running = progress["running"]
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                outputs = model(**batch, predict_element_mask=True)
                loss = outputs.loss
                accelerator.backward(loss)
                if args.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            progress["batches_in_epoch"] += 1
            running.append(float(loss.detach()))
            if not accelerator.sync_gradients:
                continue
            progress["step"] += 1
            bar.update(1)
            if progress["step"] % max(1, args.logging_steps) == 0:
                mean_loss = sum(running) / len(running)
                progress["losses"].append([progress["step"], mean_loss])
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                running.clear()
            if args.eval_every and progress["step"] % args.eval_every == 0 and accelerator.is_main_process:
                progress["history"].append({"step": progress["step"], **evaluate()})
                model.train()
            if args.save_every and progress["step"] % args.save_every == 0:
                save_checkpoint()
            if args.time_budget_s is not None:
                over = torch.tensor([time.monotonic() - started > args.time_budget_s], device=accelerator.device)
                out_of_time = bool(accelerator.gather(over).any())  # every process stops at the same step
            if progress["step"] >= total_steps or out_of_time:
                stop = True
                break
        if running:
            progress["losses"].append([progress["step"], sum(running) / len(running)])
            running.clear()
        if not stop:
            progress["epoch"] += 1
            progress["batches_in_epoch"] = 0
            if not args.eval_every and accelerator.is_main_process:
                progress["history"].append({"step": progress["step"], "epoch": progress["epoch"], **evaluate()})
            if not args.save_every:
                save_checkpoint()
    bar.close()

    accelerator.wait_for_everyone()
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process and (not progress["history"] or progress["history"][-1]["step"] != progress["step"]):
        progress["history"].append({"step": progress["step"], **evaluate()})
    save_checkpoint()
    if accelerator.is_main_process:
        final = {k: v for k, v in progress["history"][-1].items() if k not in ("step", "epoch")}
        metrics = {
            "initial": progress["initial"],
            "final": final,
            "history": progress["history"],
            "steps": progress["step"],
            "epochs_completed": progress["epoch"],
            "train_loss": progress["losses"],
            "train_samples": len(train_dataset),
            "skipped_train_samples": train_dataset.skipped,
            "validation_images": final.get("num_images"),
            "stopped_by_time_budget": out_of_time,
            "runtime_s": round(time.monotonic() - started, 2),
            "freeze_vision": freeze_vision,
            "arguments": asdict(args),
        }
        _save_final_model(accelerator.unwrap_model(model), processor, output_dir / "model", metrics, args)
        atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
    accelerator.wait_for_everyone()
    return metrics


def _save_final_model(model, processor, folder: Path, metrics: dict, args: TrainAlignArguments) -> None:
    from huggingface_hub import ModelCardData

    from ..cards import render_model_card

    model.vision_model.requires_grad_(True)
    with atomic_directory(folder, overwrite=args.overwrite_output_model) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        final = metrics["final"]
        card = render_model_card(
            "evalmuse-align",
            ModelCardData(library_name="transformers", tags=["evalmuse", "text-to-image-evaluation", "fga-blip2"]),
            preset=args.preset if not args.model_name_or_path else None,
            source=f"trained with train_scripts/train_align.py on {os.path.basename(str(args.dataset_dir).rstrip('/'))}",
            num_parameters=sum(int(p.numel()) for p in model.parameters()),
            metrics={k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()},
        )
        card.save(str(tmp / "README.md"))


def parse_args(argv: list[str] | None = None) -> TrainAlignArguments:
    """Command-line arguments: every field of :class:`TrainAlignArguments` as ``--field value``, plus
    ``--config file.yaml`` whose keys become defaults (the command line wins)."""
    import argparse
    import sys

    import yaml
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(TrainAlignArguments, description="Train the EvalMuse alignment model (FGA-BLIP2).")
    parser.add_argument("--config", default=None, help="YAML file of TrainAlignArguments fields")
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise UserInputError(f"--config {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise UserInputError(f"{path}: expected a mapping of TrainAlignArguments fields")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainAlignArguments)})
        if unknown:
            raise UserInputError(f"{path}: unknown fields {unknown}")
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    (arguments, _extra) = parser.parse_args_into_dataclasses(args=rest + (["--config", known.config] if known.config else []))
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``train_scripts/train_align.py``; prints the final metrics as JSON."""
    arguments = parse_args(argv)
    metrics = train_align(arguments)
    if metrics:
        print(json.dumps({"initial": metrics["initial"], "final": metrics["final"], "steps": metrics["steps"]}, indent=2))
    return 0


__all__ = [
    "AlignCollator",
    "AlignTrainDataset",
    "TrainAlignArguments",
    "build_model_and_processor",
    "build_token_targets",
    "effective_warmup_steps",
    "evaluate_alignment",
    "hold_out_prompts",
    "load_alignment_splits",
    "main",
    "parse_args",
    "train_align",
    "warmup_cosine_lr_lambda",
]
