#!/usr/bin/env python
"""TRL SFT (LoRA) of a Qwen2.5-VL alignment judge on EvalMuse-40K — the NTIRE 2025 winning recipe.

One GPU (H200)::

    python train_scripts/sft_mllm.py --config train_scripts/configs/sft_h200.yaml --dataset_dir data/evalmuse

Eight GPUs::

    accelerate launch --num_processes 8 train_scripts/sft_mllm.py \
        --config train_scripts/configs/sft_8gpu.yaml --dataset_dir data/evalmuse

CPU smoke run on a random tiny model::

    python train_scripts/sft_mllm.py --config train_scripts/configs/sft_tiny.yaml --dataset_dir data/evalmuse

The arguments are ``MLLMRecipeArguments`` (data, conversations, LoRA towers, evaluation), TRL's
``SFTConfig`` with the recipe's defaults and TRL's ``ModelConfig`` (model, dtype, LoRA rank), parsed by
``trl.TrlParser``: YAML keys are field names and ``--field value`` overrides them (``--help`` lists them
all). The run resumes from the last checkpoint in ``output_dir`` (``--resume_from_checkpoint none`` to
start over), then writes ``adapter/`` (PEFT LoRA + processor + model card), ``merged/`` (merged weights)
and ``summary.json`` with the Main Score on the validation split. ``evalmuse train mllm`` runs the same.
"""

import json

import yaml

from evalmuse_models.mllm.train import make_parser, run_sft
from evalmuse_models.utils import UserInputError

if __name__ == "__main__":
    parser = make_parser()  # trl.TrlParser((MLLMRecipeArguments, MLLMSFTConfig, trl.ModelConfig))
    try:
        recipe_args, training_args, model_args = parser.parse_args_and_config()
    except (OSError, ValueError, yaml.YAMLError) as error:  # a missing config file, an unknown key, a bad value
        parser.error(" ".join(str(error).split()))
    try:
        summary = run_sft(recipe_args, training_args, model_args)
    except UserInputError as error:
        parser.error(str(error))
    if summary["paths"]:  # the main process
        print(json.dumps({"metrics": summary["metrics"], "paths": summary["paths"]}, indent=2))
