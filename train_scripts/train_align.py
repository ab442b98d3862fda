#!/usr/bin/env python
"""Train the EvalMuse alignment model (FGA-BLIP2) with transformers' Trainer.

Fine-tune the converted official checkpoint with the official recipe on one GPU::

    python train_scripts/train_align.py --config train_scripts/configs/align_fga_blip2.yaml \
        --dataset_dir data/evalmuse --model_name_or_path checkpoints/evalmuse-align --output_dir runs/fga-blip2

Several GPUs::

    accelerate launch --num_processes 8 train_scripts/train_align.py \
        --config train_scripts/configs/align_fga_blip2.yaml --dataset_dir data/evalmuse \
        --model_name_or_path checkpoints/evalmuse-align --output_dir runs/fga-blip2

CPU run of the tiny preset (random weights, offline tokenizer; a minute or two), on 2 processes
(``accelerate launch --cpu`` starts a single process with accelerate 1.15; torchrun starts two)::

    torchrun --nproc_per_node 2 train_scripts/train_align.py --use_cpu true \
        --config train_scripts/configs/align_tiny.yaml --dataset_dir data/evalmuse --output_dir runs/align-tiny

Keys of the YAML and ``--flags``: the fields of ``AlignRecipeArguments`` and of transformers'
``TrainingArguments`` (``learning_rate``, ``max_steps``, ``eval_strategy``, ``save_steps``, ...). The run
resumes from the last ``<output_dir>/checkpoint-N`` (``--resume_from_checkpoint none`` starts over),
evaluates the NTIRE 2025 Main Score on the validation split, and writes ``<output_dir>/model/`` and
``<output_dir>/metrics.json``.
"""

import json
import sys

from trl import TrlParser

from evalmuse_models.training.align import AlignRecipeArguments, AlignTrainingArguments, train_align
from evalmuse_models.utils import UserInputError


def fail(message) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    parser = TrlParser((AlignRecipeArguments, AlignTrainingArguments))
    try:
        recipe_args, training_args = parser.parse_args_and_config()
    except (UserInputError, OSError, ValueError) as err:  # a missing config file, an unknown key, a bad value
        fail(err)
    try:
        metrics = train_align(recipe_args, training_args)
    except UserInputError as err:
        fail(err)
    if metrics:
        print(json.dumps({"initial": metrics["initial"], "final": metrics["final"], "steps": metrics["steps"]}))
