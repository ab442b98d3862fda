"""``evalmuse submit``: turn ``evalmuse score`` results into the official NTIRE 2025 submission files."""

from __future__ import annotations

import argparse

from .score import add_mask_arguments, detection_masks


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="write the official submission files (output.json / output.pkl, readme.txt, submission.zip)",
        description=(
            "Write <OUT>/alignment/{output.json,readme.txt,submission.zip} and/or "
            "<OUT>/structure/{output.pkl,readme.txt,submission.zip} from the results file of one `evalmuse "
            "score` run (a run with --align for the alignment track, with --structure for the structure track; "
            "the demo's combined results.jsonl mixes two runs and is for the report). --masks-from replaces the "
            "structure masks with an instance-segmentation model's; --rescale minmax rescales the scores."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("results", help="results .jsonl written by `evalmuse score`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--track", default="auto", choices=["auto", "alignment", "structure", "both"],
                        help="which submission(s) to write; auto: every track the results hold")
    parser.add_argument("--runtime-per-image", type=float, help="seconds (default: measured by `evalmuse score`)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="readme: ran on a GPU")
    device.add_argument("--cpu", dest="gpu", action="store_false", help="readme: ran on a CPU")
    parser.add_argument("--extra-data", action="store_true", help="readme: trained with extra data")
    llm = parser.add_mutually_exclusive_group()
    llm.add_argument("--llm", dest="llm", action="store_true", default=None, help="readme: uses an LLM")
    llm.add_argument("--no-llm", dest="llm", action="store_false",
                     help="readme: uses no LLM (default: from the scoring run's alignment model)")
    parser.add_argument("--description", default="", help="readme: method description")
    parser.add_argument("--allow-missing", action="store_true", help="leave out images whose scoring failed")
    parser.add_argument("--rescale", default="none", choices=["none", "minmax"],
                        help="minmax: each track's image scores mapped linearly onto [1, 5] over the submitted set, "
                             "1 + 4 * (s - min) / (max - min) (element scores are left as they are)")
    add_mask_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..scoring.submission import write_submission

    written = write_submission(
        args.results, args.out, track=args.track, runtime_per_image=args.runtime_per_image, gpu=args.gpu,
        extra_data=args.extra_data, llm=args.llm, description=args.description, allow_missing=args.allow_missing,
        masks=detection_masks(args), rescale=None if args.rescale == "none" else args.rescale,
    )
    for track, paths in written.items():
        print(f"{track}: {paths['zip']}")
    return 0
