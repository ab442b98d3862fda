"""Training of the EvalMuse structure model (distortion heatmap + structure score) on transformers' ``Trainer``:
CPU, one GPU or several.

Arguments are the Trainer's own (:class:`StructureTrainingArguments`, with this recipe's defaults) plus
:class:`StructureRecipeArguments` for what only this recipe knows. The loss is the model's own; the backbones
train at their own learning rate, optionally frozen for the first part of the run
(:class:`FreezeScheduleCallback`); every evaluation is the official structure score of the validation split
(:func:`evalmuse_models.evaluation.evaluate_structure`), logged as ``eval_final``, ``eval_f1``, ``eval_plcc``,
``eval_srcc``; at the end the heatmap threshold that maximises it is searched
(:func:`evalmuse_models.evaluation.search_threshold`) and written into the saved config. Checkpoints are the
Trainer's (``output_dir/checkpoint-N``); a rerun resumes from the last one once its files have been opened
the safe way (:func:`check_checkpoint`). Output: ``output_dir/model/`` (``save_pretrained`` folder with the
processor and a model card), ``output_dir/metrics.json`` and ``output_dir/trainer_state.json``.
``docs/structure_model.md`` describes the recipe.

Example::

    from evalmuse_models.training.structure import (
        StructureRecipeArguments, StructureTrainingArguments, train_structure)

    metrics = train_structure(StructureRecipeArguments(dataset_dir="data/evalmuse", preset="tiny"),
                              StructureTrainingArguments(output_dir="runs/structure-tiny", max_steps=120))
    metrics["final"]["final_score"], metrics["threshold"]

Command line (``python -m evalmuse_models.training.structure``, ``evalmuse train structure`` or
``train_scripts/train_structure.py``, under ``accelerate launch`` for several processes): ``--config
file.yaml`` with fields of both dataclasses, then ``--field value`` overrides.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType, get_last_checkpoint

from ..evaluation.structure import DEFAULT_THRESHOLDS, evaluate_structure, search_threshold, truth_masks
from ..utils import UserInputError, atomic_directory, atomic_write_text
from .callbacks import TimeBudgetCallback

logger = logging.getLogger(__name__)

#: The head learning rate of each preset when ``learning_rate`` is not given.
PRESET_LEARNING_RATES = {"tiny": 3e-3, "hnu-vpai": 1e-4, "em-rahf": 2e-5}
#: Columns the recipe reads from the ``structure`` config.
STRUCTURE_COLUMNS = ("image", "image_name", "mos", "heatmap")
#: Official metric -> the name the Trainer logs it under (after the ``eval_`` prefix).
LOGGED_METRICS = {"final_score": "final", "f1": "f1", "plcc": "plcc", "srcc": "srcc", "precision": "precision",
                  "recall": "recall", "giou": "giou"}
#: ``EvalMuseStructureConfig`` fields the recipe arguments of the same name override (None: the preset's).
_CONFIG_FIELDS = ("heatmap_size", "heatmap_loss_weight", "dice_loss_weight", "score_loss_weight",
                  "plcc_loss_weight", "rank_loss_weight")


@dataclass
class StructureRecipeArguments:
    """What the structure recipe needs besides the Trainer's arguments (:class:`StructureTrainingArguments`)."""

    dataset_dir: str = field(metadata={"help": "prepared dataset folder or Hub id (config 'structure')"})
    preset: str = field(default="tiny", metadata={"help": "architecture when no model is given: tiny, hnu-vpai, "
                                                          "em-rahf"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this saved EvalMuse structure model instead of a preset"}
    )
    pretrained_backbones: bool = field(
        default=False, metadata={"help": "load the preset's pretrained backbones (Hub ids / timm weights)"}
    )
    backbone_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the backbones once they train (default: learning_rate / 10)"}
    )
    freeze_schedule_fraction: float | None = field(
        default=None,
        metadata={"help": "train the frozen backbones after this fraction of the steps (1: never; 0.5: EM-RAHF's "
                  "schedule; default: the model config's)"},
    )
    heatmap_size: int | None = field(default=None, metadata={"help": "side of the predicted heatmap (default 512)"})
    heatmap_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    dice_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    score_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    plcc_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    rank_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "other EvalMuseStructureConfig fields, as a mapping (a JSON object on the command line), "
                  'e.g. \'{"freeze_cnn": false}\''},
    )
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips of image and heatmap"})
    min_votes: int = field(default=1, metadata={"help": "annotators needed for a truth pixel (1: union)"})
    eval_split: str | None = field(
        default="validation",
        metadata={"help": "split scored by every evaluation and by the threshold search (none: train without "
                  "evaluation)"},
    )
    evaluate_test: bool = field(
        default=True, metadata={"help": "also score a labelled 'test' split (before training and at the end)"}
    )
    threshold_search: bool = field(default=True, metadata={"help": "search the heatmap threshold at the end"})
    thresholds: list[float] | None = field(
        default=None, metadata={"help": "candidate thresholds in [0, 1] (default 10/255 ... 240/255)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "first N of the seeded shuffled train split"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "first N of the evaluated splits"})
    time_budget_s: float | None = field(default=None, metadata={"help": "stop training after this many seconds"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep checkpoint-N folders after a run"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads for CPU runs (1 is fastest for tiny models)"}
    )

    def __post_init__(self):
        if isinstance(self.config_overrides, str):
            try:
                self.config_overrides = json.loads(self.config_overrides)
            except json.JSONDecodeError as error:
                raise UserInputError(f"config_overrides: not a JSON object ({error})") from None
        if self.config_overrides is not None and not isinstance(self.config_overrides, dict):
            raise UserInputError(f"config_overrides must be a mapping, got {self.config_overrides!r}")
        if self.freeze_schedule_fraction is not None and not 0.0 <= self.freeze_schedule_fraction <= 1.0:
            raise UserInputError(f"freeze_schedule_fraction must be in [0, 1], got {self.freeze_schedule_fraction}")
        if not 1 <= self.min_votes <= 4:
            raise UserInputError(f"min_votes must be 1 to 4 annotators, got {self.min_votes}")
        if self.thresholds is not None and any(not 0.0 <= float(t) <= 1.0 for t in self.thresholds):
            raise UserInputError(f"thresholds must be heatmap levels in [0, 1], got {self.thresholds}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"{name} must be at least 1 (or none), got {value}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UserInputError(f"time_budget_s must be a positive number of seconds, got {self.time_budget_s}")

    def model_overrides(self) -> dict[str, Any]:
        """The ``EvalMuseStructureConfig`` overrides these arguments ask for."""
        overrides = dict(self.config_overrides or {})
        overrides.update({name: getattr(self, name) for name in _CONFIG_FIELDS if getattr(self, name) is not None})
        return overrides


@dataclass
class StructureTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with this recipe's defaults (every other field is the Trainer's)."""

    output_dir: str | None = field(
        default=None, metadata={"help": "run folder: checkpoint-N/, model/, metrics.json (required)"}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "head learning rate (default: the preset's, tiny 3e-3, hnu-vpai 1e-4, "
                                        "em-rahf 2e-5)"}
    )
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    weight_decay: float = 0.01
    warmup_steps: float = field(default=0.05, metadata={"help": "linear warm-up steps (< 1: a fraction of the run)"})
    lr_scheduler_type: SchedulerType | str = "cosine_with_min_lr"
    lr_scheduler_kwargs: dict | str | None = field(default_factory=lambda: {"min_lr_rate": 0.1})
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping (0: none)"})
    eval_strategy: IntervalStrategy | str = "epoch"
    eval_on_start: bool = True
    save_strategy: SaveStrategy | str = "epoch"
    save_total_limit: int | None = 1
    logging_steps: float = 10
    logging_first_step: bool = True
    seed: int = 0
    remove_unused_columns: bool = False
    label_names: list[str] | None = field(default_factory=lambda: ["score_labels"])
    ddp_find_unused_parameters: bool | None = True
    resume_from_checkpoint: str | None = field(
        default="auto", metadata={"help": "auto: the last checkpoint-N in output_dir; none: start over; or a folder"}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise UserInputError("output_dir is required (the run folder)")
        super().__post_init__()


# ---------------------------------------------------------------------------------------------- data


def load_structure_splits(recipe: StructureRecipeArguments, seed: int, dataset=None):
    """``(train, eval, test)`` splits of the ``structure`` config (``eval`` / ``test`` None when absent or
    unlabelled), subsampled as the recipe asks."""
    if dataset is None:
        from datasets import load_dataset

        try:
            dataset = load_dataset(recipe.dataset_dir, "structure")
        except (FileNotFoundError, ValueError) as error:
            raise UserInputError(
                f"cannot load the 'structure' config of {recipe.dataset_dir!r}: {error}. Build the folder with "
                "`evalmuse prepare-data` (or pass a Hub dataset id)"
            ) from error
    if "train" not in dataset:
        raise UserInputError(f"dataset {recipe.dataset_dir!r} has no 'train' split (splits: {list(dataset)})")
    missing = sorted(set(STRUCTURE_COLUMNS) - set(dataset["train"].column_names))
    if missing:
        raise UserInputError(f"dataset {recipe.dataset_dir!r}, split 'train': missing columns {missing}; expected "
                             "the 'structure' config of a prepared EvalMuse dataset")
    if recipe.eval_split and recipe.eval_split not in dataset:
        raise UserInputError(f"dataset {recipe.dataset_dir!r} has no split {recipe.eval_split!r} (splits: "
                             f"{list(dataset)}); set eval_split to one of them, or to none to train without evaluation")

    def limited(split, limit):
        return split if limit is None or limit >= len(split) else split.shuffle(seed=seed).select(range(limit))

    def labelled(name):
        split = dataset[name] if name and name in dataset else None
        if split is None or len(split) == 0 or any(m is None for m in split["mos"]):
            return None
        return limited(split, recipe.max_eval_samples)

    train = limited(dataset["train"], recipe.max_train_samples)
    if len(train) == 0:
        raise UserInputError(f"dataset {recipe.dataset_dir!r}: the 'train' split is empty")
    evaluated = labelled(recipe.eval_split)
    if recipe.eval_split and evaluated is None:
        logger.warning("split %r has no labels: training without evaluation", recipe.eval_split)
    return train, evaluated, labelled("test") if recipe.evaluate_test else None


def _heatmap_array(row: dict[str, Any], size: int) -> np.ndarray:
    """The row's training heatmap (uint8 levels) at ``size`` x ``size``: its ``heatmap`` column, or, when
    that is stored at another size, the baseline heatmap made afresh from its ``shapes``."""
    from PIL import Image

    value = row.get("heatmap")
    if value is None:
        return np.zeros((size, size), np.uint8)
    image = value if isinstance(value, Image.Image) else Image.open(value)
    if image.size == (size, size):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    from ..data.masks import baseline_heatmap

    try:
        return baseline_heatmap(row, size=(size, size))
    except ValueError as error:
        raise UserInputError(
            f"image {row.get('image_name', '?')!r}: the heatmap column is {image.size[0]}x{image.size[1]}, not the "
            f"model's {size}x{size}, and cannot be made again from the row's shapes ({error}); prepare the dataset "
            "with `evalmuse prepare-data`"
        ) from error


class StructureTrainDataset:
    """The training split for the Trainer: each row with its horizontal-flip draw (``_hflip``), made from its
    own seed (``seed``, the ``epoch`` attribute that :class:`EpochCallback` sets, its index) rather than the
    global RNG, so that it depends neither on loading order nor on where a run was interrupted."""

    def __init__(self, split, seed: int, hflip: bool):
        self.split = split
        self.seed = seed
        self.hflip = hflip
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.split[index])
        row["_hflip"] = self.hflip and bool(np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5)
        return row


class StructureCollator:
    """Rows of the ``structure`` config -> model inputs (``pixel_values``, prompt tokens for text presets) and
    targets (``heatmap_labels`` in [0, 1], ``score_labels`` = MOS, NaN when unlabelled). Image and heatmap are
    flipped when the row says so (``_hflip``, drawn by :class:`StructureTrainDataset`; evaluation rows have
    none)."""

    def __init__(self, processor, heatmap_size: int, uses_text: bool):
        self.processor = processor
        self.heatmap_size = heatmap_size
        self.uses_text = uses_text

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from PIL import Image

        images, heatmaps, scores, prompts = [], [], [], []
        for row in rows:
            image = row["image"].convert("RGB")
            heat = _heatmap_array(row, self.heatmap_size)
            if row.get("_hflip", False):
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
                heat = heat[:, ::-1]
            images.append(image)
            heatmaps.append(np.ascontiguousarray(heat))
            scores.append(float("nan") if row.get("mos") is None else float(row["mos"]))
            prompts.append(row.get("prompt") or "")
        batch = dict(self.processor(images=images, text=prompts if self.uses_text else None, return_tensors="pt"))
        batch["heatmap_labels"] = torch.from_numpy(np.stack(heatmaps)).float() / 255.0
        batch["score_labels"] = torch.tensor(scores, dtype=torch.float32)
        return batch


# ---------------------------------------------------------------------------------------------- model


def build_model_and_processor(recipe: StructureRecipeArguments):
    """The model (a saved one, or a preset with random or pretrained backbones) and its processor."""
    from ..models.evalmuse_structure import (
        EvalMuseStructureConfig,
        EvalMuseStructureModel,
        EvalMuseStructureProcessor,
    )

    overrides = recipe.model_overrides()
    if recipe.model_name_or_path:
        model = EvalMuseStructureModel.from_pretrained(recipe.model_name_or_path, **overrides)
        try:
            processor = EvalMuseStructureProcessor.from_pretrained(recipe.model_name_or_path)
        except (OSError, ValueError):
            processor = EvalMuseStructureProcessor.from_model_config(model.config)
        return model, processor
    try:
        config = EvalMuseStructureConfig.from_preset(recipe.preset, **overrides)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"preset {recipe.preset!r} with overrides {overrides}: {error}") from None
    model = EvalMuseStructureModel(config, load_pretrained_backbones=recipe.pretrained_backbones)
    return model, EvalMuseStructureProcessor.from_model_config(config)


def _backbones(model) -> list:
    return [m for m in (getattr(model, name, None) for name in ("vit", "cnn", "text_embeddings")) if m is not None]


# ---------------------------------------------------------------------------------------------- trainer


def _logged(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """An :func:`evaluate_structure` result as Trainer metrics (``eval_final``, ``eval_f1``, ...); undefined
    values (the foreground IoU of a set without predicted regions) are left out."""
    return {f"{prefix}_{LOGGED_METRICS[key]}": float(value) for key, value in metrics.items()
            if key in LOGGED_METRICS and value is not None and math.isfinite(value)}


def _predictions(output) -> list[dict[str, Any]]:
    """The ``(heatmaps, scores)`` gathered by :meth:`StructureTrainer.prediction_step` as one prediction per
    image (:func:`evaluate_structure`'s input)."""
    heatmaps, scores = output.predictions
    return [{"score": float(score), "heatmap": heatmap} for heatmap, score in zip(heatmaps, scores, strict=True)]


def _official(entry: dict[str, Any], prefix: str) -> dict[str, float]:
    """The official metrics of a logged evaluation (the inverse of :func:`_logged`)."""
    return {key: entry[f"{prefix}_{name}"] for key, name in LOGGED_METRICS.items() if f"{prefix}_{name}" in entry}


class StructureTrainer(Trainer):
    """``Trainer`` with the structure recipe's parameter groups (backbones at their own learning rate) and the
    official structure score as its evaluation (``eval_final``, ``eval_f1``, ``eval_plcc``, ``eval_srcc``, ...).

    Args:
        backbone_learning_rate: learning rate of the backbone parameters (the others take ``learning_rate``).
        min_votes: annotators needed for a truth pixel of the evaluated splits.
    """

    def __init__(self, *args, backbone_learning_rate: float | None = None, min_votes: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_learning_rate = backbone_learning_rate
        self.min_votes = min_votes
        self._truth: dict[str, list[np.ndarray]] = {}
        # The model's loss is a per-batch mean: the Trainer averages it over accumulation steps itself and must
        # not rescale it by item counts (its forward takes **kwargs, which the Trainer would read so).
        self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (``optim``, weight decay off for biases and norms) over parameter groups:
        the backbones at ``backbone_learning_rate``, the rest at ``learning_rate``."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        backbone = {id(p) for module in _backbones(self.accelerator.unwrap_model(opt_model)) for p in module.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((id(param) in backbone, name in decay), []).append(param)
        backbone_lr = self.backbone_learning_rate or self.args.learning_rate / 10
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(
            [
                {"params": params, "lr": backbone_lr if is_backbone else self.args.learning_rate,
                 "weight_decay": self.args.weight_decay if decays else 0.0}
                # the head's decayed group first: the Trainer logs the first group's learning rate
                for (is_backbone, decays), params in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
            ],
            **optimizer_kwargs,
        )
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The checkpoint's weights, read by ``from_pretrained``. ``save_pretrained`` writes them in the
        original layout of each sub-model (transformers' weight conversions reverted, e.g. DINOv2's
        ``attention.attention.query`` for ``attention.q_proj``), which only ``from_pretrained`` converts back:
        the Trainer's own plain ``load_state_dict`` would leave those weights out, with a warning."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        saved = type(model).from_pretrained(resume_from_checkpoint)
        model.load_state_dict(saved.state_dict())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss, ``(heatmaps as 8-bit levels, scores)`` and the true scores of one evaluation batch."""
        import torch

        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = None if outputs.loss is None else outputs.loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        heatmaps = torch.round(outputs.heatmap.float() * 255).to(torch.uint8)
        return loss, (heatmaps, outputs.structure_score.float()), inputs.get("score_labels")

    def structure_predictions(self, split) -> list[dict[str, Any]]:
        """The model's score and 8-bit heatmap for every image of ``split``, in order (every process runs
        its share; every process gets them all)."""
        return _predictions(self.predict(split, metric_key_prefix="predict"))

    def truth_of(self, split) -> list[np.ndarray]:
        """The split's truth masks, drawn once per run (every evaluation and the threshold search reuse them)."""
        key = getattr(split, "_fingerprint", None) or str(id(split))
        if key not in self._truth:
            self._truth[key] = truth_masks(split, min_votes=self.min_votes)
        return self._truth[key]

    def score_split(self, predictions, split, threshold: float | None = None) -> dict[str, Any]:
        """:func:`evaluate_structure` of ``predictions`` on ``split`` at ``threshold`` (default: the model's)."""
        config = self.accelerator.unwrap_model(self.model).config
        return evaluate_structure(predictions, split, threshold=config.threshold if threshold is None else threshold,
                                  min_area=config.min_region_area, truth=self.truth_of(split))

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's loop (predictions gathered from every process, the loss), plus, for ``evaluate``, the
        official structure score of the evaluated split."""
        scoring = description == "Evaluation"
        output = super().evaluation_loop(dataloader, description, False if scoring else prediction_loss_only,
                                         ignore_keys, metric_key_prefix)
        if scoring:
            metrics = self.score_split(_predictions(output), dataloader.dataset)
            output.metrics.update(_logged(metrics, metric_key_prefix))
        return output


# ---------------------------------------------------------------------------------------------- callbacks


class EpochCallback(TrainerCallback):
    """Tell the training dataset which epoch begins (its flips are drawn per epoch)."""

    def __init__(self, dataset: StructureTrainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = math.floor(state.epoch or 0)  # a run resumed mid-epoch is still in that epoch


class FreezeScheduleCallback(TrainerCallback):
    """Keep the backbones that the model config freezes frozen for the first ``fraction`` of the optimizer
    steps, then train them.

    The backbones must be trainable when the Trainer wraps the model (DDP only synchronises the gradients of
    parameters that require them at that moment) and when it builds the optimizer: this callback freezes them
    at the start of training (``requires_grad`` off: the model then runs them under ``no_grad`` in eval mode,
    they get no gradient and the optimizer skips them) and unfreezes them at ``unfreeze_step``; DDP needs
    ``ddp_find_unused_parameters=True`` while they are frozen.
    """

    def __init__(self, frozen: tuple[bool, bool, bool], fraction: float):
        self.frozen = frozen
        self.fraction = fraction
        self.unfreeze_step: int | None = None
        self.waiting = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.unfreeze_step = round(self.fraction * state.max_steps)
        self.waiting = state.global_step < self.unfreeze_step
        if self.waiting:
            model.freeze_backbones(*self.frozen)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.waiting and state.global_step >= self.unfreeze_step:
            logger.info("step %d: the backbones train from now on", state.global_step)
            model.freeze_backbones(False, False, False)
            self.waiting = False


class LogLastStepCallback(TrainerCallback):
    """Log the loss of the step a run stops at (``max_steps``, the last epoch or a time budget), whatever
    ``logging_steps`` says."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop or state.global_step >= state.max_steps:
            control.should_log = True
        return control


# ---------------------------------------------------------------------------------------------- checkpoints


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Open every file of the checkpoint ``folder`` that a resume may read, with the loader the Trainer uses
    (JSON, safetensors, ``torch.load(weights_only=True)`` memory-mapped, which never runs pickled code): a
    missing state or a file that is not what it should be raises a one-line :class:`UserInputError` naming
    the folder, before the Trainer reads anything. ``training_args.bin`` is never read."""
    import torch
    from safetensors import safe_open
    from transformers.trainer_pt_utils import safe_globals

    folder = Path(folder)
    hint = f"delete {folder} or start over with --resume_from_checkpoint none"
    if not (folder / "trainer_state.json").is_file():
        raise UserInputError(f"{folder} has no trainer_state.json (an unfinished checkpoint?); {hint}")
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    list(handle.keys())
            elif path.suffix in (".pt", ".pth", ".bin") and path.name != "training_args.bin":
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001 - every failure is the same verdict: not a usable file
            reason = " ".join(str(error).split())[:200]
            raise UserInputError(f"cannot resume from {folder}: {path.name} is not a valid checkpoint file "
                                 f"({type(error).__name__}: {reason}); {hint}") from None


def resolve_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: ``auto`` = the last ``checkpoint-N`` in ``output_dir`` (or none);
    ``none`` / ``false`` / empty = start over; else that folder."""
    choice = training_args.resume_from_checkpoint
    if choice is None or str(choice).strip().lower() in ("", "none", "false", "no"):
        return None
    if str(choice).lower() == "auto":
        output_dir = training_args.output_dir
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(choice):
        raise UserInputError(f"resume_from_checkpoint {choice} is not a folder")
    return str(choice)


# ---------------------------------------------------------------------------------------------- recipe


def train_structure(recipe_args: StructureRecipeArguments, training_args: StructureTrainingArguments,
                    dataset=None, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train an EvalMuse structure model; returns the metrics (also written to ``output_dir/metrics.json``).

    Args:
        recipe_args / training_args: the recipe's and the Trainer's arguments.
        dataset: a ``DatasetDict`` with the ``structure`` columns (default: loaded from ``dataset_dir``).
        callbacks: extra ``TrainerCallback``s.

    Returns:
        ``{"initial", "initial_test", "evaluations", "final", "test", "threshold", "threshold_table", "train",
        "model_dir", "arguments"}``: ``initial`` / ``initial_test`` score the untrained model on the evaluated
        and the test split (with ``eval_on_start``), ``evaluations`` every evaluation during training
        (``{"step", "epoch", ...}``), ``final`` the trained model on the evaluated split at the searched
        threshold and ``test`` on a labelled test split at that threshold (chosen without it). Every metrics
        dict has the official keys ``precision``, ``recall``, ``f1``, ``giou``, ``plcc``, ``srcc``,
        ``final_score``. ``train``: ``steps``, ``train_loss``, ``loss_first`` / ``loss_last`` (first and last
        logged), ``seconds``, ``samples_per_second``, ``learning_rate``, ``backbone_learning_rate``,
        ``unfrozen_at_step``, ``stopped_by_time_budget``. Processes other than the main one return ``{}``.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if recipe_args.num_threads:
        torch.set_num_threads(recipe_args.num_threads)
    try:
        return _train_structure(recipe_args, training_args, dataset, callbacks or [])
    finally:
        torch.set_num_threads(previous_threads)


def _train_structure(recipe: StructureRecipeArguments, training_args: StructureTrainingArguments, dataset,
                     extra_callbacks: list[TrainerCallback]) -> dict[str, Any]:
    from transformers import set_seed

    output_dir = Path(training_args.output_dir)
    checkpoint = resolve_checkpoint(training_args)
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    set_seed(training_args.seed)  # the model's random initial weights
    train_split, eval_split, test_split = load_structure_splits(recipe, training_args.seed, dataset)
    model, processor = build_model_and_processor(recipe)
    config = model.config

    args = copy.copy(training_args)  # the caller's arguments stay as they were
    if args.learning_rate is None:
        args.learning_rate = PRESET_LEARNING_RATES.get(config.preset or recipe.preset, 1e-4)
    if eval_split is None:
        args.eval_strategy, args.eval_on_start = IntervalStrategy.NO, False
    if checkpoint is not None:
        args.eval_on_start = False  # "initial" comes with the checkpoint's history

    frozen = (config.freeze_vit, config.freeze_cnn, config.freeze_text)
    fraction = config.freeze_schedule_fraction if recipe.freeze_schedule_fraction is None else \
        recipe.freeze_schedule_fraction
    train_dataset = StructureTrainDataset(train_split, training_args.seed, recipe.hflip)
    callbacks: list[TrainerCallback] = [EpochCallback(train_dataset)]
    schedule = None
    if fraction < 1.0 and any(frozen):
        schedule = FreezeScheduleCallback(frozen, fraction)
        callbacks.append(schedule)
        model.freeze_backbones(False, False, False)  # trainable while the Trainer wraps the model (see the callback)
    budget = TimeBudgetCallback(recipe.time_budget_s) if recipe.time_budget_s is not None else None
    if budget is not None:
        callbacks.append(budget)
    callbacks += [LogLastStepCallback(), *extra_callbacks]

    trainer = StructureTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_split,
        # no processing_class: the Trainer would align the model's special tokens with a tokenizer that the
        # image-only presets do not have; the processor is saved with the final model
        data_collator=StructureCollator(processor, config.heatmap_size, config.uses_text),
        callbacks=callbacks,
        backbone_learning_rate=recipe.backbone_learning_rate,
        min_votes=recipe.min_votes,
    )
    initial_test = None
    if checkpoint is None and args.eval_on_start and test_split is not None:
        initial_test = trainer.score_split(trainer.structure_predictions(test_split), test_split)
    if checkpoint is not None and trainer.is_world_process_zero():
        print(f"resumed from {checkpoint}")
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()

    # the threshold search and the final scores (every process predicts its share; the main one scores)
    eval_predictions = trainer.structure_predictions(eval_split) if eval_split is not None else None
    test_predictions = trainer.structure_predictions(test_split) if test_split is not None else None
    if schedule is not None:
        model.freeze_backbones(*frozen)  # as built: the saved model describes its configuration
    if not trainer.is_world_process_zero():
        return {}

    result = _run_metrics(trainer.state.log_history)
    result["initial_test"] = initial_test
    threshold = float(config.threshold)
    if eval_predictions is not None:
        if recipe.threshold_search:
            threshold, result["threshold_table"] = search_threshold(
                eval_predictions, eval_split, thresholds=recipe.thresholds or DEFAULT_THRESHOLDS,
                min_area=config.min_region_area, truth=trainer.truth_of(eval_split),
            )
            result["final"] = next(row for row in result["threshold_table"] if row["threshold"] == threshold)
        else:
            result["final"] = {"threshold": threshold, **trainer.score_split(eval_predictions, eval_split)}
    config.threshold = threshold
    result["threshold"] = threshold
    if test_predictions is not None:
        result["test"] = {"threshold": threshold, **trainer.score_split(test_predictions, test_split, threshold)}
    result["train"] = {
        "steps": trainer.state.global_step,
        "train_loss": train_output.training_loss,
        "loss_first": next((e["loss"] for e in trainer.state.log_history if "loss" in e), None),
        "loss_last": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "seconds": train_output.metrics.get("train_runtime"),
        "samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "learning_rate": args.learning_rate,
        "backbone_learning_rate": recipe.backbone_learning_rate or args.learning_rate / 10,
        "unfrozen_at_step": schedule.unfreeze_step if schedule is not None else None,
        "stopped_by_time_budget": bool(budget is not None and budget.stopped),
        "resumed_from": checkpoint,
    }
    result["arguments"] = {"recipe": asdict(recipe), "training": training_args.to_dict()}

    model_dir = output_dir / "model"
    with atomic_directory(model_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_model_card(tmp, model, result)
    result["model_dir"] = str(model_dir)
    result = _jsonable(result)
    atomic_write_text(output_dir / "metrics.json", json.dumps(result, indent=2))
    if not recipe.keep_checkpoints:
        for folder in output_dir.glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _run_metrics(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """``initial`` and ``evaluations`` from the Trainer's log history (placeholders for the rest)."""
    evaluations = [{"step": e["step"], "epoch": e.get("epoch"), **_official(e, "eval")}
                   for e in log_history if "eval_final" in e]
    initial = next(({k: v for k, v in e.items() if k not in ("step", "epoch")} for e in evaluations
                    if e["step"] == 0), None)
    return {"initial": initial, "initial_test": None, "evaluations": [e for e in evaluations if e["step"] > 0],
            "final": None, "test": None, "threshold": None, "threshold_table": []}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_model_card(folder, model, result: dict[str, Any] | None = None) -> Path:
    """Render ``model_cards/evalmuse-structure.md`` for a structure model into ``folder/README.md`` (metrics
    of a training run from ``result`` when given)."""
    from huggingface_hub import ModelCardData

    from ..cards import render_model_card

    cfg = model.config
    fields: dict[str, Any] = {
        "preset": cfg.preset,
        "vit": f"{cfg.vit_config.model_type} ({cfg.vit_pretrained_id or 'random init'})",
        "cnn": f"timm {cfg.cnn_name}" if cfg.cnn_name else None,
        "uses_text": cfg.uses_text,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "threshold": round(float(cfg.threshold), 6),
    }
    if result and result.get("final"):
        final = result["final"]
        fields["metrics"] = {
            f"{key} (validation)": round(float(final[key]), 4)
            for key in ("precision", "recall", "f1", "plcc", "srcc", "final_score")
            if final.get(key) is not None
        }
        if result.get("test"):
            fields["metrics"]["final_score (test)"] = round(float(result["test"]["final_score"]), 4)
    card_data = ModelCardData(
        license="apache-2.0", library_name="transformers", pipeline_tag="image-segmentation",
        tags=["evalmuse", "image-quality-assessment", "text-to-image", "structure-distortion"],
    )
    card = render_model_card("evalmuse-structure", card_data, **fields)
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path


# ---------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> tuple[StructureRecipeArguments, StructureTrainingArguments]:
    """``--config file.yaml`` (fields of both dataclasses) then ``--field value`` overrides, by TRL's parser."""
    from trl import TrlParser

    parser = TrlParser((StructureRecipeArguments, StructureTrainingArguments))
    try:
        recipe, training = parser.parse_args_and_config(argv)
    except (OSError, ValueError) as error:  # a missing or unknown-key config, a bad value
        raise UserInputError(" ".join(str(error).split())) from error
    return recipe, training


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m evalmuse_models.training.structure`` and ``train_scripts/train_structure.py``;
    prints the initial and final scores, the threshold and the model folder as JSON."""
    result = train_structure(*parse_args(argv))
    if result:
        print(json.dumps({key: result.get(key) for key in ("initial", "final", "test", "threshold", "model_dir")},
                         indent=2))
    return 0


__all__ = [
    "EpochCallback",
    "FreezeScheduleCallback",
    "LogLastStepCallback",
    "StructureCollator",
    "StructureRecipeArguments",
    "StructureTrainDataset",
    "StructureTrainer",
    "StructureTrainingArguments",
    "build_model_and_processor",
    "check_checkpoint",
    "load_structure_splits",
    "main",
    "parse_args",
    "resolve_checkpoint",
    "train_structure",
    "write_model_card",
]


if __name__ == "__main__":
    import sys

    try:
        sys.exit(main())
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
