"""``evalmuse eval alignment|structure``: score a submission against the truth with the official
NTIRE 2025 scores, or (``--codalab INPUT_DIR OUTPUT_DIR``) act as the Codalab scoring program.

``evalmuse eval alignment --by seen/unseen`` scores the images of generators seen in training and
those of held-out generators (``prepare-data --holdout-generators``) separately and prints the
generalisation gap, with bootstrap intervals."""

from __future__ import annotations

import argparse
import json

_ALIGNMENT_KEYS = ("srcc", "plcc", "acc", "main_score", "krcc", "rmse")
_STRUCTURE_KEYS = ("precision", "recall", "f1", "giou", "plcc", "srcc", "final_score")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "eval",
        help="score a submission with the official NTIRE 2025 scores",
        description="Score a submission (output.json / output.pkl, or submission.zip) against the truth.",
    )
    group.set_defaults(_parser=group, func=None)
    tracks = group.add_subparsers(dest="track", metavar="TRACK")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    common.add_argument("--n-resamples", type=int, default=None,
                        help="bootstrap resamples for confidence intervals (default: 0, none; 1000 with --by)")
    common.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    common.add_argument(
        "--codalab",
        nargs=2,
        metavar=("INPUT_DIR", "OUTPUT_DIR"),
        help="run as the official scoring program: read INPUT_DIR/ref and INPUT_DIR/res, write OUTPUT_DIR/scores.txt "
        "(same lines and format, then res/readme.txt appended); replaces --truth and --submission",
    )

    align = tracks.add_parser(
        "alignment",
        parents=[common],
        help="track 1: Main Score = 0.25 SRCC + 0.25 PLCC + 0.5 ACC",
        description="Score an alignment submission. Examples: evalmuse eval alignment --truth eval.json "
        "--submission output.json; evalmuse eval alignment --codalab INPUT_DIR OUTPUT_DIR; the generalisation "
        "gap of a dataset prepared with --holdout-generators: evalmuse eval alignment --by seen/unseen --truth "
        "DATA/official/alignment/test/eval.json DATA/official/alignment/test_unseen/eval.json --submission "
        "test/output.json unseen/output.json",
    )
    align.add_argument("--truth", nargs="+", metavar="FILE",
                       help="truth file eval.json (with --by seen/unseen: one or more, pooled)")
    align.add_argument("--submission", nargs="+", metavar="FILE",
                       help="output.json or submission.zip (with --by seen/unseen: one or more, pooled)")
    align.add_argument(
        "--plcc-direction",
        choices=("official", "standard"),
        default="official",
        help="official: the released script (fit true -> submitted); standard: fit submitted -> true",
    )
    align.add_argument("--breakdown", action="store_true", help="add per-category ACC and per-generator scores")
    align.add_argument("--by", choices=("seen/unseen",),
                       help="seen/unseen: score the images of the generators seen in training and those of the "
                       "held-out generators (and among these, prompts seen or not in training) separately, and print "
                       "the gaps with bootstrap intervals; the held-out images are those of the holdout manifest")
    align.add_argument("--holdout", metavar="FILE",
                       help="holdout manifest written by prepare-data --holdout-generators (default: "
                       "official/alignment/holdout.json of the dataset the truth files are in)")
    align.add_argument(
        "--generator-map",
        metavar="FILE",
        help="CSV (img_path,generator) or JSON {img_path: generator} naming the generator of flat img_paths "
        "such as img_0001.png; implies --breakdown",
    )
    align.set_defaults(func=_run_alignment, _parser=align)

    struct = tracks.add_parser(
        "structure",
        parents=[common],
        help="track 2: Final = 0.7 F1 + 0.15 (PLCC + SRCC)",
        description="Score a structure submission. Examples: evalmuse eval structure --truth gt.pkl "
        "--submission output.pkl; evalmuse eval structure --codalab INPUT_DIR OUTPUT_DIR",
    )
    struct.add_argument("--truth", help="truth file gt.pkl")
    struct.add_argument("--submission", help="output.pkl or submission.zip")
    struct.add_argument("--iou-threshold", type=float, default=0.1, help="region match threshold (default 0.1)")
    struct.set_defaults(func=_run_structure, _parser=struct)


def _json(result: dict) -> str:
    """Strict JSON (no bare ``NaN``): the metrics never return a non-finite score, and this holds them to it."""
    from ..utils import UserInputError

    try:
        return json.dumps(result, allow_nan=False)
    except ValueError as err:
        raise UserInputError(f"a score is not a finite number ({err}); nothing to report") from None


def _print(result: dict, keys: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        print(_json(result))
        return
    ci = result.get("ci", {})
    width = max(len(k) for k in keys)
    for key in keys:
        if key not in result:
            continue
        line = f"{key:<{width}}  {result[key]:.4f}"
        if key in ci:
            line += f"  [{ci[key][0]:.4f}, {ci[key][1]:.4f}]"
        print(line)
    if result.get("plcc_fallback"):
        print("note: the logistic fit did not converge; plcc is the plain Pearson correlation")
    if "per_category_acc" in result:
        print("\nper-category ACC")
        counts = result.get("per_category_count", {})
        for cat, acc in sorted(result["per_category_acc"].items()):
            print(f"  {cat:<16} {acc:.4f}  (n={counts.get(cat, '?')})")
    if "per_generator" in result:
        print("\nper generator")
        print(f"  {'generator':<24} {'n':>6} {'srcc':>7} {'plcc':>7} {'acc':>7} {'main':>7}")
        for gen, entry in sorted(result["per_generator"].items()):
            cells = [f"{entry[k]:7.4f}" if entry.get(k) is not None else f"{'-':>7}" for k in (
                "srcc", "plcc", "acc", "main_score")]
            print(f"  {gen:<24} {entry['n_images']:>6} {' '.join(cells)}")


def _inputs(args: argparse.Namespace, track: str, scoring_options: tuple[str, ...]) -> bool:
    """Check the input options; True when running as the Codalab scoring program, which takes none of
    ``scoring_options`` (nor --truth/--submission) away from their defaults."""
    from ..utils import UserInputError

    if args.codalab:
        given = [f"--{k.replace('_', '-')}" for k in ("truth", "submission", *scoring_options)
                 if getattr(args, k) != args._parser.get_default(k)]
        if given:
            raise UserInputError(
                f"--codalab runs the released {track} scoring program with its own settings and files; "
                f"drop {', '.join(given)}"
            )
        return True
    if not args.truth or not args.submission:
        raise UserInputError(f"give --truth and --submission, or --codalab INPUT_DIR OUTPUT_DIR (see evalmuse eval {track} -h)")
    return False


def _run_codalab(args: argparse.Namespace, track: str) -> int:
    from ..metrics import score_codalab

    result, path = score_codalab(track, *args.codalab)
    if args.json:
        print(_json(result))
    else:
        print(path.read_text(encoding="utf-8", errors="replace"), end="")
    return 0


def _run_alignment(args: argparse.Namespace) -> int:
    from ..metrics import score_alignment_files
    from ..utils import UserInputError

    if _inputs(args, "alignment", ("plcc_direction", "breakdown", "generator_map", "n_resamples", "by", "holdout")):
        return _run_codalab(args, "alignment")
    if args.by == "seen/unseen":
        return _run_seen_unseen(args)
    if args.holdout:
        raise UserInputError("--holdout names the held-out images for --by seen/unseen; add --by seen/unseen")
    if len(args.truth) > 1 or len(args.submission) > 1:
        raise UserInputError("give one --truth and one --submission (several are pooled only with --by seen/unseen)")
    result = score_alignment_files(
        args.truth[0],
        args.submission[0],
        breakdown=args.breakdown,
        generator_map=args.generator_map,
        plcc_direction=args.plcc_direction,
        n_resamples=args.n_resamples or 0,
        seed=args.seed,
    )
    _print(result, _ALIGNMENT_KEYS, args.json)
    return 0


def _holdout_manifest(args: argparse.Namespace):
    """The --holdout file, else ``official/alignment/holdout.json`` of the dataset folder holding
    the truth files (``DATA/official/alignment/<split>/eval.json``)."""
    from pathlib import Path

    from ..data.splits import HOLDOUT_MANIFEST
    from ..utils import UserInputError

    if args.holdout:
        return args.holdout
    found = {Path(truth).resolve().parent.parent / Path(HOLDOUT_MANIFEST).name for truth in args.truth}
    found = sorted(path for path in found if path.is_file())
    if len(found) != 1:
        raise UserInputError(
            "--by seen/unseen needs the holdout manifest that prepare-data --holdout-generators writes "
            f"(DATA/{HOLDOUT_MANIFEST}); " + ("none is beside the truth files" if not found else
                                             f"the truth files are beside several ({', '.join(map(str, found))})")
            + "; give it with --holdout FILE")
    return found[0]


def _run_seen_unseen(args: argparse.Namespace) -> int:
    from ..analysis import format_generalisation, generalisation_gap_files
    from ..utils import UserInputError

    if args.breakdown or args.generator_map:
        raise UserInputError("--by seen/unseen reports groups of images, not the per-category and per-generator "
                             "breakdown; drop --breakdown / --generator-map")
    result = generalisation_gap_files(
        args.truth, args.submission, _holdout_manifest(args), plcc_direction=args.plcc_direction,
        n_resamples=1000 if args.n_resamples is None else args.n_resamples, seed=args.seed,
    )
    print(_json(result) if args.json else format_generalisation(result))
    return 0


def _run_structure(args: argparse.Namespace) -> int:
    from ..metrics import score_structure_files

    if _inputs(args, "structure", ("iou_threshold", "n_resamples")):
        return _run_codalab(args, "structure")
    result = score_structure_files(
        args.truth,
        args.submission,
        iou_threshold=args.iou_threshold,
        n_resamples=args.n_resamples or 0,
        seed=args.seed,
    )
    _print(result, _STRUCTURE_KEYS, args.json)
    return 0
