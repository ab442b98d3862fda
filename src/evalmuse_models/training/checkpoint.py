"""Resumable training state that a resume reads without unpickling anything.

accelerate's ``save_state`` / ``load_state`` keep the optimizer, the schedulers, the RNG states and
every object registered with ``register_for_checkpointing`` as pickles, and ``load_state`` unpickles
the registered objects (``custom_checkpoint_*.pkl``) with ``weights_only=False``: a pickle planted in
a run folder would run code at the next resume. The training loops therefore write and read their
state themselves, in formats that hold data only:

``training_state.json``
    the format tag and version, the number of processes, accelerate's step counter and the
    gradient scaler's state (fp16); written last, so a folder without it is not a checkpoint.
``model.safetensors``
    the unwrapped model's weights (shared tensors once).
``optimizer.safetensors`` + ``optimizer.json``
    the optimizer's tensors, and its parameter groups and other values.
``scheduler.json``
    the learning-rate scheduler's ``state_dict`` (numbers and lists).
``rng_state_<process>.json``
    each process's Python, NumPy, torch (CPU and CUDA) RNG states and any named ``torch.Generator``
    (the training data loader's), as numbers and hex strings.

Nothing here calls ``torch.load`` or ``pickle``; any other file in the folder (accelerate's
``*.pkl`` / ``*.bin`` included) is never opened. A folder without ``training_state.json`` (such as
one in accelerate's layout, written by an earlier version) is refused, as is a damaged file, with
a :class:`~evalmuse_models.utils.UserInputError` that names the folder and says what to do.
Loading checks every value against the live object's own ``state_dict`` (same keys, same kinds of
values) before handing it over.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError

logger = logging.getLogger(__name__)

FORMAT = "evalmuse-training-state"
VERSION = 1
STATE_FILE = "training_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_FILE = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
RNG_FILE = "rng_state_{}.json"

#: accelerate distributed types whose state is sharded; their own checkpoint readers unpickle.
_SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


class _Damaged(Exception):
    """A checkpoint file that is missing, unreadable or does not fit the live objects."""


def check_supported(accelerator) -> None:
    """Refuse distributed setups whose state these checkpoints cannot hold (sharded FSDP / DeepSpeed)."""
    kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if kind in _SHARDED:
        raise UserInputError(
            f"this training loop checkpoints single-device and data-parallel (DDP) runs, not {kind}; "
            "launch it without an FSDP / DeepSpeed / Megatron-LM accelerate config"
        )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training sample's random augmentation in one epoch.

    Drawing augmentations from the global RNG ties them to the order in which batches are loaded, and
    accelerate's loader reads one batch ahead: the RNG state a checkpoint saves has already served the
    next batch, so a resumed run would augment that batch differently. Seeding each sample from
    ``(seed, epoch, index)`` makes the augmentation independent of prefetching, of ``num_workers`` and
    of where a run was interrupted."""
    mask = (1 << 64) - 1
    sequence = np.random.SeedSequence([int(seed) & mask, int(epoch) & mask, int(index) & mask])
    return int(sequence.generate_state(1, np.uint64)[0])


def is_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished checkpoint in this format (its state file exists)."""
    return (Path(folder) / STATE_FILE).is_file()


# ---------------------------------------------------------------------------------------------- save


def save_training_state(accelerator, folder: str | Path, *, model, optimizer, scheduler=None,
                        generator_states: dict[str, Any] | None = None) -> None:
    """Write the training state into ``folder`` (every process calls it; the main process writes the
    shared files, each process its RNG file). ``generator_states`` maps names to ``torch.Generator``
    states (``ByteTensor``, e.g. the data loader's generator as it was when the epoch began) that
    :func:`load_training_state` puts back into the generators of those names. The caller makes the
    folder appear atomically (build it under a temporary name, then rename)."""
    from safetensors.torch import save_file, save_model

    check_supported(accelerator)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng_state(generator_states or {})
    (folder / RNG_FILE.format(accelerator.process_index)).write_text(json.dumps(rng))
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(folder / MODEL_FILE), metadata={"format": "pt"})
        tensors, described = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(folder / OPTIMIZER_TENSORS_FILE), metadata={"format": "pt"})
        (folder / OPTIMIZER_FILE).write_text(json.dumps(described, allow_nan=True))
        if scheduler is not None:
            (folder / SCHEDULER_FILE).write_text(json.dumps(_plain(scheduler.state_dict())))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        scaler = getattr(accelerator, "scaler", None)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_processes": accelerator.num_processes,
            "accelerator_step": int(getattr(accelerator, "step", 0)),
            "scaler": _plain(scaler.state_dict()) if scaler is not None else None,
        }
        (folder / STATE_FILE).write_text(json.dumps(manifest, indent=1))


def _plain(value):
    """``value`` as JSON data (tuples as lists); anything else is a programming error."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    import torch

    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot keep {type(value).__name__} in a JSON checkpoint")


def _flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    import torch

    tensors: dict[str, Any] = {}
    values: dict[str, dict] = {}
    refs: list[list] = []
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                name = f"t{len(refs)}"
                tensors[name] = value.detach().cpu().contiguous()
                refs.append([int(index), str(key), name])
            else:
                values.setdefault(str(int(index)), {})[str(key)] = _plain(value)
    return tensors, {"param_groups": _plain(state_dict["param_groups"]), "state": values, "tensors": refs}


def _hex(state) -> str:
    return bytes(state.cpu().numpy().tobytes()).hex()


def _rng_state(generators: dict[str, Any]) -> dict:
    import torch

    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, [int(k) for k in keys], int(position), int(has_gauss), float(cached)],
        "torch": _hex(torch.get_rng_state()),
        "cuda": [_hex(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "generators": {key: _hex(value) for key, value in generators.items()},
    }
    return state


# ---------------------------------------------------------------------------------------------- load


def load_training_state(accelerator, folder: str | Path, *, model, optimizer, scheduler=None,
                        generators: dict[str, Any] | None = None, resume_hint: str = "resume=False") -> None:
    """Restore what :func:`save_training_state` wrote into the live ``model``, ``optimizer``,
    ``scheduler``, accelerate's step counter and scaler, this process's RNGs and the ``torch.Generator``
    objects in ``generators`` (by name). Only the files named in the module docstring are read, none
    with pickle; a missing, damaged or mismatched file raises :class:`UserInputError` that names the
    folder (``resume_hint`` says how to start over instead)."""
    folder = Path(folder)
    check_supported(accelerator)

    def refuse(reason: str) -> UserInputError:
        return _refusal(folder, reason, resume_hint)

    if not (folder / STATE_FILE).is_file():
        raise refuse(
            f"it has no {STATE_FILE} (a checkpoint in accelerate's pickle layout, written by an earlier version, "
            "is not loaded: unpickling its files could run code)"
        )
    try:
        manifest = _read_json(folder / STATE_FILE, dict)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise _Damaged(f"{STATE_FILE} is not format {FORMAT!r} version {VERSION}")
        _load_model(accelerator.unwrap_model(model), folder / MODEL_FILE)
        _load_optimizer(optimizer, folder)
        if scheduler is not None:
            loaded = _read_json(folder / SCHEDULER_FILE, dict)
            _check_like(scheduler.state_dict(), loaded, SCHEDULER_FILE)
            scheduler.load_state_dict(loaded)
        step = manifest.get("accelerator_step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise _Damaged(f"{STATE_FILE}: accelerator_step must be a non-negative integer")
        accelerator.step = step
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and manifest.get("scaler") is not None:
            _check_like(_plain(scaler.state_dict()), manifest["scaler"], f"{STATE_FILE} scaler")
            scaler.load_state_dict(manifest["scaler"])
        rng_file = folder / RNG_FILE.format(accelerator.process_index)
        if rng_file.is_file():
            _set_rng_state(_read_json(rng_file, dict), rng_file.name, generators or {})
        else:
            logger.warning("%s has no %s (saved by %s processes): this process's random states start afresh",
                           folder, rng_file.name, manifest.get("num_processes"))
    except _Damaged as error:
        raise refuse(str(error)) from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError) as error:
        raise refuse(f"{type(error).__name__}: {' '.join(str(error).split())}") from None


def _refusal(folder: Path, reason: str, resume_hint: str) -> UserInputError:
    return UserInputError(
        f"cannot resume from the checkpoint {folder}: {reason}; delete that folder to resume from an earlier "
        f"checkpoint, or start over with {resume_hint}"
    )


def read_progress(folder: str | Path, name: str, defaults: dict[str, Any], resume_hint: str = "resume=False") -> dict:
    """A training loop's own counters (``folder/name``, JSON) on top of ``defaults``, each value checked
    against the kind of its default: integers (>= 0), numbers, booleans, lists, and objects or null
    where the default is ``None``. Keys not in ``defaults`` are dropped; a bad file raises
    :class:`UserInputError` naming the folder."""
    folder = Path(folder)
    try:
        saved = _read_json(folder / name, dict)
        progress = dict(defaults)
        for key, default in defaults.items():
            if key not in saved:
                raise _Damaged(f"{name} lacks {key!r}")
            value = saved[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif isinstance(default, list):
                ok = isinstance(value, list)
            else:
                ok = value is None or isinstance(value, dict)
            if not ok:
                raise _Damaged(f"{name}: {key!r} is {type(value).__name__}, expected the kind of {default!r}")
            progress[key] = value
        return progress
    except _Damaged as error:
        raise _refusal(folder, str(error), resume_hint) from None


def _read_json(path: Path, kind: type):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _Damaged(f"{path.name} is missing") from None
    except UnicodeDecodeError:
        raise _Damaged(f"{path.name} is not UTF-8 JSON") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _Damaged(f"{path.name} is not valid JSON ({error})") from None
    if not isinstance(value, kind):
        raise _Damaged(f"{path.name} does not hold a JSON {'object' if kind is dict else kind.__name__}")
    return value


def _safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise _Damaged(f"{path.name} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise _Damaged(f"{path.name} is not a valid safetensors file ({error})") from None


def _load_model(model, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if not path.is_file():
        raise _Damaged(f"{path.name} is missing")
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except (SafetensorError, OSError) as error:
        raise _Damaged(f"{path.name} is not a valid safetensors file ({error})") from None
    except RuntimeError as error:
        raise _Damaged(f"{path.name} does not fit the model ({' '.join(str(error).split())[:300]})") from None


def _load_optimizer(optimizer, folder: Path) -> None:
    described = _read_json(folder / OPTIMIZER_FILE, dict)
    tensors = _safetensors(folder / OPTIMIZER_TENSORS_FILE)
    current = optimizer.state_dict()
    groups = described.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(current["param_groups"]):
        raise _Damaged(f"{OPTIMIZER_FILE}: expected {len(current['param_groups'])} parameter groups")
    restored_groups = []
    for index, (live, saved) in enumerate(zip(current["param_groups"], groups)):
        _check_like(_plain(live), saved, f"{OPTIMIZER_FILE} param_groups[{index}]")
        # tuples (AdamW's betas) come back as tuples
        restored_groups.append({k: tuple(v) if isinstance(live[k], tuple) else v for k, v in saved.items()})
    num_params = sum(len(group["params"]) for group in restored_groups)
    state: dict[int, dict] = {}
    values = described.get("state", {})
    refs = described.get("tensors", [])
    if not isinstance(values, dict) or not isinstance(refs, list):
        raise _Damaged(f"{OPTIMIZER_FILE}: 'state' must be an object and 'tensors' a list")
    for key, entries in values.items():
        if not key.isdigit() or int(key) >= num_params or not isinstance(entries, dict):
            raise _Damaged(f"{OPTIMIZER_FILE}: bad state entry {key!r}")
        for name, value in entries.items():
            if isinstance(value, (dict, str)):
                raise _Damaged(f"{OPTIMIZER_FILE}: state[{key}][{name!r}] is not a number or a list of numbers")
        state[int(key)] = dict(entries)
    for ref in refs:
        if (not isinstance(ref, list) or len(ref) != 3 or not isinstance(ref[0], int) or isinstance(ref[0], bool)
                or not 0 <= ref[0] < num_params or not all(isinstance(r, str) for r in ref[1:])):
            raise _Damaged(f"{OPTIMIZER_FILE}: bad tensor reference {ref!r}")
        index, name, tensor_name = ref
        if tensor_name not in tensors:
            raise _Damaged(f"{OPTIMIZER_TENSORS_FILE} lacks the tensor {tensor_name!r}")
        state.setdefault(index, {})[name] = tensors[tensor_name]
    optimizer.load_state_dict({"state": state, "param_groups": restored_groups})


def _check_like(live, saved, where: str) -> None:
    """``saved`` (JSON data) has the shape of ``live`` (a fresh ``state_dict`` made plain): the same keys,
    lists of the same length, and numbers, booleans, strings and nulls where ``live`` has them."""
    if isinstance(live, dict):
        if not isinstance(saved, dict) or set(saved) != set(live):
            raise _Damaged(f"{where}: expected the keys {sorted(live)}")
        for key in live:
            _check_like(live[key], saved[key], f"{where}.{key}")
    elif isinstance(live, list):
        if not isinstance(saved, list) or len(saved) != len(live):
            raise _Damaged(f"{where}: expected a list of {len(live)}")
        for index, (a, b) in enumerate(zip(live, saved)):
            _check_like(a, b, f"{where}[{index}]")
    elif isinstance(live, bool):
        if not isinstance(saved, bool):
            raise _Damaged(f"{where}: expected true or false")
    elif isinstance(live, (int, float)):
        if isinstance(saved, bool) or not isinstance(saved, (int, float)):
            raise _Damaged(f"{where}: expected a number")
    elif isinstance(live, str):
        if not isinstance(saved, str):
            raise _Damaged(f"{where}: expected a string")
    elif live is None and saved is not None:
        raise _Damaged(f"{where}: expected null")


def _bytes_tensor(text, where: str):
    import torch

    if not isinstance(text, str):
        raise _Damaged(f"{where}: expected a hex string")
    try:
        data = bytearray.fromhex(text)
    except ValueError:
        raise _Damaged(f"{where}: expected a hex string") from None
    return torch.frombuffer(data, dtype=torch.uint8).clone() if data else torch.empty(0, dtype=torch.uint8)


def _set_rng_state(state: dict, name: str, live_generators: dict[str, Any]) -> None:
    import torch

    try:
        version, internal, gauss = state["python"]
        if not (isinstance(internal, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in internal)):
            raise _Damaged(f"{name}: python state must be a list of integers")
        kind, keys, position, has_gauss, cached = state["numpy"]
        if not (isinstance(keys, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in keys)):
            raise _Damaged(f"{name}: numpy state must be a list of integers")
        torch_state = _bytes_tensor(state["torch"], f"{name} torch")
        cuda_states = [_bytes_tensor(s, f"{name} cuda") for s in state.get("cuda", [])]
        generators = state.get("generators", {})
        if not isinstance(generators, dict):
            raise _Damaged(f"{name}: generators must be an object")
        restored = {key: _bytes_tensor(value, f"{name} generators.{key}") for key, value in generators.items()}
        missing = sorted(set(live_generators) - set(restored))
        if missing:
            raise _Damaged(f"{name}: no state for the generators {missing}")
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(torch_state)
        if cuda_states and torch.cuda.is_available():
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
            else:
                logger.warning("%s holds %d CUDA RNG states for %d devices: CUDA RNGs start afresh",
                               name, len(cuda_states), torch.cuda.device_count())
        for key, generator in live_generators.items():
            generator.set_state(restored[key])
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as error:
        raise _Damaged(f"{name}: bad random state ({type(error).__name__}: {error})") from None


__all__ = [
    "check_supported", "is_checkpoint", "load_training_state", "read_progress", "sample_seed", "save_training_state",
]
