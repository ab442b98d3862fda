"""Throughput of ``evalmuse prepare-data`` (prints JSON, writes bench/results/prepare_data.json).

Writes a synthetic EvalMuse-40K release of about 5,000 records and an EvalMuse-Structure release
of 1,000 images (160-400 px), then times ``prepare_dataset`` on each with 1 and 2 (or more)
worker threads, reporting records/s. Every record is parsed and validated, every image fully
decoded, structure masks and 512x512 heatmaps rasterised and PNG-encoded, Parquet written.
Each setting runs ``--repeats`` times (default 3); the best and the median are reported, since
a shared machine makes single timings noisy.

Usage: python bench/bench_prepare_data.py [--alignment-records 5000] [--structure-images 1000]
       [--workers 1 2] [--repeats 3] [--work-dir DIR]
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from evalmuse_models.data import (
    find_alignment_files,
    find_structure_files,
    prepare_dataset,
)
from evalmuse_models.data.synthetic import (
    DEFAULT_GENERATORS,
    write_alignment_release,
    write_structure_release,
)
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent


def _count(raw: Path, finder) -> int:
    total = 0
    for path in finder(raw).values():
        total += len(json.loads(path.read_text(encoding="utf-8")))
    return total


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _time_prepare(out: Path, records: int, repeats: int, **kwargs) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = prepare_dataset(out, progress=False, overwrite=True, resume=False, **kwargs)
        times.append(time.perf_counter() - start)
        assert result.num_records == records, (result.num_records, records)
    best, median = min(times), statistics.median(times)
    return {"best_s": round(best, 3), "median_s": round(median, 3), "repeats": repeats,
            "records_per_s_best": round(records / best, 1), "records_per_s_median": round(records / median, 1),
            "output_mb": round(_size(out) / 2**20, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alignment-records", type=int, default=5000)
    parser.add_argument("--structure-images", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best and median reported)")
    parser.add_argument("--work-dir", default=None, help="keep the releases here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import cv2
    import datasets
    import PIL

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    # about 4.6 images per prompt with the default generators (extra _1/_2 images)
    per_prompt = len(DEFAULT_GENERATORS) * (1 + 0.12 * 1.25)
    num_prompts = max(1, round(args.alignment_records / per_prompt))
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "datasets": datasets.__version__,
            "pillow": PIL.__version__,
            "opencv": cv2.__version__,
        }
    }
    try:
        al_raw, st_raw = work / "alignment_raw", work / "structure_raw"
        start = time.perf_counter()
        write_alignment_release(al_raw, num_prompts=num_prompts, seed=args.seed)
        al_gen = time.perf_counter() - start
        start = time.perf_counter()
        write_structure_release(st_raw, num_images=args.structure_images, seed=args.seed)
        st_gen = time.perf_counter() - start
        al_records, st_records = _count(al_raw, find_alignment_files), _count(st_raw, find_structure_files)
        # warm-up: first-use imports (pyarrow.parquet, huggingface_hub, cv2) stay out of the timings
        write_alignment_release(work / "warm_al", num_prompts=4, seed=args.seed)
        write_structure_release(work / "warm_st", num_images=3, seed=args.seed)
        prepare_dataset(work / "warm_out", alignment_dir=work / "warm_al", structure_dir=work / "warm_st",
                        progress=False, overwrite=True)
        report["alignment"] = {
            "records": al_records, "raw_mb": round(_size(al_raw) / 2**20, 2),
            "synthetic_write_s": round(al_gen, 2),
        }
        report["structure"] = {
            "records": st_records, "raw_mb": round(_size(st_raw) / 2**20, 2),
            "synthetic_write_s": round(st_gen, 2),
        }
        for workers in args.workers:
            report["alignment"][f"workers_{workers}"] = _time_prepare(
                work / "out_alignment", al_records, args.repeats, alignment_dir=al_raw, num_workers=workers)
            report["structure"][f"workers_{workers}"] = _time_prepare(
                work / "out_structure", st_records, args.repeats, structure_dir=st_raw, num_workers=workers)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_text(HERE / "results" / "prepare_data.json", text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
