#!/usr/bin/env python
"""Train the EvalMuse structure model (distortion heatmap + structure score) with accelerate.

CPU run of the tiny preset (a minute or two on a prepared synthetic dataset)::

    python train_scripts/train_structure.py --config train_scripts/configs/structure_tiny.yaml \
        --dataset_dir data/evalmuse --output_dir runs/structure-tiny

HNU-VPAI design (frozen DINOv2-L + ResNet-50, fusion trained, bf16) on one or many GPUs::

    accelerate launch --num_processes 8 train_scripts/train_structure.py \
        --config train_scripts/configs/structure_hnu_vpai.yaml --dataset_dir data/evalmuse

Any field of ``TrainStructureArguments`` can be set with ``--field value`` (lists comma-separated,
``--config_overrides '{"rank_loss_weight": 0.1}'`` as JSON). The run resumes from
``<output_dir>/checkpoints/last`` when present (safetensors and JSON, nothing unpickled; ``--resume false``
starts over), evaluates the official structure Final score
after each epoch, searches the heatmap threshold on the validation split and writes
``<output_dir>/model/`` (``save_pretrained``) and ``<output_dir>/metrics.json``.
"""

import sys

from evalmuse_models.training.structure import main
from evalmuse_models.utils import UserInputError

if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
