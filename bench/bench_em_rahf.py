"""EM-RAHF at its real size (prints JSON, writes bench/results/em_rahf.json).

The official architecture (``em-rahf`` preset: AltCLIP ViT-L/14 at 448 px, 6 fusion blocks over 1025 + 512
tokens, the LayerNorm([C, H, W]) heads; ~1.46 B parameters, ~5.8 GB in float32) with random weights, built
once, nothing downloaded:

- forward: images/s of ``model(pixel_values, input_ids)`` in inference mode, one image per call (the
  official evaluation's batch), ``--images`` timed calls after one warm-up call, with the seconds per image
  spent in each part (vision tower, text embeddings, fusion blocks, heatmap head, score head; forward hooks);
- memory: the process's peak RSS after building the model and after the forward passes (on CPU; on CUDA
  ``max_memory_allocated``);
- conversion (``--no-convert`` skips it): the model's tensors saved under the official names as the official
  training saves them (``{"model": state_dict, "optimizer", "scheduler"}``), then ``evalmuse convert em-rahf``
  timed in a fresh process (its wall time and peak RSS), and ``AutoModel.from_pretrained`` of the result in
  another (load time and peak RSS). The processor gets a small stand-in XLM-R tokenizer (no download). Scratch
  files (~12 GB) go to a temporary folder, removed at the end.

Usage: python bench/bench_em_rahf.py [--images N] [--threads N] [--device cpu|cuda] [--no-convert]
Numbers, never pass/fail; results of different devices are kept side by side in the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from _common import machine_info

from evalmuse_models.models.em_rahf import EmRahfConfig, EmRahfModel
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent
PARTS = ("vision_model", "text_embeddings", "fusion", "heatmap_head", "score_head")

# Our names -> the official ones, to write a checkpoint as the official training saves it (the converter
# maps them back and refuses anything it does not recognise, so a mistake here fails loudly).
_PREFIXES = (
    ("vision_model.", "image_encoder.ViT."),
    ("text_embeddings.", "text_encoder.text_embedding."),
    ("fusion.norm.", "self_attention.norm."),
    ("heatmap_head.stem.0.conv.", "heatmap_predictor.conv_layers.0."),
    ("heatmap_head.stem.0.norm.", "heatmap_predictor.conv_layers.1."),
    ("heatmap_head.stem.1.conv.", "heatmap_predictor.conv_layers.3."),
    ("heatmap_head.stem.1.norm.", "heatmap_predictor.conv_layers.4."),
    ("heatmap_head.out_conv.", "heatmap_predictor.final_layers.0."),
    ("score_head.fc.0.", "score_predictor.fc_layers.0."),
    ("score_head.fc.1.", "score_predictor.fc_layers.2."),
    ("score_head.out_proj.", "score_predictor.fc_layers.4."),
)
_FUSION_PARTS = {
    "attention.q_proj": "attention.module.to_q",
    "attention.k_proj": "attention.module.to_k",
    "attention.v_proj": "attention.module.to_v",
    "attention.o_proj": "attention.module.to_out",
    "mlp.fc1": "feed_forward.module.ff.0",
    "mlp.fc2": "feed_forward.module.ff.2",
}


def official_name(name: str) -> str:
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    parts = name.split(".")
    if name.startswith("fusion.layers."):  # fusion.layers.N.<part>.<param>
        part = ".".join(parts[3:-1])
        return f"self_attention.layers.{parts[2]}.{_FUSION_PARTS.get(part, part)}.{parts[-1]}"
    if name.startswith("heatmap_head.stages."):  # stages.S.B.{conv,norm} -> deconv_layers.S.{3B, 3B + 1}
        stage, block, kind = parts[2], int(parts[3]), parts[4]
        return f"heatmap_predictor.deconv_layers.{stage}.{3 * block + (kind == 'norm')}.{parts[5]}"
    if name.startswith("score_head.convs."):  # convs.S.{conv,norm} -> conv_layers.S.{0,1}
        return f"score_predictor.conv_layers.{parts[2]}.{int(parts[3] == 'norm')}.{parts[4]}"
    return name


def _peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's ``VmHWM`` (``ru_maxrss`` of a child started by a big
    process reports the parent's), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_rss_mb()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_forward(model, images: int, device: str, dtype) -> dict:
    config = model.config
    inputs = {k: v[:1].to(device) for k, v in model.dummy_inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    part_seconds: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    hooks = []
    for part in PARTS:
        module = getattr(model, part)

        def pre(_module, _args, part=part):
            _sync(device)
            starts[part] = time.perf_counter()

        def post(_module, _args, _output, part=part):
            _sync(device)
            part_seconds[part] += time.perf_counter() - starts[part]

        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(**inputs)
        _sync(device)
        first = time.perf_counter() - start
        part_seconds.clear()
        start = time.perf_counter()
        for _ in range(images):
            out = model(**inputs)
        _sync(device)
        seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    assert out.heatmap.shape == (1, config.heatmap_size, config.heatmap_size)
    return {
        "images": images,
        "batch_size": 1,
        "tokens": config.num_image_tokens + config.max_text_length,
        "first_call_seconds": first,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "seconds_per_image": seconds / images,
        "seconds_per_image_by_part": {part: part_seconds[part] / images for part in PARTS},
    }


_CHILD = r"""
import json, sys, time
from pathlib import Path
from bench_em_rahf import _peak_rss_mb
task, a, b = (sys.argv[1:] + [""])[:3]
start = time.perf_counter()
if task == "convert":
    from transformers import XLMRobertaTokenizer
    from evalmuse_models.convert.em_rahf import convert_em_rahf
    report = convert_em_rahf(a, b, tokenizer=XLMRobertaTokenizer())  # a stand-in tokenizer: no download
    extra = {"tensors": len(report.converted), "parameters": report.num_parameters,
             "output_gb": sum(p.stat().st_size for p in Path(b).iterdir()) / 1e9}
else:
    import torch
    from transformers import AutoModel
    import evalmuse_models  # noqa: F401 - registers EM-RAHF
    with torch.device("cpu"):
        model = AutoModel.from_pretrained(a)
    extra = {"class": type(model).__name__}
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), **extra}))
"""


def _child(task: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, task, *args], capture_output=True, text=True, check=False, cwd=HERE
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_conversion(model, folder: Path) -> dict:
    """Save the model as the official training would, then convert and load it in fresh processes."""
    state = {official_name(name): tensor for name, tensor in model.state_dict().items()}
    checkpoint = folder / "last.pth"
    start = time.perf_counter()
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}}, checkpoint)
    save_seconds = time.perf_counter() - start
    del state
    result = {"checkpoint_gb": checkpoint.stat().st_size / 1e9, "official_save_seconds": save_seconds}
    result["convert"] = _child("convert", str(checkpoint), str(folder / "converted"))
    checkpoint.unlink()
    result["load_converted"] = _child("load", str(folder / "converted"))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="timed forward calls of one image (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-convert", action="store_true", help="skip the conversion timings")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    config = EmRahfConfig.from_preset("em-rahf")
    torch.manual_seed(0)
    start = time.perf_counter()
    model = EmRahfModel(config).eval()
    model = model.to(device, dtype)
    build_seconds = time.perf_counter() - start
    result = {
        "preset": "em-rahf",
        "dtype": str(dtype).removeprefix("torch."),
        "params_m": {part: sum(p.numel() for p in getattr(model, part).parameters()) / 1e6 for part in PARTS},
        "params_total_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_seconds": build_seconds,
        "peak_memory_mb_after_build": _peak_mb(device),
    }
    print(f"built in {build_seconds:.0f} s; timing the forward pass", file=sys.stderr)
    result["forward"] = bench_forward(model, args.images, device, dtype)
    result["peak_memory_mb_after_forward"] = _peak_mb(device)
    if not args.no_convert:
        model = model.to("cpu", torch.float32)
        print("timing the conversion", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="bench_em_rahf_") as tmp:
            result["conversion"] = bench_conversion(model, Path(tmp))
    del model
    gc.collect()

    path = HERE / "results" / "em_rahf.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[device] = {
        "machine": machine_info("torch", "transformers", device=device),
        "measured": time.strftime("%Y-%m-%d"),
        **result,
    }
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results[device], indent=2))
    return results[device]


if __name__ == "__main__":
    main()
