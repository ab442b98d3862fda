"""``evalmuse synthetic alignment|structure``: write a synthetic EvalMuse release (raw formats)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "synthetic",
        help="write a synthetic EvalMuse-40K or EvalMuse-Structure release (exact raw formats)",
        description="Write a procedurally drawn release in the exact raw formats, deterministic by seed. "
        "Example: evalmuse synthetic alignment raw/alignment --num-prompts 200 --seed 0",
    )
    group.set_defaults(_parser=group, func=None)
    kinds = group.add_subparsers(dest="kind", metavar="KIND")

    align = kinds.add_parser(
        "alignment",
        help="EvalMuse-40K: train_list.json, val_list.json, test.json, <generator>/<id>.png",
        description="Write a synthetic EvalMuse-40K release into OUT_DIR.",
    )
    align.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the release")
    align.add_argument("--num-prompts", type=int, default=200, help="prompts (each drawn by every generator)")
    align.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same files)")
    align.set_defaults(func=_run_alignment, _parser=align)

    struct = kinds.add_parser(
        "structure",
        help="EvalMuse-Structure: train/val/test_info.json and <key>.jpg images",
        description="Write a synthetic EvalMuse-Structure release into OUT_DIR.",
    )
    struct.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the release")
    struct.add_argument("--num-images", type=int, default=300, help="images over the train, val and test splits")
    struct.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same files)")
    struct.add_argument("--layout", choices=("subfolders", "flat"), default="subfolders",
                        help="images in train/ val/ test/ (default) or beside the JSON files")
    struct.set_defaults(func=_run_structure, _parser=struct)


def _report(counts: dict[str, int], out_dir: str) -> None:
    print(", ".join(f"{split} {n}" for split, n in counts.items()) + f" records written to {out_dir}")


def _run_alignment(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_alignment_release

    if args.num_prompts < 1:
        print("error: --num-prompts must be at least 1", file=sys.stderr)
        return 2
    _report(write_alignment_release(args.out_dir, args.num_prompts, args.seed, progress=sys.stderr.isatty()),
            args.out_dir)
    return 0


def _run_structure(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_structure_release

    if args.num_images < 1:
        print("error: --num-images must be at least 1", file=sys.stderr)
        return 2
    _report(write_structure_release(args.out_dir, args.num_images, args.seed, layout=args.layout,
                                    progress=sys.stderr.isatty()), args.out_dir)
    return 0
