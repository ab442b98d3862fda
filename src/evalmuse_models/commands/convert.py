"""``evalmuse convert``: official checkpoints -> Hugging Face folders.

    evalmuse convert fga-blip2 fga_blip2.pth OUT_DIR [--blip2-base DIR] [--tokenizer NAME_OR_DIR]
    evalmuse convert fga-blip2 --from imscore IMSCORE_DIR_OR_SAFETENSORS OUT_DIR
    evalmuse convert hnu-vpai loda_evalmuse10k_train_split0_1120.pt OUT_DIR [--backbones-from DIR]
    evalmuse convert em-rahf CHECKPOINT.pth OUT_DIR [--tokenizer NAME_OR_DIR]
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

    loda = targets.add_parser(
        "hnu-vpai",
        help="HNU-VPAI's LoDa structure-score checkpoint -> LodaModel",
        description=(
            "Map every tensor of HNU-VPAI's published LoDa checkpoint ({'learner': ..., 'bn_buffer': ...}) to "
            "LodaModel names, add timm's pretrained backbones (not in the checkpoint) and write config, safetensors "
            "weights, processor and model card. Refuses to write when a tensor is missing, unexpected or misshapen."
        ),
    )
    loda.add_argument("checkpoint", help="the published loda_evalmuse10k_train_split0_1120.pt")
    loda.add_argument("output_dir", help="folder to write")
    backbones = loda.add_mutually_exclusive_group()
    backbones.add_argument(
        "--backbones-from",
        default=None,
        metavar="DIR",
        help="folder with timm's two backbones as local timm folders named vit_large_patch14_reg4_dinov2.lvd142m "
        "and resnet50.a1_in1k (default: timm downloads them)",
    )
    backbones.add_argument("--random-backbones", action="store_true",
                           help="keep random backbones (tests only: the scores mean nothing)")
    loda.add_argument("--crop", default="center", choices=["center", "random"],
                      help="the saved processor's 518-px crop: center (default) or HNU-VPAI's random test-time crop")
    loda.add_argument("--preset", default="hnu-vpai", help="architecture preset (default: hnu-vpai)")
    loda.add_argument("--overwrite", action="store_true",
                      help="replace an output folder written by an earlier conversion (never a folder of other files)")
    loda.set_defaults(func=_run_hnu_vpai, _parser=loda)

    rahf = targets.add_parser(
        "em-rahf",
        help="a checkpoint of the official EM-RAHF training code -> EmRahfModel",
        description=(
            "Rename every tensor of a checkpoint saved by the official EM-RAHF training code "
            "({'model': state_dict, 'optimizer', 'scheduler'}, or a bare state dict; 'module.' prefixes removed) to "
            "EmRahfModel names and write config, safetensors weights, processor and model card. No official EM-RAHF "
            "weights were published: this is for checkpoints you trained. Refuses to write when a tensor is missing, "
            "unexpected or misshapen."
        ),
    )
    rahf.add_argument("checkpoint", help="the .pth saved by the official training (e.g. experiments/NAME/last.pth)")
    rahf.add_argument("output_dir", help="folder to write")
    rahf.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: BAAI/AltCLIP)")
    rahf.add_argument("--preset", default="em-rahf", help="architecture preset (default: em-rahf)")
    rahf.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                      help="dtype of the written weights")
    rahf.add_argument("--overwrite", action="store_true",
                      help="replace an output folder written by an earlier conversion (never a folder of other files)")
    rahf.set_defaults(func=_run_em_rahf, _parser=rahf)


def _converted(convert, args: argparse.Namespace, **options) -> int:
    """Run a converter on ``args.checkpoint`` -> ``args.output_dir``, print its report; a checkpoint that
    does not fit (``ValueError``/``UserInputError``) is one line on stderr and exit status 2."""
    from ..utils import UserInputError

    try:
        report = convert(args.checkpoint, args.output_dir, overwrite=args.overwrite, **options)
    except (UserInputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _run_fga_blip2(args: argparse.Namespace) -> int:
    from ..convert import convert_fga_blip2

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
    return _converted(convert_fga_blip2, args, blip2_base=args.blip2_base, preset=args.preset, tokenizer=tokenizer,
                      dtype=args.dtype, source=args.source)


def _run_hnu_vpai(args: argparse.Namespace) -> int:
    from ..convert.hnu_vpai import convert_hnu_vpai

    return _converted(convert_hnu_vpai, args, backbones_from=args.backbones_from,
                      random_backbones=args.random_backbones, preset=args.preset, crop=args.crop)


def _run_em_rahf(args: argparse.Namespace) -> int:
    from ..convert.em_rahf import convert_em_rahf

    return _converted(convert_em_rahf, args, preset=args.preset, tokenizer_name_or_path=args.tokenizer,
                      dtype=args.dtype)
