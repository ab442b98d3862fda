"""``evalmuse prepare-data``: turn raw EvalMuse releases into a Hub-ready Parquet dataset folder."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-data",
        help="build a Hub-ready dataset (Parquet + dataset card) from raw EvalMuse releases",
        description=(
            "Parse and validate raw EvalMuse-40K (--alignment) and/or EvalMuse-Structure (--structure) "
            "releases and write OUT_DIR: Parquet shards with the images embedded, the official truth file of "
            "each labelled split (OUT_DIR/official/) and a README whose configs define 'alignment' and "
            "'structure', loadable with "
            "datasets.load_dataset(OUT_DIR, 'alignment'). Example: evalmuse prepare-data "
            "--alignment EvalMuse-40K/ --structure EvalMuse-Structure/ evalmuse/"
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder to create (name it 'evalmuse' to "
                        "load it as load_dataset('evalmuse', ...) from its parent)")
    parser.add_argument("--alignment", metavar="RAW_DIR",
                        help="EvalMuse-40K release folder: train_list.json / val_list.json / test.json + images")
    parser.add_argument("--structure", metavar="RAW_DIR",
                        help="EvalMuse-Structure release folder: train_info.json / val_info.json / "
                        "test_info.json + <key>.jpg images (beside them or in train/ val/ test/)")
    parser.add_argument("--generator-map", metavar="FILE", default=None,
                        help="which model made each alignment image, for releases with flat img_path values "
                        "(img_0001.png): a CSV with the columns img_path,generator or a JSON object "
                        "{img_path: generator}. Listed images take its generator; the others keep the folder of "
                        "their img_path, or none (unknown) when the path is flat")
    parser.add_argument("--holdout-generators", metavar="A,B", default=None,
                        help="alignment generators to hold out (comma-separated): every image of theirs, from every "
                        "split, goes to a test_unseen split (with its official truth), and "
                        "OUT_DIR/official/alignment/holdout.json marks each one prompt_seen or prompt_unseen (its "
                        "prompt is or is not in the train split), for evalmuse eval alignment --by seen/unseen")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave invalid records out (listed in OUT_DIR/skipped_records.jsonl) instead of "
                        "stopping at the first one")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    shards = parser.add_mutually_exclusive_group()
    shards.add_argument("--num-shards", type=int, default=None, help="Parquet shards per split")
    shards.add_argument("--max-shard-size", default="500MB",
                        help="start a new shard past this size (default 500MB)")
    parser.add_argument("--mask-min-votes", type=int, default=1,
                        help="annotators needed for a pixel of the 'mask' column (default 1 = union)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="threads decoding and encoding images (default: min(4, CPUs))")
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if an interrupted run of the same command left "
                        "completed shards in .OUT_DIR.partial (resumed by default)")
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--no-official-truth", action="store_true",
                       help="do not write the official truth files of the labelled validation and test splits "
                       "(OUT_DIR/official/alignment/SPLIT/eval.json, OUT_DIR/official/structure/SPLIT/gt.pkl, for "
                       "evalmuse eval --truth)")
    truth.add_argument("--official-truth-train", action="store_true",
                       help="write the official truth of the train split too (a gt.pkl takes 256 KiB per image: "
                       "2.6 GB for the 10,000 structure training images)")
    parser.add_argument("--card-template", metavar="FILE", default=None,
                        help="dataset card template (default: the packaged one, as in dataset_scripts/)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..data import prepare_dataset
    from ..data.export import OFFICIAL_TRUTH_SPLITS

    if args.alignment is None and args.structure is None:
        print("error: give --alignment RAW_DIR, --structure RAW_DIR or both", file=sys.stderr)
        return 2
    result = prepare_dataset(
        args.out_dir,
        alignment_dir=args.alignment,
        structure_dir=args.structure,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        num_shards=args.num_shards,
        max_shard_size=args.max_shard_size,
        mask_min_votes=args.mask_min_votes,
        num_workers=args.num_workers,
        progress=False if args.no_progress else None,
        resume=not args.no_resume,
        card_template=args.card_template,
        generator_map=args.generator_map,
        holdout_generators=args.holdout_generators,
        official_truth=False if args.no_official_truth else True if args.official_truth_train else OFFICIAL_TRUTH_SPLITS,
    )
    for config, splits in result.num_rows.items():
        counts = ", ".join(f"{split} {rows}" for split, rows in splits.items())
        print(f"{config}: {counts}")
    for splits in result.official_truth.values():
        for path in splits.values():
            print(f"official truth: {path}")
    if result.holdout_manifest is not None:
        print(f"held-out generators: {result.holdout_manifest}")
    if args.skip_invalid:
        print(f"skipped {len(result.skipped)} invalid record(s)"
              + (f"; reasons in {result.skipped_report}" if result.skipped_report else ""))
    print(f"wrote {result.path}")
    return 0
