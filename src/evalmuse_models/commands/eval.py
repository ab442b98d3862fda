"""``evalmuse eval alignment|structure``: score a submission against the truth with the official
NTIRE 2025 scores, or (``--codalab INPUT_DIR OUTPUT_DIR``) act as the Codalab scoring program."""

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
    common.add_argument("--n-resamples", type=int, default=0, help="bootstrap resamples for confidence intervals")
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
        "--submission output.json; evalmuse eval alignment --codalab INPUT_DIR OUTPUT_DIR",
    )
    align.add_argument("--truth", help="truth file eval.json")
    align.add_argument("--submission", help="output.json or submission.zip")
    align.add_argument(
        "--plcc-direction",
        choices=("official", "standard"),
        default="official",
        help="official: the released script (fit true -> submitted); standard: fit submitted -> true",
    )
    align.add_argument("--breakdown", action="store_true", help="add per-category ACC and per-generator scores")
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

    if _inputs(args, "alignment", ("plcc_direction", "breakdown", "generator_map", "n_resamples")):
        return _run_codalab(args, "alignment")
    result = score_alignment_files(
        args.truth,
        args.submission,
        breakdown=args.breakdown,
        generator_map=args.generator_map,
        plcc_direction=args.plcc_direction,
        n_resamples=args.n_resamples,
        seed=args.seed,
    )
    _print(result, _ALIGNMENT_KEYS, args.json)
    return 0


def _run_structure(args: argparse.Namespace) -> int:
    from ..metrics import score_structure_files

    if _inputs(args, "structure", ("iou_threshold", "n_resamples")):
        return _run_codalab(args, "structure")
    result = score_structure_files(
        args.truth,
        args.submission,
        iou_threshold=args.iou_threshold,
        n_resamples=args.n_resamples,
        seed=args.seed,
    )
    _print(result, _STRUCTURE_KEYS, args.json)
    return 0
