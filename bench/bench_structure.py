"""EvalMuse structure model speed and memory (prints JSON, writes bench/results/structure.json).

For each preset (default ``tiny`` and ``hnu-vpai``, random weights, real sizes, nothing downloaded):

- inference: images/s of ``model.predict(images, batch_size=B)`` (PIL pre-processing, forward,
  heatmap threshold, region labelling and the mask at the original size included) and of the bare
  forward pass on ready tensors;
- training: images/s of forward + backward + AdamW step with frozen backbones (only fusion,
  decoder and score head train), 512 x 512 heatmap and score targets;
- peak memory: CUDA ``max_memory_allocated`` on GPU, the process's peak RSS on CPU (cumulative over
  the presets run before, so the first preset's figure is the cleanest; run one preset per call for
  clean CPU numbers).

On CUDA the model runs in bf16 with channels_last and large batches; on CPU in fp32 with a handful
of images.

Usage: python bench/bench_structure.py [--presets tiny hnu-vpai] [--images N] [--batch-size B]
       [--train-steps N] [--device cpu|cuda] [--threads N]
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

from evalmuse_models.models.evalmuse_structure import (
    EvalMuseStructureConfig,
    EvalMuseStructureModel,
    EvalMuseStructureProcessor,
)
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent

# (images, batch) for inference and (steps, batch) for training, per device and preset
DEFAULTS = {
    "cpu": {"tiny": (32, 8, 10, 8), "hnu-vpai": (2, 1, 2, 1)},
    "cuda": {"tiny": (1024, 256, 50, 256), "hnu-vpai": (256, 64, 20, 32)},
}


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(512, 512), (768, 512), (1024, 1024), (640, 960)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_preset(name: str, device: str, n_images: int, batch: int, train_steps: int, train_batch: int) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = EvalMuseStructureConfig.from_preset(name, freeze_vit=True, freeze_cnn=True)
    t0 = time.perf_counter()
    model = EvalMuseStructureModel(config).to(device=device, dtype=dtype).eval()
    if device == "cuda" and model.cnn is not None:
        model.cnn.to(memory_format=torch.channels_last)
    build_s = time.perf_counter() - t0
    processor = EvalMuseStructureProcessor.from_model_config(config)
    images = _images(n_images)
    result: dict = {
        "params_total_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "image_size": config.image_size,
        "dtype": str(dtype).replace("torch.", ""),
        "build_seconds": build_s,
    }

    # inference through predict() (pre- and post-processing included); one warm-up batch first
    model.predict(images[:batch], batch_size=batch, processor=processor, show_progress=False)
    _sync(device)
    t0 = time.perf_counter()
    out = model.predict(images, batch_size=batch, processor=processor, show_progress=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    result["predict"] = {"images": len(out), "batch_size": batch, "seconds": seconds, "images_per_second": len(out) / seconds}

    # bare forward on ready tensors
    pixels = processor(images=images[:batch], return_tensors="pt")["pixel_values"].to(device, dtype)
    if device == "cuda":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    reps = max(1, n_images // batch)
    with torch.no_grad():
        model(pixel_values=pixels)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(pixel_values=pixels)
        _sync(device)
    seconds = time.perf_counter() - t0
    result["forward"] = {"images": reps * batch, "batch_size": batch, "seconds": seconds,
                         "images_per_second": reps * batch / seconds}
    result["inference_peak_memory_mb"] = _peak_mb(device)

    # training with frozen backbones
    model.float().train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(train_batch, 3, config.image_size, config.image_size, device=device)
    heat = torch.rand(train_batch, 512, 512, device=device)
    scores = torch.rand(train_batch, device=device) * 4 + 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with autocast:
            loss = model(pixel_values=pixels, heatmap_labels=heat, score_labels=scores).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(train_steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t0
    result["train_frozen_backbones"] = {
        "steps": train_steps, "batch_size": train_batch, "seconds": seconds,
        "images_per_second": train_steps * train_batch / seconds,
        "autocast": "bf16" if device == "cuda" else "none (fp32)",
    }
    result["train_peak_memory_mb"] = _peak_mb(device)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "hnu-vpai"])
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    presets = {}
    for name in args.presets:
        images, batch, steps, train_batch = DEFAULTS[args.device].get(name, DEFAULTS[args.device]["tiny"])
        presets[name] = bench_preset(
            name, args.device, args.images or images, args.batch_size or batch,
            args.train_steps or steps, args.batch_size or train_batch,
        )
        print(json.dumps({name: presets[name]}), flush=True, file=sys.stderr)
    report = {"machine": machine_info("torch", "transformers", "timm", device=args.device), "presets": presets}
    path = HERE / "results" / "structure.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing[args.device] = report
    atomic_write_text(path, json.dumps(existing, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
