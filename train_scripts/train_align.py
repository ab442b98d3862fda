#!/usr/bin/env python
"""Train the EvalMuse alignment model (FGA-BLIP2) with accelerate.

Fine-tune the converted official checkpoint with the official recipe on one GPU::

    python train_scripts/train_align.py --config train_scripts/configs/align_fga_blip2.yaml \
        --dataset_dir data/evalmuse --model_name_or_path checkpoints/evalmuse-align --output_dir runs/fga-blip2

Several GPUs::

    accelerate launch --num_processes 8 train_scripts/train_align.py \
        --config train_scripts/configs/align_fga_blip2.yaml --dataset_dir data/evalmuse \
        --model_name_or_path checkpoints/evalmuse-align --output_dir runs/fga-blip2

CPU run of the tiny preset (random weights, offline tokenizer; a minute or two)::

    python train_scripts/train_align.py --config train_scripts/configs/align_tiny.yaml \
        --dataset_dir data/evalmuse --output_dir runs/align-tiny

Any field of ``TrainAlignArguments`` can be set with ``--field value``; YAML keys are defaults. The run
resumes from the latest checkpoint in ``<output_dir>/checkpoints`` (safetensors and JSON, nothing unpickled;
``--resume false`` starts over), evaluates the NTIRE 2025 Main Score on
the validation split each epoch, and writes ``<output_dir>/model/`` and ``<output_dir>/metrics.json``.
"""

import sys

from evalmuse_models.training.align import main
from evalmuse_models.utils import UserInputError

if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
