"""Training of the structure models (distortion heatmap and/or structure score) on transformers' ``Trainer``:
CPU, one GPU or several. One recipe for the three structure families:

* ``evalmuse_structure``: this package's CNN + ViT fuser (:mod:`evalmuse_models.models.evalmuse_structure`);
* ``em_rahf``: EM-RAHF, the official EvalMuse-Structure baseline, with its official schedule (MSE on both
  heads, AdamW with weight decay on every parameter, cosine to 0 without warm-up, encoders frozen for the
  first half);
* ``hnu_vpai_loda``: HNU-VPAI's LoDa score model (PLCC loss, frozen backbones, only the adapters train).

The model is a saved folder of any of them (``model_name_or_path``: its ``model_type`` names the family) or a
``preset`` of ``family``. What differs between families is data, one :class:`StructureFamily` per
``model_type`` (:data:`STRUCTURE_FAMILIES`): how to build config, model and processor, the batch's targets
(heatmap + score, or score only), the freeze interface, the family's optimizer and schedule defaults, the
evaluation and the model card. Everything else is the same code.

Arguments are the Trainer's own (:class:`StructureTrainingArguments`, with this recipe's defaults, some of
them the family's) plus :class:`StructureRecipeArguments` for what only this recipe knows. The loss is the
model's own; the backbones train at their own learning rate, optionally frozen for the first part of the
run (:class:`FreezeScheduleCallback`). Every evaluation of a heatmap family is the official structure score
of the validation split (:func:`evalmuse_models.evaluation.evaluate_structure`), logged as ``eval_final``,
``eval_f1``, ``eval_plcc``, ``eval_srcc``, and at the end the heatmap threshold that maximises it is searched
(:func:`evalmuse_models.evaluation.search_threshold`) and written into the saved config. A score-only family
is evaluated by ``eval_plcc`` and ``eval_srcc`` (F1 needs masks). Checkpoints are the Trainer's
(``output_dir/checkpoint-N``); a rerun resumes from the last one once its files have been opened the safe
way (:func:`check_checkpoint`). Output: ``output_dir/model/`` (``save_pretrained`` folder with the processor
and a model card), ``output_dir/metrics.json`` and ``output_dir/trainer_state.json``.
``docs/structure_model.md`` describes the recipe.

Example::

    from evalmuse_models.training.structure import (
        StructureRecipeArguments, StructureTrainingArguments, train_structure)

    metrics = train_structure(StructureRecipeArguments(dataset_dir="data/evalmuse", preset="tiny"),
                              StructureTrainingArguments(output_dir="runs/structure-tiny", max_steps=120))
    metrics["final"]["final_score"], metrics["threshold"]

    # HNU-VPAI's LoDa (score only) from a converted folder
    train_structure(StructureRecipeArguments(dataset_dir="data/evalmuse", model_name_or_path="hnu-vpai-loda/"),
                    StructureTrainingArguments(output_dir="runs/loda"))

Command line (``python -m evalmuse_models.training.structure``, ``evalmuse train structure`` or
``train_scripts/train_structure.py``, under ``accelerate launch`` for several processes): ``--config
file.yaml`` with fields of both dataclasses, then ``--field value`` overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from ..evaluation.structure import DEFAULT_THRESHOLDS, evaluate_structure, search_threshold, truth_masks
from ..utils import UserInputError, atomic_directory, atomic_write_text
from .arguments import parse_recipe_arguments
from .callbacks import EpochCallback, TimeBudgetCallback, check_checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

#: The head learning rate of each preset of the fuser (``evalmuse_structure``) when ``learning_rate`` is not given.
PRESET_LEARNING_RATES = {"tiny": 3e-3, "dinov2-resnet-fuser": 1e-4, "altclip-fuser": 2e-5}
#: Columns the recipe reads from the ``structure`` config.
STRUCTURE_COLUMNS = ("image", "image_name", "mos", "heatmap")
#: Official metric -> the name the Trainer logs it under (after the ``eval_`` prefix).
LOGGED_METRICS = {"final_score": "final", "f1": "f1", "plcc": "plcc", "srcc": "srcc", "precision": "precision",
                  "recall": "recall", "giou": "giou"}
#: ``EvalMuseStructureConfig`` fields the recipe arguments of the same name override (None: the preset's).
_CONFIG_FIELDS = ("heatmap_size", "heatmap_loss_weight", "dice_loss_weight", "score_loss_weight",
                  "plcc_loss_weight", "rank_loss_weight")
#: Trainer arguments whose default is the model family's (:attr:`StructureFamily.training_defaults`) when unset.
FAMILY_TRAINING_FIELDS = ("weight_decay", "warmup_steps", "lr_scheduler_type", "lr_scheduler_kwargs")
#: The family trained when neither ``model_name_or_path`` nor ``family`` says otherwise.
DEFAULT_FAMILY = "evalmuse_structure"


# ---------------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class StructureFamily:
    """What the recipe needs to know about one structure model family. :data:`STRUCTURE_FAMILIES` holds one per
    ``model_type``; the rest of the recipe reads these fields and never asks which family it trains.

    Attributes:
        model_type: the config's ``model_type`` (what a saved folder's ``config.json`` names).
        module, classes: the family's package and the names of its config, model and processor classes there
            (``Config.from_preset``, ``Model.from_pretrained``, ``Processor.from_model_config``).
        learning_rates: ``learning_rate`` of each preset when none is given (``"*"``: any other preset).
        training_defaults: the Trainer arguments of the family's own recipe, for those of
            :data:`FAMILY_TRAINING_FIELDS` left unset.
        decay_all_parameters: weight decay on every parameter, as ``AdamW(model.parameters())`` does in the
            official EM-RAHF and HNU-VPAI code; False: the Trainer's rule (none on biases and norms).
        backbone_lr_ratio: ``backbone_learning_rate`` is ``learning_rate`` times this when not given.
        backbones: the model's backbone modules (trained at ``backbone_learning_rate``).
        freeze_flags: the config fields that say which backbones are frozen, in the order of the arguments of
            the model's ``freeze_backbones`` (the freeze schedule calls it with their values, then all False).
        load_pretrained: the model's method that loads pretrained backbones (``pretrained_backbones``).
        heatmap: the model predicts a distortion heatmap: the dataset's heatmap is a target
            (``heatmap_labels``), evaluation is the official Final score and the threshold is searched at the
            end. False: a score only, evaluated by PLCC and SRCC.
        score_output: the output field holding the structure score.
        score_label: the forward's argument for the MOS target.
        uses_text: ``config -> bool``, whether the prompt is an input.
        config_fields: the :class:`StructureRecipeArguments` fields that override config fields of the same name.
        card, card_fields, pipeline_tag: the model-card template (``model_cards/<card>.md``), the
            family's fields for it (``config -> dict``) and the card's Hub pipeline tag.
    """

    model_type: str
    module: str
    classes: tuple[str, str, str]
    learning_rates: Mapping[str, float]
    training_defaults: Mapping[str, Any]
    decay_all_parameters: bool
    backbone_lr_ratio: float
    backbones: tuple[str, ...]
    freeze_flags: tuple[str, ...]
    load_pretrained: str
    heatmap: bool
    score_output: str
    score_label: str
    uses_text: Callable[[Any], bool]
    config_fields: tuple[str, ...]
    card: str
    card_fields: Callable[[Any], dict[str, Any]]
    pipeline_tag: str | None = None

    def _class(self, index: int):
        return getattr(importlib.import_module(self.module), self.classes[index])

    @property
    def config_class(self):
        return self._class(0)

    @property
    def model_class(self):
        return self._class(1)

    @property
    def processor_class(self):
        return self._class(2)

    def learning_rate(self, preset: str | None) -> float:
        """The default ``learning_rate`` of ``preset``."""
        return self.learning_rates.get(preset or "", self.learning_rates["*"])

    def frozen(self, config) -> tuple[bool, ...]:
        """Which backbones ``config`` freezes, as the arguments of the model's ``freeze_backbones``."""
        return tuple(bool(getattr(config, name)) for name in self.freeze_flags)


def _fuser_card_fields(config) -> dict[str, Any]:
    return {
        "vit": f"{config.vit_config.model_type} ({config.vit_pretrained_id or 'random init'})",
        "cnn": f"timm {config.cnn_name}" if config.cnn_name else None,
        "uses_text": config.uses_text,
    }


def _trained_here(config) -> dict[str, Any]:
    return {"source": "trained with the structure recipe of `evalmuse-models` "
                      "(`evalmuse_models.training.structure`)"}


#: Optimizer and schedule of the official EM-RAHF and HNU-VPAI code: AdamW with PyTorch's weight decay
#: 0.01, cosine annealing to 0, no warm-up.
_OFFICIAL_SCHEDULE = {"weight_decay": 0.01, "warmup_steps": 0, "lr_scheduler_type": "cosine",
                      "lr_scheduler_kwargs": {}}

STRUCTURE_FAMILIES: dict[str, StructureFamily] = {
    family.model_type: family
    for family in (
        StructureFamily(
            model_type="evalmuse_structure",
            module="evalmuse_models.models.evalmuse_structure",
            classes=("EvalMuseStructureConfig", "EvalMuseStructureModel", "EvalMuseStructureProcessor"),
            learning_rates={**PRESET_LEARNING_RATES, "*": 1e-4},
            training_defaults={"weight_decay": 0.01, "warmup_steps": 0.05, "lr_scheduler_type": "cosine_with_min_lr",
                               "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
            decay_all_parameters=False,
            backbone_lr_ratio=0.1,
            backbones=("vit", "cnn", "text_embeddings"),
            freeze_flags=("freeze_vit", "freeze_cnn", "freeze_text"),
            load_pretrained="load_pretrained_backbones",
            heatmap=True,
            score_output="structure_score",
            score_label="score_labels",
            uses_text=lambda config: config.uses_text,
            config_fields=_CONFIG_FIELDS,
            card="evalmuse-structure",
            card_fields=_fuser_card_fields,
            pipeline_tag="image-segmentation",
        ),
        StructureFamily(
            model_type="em_rahf",
            module="evalmuse_models.models.em_rahf",
            classes=("EmRahfConfig", "EmRahfModel", "EmRahfProcessor"),
            learning_rates={"em-rahf": 2e-5, "tiny": 1e-3, "*": 2e-5},
            training_defaults=_OFFICIAL_SCHEDULE,
            decay_all_parameters=True,
            backbone_lr_ratio=1.0,  # one learning rate for every parameter, as the official run
            backbones=("vision_model", "text_embeddings"),
            freeze_flags=("freeze_vit", "freeze_text"),
            load_pretrained="load_pretrained_encoders",
            heatmap=True,
            score_output="structure_score",
            score_label="score_labels",
            uses_text=lambda config: True,
            config_fields=(),
            card="em-rahf",
            card_fields=_trained_here,
            pipeline_tag="image-segmentation",
        ),
        StructureFamily(
            model_type="hnu_vpai_loda",
            module="evalmuse_models.models.hnu_vpai_loda",
            classes=("LodaConfig", "LodaModel", "LodaProcessor"),
            learning_rates={"hnu-vpai": 3e-4, "tiny": 1e-3, "*": 3e-4},
            training_defaults=_OFFICIAL_SCHEDULE,
            decay_all_parameters=True,
            backbone_lr_ratio=1.0,
            backbones=("vit", "feature_model"),
            freeze_flags=("freeze_backbones",),
            load_pretrained="load_pretrained_backbones",
            heatmap=False,
            score_output="score",
            score_label="labels",
            uses_text=lambda config: False,
            config_fields=(),
            card="hnu-vpai-loda",
            card_fields=_trained_here,
        ),
    )
}

#: What ``metrics.json`` of a score-only family says about F1 and the Final score.
SCORE_ONLY_NOTE = (
    "{model_type} predicts a structure score only: PLCC and SRCC are measured; F1 and the Final score need "
    "distortion masks, e.g. an instance-segmentation model's: `evalmuse score --structure MODEL --masks-from "
    "DETECTIONS.json`, then `evalmuse submit` and `evalmuse eval structure`"
)


def structure_family(model_type: str | None) -> StructureFamily:
    """The :class:`StructureFamily` of ``model_type`` (``evalmuse_structure``, ``em_rahf``, ``hnu_vpai_loda``)."""
    try:
        return STRUCTURE_FAMILIES[model_type]
    except KeyError:
        raise UserInputError(f"{model_type!r} is not a structure model family this recipe trains; choose one of "
                             f"{sorted(STRUCTURE_FAMILIES)}") from None


# ---------------------------------------------------------------------------------------------- arguments


@dataclass
class StructureRecipeArguments:
    """What the structure recipe needs besides the Trainer's arguments (:class:`StructureTrainingArguments`)."""

    dataset_dir: str = field(metadata={"help": "prepared dataset folder or Hub id (config 'structure')"})
    dataset_config: str = field(
        default="structure",
        metadata={"help": "config of dataset_dir: structure, or structure_refined (written by evalmuse refine-masks)"},
    )
    family: str | None = field(
        default=None,
        metadata={"help": "model family when no model is given: evalmuse_structure (default), em_rahf, "
                  "hnu_vpai_loda; a saved model's own model_type otherwise"},
    )
    preset: str = field(default="tiny", metadata={"help": "architecture when no model is given: the family's preset "
                                                          "(evalmuse_structure: tiny, dinov2-resnet-fuser, altclip-fuser; em_rahf: "
                                                          "tiny, em-rahf; hnu_vpai_loda: tiny, hnu-vpai)"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this saved structure model (any family) instead of a preset"}
    )
    pretrained_backbones: bool = field(
        default=False, metadata={"help": "load the preset's pretrained backbones (Hub ids / timm weights; a saved "
                                         "model keeps its own weights)"}
    )
    backbone_learning_rate: float | None = field(
        default=None,
        metadata={"help": "learning rate of the backbones once they train (default: learning_rate / 10 for "
                  "evalmuse_structure, learning_rate for em_rahf and hnu_vpai_loda)"},
    )
    freeze_schedule_fraction: float | None = field(
        default=None,
        metadata={"help": "train the frozen backbones after this fraction of the steps (1: never; 0.5: EM-RAHF's "
                  "schedule; default: the model config's, never for configs without one)"},
    )
    heatmap_size: int | None = field(default=None, metadata={"help": "side of the predicted heatmap (default 512)"})
    heatmap_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    dice_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    score_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    plcc_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    rank_loss_weight: float | None = field(default=None, metadata={"help": "default: the preset's"})
    config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "other fields of the family's config, as a mapping (a JSON object on the command line), "
                  'e.g. \'{"freeze_cnn": false}\''},
    )
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips of image and heatmap"})
    vflip: bool = field(default=False, metadata={"help": "random vertical flips of image and heatmap"})
    random_crop: bool = field(
        default=False,
        metadata={"help": "train on a random square crop of each image (side: its shorter side; the heatmap "
                  "cropped alike), as HNU-VPAI's RandomCrop after resizing the shorter side"},
    )
    min_votes: int = field(default=1, metadata={"help": "annotators needed for a truth pixel (1: union)"})
    eval_split: str | None = field(
        default="validation",
        metadata={"help": "split scored by every evaluation and by the threshold search (none: train without "
                  "evaluation)"},
    )
    evaluate_test: bool = field(
        default=True, metadata={"help": "also score a labelled 'test' split (before training and at the end)"}
    )
    threshold_search: bool = field(
        default=True, metadata={"help": "search the heatmap threshold at the end (heatmap families)"}
    )
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
        if self.family is not None:
            structure_family(self.family)  # a clear error now, before any data is read
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
        """The config overrides these arguments ask for: ``config_overrides`` and the recipe fields of the same
        name as a config field (:data:`_CONFIG_FIELDS`, the fuser's)."""
        overrides = dict(self.config_overrides or {})
        overrides.update({name: getattr(self, name) for name in _CONFIG_FIELDS if getattr(self, name) is not None})
        return overrides


@dataclass
class StructureTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with this recipe's defaults (every other field is the Trainer's). The fields of
    :data:`FAMILY_TRAINING_FIELDS` left unset take the model family's defaults
    (:attr:`StructureFamily.training_defaults`); until the family is known they hold the fuser's, and
    :attr:`family_default_fields` names them."""

    output_dir: str | None = field(
        default=None, metadata={"help": "run folder: checkpoint-N/, model/, metrics.json (required)"}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "head learning rate (default: the family's for the preset: evalmuse_structure tiny 3e-3, "
                  "dinov2-resnet-fuser 1e-4, altclip-fuser 2e-5; em_rahf 2e-5; hnu_vpai_loda 3e-4; tiny 1e-3 for the last two)"},
    )
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    weight_decay: float | None = field(
        default=None, metadata={"help": "AdamW weight decay (default: the family's, 0.01; on every parameter for "
                                        "em_rahf and hnu_vpai_loda, not on biases and norms for evalmuse_structure)"}
    )
    warmup_steps: float | None = field(
        default=None, metadata={"help": "linear warm-up steps (< 1: a fraction of the run; default: the family's, "
                                        "0.05 for evalmuse_structure, 0 for em_rahf and hnu_vpai_loda)"}
    )
    lr_scheduler_type: SchedulerType | str | None = field(
        default=None, metadata={"help": "default: the family's, cosine_with_min_lr for evalmuse_structure, cosine "
                                        "(to 0) for em_rahf and hnu_vpai_loda"}
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None, metadata={"help": "default: the family's ({\"min_lr_rate\": 0.1} with evalmuse_structure's "
                                        "scheduler)"}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping (0: none)"})
    eval_strategy: IntervalStrategy | str = "epoch"
    eval_on_start: bool = True
    save_strategy: SaveStrategy | str = "epoch"
    save_total_limit: int | None = 1
    logging_steps: float = 10
    logging_first_step: bool = True
    seed: int = 0
    remove_unused_columns: bool = False
    label_names: list[str] | None = field(
        default_factory=lambda: ["score_labels"], metadata={"help": "set by the recipe: the family's score target"}
    )
    ddp_find_unused_parameters: bool | None = True
    resume_from_checkpoint: str | None = field(
        default="auto", metadata={"help": "auto: the last checkpoint-N in output_dir; none: start over; or a folder"}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise UserInputError("output_dir is required (the run folder)")
        #: The fields of :data:`FAMILY_TRAINING_FIELDS` that were not given.
        self.family_default_fields = tuple(name for name in FAMILY_TRAINING_FIELDS if getattr(self, name) is None)
        # the fuser's values until the family is known (the Trainer checks them now)
        for name, value in self._unset_values(STRUCTURE_FAMILIES[DEFAULT_FAMILY]).items():
            setattr(self, name, value)
        super().__post_init__()

    def for_family(self, family: StructureFamily, preset: str | None) -> StructureTrainingArguments:
        """A copy with the family's defaults in the fields left unset, the family's learning rate of ``preset``
        when none was given and the family's score target as ``label_names``."""
        args = copy.copy(self)  # the caller's arguments stay as they were
        for name, value in self._unset_values(family).items():
            setattr(args, name, SchedulerType(value) if name == "lr_scheduler_type" else value)
        if args.learning_rate is None:
            args.learning_rate = family.learning_rate(preset)
        args.label_names = [family.score_label]
        return args

    def _unset_values(self, family: StructureFamily) -> dict[str, Any]:
        """The family's values of the fields left unset (its scheduler arguments only with its scheduler)."""
        values = {name: copy.deepcopy(family.training_defaults[name]) for name in self.family_default_fields}
        if "lr_scheduler_kwargs" in values and "lr_scheduler_type" not in self.family_default_fields:
            values["lr_scheduler_kwargs"] = {}
        return values


# ---------------------------------------------------------------------------------------------- data


def load_structure_splits(recipe: StructureRecipeArguments, seed: int, dataset=None):
    """``(train, eval, test)`` splits of the ``dataset_config`` config (``structure`` or ``structure_refined``;
    ``eval`` / ``test`` None when absent or unlabelled), subsampled as the recipe asks."""
    if dataset is None:
        from datasets import load_dataset

        try:
            dataset = load_dataset(recipe.dataset_dir, recipe.dataset_config)
        except (FileNotFoundError, ValueError) as error:
            raise UserInputError(
                f"cannot load the {recipe.dataset_config!r} config of {recipe.dataset_dir!r}: {error}. Build the "
                "folder with `evalmuse prepare-data` (or `evalmuse refine-masks` for structure_refined), or pass a "
                "Hub dataset id"
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



def _augment(image, heatmap: np.ndarray | None, row: dict[str, Any]):
    """``image`` (PIL) and its ``heatmap`` (uint8 array covering the whole image, or None) with the row's
    augmentation draws (:class:`StructureTrainDataset`): ``_crop``, the offset of a square crop along the longer
    side in [0, 1) (the heatmap cropped to the same part of the image and stretched back to its size), then
    ``_hflip`` and ``_vflip``."""
    from PIL import Image

    offset = row.get("_crop")
    if offset is not None:
        width, height = image.size
        side = min(width, height)
        left = int(offset * (width - side + 1)) if width > side else 0
        top = int(offset * (height - side + 1)) if height > side else 0
        image = image.crop((left, top, left + side, top + side))
        if heatmap is not None:
            n = heatmap.shape[0]
            box = (left * n / width, top * n / height, (left + side) * n / width, (top + side) * n / height)
            heatmap = np.asarray(Image.fromarray(heatmap).resize((n, n), Image.BILINEAR, box=box))
    if row.get("_hflip", False):
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        heatmap = None if heatmap is None else heatmap[:, ::-1]
    if row.get("_vflip", False):
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
        heatmap = None if heatmap is None else heatmap[::-1]
    return image, heatmap


class StructureTrainDataset:
    """The training split for the Trainer: each row with its augmentation draws (``_hflip``, ``_vflip`` and
    ``_crop`` when asked), made from its own seed (``seed``, the ``epoch`` attribute that :class:`EpochCallback`
    sets, its index) rather than the global RNG, so that they depend neither on loading order nor on where a
    run was interrupted."""

    def __init__(self, split, seed: int, hflip: bool, vflip: bool = False, random_crop: bool = False):
        self.split = split
        self.seed = seed
        self.hflip = hflip
        self.vflip = vflip
        self.random_crop = random_crop
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.split[index])
        hflip, vflip, crop = np.random.default_rng([self.seed, self.epoch, index]).random(3)
        row["_hflip"] = self.hflip and bool(hflip < 0.5)
        row["_vflip"] = self.vflip and bool(vflip < 0.5)
        if self.random_crop:
            row["_crop"] = float(crop)
        return row


class StructureCollator:
    """Rows of the ``structure`` config -> model inputs (``pixel_values``, prompt tokens when the model reads the
    prompt) and targets: ``heatmap_labels`` in [0, 1] (with ``heatmap_size``; None for a score-only model) and
    the MOS under ``score_label`` (NaN when unlabelled; a score-only model needs every score). Images and
    heatmaps are augmented as the row's draws say (:class:`StructureTrainDataset`; evaluation rows have none).
    """

    def __init__(self, processor, heatmap_size: int | None, uses_text: bool, score_label: str = "score_labels"):
        self.processor = processor
        self.heatmap_size = heatmap_size
        self.uses_text = uses_text
        self.score_label = score_label

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        images, heatmaps, scores, prompts = [], [], [], []
        for row in rows:
            if row.get("mos") is None and self.heatmap_size is None:
                raise UserInputError(f"image {row.get('image_name', '?')!r} has no 'mos': a score-only model trains "
                                     "and is evaluated on labelled images only")
            heatmap = _heatmap_array(row, self.heatmap_size) if self.heatmap_size else None
            image, heatmap = _augment(row["image"].convert("RGB"), heatmap, row)
            images.append(image)
            if heatmap is not None:
                heatmaps.append(np.ascontiguousarray(heatmap))
            scores.append(float("nan") if row.get("mos") is None else float(row["mos"]))
            prompts.append(row.get("prompt") or "")
        inputs = {"images": images}
        if self.uses_text:
            inputs["text"] = prompts
        batch = dict(self.processor(**inputs, return_tensors="pt"))
        if self.heatmap_size:
            batch["heatmap_labels"] = torch.from_numpy(np.stack(heatmaps)).float() / 255.0
        batch[self.score_label] = torch.tensor(scores, dtype=torch.float32)
        return batch


# ---------------------------------------------------------------------------------------------- model


def _saved_model_type(path: str) -> str | None:
    """The ``model_type`` in the config of a saved model (a folder or a Hub id)."""
    from transformers import PretrainedConfig

    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path)
    except (OSError, ValueError) as error:
        raise UserInputError(f"model_name_or_path {path!r}: cannot read its config.json ({error}); give a folder "
                             "written by save_pretrained or `evalmuse convert`") from None
    return config_dict.get("model_type")


def _config_overrides(recipe: StructureRecipeArguments, family: StructureFamily) -> dict[str, Any]:
    """The recipe's config overrides, checked against the family's config fields."""
    given = {name for name in _CONFIG_FIELDS if getattr(recipe, name) is not None}
    misplaced = sorted(given - set(family.config_fields))
    if misplaced:
        raise UserInputError(f"{', '.join(misplaced)}: not an option of the {family.model_type} family (only "
                             f"{DEFAULT_FAMILY} has them); set its config fields with config_overrides")
    overrides = recipe.model_overrides()
    known = {f.name for f in dataclasses.fields(family.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserInputError(f"config_overrides: {family.config_class.__name__} has no field {unknown} (its fields: "
                             f"{sorted(known)})")
    return overrides


def _processor_from_config(family: StructureFamily, config):
    try:
        return family.processor_class.from_model_config(config)
    except (OSError, ValueError) as error:
        raise UserInputError(
            f"cannot build the {family.model_type} processor from the model config ({' '.join(str(error).split())}); "
            "save the processor with the model, or point the config at a local tokenizer (config_overrides "
            '\'{"tokenizer_name_or_path": "DIR"}\' for em_rahf)'
        ) from None


def build_model_and_processor(recipe: StructureRecipeArguments):
    """The model and its processor: a saved folder of any structure family (``model_name_or_path``; its
    ``model_type`` names the family), or ``preset`` of ``family`` (default ``evalmuse_structure``) with random
    or pretrained backbones. The family is ``structure_family(model.config.model_type)``."""
    if recipe.model_name_or_path:
        model_type = _saved_model_type(recipe.model_name_or_path)
        family = structure_family(model_type)
        if recipe.family is not None and recipe.family != model_type:
            raise UserInputError(f"{recipe.model_name_or_path} is a {model_type} model, not the family {recipe.family} "
                                 "asked for; leave family unset to train the folder's own")
        # (each family's from_pretrained freezes the backbones as the loaded config says)
        model = family.model_class.from_pretrained(recipe.model_name_or_path, **_config_overrides(recipe, family))
        try:
            processor = family.processor_class.from_pretrained(recipe.model_name_or_path)
        except (OSError, ValueError):
            processor = _processor_from_config(family, model.config)
        return model, processor
    family = structure_family(recipe.family or DEFAULT_FAMILY)
    overrides = _config_overrides(recipe, family)
    try:
        config = family.config_class.from_preset(recipe.preset, **overrides)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"preset {recipe.preset!r} with overrides {overrides}: {error}") from None
    model = family.model_class(config)
    if recipe.pretrained_backbones:
        getattr(model, family.load_pretrained)()
    return model, _processor_from_config(family, config)


# ---------------------------------------------------------------------------------------------- trainer


def _logged(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """An evaluation's metrics as Trainer metrics (``eval_final``, ``eval_f1``, ...); undefined values (the
    foreground IoU of a set without predicted regions, correlations of constant scores) are left out."""
    return {f"{prefix}_{LOGGED_METRICS[key]}": float(value) for key, value in metrics.items()
            if key in LOGGED_METRICS and value is not None and math.isfinite(value)}


def _predictions(output) -> list[dict[str, Any]]:
    """The ``(scores,)`` or ``(scores, heatmaps)`` gathered by :meth:`StructureTrainer.prediction_step` as one
    prediction per image (:func:`evaluate_structure`'s input)."""
    gathered = output.predictions if isinstance(output.predictions, (tuple, list)) else (output.predictions,)
    scores, *heatmaps = gathered
    if not heatmaps:
        return [{"score": float(score)} for score in scores]
    return [{"score": float(score), "heatmap": heatmap} for score, heatmap in zip(scores, heatmaps[0], strict=True)]


def _official(entry: dict[str, Any], prefix: str) -> dict[str, float]:
    """The official metrics of a logged evaluation (the inverse of :func:`_logged`)."""
    return {key: entry[f"{prefix}_{name}"] for key, name in LOGGED_METRICS.items() if f"{prefix}_{name}" in entry}


def score_correlations(predictions: list[dict[str, Any]], split) -> dict[str, Any]:
    """PLCC (after the official 4-parameter logistic fit) and SRCC of score-only predictions against the MOS of
    a labelled ``split``, in its order (:func:`evalmuse_models.analysis.benchmark.correlations`; None where
    undefined, e.g. constant scores)."""
    from ..analysis.benchmark import correlations

    references = list(split["mos"])
    if len(references) != len(predictions):
        raise UserInputError(f"{len(predictions)} predictions for a split of {len(references)} images")
    result = correlations([p["score"] for p in predictions], references)
    return {key: result[key] for key in ("plcc", "srcc")}


class StructureTrainer(Trainer):
    """``Trainer`` with the structure recipe's parameter groups (backbones at their own learning rate, weight
    decay as the family's recipe applies it) and the family's evaluation: the official structure score
    (``eval_final``, ``eval_f1``, ``eval_plcc``, ``eval_srcc``, ...) for heatmap families, ``eval_plcc`` and
    ``eval_srcc`` for score-only ones.

    Args:
        family: the model's :class:`StructureFamily` (default: the fuser's).
        backbone_learning_rate: learning rate of the backbone parameters (the others take ``learning_rate``;
            default: ``learning_rate`` times the family's ``backbone_lr_ratio``).
        min_votes: annotators needed for a truth pixel of the evaluated splits.
    """

    def __init__(self, *args, family: StructureFamily | None = None, backbone_learning_rate: float | None = None,
                 min_votes: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.family = family or STRUCTURE_FAMILIES[DEFAULT_FAMILY]
        self.backbone_learning_rate = backbone_learning_rate
        self.min_votes = min_votes
        self._truth: dict[str, list[np.ndarray]] = {}
        # The model's loss is a per-batch mean: the Trainer averages it over accumulation steps itself and must
        # not rescale it by item counts (its forward takes **kwargs, which the Trainer would read so).
        self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (``optim``) over parameter groups: the backbones at ``backbone_learning_rate``,
        the rest at ``learning_rate``; weight decay on every parameter for families whose official recipe
        decays them all (``decay_all_parameters``), else the Trainer's rule (none on biases and norms)."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        unwrapped = self.accelerator.unwrap_model(opt_model)
        if self.family.decay_all_parameters:
            decay = {name for name, _ in opt_model.named_parameters()}
        else:
            decay = set(self.get_decay_parameter_names(opt_model))
        backbones = [getattr(unwrapped, name, None) for name in self.family.backbones]
        backbone = {id(p) for module in backbones if module is not None for p in module.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((id(param) in backbone, name in decay), []).append(param)
        backbone_lr = self.backbone_learning_rate or self.args.learning_rate * self.family.backbone_lr_ratio
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
        """Loss, ``(scores,)`` or ``(scores, heatmaps as 8-bit levels)`` and the true scores of one evaluation
        batch."""
        import torch

        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = None if outputs.loss is None else outputs.loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        predicted = (getattr(outputs, self.family.score_output).float(),)
        if self.family.heatmap:
            predicted += (torch.round(outputs.heatmap.float() * 255).to(torch.uint8),)
        return loss, predicted, inputs.get(self.family.score_label)

    def structure_predictions(self, split) -> list[dict[str, Any]]:
        """The model's score (and 8-bit heatmap) for every image of ``split``, in order (every process runs
        its share; every process gets them all)."""
        return _predictions(self.predict(split, metric_key_prefix="predict"))

    def truth_of(self, split) -> list[np.ndarray]:
        """The split's truth masks, drawn once per run (every evaluation and the threshold search reuse them)."""
        key = getattr(split, "_fingerprint", None) or str(id(split))
        if key not in self._truth:
            self._truth[key] = truth_masks(split, min_votes=self.min_votes)
        return self._truth[key]

    def score_split(self, predictions, split, threshold: float | None = None) -> dict[str, Any]:
        """The family's evaluation of ``predictions`` on ``split``: :func:`evaluate_structure` at ``threshold``
        (default: the model's) for heatmap families, :func:`score_correlations` for score-only ones."""
        if not self.family.heatmap:
            return score_correlations(predictions, split)
        config = self.accelerator.unwrap_model(self.model).config
        return evaluate_structure(predictions, split, threshold=config.threshold if threshold is None else threshold,
                                  min_area=config.min_region_area, truth=self.truth_of(split))

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's loop (predictions gathered from every process, the loss), plus, for ``evaluate``, the
        family's scores of the evaluated split."""
        scoring = description == "Evaluation"
        output = super().evaluation_loop(dataloader, description, False if scoring else prediction_loss_only,
                                         ignore_keys, metric_key_prefix)
        if scoring:
            metrics = self.score_split(_predictions(output), dataloader.dataset)
            output.metrics.update(_logged(metrics, metric_key_prefix))
        return output


# ---------------------------------------------------------------------------------------------- callbacks


class FreezeScheduleCallback(TrainerCallback):
    """Keep the backbones that the model config freezes frozen for the first ``fraction`` of the optimizer
    steps, then train them.

    ``frozen``: the arguments of the model's ``freeze_backbones`` that freeze them as the config does
    (:meth:`StructureFamily.frozen`, e.g. ``(vit, cnn, text)`` for the fuser, ``(vit, text)`` for EM-RAHF,
    ``(backbones,)`` for LoDa); unfreezing calls it with as many ``False``.

    The backbones must be trainable when the Trainer wraps the model (DDP only synchronises the gradients of
    parameters that require them at that moment) and when it builds the optimizer: this callback freezes them
    at the start of training (``requires_grad`` off: they get no gradient and the optimizer skips them; the
    fuser also runs them under ``no_grad`` in eval mode, while EM-RAHF and LoDa keep them in training mode as
    their official code does) and unfreezes them at ``unfreeze_step``; DDP needs
    ``ddp_find_unused_parameters=True`` while they are frozen.
    """

    def __init__(self, frozen: tuple[bool, ...], fraction: float):
        self.frozen = tuple(frozen)
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
            model.freeze_backbones(*(False,) * len(self.frozen))
            self.waiting = False


class LogLastStepCallback(TrainerCallback):
    """Log the loss of the step a run stops at (``max_steps``, the last epoch or a time budget), whatever
    ``logging_steps`` says."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop or state.global_step >= state.max_steps:
            control.should_log = True
        return control


# ---------------------------------------------------------------------------------------------- recipe


def train_structure(recipe_args: StructureRecipeArguments, training_args: StructureTrainingArguments,
                    dataset=None, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train a structure model of any family; returns the metrics (also written to ``output_dir/metrics.json``).

    Args:
        recipe_args / training_args: the recipe's and the Trainer's arguments.
        dataset: a ``DatasetDict`` with the ``structure`` columns (default: loaded from ``dataset_dir``).
        callbacks: extra ``TrainerCallback``s.

    Returns:
        ``{"family", "initial", "initial_test", "evaluations", "final", "test", "threshold", "threshold_table",
        "train", "model_dir", "arguments"}``: ``family`` the model's ``model_type``, ``initial`` /
        ``initial_test`` score the untrained model on the evaluated and the test split (with ``eval_on_start``),
        ``evaluations`` every evaluation during training (``{"step", "epoch", ...}``), ``final`` the trained
        model on the evaluated split (at the searched threshold) and ``test`` on a labelled test split (at that
        threshold, chosen without it). For heatmap families every metrics dict has the official keys
        ``precision``, ``recall``, ``f1``, ``giou``, ``plcc``, ``srcc``, ``final_score``; for a score-only
        family ``plcc`` and ``srcc``, ``threshold`` is None and ``note`` says that F1 needs masks. ``train``:
        ``steps``, ``train_loss``, ``loss_first`` / ``loss_last`` (first and last logged), ``seconds``,
        ``samples_per_second``, ``learning_rate``, ``backbone_learning_rate``, ``unfrozen_at_step``,
        ``stopped_by_time_budget``. Processes other than the main one return ``{}``.
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
    family = structure_family(config.model_type)

    args = training_args.for_family(family, config.preset or recipe.preset)
    if eval_split is None:
        args.eval_strategy, args.eval_on_start = IntervalStrategy.NO, False
    if checkpoint is not None:
        args.eval_on_start = False  # "initial" comes with the checkpoint's history
    backbone_lr = recipe.backbone_learning_rate or args.learning_rate * family.backbone_lr_ratio

    frozen = family.frozen(config)
    fraction = getattr(config, "freeze_schedule_fraction", 1.0) if recipe.freeze_schedule_fraction is None else \
        recipe.freeze_schedule_fraction
    train_dataset = StructureTrainDataset(train_split, training_args.seed, recipe.hflip, recipe.vflip,
                                          recipe.random_crop)
    callbacks: list[TrainerCallback] = [EpochCallback(train_dataset)]
    schedule = None
    if fraction < 1.0 and any(frozen):
        schedule = FreezeScheduleCallback(frozen, fraction)
        callbacks.append(schedule)
        # trainable while the Trainer wraps the model (see the callback)
        model.freeze_backbones(*(False,) * len(frozen))
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
        # image-only models do not have; the processor is saved with the final model
        data_collator=StructureCollator(processor, config.heatmap_size if family.heatmap else None,
                                        family.uses_text(config), family.score_label),
        callbacks=callbacks,
        family=family,
        backbone_learning_rate=backbone_lr,
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

    result = {"family": family.model_type, **_run_metrics(trainer.state.log_history)}
    result["initial_test"] = initial_test
    threshold = float(config.threshold) if family.heatmap else None
    if eval_predictions is not None:
        if family.heatmap and recipe.threshold_search:
            threshold, result["threshold_table"] = search_threshold(
                eval_predictions, eval_split, thresholds=recipe.thresholds or DEFAULT_THRESHOLDS,
                min_area=config.min_region_area, truth=trainer.truth_of(eval_split),
            )
            result["final"] = next(row for row in result["threshold_table"] if row["threshold"] == threshold)
        else:
            result["final"] = {"threshold": threshold, **trainer.score_split(eval_predictions, eval_split)}
    if family.heatmap:
        config.threshold = threshold
    else:
        result["note"] = SCORE_ONLY_NOTE.format(model_type=family.model_type)
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
        "backbone_learning_rate": backbone_lr,
        "unfrozen_at_step": schedule.unfreeze_step if schedule is not None else None,
        "stopped_by_time_budget": bool(budget is not None and budget.stopped),
        "resumed_from": checkpoint,
    }
    result["arguments"] = {"recipe": asdict(recipe), "training": args.to_dict()}

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
                   for e in log_history if "eval_runtime" in e]
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
    """Render the model family's card template (``model_cards/<family.card>.md``) for a structure model into
    ``folder/README.md`` (metrics of a training run from ``result`` when given)."""
    from huggingface_hub import ModelCardData

    from ..cards import render_model_card

    cfg = model.config
    family = structure_family(cfg.model_type)
    fields: dict[str, Any] = {
        "preset": cfg.preset,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **family.card_fields(cfg),
    }
    if family.heatmap:
        fields["threshold"] = round(float(cfg.threshold), 6)
    if result and result.get("final"):
        final = result["final"]
        fields["metrics"] = {
            f"{key} (validation)": round(float(final[key]), 4)
            for key in ("precision", "recall", "f1", "plcc", "srcc", "final_score")
            if final.get(key) is not None
        }
        test = result.get("test") or {}
        for key in ("final_score",) if family.heatmap else ("plcc", "srcc"):
            if test.get(key) is not None:
                fields["metrics"][f"{key} (test)"] = round(float(test[key]), 4)
    card_data = ModelCardData(
        license="apache-2.0", library_name="transformers", pipeline_tag=family.pipeline_tag,
        tags=["evalmuse", "image-quality-assessment", "text-to-image", "structure-distortion"],
    )
    card = render_model_card(family.card, card_data, **fields)
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path


# ---------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> tuple[StructureRecipeArguments, StructureTrainingArguments]:
    """``--config file.yaml`` (fields of both dataclasses) then ``--field value`` overrides, by TRL's parser."""
    return parse_recipe_arguments((StructureRecipeArguments, StructureTrainingArguments), argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m evalmuse_models.training.structure`` and ``train_scripts/train_structure.py``;
    prints the family, the initial and final scores, the threshold and the model folder as JSON."""
    result = train_structure(*parse_args(argv))
    if result:
        keys = ("family", "initial", "final", "test", "threshold", "note", "model_dir")
        print(json.dumps({key: result[key] for key in keys if key in result}, indent=2))
    return 0


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILY_TRAINING_FIELDS",
    "STRUCTURE_FAMILIES",
    "EpochCallback",
    "FreezeScheduleCallback",
    "LogLastStepCallback",
    "StructureCollator",
    "StructureFamily",
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
    "score_correlations",
    "structure_family",
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
