"""Shared fixtures: small synthetic EvalMuse releases in the exact raw formats, and the prepared
dataset built from them. Everything is offline and written under pytest's temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One BLAS/OpenMP thread per test worker (and per subprocess it starts): pytest-xdist already
    # runs one worker per core, and oversubscribed threads make tiny models many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def alignment_release(tmp_path_factory):
    """A small synthetic EvalMuse-40K raw release (train_list.json, val_list.json, test.json, images)."""
    from evalmuse_models.data.synthetic import write_alignment_release

    out = tmp_path_factory.mktemp("alignment_raw")
    write_alignment_release(out, num_prompts=48, seed=0)
    return out


@pytest.fixture(scope="session")
def structure_release(tmp_path_factory):
    """A small synthetic EvalMuse-Structure raw release (train/val/test *_info.json and .jpg images)."""
    from evalmuse_models.data.synthetic import write_structure_release

    out = tmp_path_factory.mktemp("structure_raw")
    write_structure_release(out, num_images=60, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory, alignment_release, structure_release):
    """The Hub-ready dataset folder (Parquet + README configs) built from both synthetic releases."""
    from evalmuse_models.data import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "evalmuse"
    prepare_dataset(out, alignment_dir=alignment_release, structure_dir=structure_release)
    return out
