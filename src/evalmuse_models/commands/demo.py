"""``evalmuse demo``: synthetic data → tiny models trained on CPU → official scores vs chance → report."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on the embedded synthetic data (a few minutes on CPU)",
        description=(
            "Write the synthetic EvalMuse releases, prepare the dataset, train the tiny alignment and "
            "structure models, score the held-out test splits, print both official NTIRE 2025 scores next "
            "to a chance baseline and write the HTML report. Needs no network and no weights."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="demo_output", help="output folder (an interrupted demo resumes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--align-steps", type=int, help="alignment training steps")
    parser.add_argument("--structure-epochs", type=int, help="structure training epochs")
    parser.add_argument("--num-prompts", type=int, help="synthetic alignment prompts")
    parser.add_argument("--num-structure-images", type=int, help="synthetic structure images")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..demo import format_table, run_demo

    overrides = {"seed": args.seed, "device": args.device, "report": not args.no_report,
                 "progress": not args.no_progress}
    for name in ("align_steps", "structure_epochs", "num_prompts", "num_structure_images"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    summary = run_demo(args.out, **overrides)
    print()
    print(format_table(summary))
    if "report" in summary:
        print(f"\nreport: {summary['report']}")
    print(f"finished in {summary['seconds']:.0f} s (timings: {summary['timings_s']})")
    return 0
