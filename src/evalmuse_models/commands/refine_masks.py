"""``evalmuse refine-masks``: refine the structure annotations' boxes into object masks with SAM."""

from __future__ import annotations

import argparse

#: ``evalmuse_models.data.refine.DEFAULT_SAM_MODEL``, spelled here to keep the command cheap to import.
DEFAULT_MODEL = "facebook/sam-vit-base"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "refine-masks",
        help="refine the structure annotations into object masks with Segment Anything (structure_refined config)",
        description=(
            "Read the 'structure' config of DATASET_DIR (written by evalmuse prepare-data), prompt SAM with the "
            "bounding box of every annotated rectangle and polygon, keep SAM's mask inside the shape as drawn, and "
            "write OUT_DIR: a dataset folder whose 'structure_refined' config has the columns of 'structure' with the "
            "mask and heatmap made again from the refined shapes by the same rule, the refined official truth of the "
            "labelled validation/test splits (OUT_DIR/official/structure_refined/SPLIT/gt.pkl) and "
            "OUT_DIR/refine_report.json (each image's mask area before and after; `evalmuse report --analysis` draws "
            "it). An interrupted run resumes when run again. Example: evalmuse refine-masks data/evalmuse "
            "data/evalmuse-refined --model facebook/sam-vit-base; then train with dataset_dir: data/evalmuse-refined "
            "and the structure_refined config"
        ),
    )
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="prepared dataset folder (evalmuse prepare-data)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder to create")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="SAM model: Hub id or local folder (SamModel + "
                        "SamProcessor)")
    parser.add_argument("--splits", nargs="+", metavar="SPLIT", help="refine only these splits (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per SAM forward pass")
    parser.add_argument("--mask-min-votes", type=int, default=1,
                        help="annotators needed for a pixel of the mask column: the value given to prepare-data "
                        "(the dataset's mask column is checked against it)")
    parser.add_argument("--min-keep", type=float, default=0.0,
                        help="a shape of which SAM keeps at most this share of the pixels is kept whole (0: only a "
                        "shape SAM finds nothing in)")
    parser.add_argument("--shard-rows", type=int, default=256,
                        help="rows per Parquet shard (an interrupted run resumes after its last complete shard)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (auto: accelerate's device)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if refine-masks wrote it")
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if an interrupted run left completed shards in "
                        ".OUT_DIR.partial (resumed by default)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..analysis.refine import format_refine_report, read_refine_report
    from ..data.refine import refine_dataset

    result = refine_dataset(
        args.dataset_dir, args.out_dir, model=args.model, splits=args.splits, batch_size=args.batch_size,
        mask_min_votes=args.mask_min_votes, min_keep=args.min_keep, shard_rows=args.shard_rows, device=args.device,
        dtype=args.dtype, overwrite=args.overwrite, resume=not args.no_resume,
        progress=None if not args.no_progress else False,
    )
    if args.json:
        print(json.dumps({"path": str(result.path), "report": str(result.report_path), "num_rows": result.num_rows,
                          "official_truth": {k: str(v) for k, v in result.official_truth.items()},
                          "summary": result.summary, "images_refined": result.images_refined,
                          "seconds": result.seconds, "images_per_second": result.images_per_second}))
    else:
        print(format_refine_report(read_refine_report(result.report_path)))
        speed = f" ({result.images_per_second:.2f} images/s)" if result.images_per_second else ""
        print(f"wrote {result.path} (config structure_refined: {sum(result.num_rows.values())} rows); "
              f"{result.images_refined} image(s) refined in this run in {result.seconds:.1f} s{speed}")
    return 0
