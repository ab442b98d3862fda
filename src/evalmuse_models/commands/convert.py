"""``evalmuse convert``: official checkpoints -> Hugging Face folders.

    evalmuse convert fga-blip2 fga_blip2.pth OUT_DIR [--blip2-base DIR] [--tokenizer NAME_OR_DIR]
    evalmuse convert fga-blip2 --from imscore IMSCORE_DIR_OR_SAFETENSORS OUT_DIR
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an official checkpoint to a Hugging Face folder",
        description="Convert official checkpoints to safetensors folders that load with AutoModel.from_pretrained.",
    )
    parser.set_defaults(func=None, _parser=parser)
    targets = parser.add_subparsers(dest="convert_target", metavar="TARGET")

    fga = targets.add_parser(
        "fga-blip2",
        help="the official FGA-BLIP2 (LAVIS) checkpoint, or its imscore port -> EvalMuseAlignModel",
        description=(
            "Rename every tensor of the official LAVIS checkpoint ({'model': state_dict}), or of the imscore "
            "safetensors port (--from imscore), to EvalMuseAlignModel names and write config, safetensors "
            "weights, processor and model card. Refuses to write when a tensor is missing or unexpected. The "
            "imscore port has no contrastive temperature: it is filled with NaN and reported."
        ),
    )
    fga.add_argument(
        "checkpoint",
        help="the official fga_blip2.pth; with --from imscore, the port's folder (model.safetensors) or that file",
    )
    fga.add_argument("output_dir", help="folder to write")
    fga.add_argument(
        "--blip2-base",
        default=None,
        help="BLIP-2 base for vision tensors the checkpoint lacks (transformers folder such as "
        "blip2-itm-vit-g-coco, or a LAVIS .pth)",
    )
    fga.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: bert-base-uncased)")
    fga.add_argument("--preset", default="fga-blip2", help="architecture preset (default: fga-blip2)")
    fga.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                     help="dtype of the written weights")
    fga.add_argument(
        "--from",
        dest="source",
        default="lavis",
        choices=["lavis", "imscore"],
        help="format of CHECKPOINT: the official LAVIS pickle, or the imscore safetensors port (RE-N-Y/evalmuse)",
    )
    fga.add_argument("--overwrite", action="store_true",
                     help="replace an output folder written by an earlier conversion (never a folder of other files)")
    fga.set_defaults(func=_run_fga_blip2, _parser=fga)


def _run_fga_blip2(args: argparse.Namespace) -> int:
    from ..convert import convert_fga_blip2
    from ..utils import UserInputError

    tokenizer = None
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as error:
            print(f"error: could not load tokenizer {args.tokenizer!r}: {error}", file=sys.stderr)
            return 2
        if tokenizer.bos_token is None:
            tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    try:
        report = convert_fga_blip2(
            args.checkpoint,
            args.output_dir,
            blip2_base=args.blip2_base,
            preset=args.preset,
            tokenizer=tokenizer,
            dtype=args.dtype,
            overwrite=args.overwrite,
            source=args.source,
        )
    except (UserInputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
