"""Training loop of the EvalMuse structure model (accelerate: CPU, one or many GPUs).

Reads the ``structure`` config of a prepared dataset (``datasets.load_dataset(dataset_dir,
"structure")``: columns ``image``, ``image_name``, ``prompt``, ``mos``, ``shapes``, ``mask``,
``heatmap``; splits ``train``, ``validation``, ``test``), trains heatmap + score heads (backbones
frozen, optionally unfrozen after a fraction of the steps, as the EM-RAHF baseline), evaluates
with the official structure Final score after every epoch, searches the heatmap threshold on the
validation split at the end and writes a ``save_pretrained`` folder and a metrics JSON.

Example::

    from evalmuse_models.training.structure import TrainStructureArguments, train_structure

    metrics = train_structure(TrainStructureArguments(
        dataset_dir="data/evalmuse", output_dir="runs/structure-tiny", preset="tiny", max_steps=200,
    ))
    metrics["final"]["final_score"], metrics["threshold"]

Output folder::

    <output_dir>/model/          save_pretrained folder (config with the chosen threshold, weights,
                                 processor, remote code): AutoModel.from_pretrained(<output_dir>/model)
    <output_dir>/metrics.json    initial / per-epoch / final metrics and the threshold table
    <output_dir>/checkpoints/last/  training state for resuming (weights, optimizer, scheduler and RNG
                                 states, counters: safetensors and JSON, nothing unpickled; see
                                 :mod:`evalmuse_models.training.checkpoint`), removed at the end unless kept
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError, atomic_directory, atomic_write_text, replace_directory
from .checkpoint import check_supported, load_training_state, read_progress, sample_seed, save_training_state

_PRESET_LR = {"tiny": 3e-3, "hnu-vpai": 1e-4, "em-rahf": 2e-5}


@dataclass
class TrainStructureArguments:
    """Arguments of :func:`train_structure`.

    Attributes:
        dataset_dir: prepared dataset folder or Hub id (``load_dataset(dataset_dir, "structure")``).
        output_dir: where the model folder, metrics and checkpoints go.
        preset: model preset (``tiny``, ``hnu-vpai``, ``em-rahf``) when not starting from
            ``model_name_or_path``.
        model_name_or_path: start from a saved EvalMuse structure model instead.
        pretrained_backbones: load the preset's pretrained backbones (Hub ids / timm weights).
        config_overrides: extra ``EvalMuseStructureConfig`` fields (e.g. loss weights).
        num_epochs / max_steps: length of training; ``max_steps`` (optimizer steps) wins.
        time_budget_s: stop training (then evaluate and save as usual) once this many seconds
            have passed in this call (per-epoch evaluations included); ``metrics["train"]["stopped_by_time_budget"]`` says so.
        max_train_samples / max_eval_samples: subsample the splits (first N after a seeded shuffle).
        per_device_train_batch_size / per_device_eval_batch_size / gradient_accumulation_steps.
        learning_rate: head learning rate (default per preset: tiny 3e-3, hnu-vpai 1e-4, em-rahf 2e-5).
        backbone_learning_rate: for backbones once unfrozen (default ``learning_rate / 10``).
        weight_decay, warmup_ratio, lr_scheduler_type: AdamW and the transformers scheduler.
        freeze_schedule_fraction: unfreeze the backbones after this fraction of the steps
            (default: the config's; 1.0 = always frozen; 0.5 = the baseline).
        mixed_precision: ``"auto"`` (bf16 on CUDA, none on CPU), ``"no"``, ``"bf16"``, ``"fp16"``.
        hflip: random horizontal flips of image and heatmap.
        eval_split: split used for per-epoch evaluation and the threshold search (``None``: no
            evaluation). evaluate_test: also score a labelled ``test`` split (threshold chosen on
            ``eval_split``).
        eval_before_training: also score the untrained model (``metrics["initial"]``).
        threshold_search / thresholds: search the heatmap threshold on ``eval_split`` at the end.
        reference_min_votes: annotators needed for a truth pixel (1 = union of annotators).
        save_steps: write a resumable checkpoint every N optimizer steps (and after each epoch).
        resume: continue from ``<output_dir>/checkpoints/last`` when it exists.
        keep_checkpoints: keep ``checkpoints/`` after a successful run.
        overwrite_output: replace an existing ``<output_dir>/model``.
        num_threads: ``torch.set_num_threads`` for CPU runs (small models on a shared machine
            train several times faster with 1 thread); ``None`` leaves torch's default.
        seed, num_workers, log_every, show_progress.
    """

    dataset_dir: str
    output_dir: str
    preset: str = "tiny"
    model_name_or_path: str | None = None
    pretrained_backbones: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    num_epochs: int = 1
    max_steps: int | None = None
    time_budget_s: float | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    backbone_learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    freeze_schedule_fraction: float | None = None
    mixed_precision: str = "auto"
    hflip: bool = True
    eval_split: str | None = "validation"
    evaluate_test: bool = True
    eval_before_training: bool = True
    threshold_search: bool = True
    thresholds: list[float] | None = None
    reference_min_votes: int = 1
    save_steps: int | None = None
    resume: bool = True
    keep_checkpoints: bool = False
    overwrite_output: bool = True
    seed: int = 0
    num_threads: int | None = None
    num_workers: int = 0
    log_every: int = 10
    show_progress: bool | None = None

    def validate(self) -> None:
        def bad(name: str, expected: str) -> UserInputError:
            return UserInputError(f"TrainStructureArguments.{name}={getattr(self, name)!r}: expected {expected}")

        for name in ("num_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "reference_min_votes"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "an integer >= 1")
        if self.reference_min_votes > 4:
            raise bad("reference_min_votes", "1 to 4 annotators")
        for name in ("max_steps", "max_train_samples", "max_eval_samples", "save_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise bad(name, "None or an integer >= 1")
        if self.freeze_schedule_fraction is not None and not 0.0 <= self.freeze_schedule_fraction <= 1.0:
            raise bad("freeze_schedule_fraction", "a fraction in [0, 1]")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise bad("mixed_precision", "'auto', 'no', 'bf16' or 'fp16'")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise bad("time_budget_s", "None or a positive number of seconds")
        if self.thresholds is not None and any(not 0.0 <= float(t) <= 1.0 for t in self.thresholds):
            raise bad("thresholds", "heatmap levels in [0, 1]")


# --------------------------------------------------------------------------------------------
# data


def _load_dataset(args: TrainStructureArguments, dataset):
    if dataset is None:
        from datasets import load_dataset

        try:
            dataset = load_dataset(args.dataset_dir, "structure")
        except (FileNotFoundError, ValueError) as exc:
            raise UserInputError(
                f"cannot load the 'structure' config of {args.dataset_dir!r}: {exc}. Build the folder with "
                "`evalmuse_models.data.prepare_dataset` (or pass a Hub dataset id)"
            ) from exc
    required = {"image", "image_name", "mos", "heatmap"}
    if "train" not in dataset:
        raise UserInputError(f"dataset {args.dataset_dir!r} has no 'train' split (splits: {list(dataset)})")
    missing = required - set(dataset["train"].column_names)
    if missing:
        raise UserInputError(
            f"dataset {args.dataset_dir!r}, split 'train': missing columns {sorted(missing)}; "
            "expected the 'structure' config of a prepared EvalMuse dataset"
        )
    return dataset


def _subsample(split, limit: int | None, seed: int):
    if limit is None or limit >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(limit))


def _heatmap_array(row: dict[str, Any], size: int) -> np.ndarray:
    """The row's training heatmap (uint8 levels) at ``size`` x ``size``: its ``heatmap`` column, or,
    when that is stored at another size, the baseline heatmap made afresh from its ``shapes``."""
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
    except ValueError as exc:
        raise UserInputError(
            f"image {row.get('image_name', '?')!r}: the heatmap column is {image.size[0]}x{image.size[1]}, not the "
            f"model's {size}x{size}, and cannot be made again from the row's shapes ({exc}); prepare the dataset "
            "with `evalmuse prepare-data`"
        ) from exc


class _TrainRows:
    """The training split for the loader: each row with its horizontal-flip draw (``_hflip``), made from
    its own seed (``seed``, the ``epoch`` attribute the loop sets, its index) rather than the global RNG,
    so that it does not depend on loading order and a resumed run flips exactly as an uninterrupted one."""

    def __init__(self, split, seed: int):
        self.split = split
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.split[index])
        row["_hflip"] = bool(np.random.default_rng(sample_seed(self.seed, self.epoch, index)).random() < 0.5)
        return row


class _Collator:
    def __init__(self, processor, heatmap_size: int, uses_text: bool, train: bool, hflip: bool):
        self.processor = processor
        self.heatmap_size = heatmap_size
        self.uses_text = uses_text
        self.train = train
        self.hflip = hflip

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from PIL import Image

        images, heatmaps, scores, prompts = [], [], [], []
        for row in rows:
            image = row["image"].convert("RGB")
            heat = _heatmap_array(row, self.heatmap_size)
            if self.train and self.hflip and row.get("_hflip", False):  # drawn per sample by _TrainRows
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
                heat = heat[:, ::-1]
            images.append(image)
            heatmaps.append(np.ascontiguousarray(heat))
            mos = row.get("mos")
            scores.append(float("nan") if mos is None else float(mos))
            prompts.append(row.get("prompt") or "")
        batch = dict(self.processor(images=images, text=prompts if self.uses_text else None, return_tensors="pt"))
        batch["heatmap_labels"] = torch.from_numpy(np.stack(heatmaps)).float() / 255.0
        batch["score_labels"] = torch.tensor(scores, dtype=torch.float32)
        return batch


# --------------------------------------------------------------------------------------------
# evaluation


def predict_split(model, split, processor, batch_size: int, device, show_progress: bool = False, dtype=None):
    """Run the model over a dataset split: ``(heatmaps uint8 (N, 512, 512), scores (N,), names)``.
    Heatmaps are kept as 8-bit levels, the resolution the baseline's threshold works on."""
    import torch
    from tqdm.auto import tqdm

    collate = _Collator(processor, model.config.heatmap_size, model.config.uses_text, train=False, hflip=False)
    heatmaps, scores = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(split), batch_size), desc="evaluate", disable=not show_progress):
                rows = [split[i] for i in range(start, min(start + batch_size, len(split)))]
                batch = collate(rows)
                inputs = {k: v.to(device) for k, v in batch.items() if k not in ("heatmap_labels", "score_labels")}
                if dtype is not None:
                    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                out = model(**inputs)
                heatmaps.append(torch.round(out.heatmap.float() * 255).to(torch.uint8).cpu().numpy())
                scores.append(out.structure_score.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(heatmaps), np.concatenate(scores), list(split["image_name"])


def reference_masks(split, min_votes: int = 1, size: int = 512) -> list[np.ndarray]:
    """Truth 0/1 masks at ``size`` x ``size`` for the official score, made from each row's ``shapes``
    and image size by the one truth rule (:func:`evalmuse_models.data.masks.truth_maps`): pixels that
    at least ``min_votes`` annotators marked (1 = union), bilinear resize, ``> 0``."""
    from datasets import Image as ImageFeature

    from ..data.masks import binary_mask

    missing = sorted({"shapes", "image"} - set(split.column_names))
    if missing:
        raise UserInputError(
            f"the truth masks are made from the 'shapes' and 'image' columns, and this split has no {missing}; "
            "evaluate a labelled split of a prepared EvalMuse dataset"
        )
    rows = split.select_columns(["shapes", "image"]).cast_column("image", ImageFeature(decode=False))
    return [binary_mask(row, min_votes=min_votes, size=(size, size)) for row in rows]


def score_predictions(heatmaps_u8, scores, split, threshold: float, min_area: int, min_votes: int = 1,
                      truth: list[np.ndarray] | None = None):
    """Official structure Final score of predictions on a labelled split (see
    :func:`~evalmuse_models.models.evalmuse_structure.postprocess.evaluate_structure`); ``truth``: the
    split's :func:`reference_masks` when already made."""
    from ..models.evalmuse_structure.postprocess import (
        evaluate_structure,
        heatmap_to_mask,
        remove_small_regions,
    )

    mos = np.array([np.nan if m is None else float(m) for m in split["mos"]], dtype=np.float64)
    if not np.all(np.isfinite(mos)):
        raise UserInputError(f"split has {int((~np.isfinite(mos)).sum())} images without 'mos'; evaluate a labelled split")
    masks = [remove_small_regions(heatmap_to_mask(h / 255.0, threshold), min_area) for h in heatmaps_u8]
    return evaluate_structure(scores, mos, masks, reference_masks(split, min_votes) if truth is None else truth)


# --------------------------------------------------------------------------------------------
# training


def _build_model(args: TrainStructureArguments):
    from ..models.evalmuse_structure import (
        EvalMuseStructureConfig,
        EvalMuseStructureModel,
        EvalMuseStructureProcessor,
    )

    if args.model_name_or_path:
        model = EvalMuseStructureModel.from_pretrained(args.model_name_or_path, **dict(args.config_overrides))
        try:
            processor = EvalMuseStructureProcessor.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError):
            processor = EvalMuseStructureProcessor.from_model_config(model.config)
        return model, processor
    try:
        config = EvalMuseStructureConfig.from_preset(args.preset, **dict(args.config_overrides))
    except ValueError as exc:
        raise UserInputError(f"TrainStructureArguments.preset / config_overrides: {exc}") from exc
    model = EvalMuseStructureModel(config, load_pretrained_backbones=args.pretrained_backbones)
    return model, EvalMuseStructureProcessor.from_model_config(config)


def _param_groups(model, lr: float, backbone_lr: float, weight_decay: float):
    backbone_ids = set()
    for name in ("vit", "cnn", "text_embeddings"):
        module = getattr(model, name, None)
        if module is not None:
            backbone_ids.update(id(p) for p in module.parameters())
    groups = {("head", True): [], ("head", False): [], ("backbone", True): [], ("backbone", False): []}
    for name, p in model.named_parameters():
        kind = "backbone" if id(p) in backbone_ids else "head"
        decay = p.ndim > 1 and "norm" not in name.lower()
        groups[(kind, decay)].append(p)
    out = []
    for (kind, decay), params in groups.items():
        if params:
            out.append({
                "params": params,
                "lr": backbone_lr if kind == "backbone" else lr,
                "weight_decay": weight_decay if decay else 0.0,
            })
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def train_structure(args: TrainStructureArguments, dataset=None) -> dict[str, Any]:
    """Train an EvalMuse structure model; returns the metrics (also written to ``metrics.json``).

    Args:
        args: a :class:`TrainStructureArguments`.
        dataset: optional ``DatasetDict`` with the ``structure`` columns (default: loaded from
            ``args.dataset_dir``).

    Returns:
        ``{"initial": {...} | None, "initial_test": {...} | None, "epochs": [{...}], "final": {...},
        "test": {...} | None, "threshold": float, "threshold_table": [...], "train": {"steps", "samples", "seconds", "images_per_second",
        "loss_first", "loss_last"}, "model_dir": str}``. ``initial*`` score the untrained model (baseline threshold),
        ``final`` the trained one on ``eval_split`` at the searched threshold and ``test`` on a
        labelled ``test`` split at that threshold (chosen without it); every metrics dict
        has the official keys ``precision``, ``recall``, ``f1``, ``giou``, ``plcc``, ``srcc``,
        ``final_score``. Under multi-process launches only the main process evaluates and saves;
        the other processes get the dict without ``final``, ``test`` and ``model_dir``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    args.validate()
    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    output_dir = Path(args.output_dir)
    mixed = args.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    check_supported(accelerator)
    set_seed(args.seed)
    show = accelerator.is_local_main_process if args.show_progress is None else args.show_progress and accelerator.is_local_main_process

    dataset = _load_dataset(args, dataset)
    train_split = _subsample(dataset["train"], args.max_train_samples, args.seed)
    eval_split = None
    if args.eval_split and args.eval_split not in dataset:
        raise UserInputError(
            f"dataset {args.dataset_dir!r} has no split {args.eval_split!r} (splits: {list(dataset)}); "
            "set eval_split to one of them, or to None to train without evaluation"
        )
    if args.eval_split:
        eval_split = _subsample(dataset[args.eval_split], args.max_eval_samples, args.seed)
        if any(m is None for m in eval_split["mos"]):
            eval_split = None
    test_split = None
    if (args.evaluate_test and "test" in dataset and len(dataset["test"])
            and all(m is not None for m in dataset["test"]["mos"])):
        test_split = _subsample(dataset["test"], args.max_eval_samples, args.seed)
    if len(train_split) == 0:
        raise UserInputError(f"dataset {args.dataset_dir!r}: the 'train' split is empty")

    model, processor = _build_model(args)
    config = model.config
    lr = args.learning_rate or _PRESET_LR.get(config.preset or args.preset, 1e-4)
    backbone_lr = args.backbone_learning_rate or lr / 10
    unfreeze_fraction = config.freeze_schedule_fraction if args.freeze_schedule_fraction is None else args.freeze_schedule_fraction
    frozen_at_start = config.freeze_vit, config.freeze_cnn, config.freeze_text

    collate = _Collator(processor, config.heatmap_size, config.uses_text, train=True, hflip=args.hflip)
    generator = torch.Generator().manual_seed(args.seed)
    train_rows = _TrainRows(train_split, args.seed)
    loader = DataLoader(
        train_rows, batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collate,
        num_workers=args.num_workers, generator=generator,
    )
    steps_per_epoch = max(1, math.ceil(len(loader) / args.gradient_accumulation_steps / accelerator.num_processes))
    total_steps = args.max_steps or steps_per_epoch * args.num_epochs
    unfreeze_step = None
    if unfreeze_fraction < 1.0 and any(frozen_at_start):
        unfreeze_step = round(unfreeze_fraction * total_steps)

    optimizer = torch.optim.AdamW(_param_groups(model, lr, backbone_lr, args.weight_decay))
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer,
        num_warmup_steps=int(args.warmup_ratio * total_steps), num_training_steps=total_steps,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    truths: dict[str, list[np.ndarray]] = {}

    def truth_of(split) -> list[np.ndarray]:
        """The split's truth masks, drawn once per run (every evaluation and the threshold search reuse them)."""
        if split._fingerprint not in truths:
            truths[split._fingerprint] = reference_masks(split, args.reference_min_votes)
        return truths[split._fingerprint]

    def evaluate_on(split, threshold: float) -> dict[str, Any]:
        net = accelerator.unwrap_model(model)
        heat, scores, _ = predict_split(net, split, processor, args.per_device_eval_batch_size, accelerator.device)
        out = score_predictions(heat, scores, split, threshold, net.config.min_region_area, truth=truth_of(split))
        out["threshold"] = threshold
        return out

    def evaluate(threshold: float | None = None) -> dict[str, Any] | None:
        if eval_split is None:
            return None
        result = None
        if accelerator.is_main_process:
            net = accelerator.unwrap_model(model)
            heat, scores, _ = predict_split(net, eval_split, processor, args.per_device_eval_batch_size,
                                            accelerator.device, show_progress=False)
            thr = net.config.threshold if threshold is None else threshold
            result = score_predictions(heat, scores, eval_split, thr, net.config.min_region_area,
                                       truth=truth_of(eval_split))
            result["threshold"] = thr
        accelerator.wait_for_everyone()
        return result

    # ---- resume
    ckpt_dir = output_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last"
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "initial": None, "initial_test": None, "epochs": [],
             "losses": [],
             "unfrozen": False, "seconds": 0.0, "samples": 0}
    # The loader's generator as the current epoch began: a mid-epoch checkpoint keeps it, so that a resume
    # draws the same order and skips the batches already seen.
    epoch_start_state = generator.get_state()
    if args.resume and (last_ckpt / "trainer_state.json").is_file():
        hint = "--resume false (resume=False)"
        state = read_progress(last_ckpt, "trainer_state.json", state, resume_hint=hint)
        if state["unfrozen"]:
            accelerator.unwrap_model(model).freeze_backbones(False, False, False)
        load_training_state(accelerator, last_ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                            generators={"train_loader": generator}, resume_hint=hint)
        accelerator.print(f"resumed from {last_ckpt} at step {state['step']}")
    elif args.eval_before_training:
        state["initial"] = evaluate()
        if test_split is not None and accelerator.is_main_process:
            state["initial_test"] = evaluate_on(test_split, accelerator.unwrap_model(model).config.threshold)

    def save_checkpoint() -> None:
        tmp = ckpt_dir / f".tmp-step-{state['step']}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        loader_state = epoch_start_state if state["batches_in_epoch"] else generator.get_state()
        save_training_state(accelerator, tmp, model=model, optimizer=optimizer, scheduler=scheduler,
                            generator_states={"train_loader": loader_state})
        if accelerator.is_main_process:
            atomic_write_text(tmp / "trainer_state.json", json.dumps(_jsonable(state)))
            replace_directory(tmp, last_ckpt)
        accelerator.wait_for_everyone()

    # ---- train
    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc="train structure", disable=not show)
    started = time.perf_counter()
    samples_before = state["samples"]
    stopped_by_budget = False
    wall_started = time.perf_counter()
    while state["step"] < total_steps and not stopped_by_budget:
        epoch_loader = loader
        if state["batches_in_epoch"]:
            epoch_loader = accelerator.skip_first_batches(loader, state["batches_in_epoch"])
        epoch_start_state = generator.get_state()
        train_rows.epoch = state["epoch"]  # not a set_epoch method: accelerate's loaders call that with their own count
        for batch in epoch_loader:
            if unfreeze_step is not None and not state["unfrozen"] and state["step"] >= unfreeze_step:
                net = accelerator.unwrap_model(model)
                net.freeze_backbones(False, False, False)
                if accelerator.num_processes > 1:
                    model = accelerator.prepare_model(net)
                state["unfrozen"] = True
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["batches_in_epoch"] += 1
            state["samples"] += batch["pixel_values"].shape[0] * accelerator.num_processes
            if accelerator.sync_gradients:
                state["step"] += 1
                loss = float(accelerator.gather(out.loss.detach()[None]).mean())
                state["losses"].append(loss)
                bar.update(1)
                if state["step"] % args.log_every == 0:
                    bar.set_postfix(loss=f"{np.mean(state['losses'][-args.log_every:]):.4f}")
                if args.save_steps and state["step"] % args.save_steps == 0:
                    save_checkpoint()
                if state["step"] >= total_steps:
                    break
                if args.time_budget_s:
                    over = torch.tensor([time.perf_counter() - wall_started > args.time_budget_s], device=accelerator.device)
                    if bool(accelerator.gather(over).any()):  # every process stops at the same step
                        stopped_by_budget = True
                        break
        else:
            # a full pass over the loader: end of epoch
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
            state["seconds"] += time.perf_counter() - started
            metrics = evaluate()
            state["epochs"].append({"epoch": state["epoch"], "step": state["step"], **(metrics or {})})
            if metrics:
                accelerator.print(f"epoch {state['epoch']}: final score {metrics['final_score']:.4f}")
            if state["step"] < total_steps:
                save_checkpoint()
            started = time.perf_counter()  # training throughput excludes evaluation and checkpoints
            continue
        break
    bar.close()
    state["seconds"] += time.perf_counter() - started
    accelerator.wait_for_everyone()

    # ---- threshold search, final metrics, save
    net = accelerator.unwrap_model(model)
    result: dict[str, Any] = {
        "initial": state["initial"],
        "initial_test": state["initial_test"],
        "epochs": state["epochs"],
        "final": None,
        "threshold": float(net.config.threshold),
        "threshold_table": [],
        "test": None,
        "train": {
            "steps": state["step"],
            "samples": state["samples"],
            "seconds": state["seconds"],
            "images_per_second": (state["samples"] - samples_before) / max(state["seconds"], 1e-9),
            "loss_first": state["losses"][0] if state["losses"] else None,
            "loss_last": float(np.mean(state["losses"][-max(1, args.log_every):])) if state["losses"] else None,
            "learning_rate": lr,
            "unfrozen_at_step": unfreeze_step,
            "stopped_by_time_budget": stopped_by_budget,
        },
        "args": asdict(args),
    }
    if accelerator.is_main_process:
        if eval_split is not None:
            heat, scores, _ = predict_split(net, eval_split, processor, args.per_device_eval_batch_size, accelerator.device)
            threshold = float(net.config.threshold)
            if args.threshold_search:
                from ..models.evalmuse_structure.postprocess import (
                    DEFAULT_THRESHOLDS,
                    search_threshold,
                )

                masks = truth_of(eval_split)
                mos = [float(m) for m in eval_split["mos"]]
                threshold, table = search_threshold(
                    [h / 255.0 for h in heat], scores, masks, mos,
                    thresholds=args.thresholds or DEFAULT_THRESHOLDS, min_area=net.config.min_region_area,
                )
                result["threshold_table"] = table
            net.config.threshold = threshold
            result["threshold"] = threshold
            result["final"] = score_predictions(heat, scores, eval_split, threshold, net.config.min_region_area,
                                                truth=truth_of(eval_split))
            result["final"]["threshold"] = threshold
        if test_split is not None:
            result["test"] = evaluate_on(test_split, float(net.config.threshold))
        # restore the configured freezing so the saved config describes the model as built
        net.config.freeze_vit, net.config.freeze_cnn, net.config.freeze_text = frozen_at_start
        model_dir = output_dir / "model"
        with atomic_directory(model_dir, overwrite=args.overwrite_output) as tmp:
            net.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            write_model_card(tmp, net, result)
        result["model_dir"] = str(model_dir)
        result = _jsonable(result)
        atomic_write_text(output_dir / "metrics.json", json.dumps(result, indent=2))
        if not args.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return result





def write_model_card(folder, model, result: dict[str, Any] | None = None) -> Path:
    """Render ``model_cards/evalmuse-structure.md`` for a structure model into ``folder/README.md``
    (metrics of a training run from ``result`` when given)."""
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


# --------------------------------------------------------------------------------------------
# command line


def _field_parser(kind: str):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {text!r}")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "floats":
            return [float(v) for v in text.split(",") if v.strip()]
        if kind == "dict":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        return text

    return parse


def _field_kind(annotation: str) -> str:
    for kind in ("bool", "int", "float"):
        if annotation.startswith(kind):
            return kind
    if annotation.startswith("list[float]"):
        return "floats"
    if annotation.startswith("dict"):
        return "dict"
    return "str"


def parse_args(argv: list[str] | None = None) -> TrainStructureArguments:
    """:class:`TrainStructureArguments` from ``--config file.yaml`` plus ``--field value`` overrides
    (lists comma-separated, ``config_overrides`` as JSON, ``none`` for None)."""
    import argparse
    import dataclasses

    import yaml

    fields = {f.name: f for f in dataclasses.fields(TrainStructureArguments)}
    parser = argparse.ArgumentParser(
        prog="train_structure.py",
        description="Train the EvalMuse structure model (heatmap + score) on a prepared dataset.",
    )
    parser.add_argument("--config", help="YAML file with TrainStructureArguments fields")
    for name, f in fields.items():
        kind = _field_kind(str(f.type))
        parser.add_argument(f"--{name}", type=_field_parser(kind), default=argparse.SUPPRESS,
                            help=f"({kind}) see TrainStructureArguments")
    ns = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_path = ns.pop("config", None)
    if config_path:
        try:
            loaded = yaml.safe_load(Path(config_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserInputError(f"cannot read the config file {config_path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UserInputError(f"{config_path}: expected a mapping of TrainStructureArguments fields")
        unknown = sorted(set(loaded) - set(fields))
        if unknown:
            raise UserInputError(f"{config_path}: unknown fields {unknown}; valid fields: {sorted(fields)}")
        values.update(loaded)
    values.update(ns)
    missing = [n for n in ("dataset_dir", "output_dir") if not values.get(n)]
    if missing:
        raise UserInputError(f"missing {', '.join('--' + m for m in missing)} (on the command line or in --config)")
    return TrainStructureArguments(**values)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: parse the arguments, train, print the final metrics as JSON."""
    result = train_structure(parse_args(argv))
    if result.get("model_dir"):  # the main process only
        summary = {k: result.get(k) for k in ("initial", "final", "test", "threshold", "model_dir")}
        print(json.dumps(summary, indent=2))
    return 0


__all__ = [
    "TrainStructureArguments",
    "main",
    "parse_args",
    "predict_split",
    "reference_masks",
    "score_predictions",
    "train_structure",
    "write_model_card",
]
