#!/usr/bin/env python
"""Train a structure model with transformers' Trainer: the EvalMuse structure model (distortion heatmap +
structure score), EM-RAHF (the official baseline, with its official schedule) or HNU-VPAI's LoDa (a score,
PLCC loss).

CPU run of the tiny preset (a couple of minutes on a prepared synthetic dataset)::

    python train_scripts/train_structure.py --config train_scripts/configs/structure_tiny.yaml \
        --dataset_dir data/evalmuse --output_dir runs/structure-tiny

HNU-VPAI design (frozen DINOv2-L + ResNet-50, fusion trained, bf16) on eight GPUs::

    accelerate launch --num_processes 8 train_scripts/train_structure.py \
        --config train_scripts/configs/structure_dinov2_resnet_fuser.yaml --dataset_dir data/evalmuse

EM-RAHF with the official schedule, and HNU-VPAI's LoDa with the team's hyper-parameters, on eight GPUs
(``--model_name_or_path FOLDER`` starts from a converted or saved folder of either family instead)::

    accelerate launch --num_processes 8 train_scripts/train_structure.py \
        --config train_scripts/configs/structure_em_rahf_official.yaml --dataset_dir data/evalmuse
    accelerate launch --num_processes 8 train_scripts/train_structure.py \
        --config train_scripts/configs/structure_loda_hnu_vpai.yaml --dataset_dir data/evalmuse

Any field of ``StructureRecipeArguments`` or of the Trainer's ``StructureTrainingArguments`` can be set in
the YAML file or overridden with ``--field value``. The run resumes from the last ``checkpoint-N`` in
``output_dir`` (``--resume_from_checkpoint none`` starts over), logs the family's scores of the validation
split at every evaluation (the official structure score; PLCC and SRCC for LoDa), searches the heatmap
threshold at the end (heatmap families) and writes ``output_dir/model/`` (``save_pretrained``) and
``output_dir/metrics.json``.
"""

import json

from trl import TrlParser

from evalmuse_models.training.structure import StructureRecipeArguments, StructureTrainingArguments, train_structure
from evalmuse_models.utils import UserInputError

if __name__ == "__main__":
    parser = TrlParser((StructureRecipeArguments, StructureTrainingArguments))
    try:
        recipe_args, training_args = parser.parse_args_and_config()
    except (OSError, ValueError) as error:  # a missing config file, an unknown key, a bad value
        parser.error(" ".join(str(error).split()))
    try:
        metrics = train_structure(recipe_args, training_args)
    except UserInputError as error:
        parser.error(str(error))
    if metrics:  # the main process
        keys = ("family", "initial", "final", "test", "threshold", "note", "model_dir")
        print(json.dumps({key: metrics[key] for key in keys if key in metrics}, indent=2))
