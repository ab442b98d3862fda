"""``evalmuse demo``: synthetic data → tiny models trained on CPU → official scores vs chance → report."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..demo import MIN_PROMPTS, MIN_STRUCTURE_IMAGES, DemoConfig  # light: the heavy imports happen when it runs

    defaults = DemoConfig()
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
    parser.add_argument("--out", default="demo_output",
                        help="output folder: new, empty, or an earlier demo run's (an interrupted demo resumes)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seeds data, training and the chance baseline (same seed, same numbers; 0 to 2**32 - 1)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--align-steps", type=int, default=defaults.align_steps,
                        help="alignment training steps (at most; the time budget may stop it first)")
    parser.add_argument("--structure-epochs", type=int, default=defaults.structure_epochs,
                        help="structure training epochs")
    parser.add_argument("--num-prompts", type=int, default=defaults.num_prompts,
                        help=f"synthetic alignment prompts (at least {MIN_PROMPTS})")
    parser.add_argument("--num-structure-images", type=int, default=defaults.num_structure_images,
                        help=f"synthetic structure images (at least {MIN_STRUCTURE_IMAGES})")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import format_table, run_demo

    summary = run_demo(
        args.out, seed=args.seed, device=args.device, report=not args.no_report, progress=not args.no_progress,
        align_steps=args.align_steps, structure_epochs=args.structure_epochs, num_prompts=args.num_prompts,
        num_structure_images=args.num_structure_images,
    )
    print()
    print(format_table(summary))
    if "report" in summary:
        print(f"\nreport: {summary['report']}")
    print(f"finished in {summary['seconds']:.0f} s (timings: {summary['timings_s']})")
    return 0
