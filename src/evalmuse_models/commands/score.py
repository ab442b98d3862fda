"""``evalmuse score``: batch-score a folder of images or a dataset split into a results JSONL."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score images for prompt alignment and structural distortion (resumable JSONL output)",
        description=(
            "Score every image of INPUT with an alignment model (--align) and/or a structure model "
            "(--structure), whose masks can come from an instance-segmentation model's results (--masks-from). INPUT is a folder of images with a prompts file (prompts.jsonl / prompts.csv: "
            "image, prompt, optional elements and generator) or a prepared dataset folder / Hub id "
            "(choose --config and --split). Rows are appended to --out as they are scored; rerunning "
            "the same command resumes. Several GPUs or nodes: `accelerate launch --multi_gpu --num_processes N -m evalmuse_models score ...`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input", help="image folder with a prompts file, or a prepared dataset folder / Hub id")
    parser.add_argument("--out", required=True, help="results file (.jsonl); an existing one is resumed")
    parser.add_argument("--align", help="alignment model: folder, Hub id, mllm:<model> or module:factory")
    parser.add_argument("--structure", help="structure model: folder, Hub id or module:factory")
    parser.add_argument("--prompts", help="prompts file (default: prompts.jsonl/.csv or metadata.jsonl/.csv in INPUT)")
    parser.add_argument("--config", choices=["alignment", "structure"], help="dataset config when INPUT is a dataset")
    parser.add_argument("--split", default="test", help="dataset split when INPUT is a dataset")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loader worker processes decoding images (default: 0 on CPU, up to 4 on GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (auto: accelerate's device)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--threshold", type=float, help="heatmap threshold for structure masks (model default)")
    parser.add_argument("--heatmap-size", type=int, default=64, help="side of the heatmap PNG kept per row; 0 = none")
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing --out")
    parser.add_argument("--retry-errors", action="store_true",
                        help="when resuming, score again the images whose rows are errors")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_mask_arguments(parser)
    parser.set_defaults(func=run)


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """``--masks-from`` and its options (``evalmuse score`` and ``evalmuse submit``). The defaults are
    ``load_detection_masks``'s (written out: registering the commands imports no library code)."""
    group = parser.add_argument_group(
        "structure masks from an instance-segmentation model",
        "COCO-format results (mmdetection's *.segm.json): each image's mask is the union of its instances of "
        "the chosen categories with at least the minimum score",
    )
    group.add_argument("--masks-from", metavar="RESULTS.json",
                       help="the detector's results: [{image_id, category_id, score, segmentation}, ...]")
    group.add_argument("--mask-annotations", metavar="ANN.json",
                       help="the COCO annotation file the detector ran on (maps image ids to file names and sizes; "
                            "without it every result needs a file_name)")
    group.add_argument("--mask-categories", metavar="ID", type=int, nargs="+", default=[2],
                       help="category ids whose instances make the mask")
    group.add_argument("--mask-score", metavar="S", type=float, default=0.3,
                       help="minimum instance score")


def detection_masks(args: argparse.Namespace):
    """The :class:`~evalmuse_models.scoring.detections.DetectionMasks` the options ask for (None without
    ``--masks-from``)."""
    if args.masks_from is None:
        if args.mask_annotations is not None:
            from ..utils import UserInputError

            raise UserInputError("--mask-annotations is for --masks-from RESULTS.json, which is missing")
        return None
    from ..scoring.detections import load_detection_masks

    return load_detection_masks(args.masks_from, annotations=args.mask_annotations,
                                categories=args.mask_categories, min_score=args.mask_score)


def run(args: argparse.Namespace) -> int:

    from ..scoring import score

    summary = score(
        args.input,
        out=args.out,
        align=args.align,
        structure=args.structure,
        prompts_file=args.prompts,
        config=args.config,
        split=args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        threshold=args.threshold,
        heatmap_size=args.heatmap_size,
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
        limit=args.limit,
        progress=not args.no_progress,
        masks=detection_masks(args),
    )
    if summary["rows"] is not None:
        print(json.dumps(summary))
    return 0
