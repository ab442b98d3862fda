"""``evalmuse report``: a static HTML report (leaderboard, plots, per-image cards) of a results file."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a static HTML report of `evalmuse score` results",
        description="Write OUT/index.html: per-generator leaderboard and plots, a section per analysis given with "
        "--analysis (weight sensitivity with the simplex of weights, the generalisation gap), a summary of the "
        "structure images "
        "that have no generator, element scores per category, score distributions and sortable, filterable "
        "per-image cards with the distortion heatmap (and its colour legend), the predicted distortion outlines, "
        "the true mask when the results carry one, and the element checklist.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("results", nargs="?", default=None,
                        help="results .jsonl written by `evalmuse score` (optional with --analysis)")
    parser.add_argument("--out", required=True,
                        help="output folder: new, empty, or an earlier report (replaced atomically); any other "
                        "existing file or folder, the current directory and the results file are refused")
    parser.add_argument("--title", default="EvalMuse report", help="the page title")
    parser.add_argument("--max-cards", type=int, default=1000, help="at most this many per-image cards")
    parser.add_argument("--thumb-size", type=int, default=256, help="thumbnail size in pixels")
    parser.add_argument("--generator-map", metavar="FILE", default=None,
                        help="which model made each image when the paths do not say (flat img_0001.png): a CSV "
                        "with the columns img_path,generator or a JSON object {img_path: generator}, matched on "
                        "the image ids of the results; the per-generator tables group by it")
    parser.add_argument("--mask-threshold", type=float, metavar="LEVEL", default=None,
                        help="the heatmap threshold in [0, 1] the structure masks were made with (`evalmuse score "
                        "--threshold`, else the model's `threshold`), marked on the heatmap legend; only used when "
                        "the results do not record it")
    parser.add_argument("--analysis", action="append", default=None, metavar="FILE",
                        help="JSON of an analysis (`evalmuse analyze weights --json`, `evalmuse eval alignment --by "
                        "seen/unseen --json`), drawn as a section with its plots; repeat for several")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    index = build_report(args.results, args.out, title=args.title, max_cards=args.max_cards,
                         thumb_size=args.thumb_size, generator_map=args.generator_map,
                         mask_threshold=args.mask_threshold, analyses=args.analysis or ())
    print(f"report written to {index}")
    return 0
