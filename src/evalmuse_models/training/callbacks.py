"""The pieces the `Trainer`-based recipes share: callbacks (time budget, per-epoch augmentation seeds) and the
resume rules (which checkpoint, and a safe look at it before the Trainer reads it)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..utils import UserInputError

logger = logging.getLogger(__name__)


class TimeBudgetCallback(TrainerCallback):
    """Stop training once ``budget_s`` seconds have passed since ``on_train_begin``.

    The decision is reduced across processes (the maximum over ranks, through
    :func:`accelerate.utils.reduce`), so every rank leaves the loop after the same optimizer step and
    DDP never waits on a rank that has already stopped. Evaluation and saving then run as the
    Trainer's own ``should_training_stop`` path does. ``stopped`` tells afterwards whether the budget
    ended the run.
    """

    def __init__(self, budget_s: float):
        if not budget_s > 0:
            raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
        self.budget_s = float(budget_s)
        self.started: float | None = None
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.stopped = False

    def over_budget(self, args) -> bool:
        """Whether any process has used up the budget (the same answer on every rank)."""
        over = self.started is not None and time.perf_counter() - self.started >= self.budget_s
        if args.world_size > 1:
            import torch
            from accelerate.utils import reduce

            flag = torch.tensor([float(over)], device=args.device)
            over = bool(reduce(flag, reduction="sum").item() > 0)
        return over

    def on_step_end(self, args, state, control, **kwargs):
        if not control.should_training_stop and self.over_budget(args):
            logger.info("time budget of %.0f s used up after step %d: stopping", self.budget_s, state.global_step)
            self.stopped = True
            control.should_training_stop = True
        return control


class EpochCallback(TrainerCallback):
    """Tell the training dataset which epoch begins (``dataset.epoch``: its augmentations are seeded per epoch)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = math.floor(state.epoch or 0)  # a run resumed mid-epoch is still in that epoch


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Open every file of the checkpoint ``folder`` that a resume may read, with the loader the Trainer
    uses (JSON, safetensors, ``torch.load(weights_only=True)`` memory-mapped, which never runs pickled
    code): a missing state or a file that is not what it should be raises a one-line :class:`UserInputError`
    naming the folder, before the Trainer reads anything. ``training_args.bin`` is never read."""
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
