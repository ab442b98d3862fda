"""`TrainerCallback`s shared by the training recipes (alignment, structure and the MLLM judge)."""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

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
