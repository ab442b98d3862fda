"""``evalmuse analyze``: analyses of the official scores (``weights``: weight sensitivity and rank stability)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "analyze",
        help="analyse the official scores (weight sensitivity and rank stability of several submissions)",
        description="Analyses of the official NTIRE 2025 scores; each prints a table, or JSON with --json (which "
        "`evalmuse report --analysis FILE` turns into a report section).",
    )
    group.set_defaults(_parser=group, func=None)
    analyses = group.add_subparsers(dest="analysis", metavar="ANALYSIS")

    weights = analyses.add_parser(
        "weights",
        help="how the ranking of submissions depends on the weights of the Main / Final Score",
        description="Score every submission once against the truth (alignment: SRCC, PLCC, ACC; structure: F1, "
        "PLCC, SRCC), then rank them under every weighting of a grid over the simplex of weights, under named "
        "alternatives (equal thirds, correlations only, ACC or F1 only), list the pairs whose order some weighting "
        "reverses, and estimate each submission's probability of each rank under the official weights by a "
        "bootstrap over images. Example: evalmuse analyze weights --truth eval.json --submission A=a/output.json "
        "--submission B=b/output.json --json > weights.json",
    )
    weights.add_argument("--truth", required=True, help="eval.json (alignment) or gt.pkl (structure)")
    weights.add_argument("--submission", action="append", required=True, metavar="NAME=FILE",
                         help="a submission to rank (output.json / output.pkl / submission.zip) and its name; repeat "
                         "for each (at least 2)")
    weights.add_argument("--track", choices=("alignment", "structure"),
                         help="default: from the truth file (.json: alignment, .pkl: structure)")
    weights.add_argument("--step", type=float, default=0.05, help="grid step over the simplex; 0.05 gives 231 weightings")
    weights.add_argument("--n-resamples", type=int, default=1000,
                         help="bootstrap resamples for the rank probabilities (0: none)")
    weights.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    weights.add_argument("--plcc-direction", choices=("official", "standard"), default="official",
                         help="alignment PLCC: official (the released script's fit, true -> submitted) or standard")
    weights.add_argument("--iou-threshold", type=float, default=0.1, help="structure region match threshold")
    weights.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    weights.set_defaults(func=_run_weights, _parser=weights)


def _submissions(values: list[str]) -> dict[str, str]:
    from ..utils import UserInputError

    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = value, value
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise UserInputError(f"--submission {value!r}: expected NAME=FILE")
        if name in out:
            raise UserInputError(f"--submission: the name {name!r} is given twice; name each submission once")
        out[name] = path
    return out


def _run_weights(args: argparse.Namespace) -> int:
    from ..analysis import analyze_weights
    from .eval import _json

    result = analyze_weights(args.truth, _submissions(args.submission), track=args.track, step=args.step,
                             n_resamples=args.n_resamples, seed=args.seed, plcc_direction=args.plcc_direction,
                             iou_threshold=args.iou_threshold)
    print(_json(result) if args.json else format_weights(result))
    return 0


def format_weights(result: dict) -> str:
    """The plain-text tables of an ``analyze_weights`` result."""
    labels, parts, score = result["part_labels"], result["parts"], result["score"]
    official = result["official_ranking"]
    width = max(12, *(len(n) for n in official)) + 2
    score_label = "Main" if score == "main_score" else "Final"

    def weights_text(weights: dict) -> str:
        return " ".join(f"{label} {weights[p]:.2f}" for label, p in zip(labels, parts))

    lines = [f"{result['track']} track, {result['num_images']} images; official weights: "
             + weights_text(result["official_weights"]), ""]
    boot = result.get("bootstrap")
    head = f"{'rank':<5}{'system':<{width}}" + "".join(f"{h:>8}" for h in [*labels, score_label])
    if boot:
        head += f"  {'95% interval' if result['bootstrap_settings']['confidence_level'] == 0.95 else 'interval':>17}"
        head += "  P(rank 1..n)"
    lines.append(head)
    for rank, name in enumerate(official, 1):
        system = result["systems"][name]
        line = f"{rank:<5}{name:<{width}}" + "".join(f"{system[k]:>8.4f}" for k in [*parts, score])
        if boot:
            lo, hi = boot[name]["score_ci"]
            line += f"  [{lo:.4f}, {hi:.4f}]  " + " ".join(f"{p:.2f}" for p in boot[name]["rank_probabilities"])
        lines.append(line)
    if boot:
        settings = result["bootstrap_settings"]
        lines.append(f"(bootstrap over images: {settings['valid_resamples']} of {settings['n_resamples']} resamples "
                     f"usable, seed {settings['seed']})")

    lines += ["", "named weightings"]
    for row in result["weightings"]:
        if row["name"] is None:
            continue
        lines.append(f"  {row['name']:<18}{weights_text(row['weights'])}   {' > '.join(row['ranking'])}   "
                     f"tau {row['kendall_tau']:+.3f}")
    grid = result["grid"]
    lines += ["", (f"grid (step {grid['step']:g}): the official ranking holds at {grid['official_ranking_holds']} "
                   f"of {grid['points']} weightings; Kendall tau mean {grid['mean_kendall_tau']:+.3f}, "
                   f"min {grid['min_kendall_tau']:+.3f}"),
              "  ranked first at: " + ", ".join(f"{n} {grid['winners'][n]}" for n in official)]
    lines += ["", "rank flips" + ("" if result["rank_flips"] else ": none (no weighting reverses any pair)")]
    for flip in result["rank_flips"]:
        tie = flip["nearest_tie"]
        text = (f"  {flip['ahead']} > {flip['behind']} (margin {flip['official_margin']:+.4f}): reversed at "
                f"{len(flip['grid_weights'])} of {grid['points']} grid weightings")
        if flip["named"]:
            text += f" and under {', '.join(flip['named'])}"
        if tie:
            text += f"; nearest tie at {weights_text(tie['weights'])} (distance {tie['distance']:.3f})"
        lines.append(text)
    return "\n".join(lines)
