"""``evalmuse benchmark`` throughput on CPU (prints JSON, writes bench/results/benchmark.json).

On a synthetic GenAI-Bench folder (``write_genai_bench``: JPEG images of 128-192 px, three 1-5 ratings each,
the elements file for ``es_avg``) the steps of :func:`evaluate_benchmark` are timed one by one: reading the
benchmark into a ``datasets.Dataset`` (``load_benchmark``), scoring with the engine (``score``: image decoding,
the model's pre-processing, forward and element read-out, the results file), and the correlations of every
variant overall and per generator (``benchmark_correlations``). End-to-end images/s counts all three; a rerun
on the finished results file (everything resumed) gives the fixed cost of a resume.

Two models, random weights, nothing downloaded: the ``tiny`` alignment model saved as a folder (what the CLI
loads) and the real-size ``fga-blip2`` preset (1.17 B parameters, fp32) passed as an object, on a few images.

Usage: python bench/bench_benchmark.py [--prompts N] [--fga-images N] [--presets tiny fga-blip2] [--threads T]
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _common import machine_info

from evalmuse_models.analysis.benchmark import benchmark_correlations, benchmark_source, evaluate_benchmark
from evalmuse_models.data.benchmarks import load_benchmark
from evalmuse_models.data.synthetic_benchmarks import ELEMENTS_FILE, write_genai_bench
from evalmuse_models.scoring import read_results, score
from evalmuse_models.utils import atomic_write_text

HERE = Path(__file__).resolve().parent


def _model(preset: str, root: Path):
    """The alignment model: the tiny one as a saved folder; a real-size preset as an object carrying its processor."""
    from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    from evalmuse_models.testing import save_tiny_models
    from evalmuse_models.testing.align import build_tiny_processor

    if preset == "tiny":
        from safetensors import safe_open

        folder = save_tiny_models(root / "models")[0]
        with safe_open(folder / "model.safetensors", "pt") as weights:
            parameters = sum(torch.Size(weights.get_slice(name).get_shape()).numel() for name in weights.keys())  # noqa: SIM118
        return str(folder), parameters
    config = EvalMuseAlignConfig.from_preset(preset)
    torch.manual_seed(0)
    model = EvalMuseAlignModel(config).eval()
    model.processor = build_tiny_processor(config)  # the offline tokenizer; the real image size
    return model, sum(p.numel() for p in model.parameters())


def bench_preset(preset: str, folder: Path, root: Path, images: int, batch_size: int) -> dict:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    align, parameters = _model(preset, root)
    build_s = time.perf_counter() - start
    out = root / f"{preset}.jsonl"
    elements = folder / ELEMENTS_FILE

    start = time.perf_counter()
    dataset = load_benchmark("genai-bench", folder, elements=elements)
    source = benchmark_source(dataset, "genai-bench", folder)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = score(source, out=out, align=align, batch_size=batch_size, device="cpu", limit=images, progress=False)
    score_s = time.perf_counter() - start
    start = time.perf_counter()
    result = benchmark_correlations(read_results(out), benchmark="genai-bench")
    correlate_s = time.perf_counter() - start
    start = time.perf_counter()
    resumed = evaluate_benchmark("genai-bench", folder, align=align, out=out, elements=elements, batch_size=batch_size,
                                 device="cpu", limit=images, progress=False)
    resume_s = time.perf_counter() - start
    total_s = load_s + score_s + correlate_s
    return {
        "preset": preset,
        "parameters": parameters,
        "images": summary["rows"],
        "batch_size": batch_size,
        "model_build_s": round(build_s, 2),
        "load_benchmark_s": round(load_s, 3),
        "score_s": round(score_s, 2),
        "correlations_s": round(correlate_s, 3),
        "images_per_second_end_to_end": round(summary["rows"] / total_s, 3),
        "images_per_second_scoring": summary["images_per_second"],
        "resume_when_done_s": round(resume_s, 2),
        "resumed_result_equal": {k: v for k, v in resumed.items() if k != "variance_weighting"} == {
            k: v for k, v in result.items() if k != "variance_weighting"},
        "srcc_os": (result.get("correlations") or {}).get("os", {}).get("srcc"),
        "peak_rss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mib_before_model": round(rss_before, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "fga-blip2"])
    parser.add_argument("--prompts", type=int, default=16, help="GenAI-Bench prompts (x4 generators = images)")
    parser.add_argument("--fga-images", type=int, default=2, help="images scored with a real-size preset")
    parser.add_argument("--batch-size", type=int, default=8, help="tiny model; real-size presets use 2")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--output", default=str(HERE / "results" / "benchmark.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "GenAI-Image-synthetic"
        start = time.perf_counter()
        written = write_genai_bench(folder, num_prompts=args.prompts, seed=0)
        write_s = time.perf_counter() - start
        for preset in args.presets:
            tiny = preset == "tiny"
            runs.append(bench_preset(preset, folder, root, written["images"] if tiny else args.fga_images,
                                     args.batch_size if tiny else 2))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "benchmark",
        "machine": machine_info("torch", "transformers", "datasets"),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "synthetic_genai_bench": {**written, "write_s": round(write_s, 2)},
        "runs": runs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(Path(args.output), json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
