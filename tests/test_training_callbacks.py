"""The recipes' shared Trainer callbacks: the time budget is one decision for every process (bug A4)."""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace

import pytest
import torch.multiprocessing as mp
from transformers import TrainerControl, TrainerState

from evalmuse_models.training.callbacks import TimeBudgetCallback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from accelerate import PartialState

    state = PartialState(cpu=True)
    callback = TimeBudgetCallback(budget_s=60.0)
    args = SimpleNamespace(world_size=state.num_processes, device=state.device)
    callback.on_train_begin(args, TrainerState(), TrainerControl())
    if rank == 0:  # only rank 0 has used up its budget (it started earlier, or its steps were slower)
        callback.started -= 120.0
    control = callback.on_step_end(args, TrainerState(global_step=3), TrainerControl())
    results[rank] = (state.num_processes, bool(control.should_training_stop), callback.stopped)
    state.wait_for_everyone()
    state.destroy_process_group()


def test_one_rank_over_budget_stops_every_rank():
    """Each process measures its own clock; the decision is reduced, so both leave at the same step."""
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: (2, True, True), 1: (2, True, True)}


def test_single_process_budget():
    callback = TimeBudgetCallback(budget_s=0.05)
    args = SimpleNamespace(world_size=1, device="cpu")
    callback.on_train_begin(args, TrainerState(), TrainerControl())
    assert not callback.on_step_end(args, TrainerState(global_step=1), TrainerControl()).should_training_stop
    time.sleep(0.06)
    assert callback.on_step_end(args, TrainerState(global_step=2), TrainerControl()).should_training_stop
    assert callback.stopped
    with pytest.raises(ValueError, match="budget_s"):
        TimeBudgetCallback(budget_s=0)
