"""MLLM alignment scorer and SFT speed (prints JSON, writes bench/results/mllm.json).

- scoring throughput (images/s and element questions/s) with the shared-prefix optimisation (the
  image prefix is encoded once, its key/value cache reused for every question) and without it
  (every question is a full sequence that re-encodes the image); the two must agree, the largest
  score difference is reported;
- SFT optimiser steps/s of the TRL ``SFTTrainer`` + LoRA recipe (soft labels, chain of thought).

Random weights, nothing downloaded. On CUDA the default preset is ``7b`` (the real
Qwen2.5-VL-7B architecture, bf16, 448-px images); on CPU ``small`` (float32, 224-px images).

Usage: python bench/bench_mllm.py [--preset tiny|small|7b] [--images 16] [--elements 8]
       [--batch-size 8] [--sft-steps 6] [--sft-batch-size 2]
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evalmuse_models.mllm import MLLMAlignmentScorer
from evalmuse_models.mllm.data import (
    ConversationOptions,
    build_sft_dataset,
    records_from_rows,
)
from evalmuse_models.testing.mllm import PRESETS, build_tiny_qwen2_5_vl
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent
CATEGORIES = ["object", "color", "counting", "spatial", "activity", "material", "animal", "human"]


def _synthetic(n: int, elements: int, side: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
    prompts = [f"a photo of {k + 2} red cats sitting on a wooden table next to a window, scene {i}"
               for i, k in enumerate(rng.integers(0, 5, n))]
    keys = [[f"thing number {j} ({CATEGORIES[j % len(CATEGORIES)]})" for j in range(elements)] for _ in range(n)]
    return images, prompts, keys


def bench_scoring(model, processor, images, prompts, keys, batch_size, device, repeats=3):
    out = {}
    results = {}
    for share in (True, False):
        scorer = MLLMAlignmentScorer(model, processor, share_prefix=share, question_batch_size=64)
        scorer.score(images[:batch_size], prompts[:batch_size], keys[:batch_size], batch_size=batch_size)  # warm-up
        times = []
        for _ in range(repeats):  # best of `repeats`: the machine may be shared
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = scorer.score(images, prompts, keys, batch_size=batch_size)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dt = min(times)
        questions = sum(len(k) + 1 for k in keys)
        name = "shared_prefix" if share else "full_sequences"
        out[name] = {
            "seconds": round(dt, 3),
            "images_per_s": round(len(images) / dt, 3),
            "questions_per_s": round(questions / dt, 2),
            "element_questions_per_s": round(sum(len(k) for k in keys) / dt, 2),
        }
        results[name] = res
    a, b = results["shared_prefix"], results["full_sequences"]
    diff = max(
        max(abs(x.overall - y.overall) for x, y in zip(a, b)),
        max((abs(x.elements[k] - y.elements[k]) for x, y in zip(a, b) for k in x.elements), default=0.0),
    )
    out["speedup"] = round(out["full_sequences"]["seconds"] / out["shared_prefix"]["seconds"], 2)
    out["max_abs_score_diff"] = float(f"{diff:.3g}")
    return out


def bench_sft(preset, steps, batch_size, side, device, seed=0):
    from trl import ModelConfig

    from evalmuse_models.mllm.train import MLLMRecipeArguments, MLLMSFTConfig, make_trainer

    rng = np.random.default_rng(seed)
    n = steps * batch_size
    rows = []
    for i in range(n):
        votes = [int(v) for v in rng.integers(1, 6, 3)]
        rows.append({
            "image": Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)),
            "prompt": f"two red cats on a wooden table, scene {i}", "prompt_type": "real" if i % 2 else "synthetic",
            "total_score": float(np.mean(votes)), "total_score_votes": votes,
            "elements": [{"phrase": f"thing {j}", "category": CATEGORIES[j % 8], "score": float(rng.integers(0, 2)),
                          "votes": [1, 0, 1]} for j in range(4)],
        })
    train_ds = build_sft_dataset(records_from_rows(rows), ConversationOptions(chain_of_thought=True, soft_labels=True,
                                                                              prompt_type_hint=True))
    bf16 = device == "cuda"
    model, processor = build_tiny_qwen2_5_vl(preset, seed=seed, dtype=torch.bfloat16 if bf16 else None,
                                             device=device)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = MLLMRecipeArguments(soft_labels=True, chain_of_thought=True, lighting=0.2)
        training = MLLMSFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=1, logging_steps=10_000, save_steps=10_000, bf16=bf16)
        model_args = ModelConfig(model_name_or_path=f"tiny:{preset}", use_peft=True)
        trainer = make_trainer(recipe, training, model_args, train_ds, model, processor)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON report
            metrics = trainer.train().metrics
        dt = time.perf_counter() - t0
    return {
        "steps": steps,
        "per_device_batch_size": batch_size,
        "seconds": round(dt, 3),
        "steps_per_s": round(steps / dt, 3),
        "samples_per_s": round(steps * batch_size / dt, 3),
        "train_loss": round(float(metrics["train_loss"]), 4),
        "trainable_params": int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)),
    }


def main(argv=None) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="7b" if device == "cuda" else "small")
    parser.add_argument("--images", type=int, default=32 if device == "cuda" else 8)
    parser.add_argument("--elements", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8 if device == "cuda" else 4)
    parser.add_argument("--sft-steps", type=int, default=10 if device == "cuda" else 4)
    parser.add_argument("--sft-batch-size", type=int, default=4 if device == "cuda" else 2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="scoring timings are the best of this many runs")
    parser.add_argument("--output", default=str(HERE / "results" / "mllm.json"))
    args = parser.parse_args(argv)
    if device == "cpu":
        torch.set_num_threads(args.threads)
    side = 448 if args.preset == "7b" else 224
    torch.manual_seed(0)
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if device == "cuda" else None
    model, processor = build_tiny_qwen2_5_vl(args.preset, seed=0, dtype=dtype, device=device)
    build_s = time.perf_counter() - t0
    images, prompts, keys = _synthetic(args.images, args.elements, side)
    grid = processor.image_processor(images=images[:1], return_tensors="pt")["image_grid_thw"][0]
    report = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "model": {
            "preset": args.preset,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "build_s": round(build_s, 2),
            "image_side": side,
            "image_tokens": int(grid.prod()) // 4,
        },
        "scoring": {
            "images": args.images,
            "elements_per_image": args.elements,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            **bench_scoring(model, processor, images, prompts, keys, args.batch_size, device, args.repeats),
        },
    }
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    report["sft"] = bench_sft(args.preset, args.sft_steps, args.sft_batch_size, side, device)
    if device == "cpu":
        report["note"] = ("CPU figures on a random small config; GPU (Qwen2.5-VL-7B, bf16) numbers were not "
                          "measured on this machine: run this script on a GPU to record them.")
    text = json.dumps(report, indent=2)
    print(text)
    atomic_write_text(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
