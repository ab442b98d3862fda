"""``evalmuse score`` under ``accelerate launch`` with 2 CPU processes: merged output == single process.

accelerate 1.15's ``launch --cpu --num_processes 2`` starts the processes through ``mpirun`` only
(without an MPI hostfile it runs ONE process); the torchrun-based launcher with
``ACCELERATE_USE_CPU=1`` gives two real gloo ranks on any machine, which is what this checks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_score_engine import FakeAlign, FakeStructure, write_image_folder

from evalmuse_models.scoring import read_results, score

TESTS_DIR = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _strip(rows):
    return [{k: v for k, v in row.items() if k != "meta"} for row in rows]


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
        "ACCELERATE_USE_CPU": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "evalmuse_models", "score", *args,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_ranks_with_the_real_tiny_models(tmp_path):
    from evalmuse_models.testing import save_tiny_models

    save_tiny_models(tmp_path)
    folder = tmp_path / "images"
    ids = write_image_folder(folder, count=7)
    models = ["--align", str(tmp_path / "align"), "--structure", str(tmp_path / "structure")]
    _launch([str(folder), "--out", str(tmp_path / "dist.jsonl"), *models, "--batch-size", "3", "--no-progress",
             "--num-workers", "0"])
    score(folder, out=tmp_path / "single.jsonl", align=str(tmp_path / "align"), structure=str(tmp_path / "structure"),
          batch_size=5, progress=False)
    merged, single = read_results(tmp_path / "dist.jsonl"), read_results(tmp_path / "single.jsonl")
    assert [r["id"] for r in merged] == [r["id"] for r in single] == ids
    for a, b in zip(merged, single):
        assert a["status"] == b["status"]
        if a["status"] != "ok":
            continue
        assert a["alignment"]["overall"] == pytest.approx(b["alignment"]["overall"], abs=1e-5)
        assert a["alignment"]["elements"] == pytest.approx(b["alignment"]["elements"], abs=1e-5)
        assert a["structure"]["score"] == pytest.approx(b["structure"]["score"], abs=1e-5)
        assert a["structure"]["mask"] == b["structure"]["mask"]


def test_two_cpu_ranks_merge_to_the_single_process_output(tmp_path):
    folder = tmp_path / "images"
    ids = write_image_folder(folder, count=13)
    out = tmp_path / "dist.jsonl"
    # An interrupted earlier run left 3 rows: the ranks must skip them, not duplicate them.
    score(folder, out=out, align="test_score_engine:make_fake_align", structure="test_score_engine:make_fake_structure",
          limit=3, progress=False)
    done = _launch([str(folder), "--out", str(out), "--align", "test_score_engine:make_fake_align",
                    "--structure", "test_score_engine:make_fake_structure", "--batch-size", "2", "--num-workers", "1",
                    "--no-progress"])
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only rank 0 prints the summary"
    assert summaries[0]["num_processes"] == 2
    assert summaries[0]["skipped"] == 3 and summaries[0]["scored"] == len(ids) - 3
    assert not (tmp_path / "dist.jsonl.shards").exists()

    single = tmp_path / "single.jsonl"
    score(folder, out=single, align=FakeAlign(), structure=FakeStructure(), batch_size=4, progress=False)
    merged = read_results(out)
    assert [r["id"] for r in merged] == ids
    assert _strip(merged) == _strip(read_results(single))
