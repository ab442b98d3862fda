"""``evalmuse benchmark``: score another benchmark (GenAI-Bench, TIFA, EvalMuse's ranking prompts, evalscope jsonl)
and report the agreement with its human scores."""

from __future__ import annotations

import argparse
import os

#: The benchmarks (``evalmuse_models.data.benchmarks.BENCHMARKS``, spelled here to keep the command cheap to import).
BENCHMARK_NAMES = ("genai-bench", "tifa", "evalmuse-prompts", "evalscope")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="score another text-to-image benchmark and correlate with its human scores (SRCC, PLCC, KRCC)",
        description=(
            "Read benchmark NAME from its public files in DIR (genai-bench: genai_image.json + <MODEL>/<id>.jpeg; "
            "tifa: human_annotations_with_scores.json + images; evalmuse-prompts: prompt_t2i.json + "
            "<generator>/<prompt_id>.png; evalscope: a .jsonl of {id, prompt, tags, image_path}), score every image "
            "with the alignment model into --out (rerunning resumes) and report SRCC / PLCC / KRCC against the human "
            "scores, overall and per generator, for the overall score (os), the mean element score (es_avg), their "
            "sum and, with --align-without-var, a checkpoint trained without variance weighting. A benchmark "
            "without human scores gets its generators ranked. --json prints the result for `evalmuse report "
            "--analysis FILE`. Example: evalmuse benchmark genai-bench GenAI-Image-527 --version 527 --align "
            "evalmuse-align/ --out genai527.jsonl --json > genai527.json"
        ),
    )
    parser.add_argument("name", choices=BENCHMARK_NAMES, metavar="NAME",
                        help=f"the benchmark: {', '.join(BENCHMARK_NAMES)}")
    parser.add_argument("dir", metavar="DIR", help="the benchmark's folder (or its main file)")
    parser.add_argument("--align", required=True, help="alignment model: folder, Hub id, mllm:<model> or module:factory")
    parser.add_argument("--out", required=True, help="results file (.jsonl); an existing one is resumed")
    parser.add_argument("--version", help="GenAI-Bench release: 527 or 1600 (uses DIR/GenAI-Image-<version> when "
                        "DIR has no genai_image.json)")
    parser.add_argument("--elements", help="JSON {prompt_id: [\"<phrase> (<category>)\", ...]}: the prompts' elements "
                        "(for es_avg on a benchmark without elements, e.g. GenAI-Bench)")
    parser.add_argument("--generators", nargs="+", metavar="NAME", help="score only these generators' images")
    parser.add_argument("--align-without-var", metavar="MODEL",
                        help="a second FGA-BLIP2 checkpoint trained without variance weighting (loss_weighting=none): "
                        "the 'os, w/o var' variant; scored into OUT's .without_var.jsonl")
    parser.add_argument("--plcc-direction", choices=("standard", "official"), default="standard",
                        help="PLCC's logistic fit: standard (scores -> human scores) or official (the EvalMuse "
                        "alignment script's, human scores -> scores)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loader worker processes decoding images (default: 0 on CPU, up to 4 on GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (auto: accelerate's device)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing --out")
    parser.add_argument("--retry-errors", action="store_true",
                        help="when resuming, score again the images whose rows are errors")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.benchmark import evaluate_benchmark, format_benchmark
    from .eval import _json

    result = evaluate_benchmark(
        args.name, args.dir, align=args.align, out=args.out, version=args.version, elements=args.elements,
        generators=args.generators, align_without_var=args.align_without_var, plcc_direction=args.plcc_direction,
        batch_size=args.batch_size, num_workers=args.num_workers, device=args.device, dtype=args.dtype,
        limit=args.limit, overwrite=args.overwrite, retry_errors=args.retry_errors, progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, one process prints
        print(_json(result) if args.json else format_benchmark(result))
    return 0
