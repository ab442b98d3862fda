"""``evalmuse train align|structure|mllm``: run one of the three training recipes.

Everything after the recipe's name goes to the recipe's own ``main(argv)``, which parses it with
``trl.TrlParser`` (``--config file.yaml`` and ``--field value`` overrides), exactly as the matching
script in ``train_scripts/`` does; ``evalmuse train <recipe> --help`` prints the recipe's options.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

#: recipe name -> (module with ``main(argv)``, the modules of the ``train`` extra it needs, help line)
RECIPES = {
    "align": (
        "evalmuse_models.training.align",
        ("trl",),
        "fine-tune the FGA-BLIP2 alignment model with transformers' Trainer (train_scripts/train_align.py)",
    ),
    "structure": (
        "evalmuse_models.training.structure",
        ("trl",),
        ("train the structure model (distortion heatmap + score) with transformers' Trainer "
         "(train_scripts/train_structure.py)"),
    ),
    "mllm": (
        "evalmuse_models.mllm.train",
        ("trl", "peft"),
        "LoRA SFT of an MLLM alignment judge (Qwen2.5-VL) with TRL's SFTTrainer (train_scripts/sft_mllm.py)",
    ),
}


class _RecipeArguments(argparse.ArgumentParser):
    """The parser of one recipe: it keeps every remaining argument, untouched, for the recipe's own parser
    (``--help`` included)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace = namespace if namespace is not None else argparse.Namespace()
        for name, value in self._defaults.items():
            setattr(namespace, name, value)
        namespace.recipe_argv = list(args or [])
        return namespace, []


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model: the alignment model, the structure model or an MLLM judge",
        description=(
            "Run a training recipe. The arguments after RECIPE are the recipe's own: a YAML file with "
            "--config (train_scripts/configs/*.yaml) and any --field value override; "
            "`evalmuse train RECIPE --help` lists them. Several GPUs: "
            "`accelerate launch --num_processes N -m evalmuse_models train RECIPE ...`."
        ),
    )
    recipes = parser.add_subparsers(dest="recipe", metavar="RECIPE", parser_class=_RecipeArguments)
    for name, (_module, _extras, help_line) in RECIPES.items():
        recipe = recipes.add_parser(name, help=help_line, add_help=False)
        recipe.set_defaults(func=run)
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    from ..utils import UserInputError

    module_name, extras, _help = RECIPES[args.recipe]
    missing = [name for name in extras if importlib.util.find_spec(name) is None]
    if missing:
        raise UserInputError(
            f"`evalmuse train {args.recipe}` needs the train extra ({', '.join(missing)} not installed): "
            "pip install 'evalmuse-models[train]'"
        )
    return int(importlib.import_module(module_name).main(args.recipe_argv) or 0)
