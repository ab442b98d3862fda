"""EvalMuse alignment model (FGA-BLIP2) inference speed (prints JSON, writes bench/results/align.json).

For each preset: images/s and peak memory of the batched ``model.score(batch_size=B)`` against a loop that
scores one image at a time (``score([image])``), the speed-up ratio, and the largest difference between the
two (they must agree: padding is masked); and the ``t2i-alignment`` pipeline with the same batch size (it
prepares one image at a time and collates), with its largest difference from ``score``. Every image comes
with 4 element phrases; pre-processing (PIL bicubic resize, tokenization) and post-processing (element
matching) are included in the timings.

Random weights, nothing downloaded (the tokenizer is the offline tiny one; the model sizes are the real
ones). On CUDA the model runs in bf16 with batch 64; on CPU in fp32 with a handful of images.

Usage: python bench/bench_align.py [--presets tiny fga-blip2] [--images N] [--loop-images N]
       [--batch-size B] [--device cpu|cuda]
Numbers, never pass/fail. Results of different devices are kept side by side in the JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info
from PIL import Image
from transformers import pipeline

from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
from evalmuse_models.testing.align import build_tiny_processor
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent
WORDS = ["red", "blue", "green", "cube", "sphere", "cat", "dog", "tree", "house", "left", "right", "two", "three"]


def _inputs(n: int, side: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
    prompts, elements = [], []
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(5, 14))))
        prompts.append("a " + " ".join(words) + f" scene {i}")
        elements.append([f"{w} (object)" for w in words[:3]] + ["missing phrase (other)"])
    return images, prompts, elements


def _build(preset: str, device: str) -> EvalMuseAlignModel:
    config = EvalMuseAlignConfig.from_preset(preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = EvalMuseAlignModel(config)
    if device == "cuda":
        # what `from_pretrained(..., dtype=torch.bfloat16)` gives (BLIP-2's fp32 Q-Former rule is fp16-only)
        model = model.to(torch.bfloat16)
    return model.eval()


def _timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return out, seconds, peak


def bench_preset(preset: str, device: str, images_n: int, loop_n: int, batch_size: int) -> dict:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = _build(preset, device)
    processor = build_tiny_processor(EvalMuseAlignConfig.from_preset("tiny"))
    processor = type(processor).from_config(model.config, tokenizer=processor.tokenizer)
    side = max(model.config.vision_config.image_size, 256)
    images, prompts, elements = _inputs(images_n, side)

    # warm-up (kernels, allocator)
    model.score(images[:2], prompts[:2], elements[:2], batch_size=2, processor=processor, show_progress=False)

    batched, batched_s, batched_peak = _timed(
        lambda: model.score(images, prompts, elements, batch_size=batch_size, processor=processor,
                            show_progress=False), device)
    looped, loop_s, loop_peak = _timed(
        lambda: [model.score([images[i]], [prompts[i]], [elements[i]], batch_size=1, processor=processor,
                             show_progress=False)[0] for i in range(loop_n)], device)
    scorer = pipeline("t2i-alignment", model=model, processor=processor, device=model.device)
    piped, piped_s, piped_peak = _timed(
        lambda: scorer(images, prompt=prompts, elements=elements, batch_size=batch_size), device)

    def largest_difference(results, others):
        return max(
            max(abs(a.overall - b["overall"]), *(abs(a.elements[k] - b["elements"][k]) for k in a.elements))
            for a, b in zip(results, others)
        )

    max_diff = largest_difference(batched[:loop_n], [r.to_dict() for r in looped])
    batched_ips = images_n / batched_s
    loop_ips = loop_n / loop_s
    result = {
        "preset": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "bf16" if device == "cuda" else "fp32",
        "image_size": model.config.vision_config.image_size,
        "batch_size": batch_size,
        "batched_images": images_n,
        "batched_images_per_s": round(batched_ips, 3),
        "loop_images": loop_n,
        "loop_images_per_s": round(loop_ips, 3),
        "speedup_batched_vs_loop": round(batched_ips / loop_ips, 2),
        "max_abs_difference_batched_vs_loop": float(max_diff),
        "pipeline_images_per_s": round(images_n / piped_s, 3),
        "max_abs_difference_pipeline_vs_batched": float(largest_difference(batched, piped)),
    }
    if device == "cuda":
        result["peak_gpu_memory_mib_batched"] = round(batched_peak, 1)
        result["peak_gpu_memory_mib_loop"] = round(loop_peak, 1)
        result["peak_gpu_memory_mib_pipeline"] = round(piped_peak, 1)
    else:
        result["peak_rss_mib_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["rss_mib_before_model"] = round(rss_before, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "fga-blip2"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=None, help="images for the batched run (GPU 256, CPU 4)")
    parser.add_argument("--loop-images", type=int, default=None, help="images for the one-by-one loop (GPU 64, CPU 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="GPU 64, CPU 4")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    parser.add_argument("--output", default=str(HERE / "results" / "align.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda"
    images_n = args.images or (256 if gpu else 4)
    loop_n = min(args.loop_images or (64 if gpu else 4), images_n)
    batch_size = args.batch_size or (64 if gpu else 4)

    runs = []
    for preset in args.presets:
        # the tiny model is fast enough for more images everywhere
        n, m = (max(images_n, 64), max(loop_n, 32)) if preset == "tiny" else (images_n, loop_n)
        runs.append(bench_preset(preset, args.device, n, m, batch_size))
        if gpu:
            torch.cuda.empty_cache()
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    key = f"cuda:{torch.cuda.get_device_name(0)}" if gpu else f"cpu ({torch.get_num_threads()} torch threads)"
    output = Path(args.output)
    previous = json.loads(output.read_text()) if output.is_file() else {}
    results = previous.get("results", {}) if isinstance(previous, dict) else {}
    results[key] = {"machine": machine_info("torch", "transformers", device=args.device), "runs": runs, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report = {"benchmark": "align", "results": results}
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    print(json.dumps({"benchmark": "align", key: results[key]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
