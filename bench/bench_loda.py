"""HNU-VPAI LoDa structure-score model speed, memory and conversion time (prints JSON, writes
bench/results/loda.json).

For each preset (default ``tiny`` and ``hnu-vpai``, random backbones, real sizes, nothing downloaded):

- parameters: the whole model and its trainable part (``learner``; the published model has ~29.28 M);
- inference: images/s of the bare forward pass on ready 518 x 518 tensors (``--repeats`` timings, the
  fastest kept: the least disturbed on a shared machine), and the milliseconds per image of the
  processor (resize, crop, normalise) on images of four sizes (0.25-1 MP);
- peak memory of the inference: CUDA ``max_memory_allocated`` on GPU, the process's peak RSS on CPU
  (cumulative over what ran before in the process: run one preset per call for clean CPU numbers);
- conversion: a checkpoint in the published layout (``{"learner", "bn_buffer"}``, random tensors) written
  to a temporary folder and converted by ``convert_hnu_vpai`` with random backbones (build, check, load,
  save safetensors): seconds, the folder's size, and the peak RSS after it.

On CUDA the forward runs in bf16; on CPU in fp32 with a handful of images.

Usage: python bench/bench_loda.py [--presets tiny hnu-vpai] [--images N] [--batch-size B] [--repeats R]
       [--no-convert] [--device cpu|cuda] [--threads N]
Numbers, never pass/fail. Results of different devices are kept side by side in the JSON, and presets not
run keep their earlier figures (each preset records when it was measured).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random backbones: nothing is ever downloaded

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info
from PIL import Image

from evalmuse_models.convert.hnu_vpai import convert_hnu_vpai
from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel, LodaProcessor
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent

# (images, batch, repeats) per device and preset
DEFAULTS = {
    "cpu": {"tiny": (32, 8, 5), "hnu-vpai": (2, 1, 2)},
    "cuda": {"tiny": (1024, 256, 3), "hnu-vpai": (256, 32, 3)},
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(512, 512), (768, 512), (1024, 1024), (640, 960)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


def bench_inference(model: LodaModel, n: int, batch: int, repeats: int, device: str, dtype) -> dict:
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(min(batch, n - s), 3, size, size, generator=generator).to(device, dtype) for s in range(0, n, batch)
    ]
    with torch.no_grad():
        model(pixel_values=batches[0])  # warm-up
        timings = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for pixels in batches:
                model(pixel_values=pixels)
            _sync(device)
            timings.append(time.perf_counter() - t0)
    seconds = min(timings)
    return {"images": n, "batch_size": batch, "repeats": repeats, "seconds": seconds, "images_per_second": n / seconds,
            "ms_per_image": 1000 * seconds / n}


def bench_processor(config: LodaConfig, n: int = 8) -> dict:
    processor = LodaProcessor.from_model_config(config)
    images = _images(n)
    processor(images=images[:1])
    t0 = time.perf_counter()
    processor(images=images)
    return {"ms_per_image": 1000 * (time.perf_counter() - t0) / n, "image_sizes": sorted({im.size for im in images})}


def bench_conversion(model: LodaModel, preset: str) -> dict:
    checkpoint = {
        "learner": model.learner.state_dict(),
        "bn_buffer": {k: v for k, v in model.feature_model.state_dict().items() if "running" in k or "batches" in k},
    }
    with tempfile.TemporaryDirectory(prefix="bench-loda-") as tmp:
        torch.save(checkpoint, Path(tmp) / "loda.pt")
        del checkpoint
        checkpoint_mb = (Path(tmp) / "loda.pt").stat().st_size / 2**20
        t0 = time.perf_counter()
        report = convert_hnu_vpai(Path(tmp) / "loda.pt", Path(tmp) / "out", random_backbones=True, preset=preset)
        seconds = time.perf_counter() - t0
        folder_mb = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir()) / 2**20
    return {
        "seconds": seconds,
        "checkpoint_mb": checkpoint_mb,
        "output_mb": folder_mb,
        "tensors": len(report.learner) + len(report.bn_buffer),
        "peak_rss_mb_after": _peak_mb("cpu"),
    }


def bench_preset(name: str, device: str, n: int, batch: int, repeats: int, convert: bool) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = LodaConfig.from_preset(name)
    t0 = time.perf_counter()
    model = LodaModel(config).eval()
    build_s = time.perf_counter() - t0
    result: dict = {
        "params_total_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_trainable_m": sum(p.numel() for p in model.learner.parameters()) / 1e6,
        "params_trainable": sum(p.numel() for p in model.learner.parameters()),
        "image_size": config.image_size,
        "dtype": str(dtype).replace("torch.", ""),
        "build_seconds": build_s,
        "load_average_before": os.getloadavg()[0],  # a shared machine: other work slows every figure
    }
    result["forward"] = bench_inference(model.to(device=device, dtype=dtype), n, batch, repeats, device, dtype)
    result["inference_peak_memory_mb"] = _peak_mb(device)
    result["processor"] = bench_processor(config)
    if convert:
        result["conversion"] = bench_conversion(model.float().cpu(), name)
    result["load_average_after"] = os.getloadavg()[0]
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "hnu-vpai"], help="presets to run")
    parser.add_argument("--images", type=int, default=None, help="images per timing (default: per device and preset)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=None, help="timings of the forward passes (fastest kept)")
    parser.add_argument("--no-convert", action="store_true", help="skip the conversion timing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    presets = {}
    for name in args.presets:
        images, batch, repeats = DEFAULTS[args.device].get(name, DEFAULTS[args.device]["tiny"])
        presets[name] = bench_preset(
            name, args.device, args.images or images, args.batch_size or batch, args.repeats or repeats,
            convert=not args.no_convert,
        )
        print(json.dumps({name: presets[name]}), flush=True, file=sys.stderr)
    machine = machine_info("torch", "transformers", "timm", "numpy", device=args.device)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for result in presets.values():
        result["measured"] = stamp
    path = HERE / "results" / "loda.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    kept = existing.get(args.device, {}).get("presets", {})
    existing[args.device] = {"machine": machine, "presets": {**kept, **presets}}
    atomic_write_text(path, json.dumps(existing, indent=2) + "\n")
    print(json.dumps({"machine": machine, "presets": presets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
