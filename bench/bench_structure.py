"""EvalMuse structure model speed and memory (prints JSON, writes bench/results/structure.json).

For each preset (default ``tiny``, ``dinov2-resnet-fuser`` and ``altclip-fuser``, random weights, real sizes, nothing
downloaded; ``altclip-fuser`` tokenises its prompts with a small stand-in tokenizer):

- inference, measured side by side in one run on the same images (0.25-1 MP, four sizes) and
  batches, ``--repeats`` times alternately (the fastest of each kept: the least disturbed on a
  shared machine): images/s of the bare forward pass on ready tensors and of
  ``model.predict(images, processor=..., batch_size=B)`` (the ``t2i-structure`` pipeline:
  pre-processing, forward, threshold, region labelling, masks and regions at the original size),
  their ratio, and the milliseconds per image of predict's parts timed on their own: the processor
  (pre-processing) and ``processor.post_process_distortion`` (post-processing) with each labelling
  backend (OpenCV, SciPy, torch: what remote code without OpenCV or SciPy runs). The threshold is the median heatmap level, so
  that the random model's masks hold regions (its heatmap is near 0.5 everywhere);
- training: images/s of forward + backward + AdamW step with frozen backbones (only fusion,
  decoder and score head train), 512 x 512 heatmap and score targets;
- peak memory: CUDA ``max_memory_allocated`` on GPU, the process's peak RSS on CPU (cumulative over
  the presets run before, so the first preset's figure is the cleanest; run one preset per call for
  clean CPU numbers).

On CUDA the model runs in bf16 with channels_last and large batches; on CPU in fp32 with a handful
of images. ``--threads N`` sets both torch's and OpenCV's thread counts.

Usage: python bench/bench_structure.py [--presets tiny dinov2-resnet-fuser altclip-fuser] [--images N] [--batch-size B]
       [--repeats R] [--train-steps N] [--no-train] [--device cpu|cuda] [--threads N]
Numbers, never pass/fail. Results of different devices are kept side by side in the JSON, and
presets not run keep their earlier figures (each preset records when it was measured).
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
    EvalMuseStructureOutput,
    EvalMuseStructureProcessor,
)
from evalmuse_models.models.evalmuse_structure.post_processing_evalmuse_structure import (
    LABEL_BACKENDS,
    binarize_heatmap,
    label_backend,
)
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent

# (images, batch, repeats) for inference and (steps, batch) for training, per device and preset
DEFAULTS = {
    "cpu": {"tiny": (32, 8, 5, 10, 8), "dinov2-resnet-fuser": (2, 1, 3, 2, 1), "altclip-fuser": (2, 1, 3, 2, 1)},
    "cuda": {"tiny": (1024, 256, 3, 50, 256), "dinov2-resnet-fuser": (256, 64, 3, 20, 32), "altclip-fuser": (256, 64, 3, 20, 32)},
}
PROMPTS = ["a hand holding a cup", "two people shaking hands", "a face in the rain", "a cat on a sofa"]


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


def _processor(config):
    if not config.uses_text:
        return EvalMuseStructureProcessor.from_model_config(config)
    from evalmuse_models.testing.align import build_tiny_tokenizer

    # the real tokenizer (XLM-R) is not downloaded: a small one gives prompts of a few tokens
    tokenizer = build_tiny_tokenizer(sorted({w for p in PROMPTS for w in p.split()} | {"human", "artifact"}))
    return EvalMuseStructureProcessor.from_model_config(config, tokenizer=tokenizer)


def _best(values: list[float]) -> float:
    return float(min(values))


def bench_inference(model, processor, images, prompts, batch: int, device: str, dtype, repeats: int) -> dict:
    """Forward and predict images/s side by side (alternating, fastest of ``repeats``), and the
    milliseconds per image of predict's pre- and post-processing timed on their own."""
    config = model.config
    starts = range(0, len(images), batch)
    batches = [images[s : s + batch] for s in starts]
    texts = [prompts[s : s + batch] if prompts is not None else None for s in starts]

    def prepare(i: int) -> dict:
        inputs = processor(images=batches[i], text=texts[i], return_tensors="pt")
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        if device == "cuda":
            inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return inputs

    ready = [prepare(i) for i in range(len(batches))]
    with torch.no_grad():  # warm-up, and a threshold at the median heatmap level (see bench_preset)
        levels = torch.round(model(**ready[0]).heatmap.float() * 255).flatten()
    threshold = float(levels[:: max(1, levels.numel() // 100_000)].median()) / 255
    model.predict(batches[0], prompts=texts[0], batch_size=batch, processor=processor, threshold=threshold)
    n = len(images)

    def post_process(outputs, group, backend: str = "auto"):
        return processor.post_process_distortion(
            outputs, threshold, target_sizes=[im.size[::-1] for im in group], min_area=config.min_region_area,
            backend=backend,
        )

    forward_s, predict_s, pre_s, post_s = [], [], [], []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            outputs = [model(**inputs) for inputs in ready]
        _sync(device)
        forward_s.append(time.perf_counter() - t0)
        outputs = [
            EvalMuseStructureOutput(heatmap=out.heatmap.float(), structure_score=out.structure_score.float())
            for out in outputs
        ]

        t0 = time.perf_counter()
        model.predict(images, prompts=prompts, batch_size=batch, processor=processor, threshold=threshold)
        _sync(device)
        predict_s.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(len(batches)):
            prepare(i)
        _sync(device)
        pre_s.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for out, group in zip(outputs, batches, strict=True):
            post_process(out, group)
        post_s.append(time.perf_counter() - t0)

    by_backend = {}
    for backend in LABEL_BACKENDS:
        try:
            label_backend(backend)
        except ImportError:
            continue
        t0 = time.perf_counter()
        for out, group in zip(outputs, batches, strict=True):
            post_process(out, group, backend)
        by_backend[backend] = 1000 * (time.perf_counter() - t0) / n
    forward, predict = _best(forward_s), _best(predict_s)
    pre, post = _best(pre_s), _best(post_s)
    masks = [binarize_heatmap(out.heatmap, threshold) for out in outputs]
    regions = [r.regions for out, group in zip(outputs, batches, strict=True) for r in post_process(out, group)]
    return {
        "forward": {"images": n, "batch_size": batch, "seconds": forward, "images_per_second": n / forward},
        "predict": {"images": n, "batch_size": batch, "seconds": predict, "images_per_second": n / predict},
        "predict_vs_forward": forward / predict,
        # the same ratio from the parts timed on their own: steadier when a forward takes seconds
        # and the machine is shared
        "predict_vs_forward_from_parts": forward / (forward + pre + post),
        "repeats": repeats,
        "ms_per_image": {
            "forward": 1000 * forward / n,
            "predict": 1000 * predict / n,
            "preprocess": 1000 * pre / n,
            "postprocess": 1000 * post / n,
        },
        "postprocess_backend": label_backend(),
        "postprocess_ms_per_image_by_backend": by_backend,
        "threshold": threshold,
        "mask_fraction": float(np.mean([float(m.float().mean()) for m in masks])),
        "regions_per_image": float(np.mean([len(r) for r in regions])),
        "image_sizes": sorted({im.size for im in images}),
    }


def bench_preset(
    name: str, device: str, n_images: int, batch: int, repeats: int, train_steps: int, train_batch: int
) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = EvalMuseStructureConfig.from_preset(name, freeze_vit=True, freeze_cnn=True)
    t0 = time.perf_counter()
    model = EvalMuseStructureModel(config).to(device=device, dtype=dtype).eval()
    if device == "cuda" and model.cnn is not None:
        model.cnn.to(memory_format=torch.channels_last)
    build_s = time.perf_counter() - t0
    processor = _processor(config)
    images = _images(n_images)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_images)] if config.uses_text else None
    result: dict = {
        "params_total_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "image_size": config.image_size,
        "dtype": str(dtype).replace("torch.", ""),
        "build_seconds": build_s,
    }
    # an untrained model's heatmap sits near 0.5, above the default threshold everywhere: the masks
    # would be full and need no labelling. Inference runs at the median heatmap level instead, so
    # the masks hold regions to label as a trained model's do
    result.update(bench_inference(model, processor, images, prompts, batch, device, dtype, repeats))
    result["inference_peak_memory_mb"] = _peak_mb(device)
    if not train_steps:
        return result

    # training with frozen backbones
    model.float().train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = {"pixel_values": torch.randn(train_batch, 3, config.image_size, config.image_size, device=device)}
    if config.uses_text:
        text = processor(images=images[:1], text=PROMPTS[:1] * train_batch, return_tensors="pt")
        inputs.update(input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device))
    heat = torch.rand(train_batch, 512, 512, device=device)
    scores = torch.rand(train_batch, device=device) * 4 + 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with autocast:
            loss = model(**inputs, heatmap_labels=heat, score_labels=scores).loss
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
    parser.add_argument("--presets", nargs="+", default=["tiny", "dinov2-resnet-fuser", "altclip-fuser"])
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="alternating forward / predict timings (fastest kept)")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenCV threads (default: theirs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import cv2

            cv2.setNumThreads(args.threads)
        except ImportError:
            pass
    torch.manual_seed(0)
    presets = {}
    for name in args.presets:
        images, batch, repeats, steps, train_batch = DEFAULTS[args.device].get(name, DEFAULTS[args.device]["tiny"])
        presets[name] = bench_preset(
            name, args.device, args.images or images, args.batch_size or batch, args.repeats or repeats,
            0 if args.no_train else (args.train_steps or steps), args.batch_size or train_batch,
        )
        print(json.dumps({name: presets[name]}), flush=True, file=sys.stderr)
    machine = machine_info("torch", "transformers", "timm", "numpy", device=args.device)
    for name in ("cv2", "scipy"):
        try:
            machine[name] = __import__(name).__version__
        except ImportError:
            machine[name] = None
    if machine["cv2"] is not None:
        machine["cv2_threads"] = __import__("cv2").getNumThreads()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for result in presets.values():
        result["measured"] = stamp
    report = {"machine": machine, "presets": presets}
    path = HERE / "results" / "structure.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    # presets not run this time keep their earlier figures (each says when it was measured)
    kept = existing.get(args.device, {}).get("presets", {})
    existing[args.device] = {"machine": machine, "presets": {**kept, **presets}}
    atomic_write_text(path, json.dumps(existing, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
