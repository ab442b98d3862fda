"""End-to-end ``evalmuse score`` throughput with the tiny models on CPU, and the cost of resuming.

Measures, on the synthetic EvalMuse-40K release (images decoded from PNG files on disk):

* images/s of a full scoring run (alignment model, then structure model) with 0 and 2 data-loader
  workers;
* resume overhead: a run interrupted half-way and resumed, against one uninterrupted run, and the
  fixed cost of a resume that finds every row already done.

Prints JSON and writes ``bench/results/score.json``. Usage: ``python bench/bench_score.py [--images N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_models(root: Path) -> tuple[str, str]:
    from evalmuse_models.testing import save_tiny_models

    return tuple(str(folder) for folder in save_tiny_models(root))


def image_folder(root: Path, num_prompts: int) -> Path:
    """The synthetic release's images with a prompts.jsonl (image, prompt, elements, generator)."""
    from evalmuse_models.data.synthetic import write_alignment_release

    release = root / "release"
    write_alignment_release(release, num_prompts=num_prompts, seed=0)
    rows = []
    for name in ("train_list.json", "val_list.json", "test.json"):
        for rec in json.loads((release / name).read_text()):
            rows.append({"image": rec["img_path"], "prompt": rec["prompt"], "generator": rec["img_path"].split("/")[0]})
    (release / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return release


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480, help="images to score per run")
    parser.add_argument("--structure-images", type=int, default=120, help="images for the structure-model runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    from evalmuse_models.scoring import score

    torch.set_num_threads(args.threads)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                                 "python": sys.version.split()[0], "torch": torch.__version__,
                                 "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
                                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                     "images": args.images, "structure_images": args.structure_images, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        align, structure = build_models(root)
        folder = image_folder(root, num_prompts=max(8, args.images // 4))

        def run(out, limit, workers, **models):
            return score(folder, out=root / out, limit=limit, batch_size=args.batch_size, num_workers=workers,
                         device="cpu", progress=False, **models)

        run("warmup.jsonl", args.batch_size, 0, align=align)  # first-call costs (imports, thread pools)
        throughput = {}
        for label, models, n in (("alignment", {"align": align}, args.images),
                                 ("structure", {"structure": structure}, args.structure_images),
                                 ("alignment+structure", {"align": align, "structure": structure},
                                  args.structure_images)):
            throughput[label] = {}
            for workers in (0, 2):
                start = time.perf_counter()
                run(f"{label}-{workers}.jsonl", n, workers, **models)
                seconds = time.perf_counter() - start
                throughput[label][f"workers_{workers}"] = {"seconds": round(seconds, 2),
                                                           "images_per_second": round(n / seconds, 2)}
        results["throughput"] = throughput

        full = timed(lambda: run("full.jsonl", args.images, 0, align=align))
        first_half = timed(lambda: run("resumed.jsonl", args.images // 2, 0, align=align))
        second_half = timed(lambda: run("resumed.jsonl", args.images, 0, align=align))
        noop = timed(lambda: run("resumed.jsonl", args.images, 0, align=align))
        rows_full = (root / "full.jsonl").read_text().count("\n")
        rows_resumed = (root / "resumed.jsonl").read_text().count("\n")
        results["resume"] = {
            "uninterrupted_s": round(full, 2),
            "interrupted_at_half_then_resumed_s": round(first_half + second_half, 2),
            "overhead_s": round(first_half + second_half - full, 2),
            "overhead_fraction": round((first_half + second_half - full) / full, 3),
            "noop_resume_s": round(noop, 2),
            "rows_uninterrupted": rows_full,
            "rows_resumed": rows_resumed,
            "note": "a resume reloads the models and re-reads the results file; overhead_s is that fixed cost",
        }
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(results, indent=1)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "score.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
