"""Resuming a training run never unpickles what it finds in a checkpoint folder.

A checkpoint folder is input like any other: whoever can write into ``output_dir`` (a shared run
folder, a downloaded run, an old demo folder) must not be able to run code in the next resume. Each
test plants a pickle whose unpickling touches a marker file under names a resume might read
(accelerate's ``custom_checkpoint_*.pkl``, ``random_states_*.pkl``, ``optimizer.bin``, ..., the
Trainer's ``rng_state*.pth``, ``optimizer.pt``, ... and the files of a checkpoint proper) and checks that
the marker never appears: a planted file that is never read is ignored (the resume gives what a clean
resume gives), and one the resume would read is refused with a one-line error. A genuine interrupted
run still resumes at the right step to the same weights as an uninterrupted one.

The alignment recipe runs on transformers' ``Trainer``, which loads torch files with
``weights_only=True``; ``evalmuse_models.training.callbacks.check_checkpoint`` opens each of them that way
before the Trainer does, so that a bad file stops the run with one line naming the folder.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from evalmuse_models.training import align as align_training
from evalmuse_models.training import structure as structure_training
from evalmuse_models.training.align import AlignRecipeArguments, AlignTrainingArguments, train_align
from evalmuse_models.training.structure import (
    StructureRecipeArguments,
    StructureTrainingArguments,
    train_structure,
)
from evalmuse_models.utils import UserInputError

torch.set_num_threads(1)

#: Every file name accelerate's ``load_state`` (or an older version of these loops) reads from a folder.
ACCELERATE_NAMES = (
    "pytorch_model.bin", "pytorch_model_1.bin", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
    "scheduler.bin", "scheduler_1.bin", "sampler.bin", "dl_state_dict.bin", "scaler.pt",
    "random_states_0.pkl", "random_states_1.pkl", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
)
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


class TouchOnUnpickle:
    """Unpickling this object touches ``marker`` (what a hostile pickle could do with any callable)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path(self.marker).touch, ())


def plant(path: pathlib.Path, marker: pathlib.Path) -> None:
    """A hostile pickle at ``path``: torch's zip format for the names torch.load reads, a bare pickle otherwise."""
    if path.suffix in PICKLE_SUFFIXES:
        torch.save(TouchOnUnpickle(marker), path)
    else:
        path.write_bytes(pickle.dumps(TouchOnUnpickle(marker)))


def test_the_planted_pickle_is_live(tmp_path):
    """The payload really runs when unpickled the unsafe way (so its absence later means something)."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "x.pkl", marker)
    torch.load(tmp_path / "x.pkl", weights_only=False)
    assert marker.exists()
    marker.unlink()
    plant(tmp_path / "x.json", marker)
    with open(tmp_path / "x.json", "rb") as handle:
        pickle.load(handle)
    assert marker.exists()


def plant_extras(checkpoint: pathlib.Path, marker: pathlib.Path) -> list[str]:
    """Plant the hostile pickle under every accelerate name absent from ``checkpoint``, and over the
    custom-object and RNG pickles an older checkpoint holds (what accelerate unpickled after the weights)."""
    names = [n for n in ACCELERATE_NAMES
             if not (checkpoint / n).exists() or n.startswith(("custom_checkpoint_", "random_states_"))]
    for name in names:
        plant(checkpoint / name, marker)
    return names


def weights(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ---------------------------------------------------------------------------------------------- alignment

#: Names a Trainer resume may read (besides the checkpoint's own files): torch files it loads with
#: ``weights_only=True`` when present.
TRAINER_TORCH_NAMES = ("pytorch_model.bin", "rng_state_0.pth", "rng_state_1.pth", "scaler.pt")


def align_args(dataset, out, **overrides):
    """``(recipe, training)`` arguments of a 2-step tiny alignment run checkpointing every 2 steps."""
    recipe = {"dataset_dir": str(dataset), "preset": "tiny", "freeze_vision": overrides.pop("freeze_vision", True),
              "augment": overrides.pop("augment", True), "torch_num_threads": 1}
    values = {
        "output_dir": str(out), "learning_rate": 1e-3, "warmup_steps": 2, "per_device_train_batch_size": 48,
        "per_device_eval_batch_size": 16, "num_train_epochs": 50, "seed": 0, "disable_tqdm": True,
        "eval_on_start": False, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 2, "max_steps": 2,
        "logging_steps": 1, "use_cpu": True,
    }
    values.update(overrides)
    return AlignRecipeArguments(**recipe), AlignTrainingArguments(**values)


@pytest.fixture(scope="module")
def align_run(prepared_dataset, tmp_path_factory):
    """A finished 2-step alignment run with its checkpoint ``checkpoint-2`` (copied by each test)."""
    out = tmp_path_factory.mktemp("align_run") / "run"
    train_align(*align_args(prepared_dataset, out))
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    return out


def test_align_resume_ignores_planted_pickles_it_never_reads(prepared_dataset, align_run, tmp_path):
    marker = tmp_path / "pwned"
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    shutil.copytree(align_run, clean)
    shutil.copytree(align_run, planted)
    names = [n for n in ACCELERATE_NAMES if n.endswith(".pkl")]  # what accelerate's load_state unpickled
    for name in names:
        plant(planted / "checkpoint-2" / name, marker)

    expected = train_align(*align_args(prepared_dataset, clean, max_steps=4))
    got = train_align(*align_args(prepared_dataset, planted, max_steps=4))
    assert not marker.exists(), "a resume unpickled a planted file"
    assert got["steps"] == expected["steps"] == 4 and got["resumed_from"].endswith("checkpoint-2")
    assert got["train_loss"] == expected["train_loss"]
    assert_same_weights(weights(planted / "model"), weights(clean / "model"))


@pytest.mark.parametrize("name", TRAINER_TORCH_NAMES + ("optimizer.bin", "scheduler.bin"))
def test_align_resume_refuses_a_planted_torch_file(prepared_dataset, align_run, tmp_path, name):
    """A planted torch file the Trainer might load is opened with ``weights_only`` first, and refused."""
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(align_run, run)
    plant(run / "checkpoint-2" / name, marker)
    with pytest.raises(UserInputError, match="checkpoint-2") as caught:
        train_align(*align_args(prepared_dataset, run, max_steps=4))
    assert name in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists() and not (run / "checkpoint-4").exists()


def test_align_resume_refuses_a_checkpoint_file_replaced_by_a_pickle(prepared_dataset, align_run, tmp_path):
    """Each file of the checkpoint in turn is a hostile pickle: nothing is ever unpickled; the files a
    resume reads (weights, optimizer, scheduler, RNG states, trainer state, JSON) stop it with a clear
    error, the others (the pickled ``training_args.bin`` the Trainer writes, remote code) are never read."""
    marker = tmp_path / "pwned"
    files = sorted(p.name for p in (align_run / "checkpoint-2").iterdir())
    refused = []
    for name in files:
        run = tmp_path / name
        shutil.copytree(align_run, run)
        plant(run / "checkpoint-2" / name, marker)
        try:
            train_align(*align_args(prepared_dataset, run, max_steps=4))
        except UserInputError as error:
            assert "checkpoint-2" in str(error) and name in str(error) and "\n" not in str(error)
            assert not (run / "checkpoint-4").exists()
            refused.append(name)
        assert not marker.exists(), f"resuming with a hostile {name} unpickled it"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= set(refused)
    assert "training_args.bin" not in refused


def test_align_resume_refuses_an_unfinished_checkpoint(prepared_dataset, align_run, tmp_path):
    """A folder without the Trainer's state (cut short, or in accelerate's pickle layout) is not read at all."""
    marker = tmp_path / "pwned"
    run = tmp_path / "old"
    shutil.copytree(align_run, run)
    checkpoint = run / "checkpoint-2"
    for path in checkpoint.iterdir():
        if path.name != "model.safetensors":
            path.unlink()
    for name in ACCELERATE_NAMES + TRAINER_TORCH_NAMES:
        plant(checkpoint / name, marker)
    with pytest.raises(UserInputError, match="resume_from_checkpoint none") as caught:
        train_align(*align_args(prepared_dataset, run, max_steps=4))
    assert str(checkpoint) in str(caught.value)
    assert not marker.exists()
    # Without resuming, the run starts over and never looks at the folder.
    metrics = train_align(*align_args(prepared_dataset, run, max_steps=2, resume_from_checkpoint="none"))
    assert metrics["steps"] == 2 and not marker.exists()


class Interrupted(Exception):
    pass


def crash_on_call(monkeypatch, cls, when, only_train=False):
    """Make the collator ``cls`` raise :class:`Interrupted` on its ``when``-th (training) call."""
    real = cls.__call__
    calls = {"n": 0}

    def call(self, rows):
        if not only_train or self.train:
            calls["n"] += 1
            if calls["n"] == when:
                raise Interrupted
        return real(self, rows)

    monkeypatch.setattr(cls, "__call__", call)
    return real


def test_interrupted_align_run_resumes_to_the_same_weights(prepared_dataset, tmp_path, monkeypatch):
    """Interrupted mid-epoch after the checkpoint-4 (the data order, the augmentation and dropout RNGs, the
    optimizer and the LR schedule all restored by the Trainer), the resumed run equals an uninterrupted one."""
    args = {"max_steps": 7, "save_steps": 2, "augment": True, "freeze_vision": False}
    straight = train_align(*align_args(prepared_dataset, tmp_path / "straight", **args))
    real = crash_on_call(monkeypatch, align_training.AlignCollator, 6)
    with pytest.raises(Interrupted):
        train_align(*align_args(prepared_dataset, tmp_path / "resumed", **args))
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["epoch"] != int(state["epoch"])  # a mid-epoch checkpoint
    monkeypatch.setattr(align_training.AlignCollator, "__call__", real)
    resumed = train_align(*align_args(prepared_dataset, tmp_path / "resumed", **args))
    assert resumed["steps"] == straight["steps"] == 7
    assert resumed["train_loss"] == straight["train_loss"]
    assert_same_weights(weights(tmp_path / "resumed" / "model"), weights(tmp_path / "straight" / "model"))
    assert resumed["final"] == straight["final"]


# ---------------------------------------------------------------------------------------------- structure


def structure_args(dataset, out, **overrides) -> tuple[StructureRecipeArguments, StructureTrainingArguments]:
    """``(recipe, training)`` arguments of a 2-step tiny structure run on the Trainer, checkpointing every 2
    steps (``overrides`` go to whichever of the two has the field)."""
    recipe = {"dataset_dir": str(dataset), "preset": "tiny", "max_train_samples": 12, "eval_split": None,
              "evaluate_test": False, "threshold_search": False, "keep_checkpoints": True, "num_threads": 1}
    values = {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "steps",
              "save_steps": 2, "logging_steps": 1, "seed": 0, "disable_tqdm": True, "use_cpu": True}
    for key, value in overrides.items():
        (recipe if key in StructureRecipeArguments.__dataclass_fields__ else values)[key] = value
    return StructureRecipeArguments(**recipe), StructureTrainingArguments(**values)


@pytest.fixture(scope="module")
def structure_run(prepared_dataset, tmp_path_factory):
    """A finished 2-step structure run with its checkpoint ``checkpoint-2`` (copied by each test)."""
    out = tmp_path_factory.mktemp("structure_run") / "run"
    train_structure(*structure_args(prepared_dataset, out))
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    return out


def test_structure_resume_ignores_planted_pickles_it_never_reads(prepared_dataset, structure_run, tmp_path):
    marker = tmp_path / "pwned"
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    shutil.copytree(structure_run, clean)
    shutil.copytree(structure_run, planted)
    for name in ACCELERATE_NAMES:
        if name.endswith(".pkl"):  # what accelerate's load_state unpickled
            plant(planted / "checkpoint-2" / name, marker)

    expected = train_structure(*structure_args(prepared_dataset, clean, max_steps=4))
    got = train_structure(*structure_args(prepared_dataset, planted, max_steps=4))
    assert not marker.exists(), "a resume unpickled a planted file"
    assert got["train"]["steps"] == expected["train"]["steps"] == 4
    assert got["train"]["resumed_from"].endswith("checkpoint-2")
    assert got["train"]["loss_last"] == expected["train"]["loss_last"]
    assert_same_weights(weights(planted / "model"), weights(clean / "model"))


def test_structure_resume_refuses_planted_torch_files(prepared_dataset, structure_run, tmp_path):
    """A planted torch file the Trainer might load is opened with ``weights_only`` first, and refused."""
    marker = tmp_path / "pwned"
    for name in ("pytorch_model.bin", "optimizer.bin", "rng_state_0.pth", "scaler.pt"):
        run = tmp_path / name
        shutil.copytree(structure_run, run)
        plant(run / "checkpoint-2" / name, marker)
        with pytest.raises(UserInputError, match="checkpoint-2") as caught:
            train_structure(*structure_args(prepared_dataset, run, max_steps=4))
        assert name in str(caught.value) and "\n" not in str(caught.value)
        assert not marker.exists() and not (run / "checkpoint-4").exists()


def test_structure_resume_refuses_a_checkpoint_file_replaced_by_a_pickle(prepared_dataset, structure_run, tmp_path):
    """Each file of the checkpoint in turn is a hostile pickle: nothing is ever unpickled; the files a resume
    reads stop it with a one-line error, the others are never read."""
    marker = tmp_path / "pwned"
    files = sorted(p.name for p in (structure_run / "checkpoint-2").iterdir())
    refused = []
    for name in files:
        run = tmp_path / name
        shutil.copytree(structure_run, run)
        plant(run / "checkpoint-2" / name, marker)
        try:
            train_structure(*structure_args(prepared_dataset, run, max_steps=4))
        except UserInputError as error:
            assert "checkpoint-2" in str(error) and name in str(error) and "\n" not in str(error)
            assert not (run / "checkpoint-4").exists()
            refused.append(name)
        assert not marker.exists(), f"resuming with a hostile {name} unpickled it"
    # never read: the pickled training arguments, the model's remote code (saved, not imported)
    assert refused == [n for n in files if n != "training_args.bin" and not n.endswith(".py")]
    assert {"config.json", "model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt",
            "trainer_state.json"} <= set(refused)


def test_interrupted_structure_run_resumes_to_the_same_weights(prepared_dataset, tmp_path, monkeypatch):
    """Interrupted mid-epoch after checkpoint-4 (the data order, the per-sample flips, the optimizer and the
    LR schedule all restored): the resumed run equals an uninterrupted one."""
    args = {"max_steps": 7, "hflip": True, "keep_checkpoints": False}
    straight = train_structure(*structure_args(prepared_dataset, tmp_path / "straight", **args))
    # without evaluation every batch is a training one; the loader reads one batch ahead within an epoch
    real = crash_on_call(monkeypatch, structure_training.StructureCollator, 6)
    with pytest.raises(Interrupted):
        train_structure(*structure_args(prepared_dataset, tmp_path / "resumed", **args))
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["epoch"] != int(state["epoch"])  # 3 batches an epoch: mid-epoch
    monkeypatch.setattr(structure_training.StructureCollator, "__call__", real)
    resumed = train_structure(*structure_args(prepared_dataset, tmp_path / "resumed", **args))
    assert resumed["train"]["steps"] == straight["train"]["steps"] == 7
    assert resumed["train"]["loss_last"] == straight["train"]["loss_last"]  # the loss of step 7
    assert_same_weights(weights(tmp_path / "resumed" / "model"), weights(tmp_path / "straight" / "model"))


# ---------------------------------------------------------------------------------------------- demo


class StopAfterAlign(Exception):
    pass


@pytest.mark.slow
def test_demo_resume_never_unpickles_a_planted_checkpoint_file(tmp_path, monkeypatch, capsys):
    """``evalmuse demo`` resumes its alignment run from ``runs/align/checkpoint-N``: a pickle planted
    there is never unpickled."""
    from evalmuse_models.cli import main

    def stop(*args, **kwargs):
        raise StopAfterAlign

    monkeypatch.setattr(structure_training, "train_structure", stop)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--seed", "1", "--device", "cpu", "--num-prompts", "12",
            "--num-structure-images", "60", "--align-steps", "3", "--structure-epochs", "1", "--no-progress"]
    with pytest.raises(StopAfterAlign):
        main(argv)
    checkpoint = out / "runs" / "align" / "checkpoint-3"
    assert checkpoint.is_dir()
    (out / ".steps" / "align").unlink()  # the rerun resumes the alignment run from its checkpoint
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):  # what accelerate's load_state unpickles
        plant(checkpoint / name, marker)
    with pytest.raises(StopAfterAlign):
        main(argv)
    assert not marker.exists(), "the demo's resume unpickled a planted file"
    assert (out / ".steps" / "align").is_file()
