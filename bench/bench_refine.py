"""Throughput of ``evalmuse refine-masks`` on CPU (prints JSON, writes bench/results/refine.json).

Prepares a synthetic EvalMuse-Structure dataset (160-400 px images, 1-3 annotated regions per damaged
image, three annotators) and times ``refine_dataset`` end to end (reading the dataset, drawing the
shapes, SAM, the truth rule, PNG encoding, Parquet writing) with two random-weight SAMs, nothing
downloaded:

* ``tiny``: the test model (64 px input);
* ``base``: the architecture of ``facebook/sam-vit-base`` (ViT-B image encoder at 1024 px), whose
  image encoder is nearly all of the time.

Images without any annotated shape skip SAM (their masks stay empty), so images/s is given over
all images and over the images SAM saw. Each setting runs ``--repeats`` (base: ``--base-repeats``) times;
best and median.

Usage: python bench/bench_refine.py [--images 24] [--base-images 8] [--batch-sizes 1 4] [--repeats 3]
       [--base-repeats 1]
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent


def _dataset(root: Path, images: int, seed: int) -> Path:
    from evalmuse_models.data import prepare_dataset
    from evalmuse_models.data.synthetic import write_structure_release

    write_structure_release(root / f"raw_{images}", num_images=images, seed=seed)
    prepare_dataset(root / f"data_{images}", structure_dir=root / f"raw_{images}", progress=False)
    return root / f"data_{images}"


def _time(refiner, dataset: Path, out: Path, batch_size: int, repeats: int) -> dict:
    from evalmuse_models.data.refine import refine_dataset

    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = refine_dataset(dataset, out, model=refiner, batch_size=batch_size, overwrite=True, resume=False,
                                progress=False)
        runs.append(time.perf_counter() - start)
    best, median = min(runs), statistics.median(runs)
    images = sum(result.num_rows.values())
    prompted = result.summary["images_with_regions"]
    return {
        "batch_size": batch_size, "images_with_regions": prompted, "repeats": repeats, "best_s": round(best, 3),
        "median_s": round(median, 3),
        "images_per_s_best": round(images / best, 3), "images_per_s_median": round(images / median, 3),
        "sam_images_per_s_best": round(prompted / best, 3), "pooled_shrink": round(result.summary["pooled_shrink"], 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images of the dataset refined by the tiny SAM")
    parser.add_argument("--base-images", type=int, default=8, help="images refined by the base-sized SAM")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the tiny SAM per batch size")
    parser.add_argument("--base-repeats", type=int, default=1, help="timed runs of the base-sized SAM per batch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from evalmuse_models.data.refine import SamBoxRefiner
    from evalmuse_models.testing.sam import build_random_sam

    work = Path(tempfile.mkdtemp(prefix="bench_refine_"))
    report: dict = {"machine": machine_info("torch", "transformers", "datasets"), "device": "cpu", "dtype": "float32"}
    try:
        for preset, images, repeats in (("tiny", args.images, args.repeats),
                                        ("base", args.base_images, args.base_repeats)):
            dataset = _dataset(work, images, args.seed)
            model, processor = build_random_sam(preset, seed=args.seed)
            refiner = SamBoxRefiner(model, processor, device="cpu", dtype=torch.float32)
            refiner.name = f"random {preset} SAM"
            if preset == "tiny":  # first-use imports and allocations stay out of the timings
                _time(refiner, dataset, work / "warm", 1, 1)
            entry = {"images": images, "parameters": sum(p.numel() for p in model.parameters()),
                     "input_size": model.config.vision_config.image_size}
            entry["runs"] = [_time(refiner, dataset, work / "out", b, repeats) for b in args.batch_sizes]
            report[preset] = entry
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    from evalmuse_models.utils import atomic_write_text

    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_text(HERE / "results" / "refine.json", text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
