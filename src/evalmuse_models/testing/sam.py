"""Random-weight Segment Anything models for tests and benchmarks of ``evalmuse refine-masks``.

Nothing is downloaded: the model is transformers' ``SamModel`` built from a ``SamConfig`` and the
processor a ``SamProcessor`` whose image processor is sized to the model (``tiny``: 64 px input,
8 px patches, a 32x32 mask; ``base``: the architecture of ``facebook/sam-vit-base``, 1024 px input).

Example::

    from evalmuse_models.testing.sam import save_random_sam

    folder = save_random_sam("tiny-sam")   # config.json, model.safetensors, processor_config.json
    # evalmuse refine-masks data/evalmuse data/evalmuse-refined --model tiny-sam
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SAM_PRESETS", "build_random_sam", "random_sam_config", "save_random_sam"]

#: The image encoder's weight scale. ``SamVisionConfig`` defaults to 1e-10, which is harmless for trained weights
#: but makes a random encoder's activations subnormal on the zero padding of real inputs, and subnormal arithmetic
#: made the base-sized encoder ten times slower on CPU (180 s instead of 18 s an image).
_VISION_INIT = 0.02

#: ``SamConfig`` keyword arguments of each preset (``base``: the architecture of ``facebook/sam-vit-base``, the
#: defaults).
SAM_PRESETS = {
    "tiny": {
        "vision_config": {
            "hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1], "num_pos_feats": 8,
            "mlp_dim": 64, "initializer_range": _VISION_INIT,
        },
        "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
        "mask_decoder_config": {
            "hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "iou_head_hidden_dim": 16,
        },
    },
    "base": {"vision_config": {"initializer_range": _VISION_INIT}},
}


def random_sam_config(preset: str = "tiny"):
    """The ``SamConfig`` of ``preset`` (``tiny`` or ``base``)."""
    from transformers import SamConfig

    if preset not in SAM_PRESETS:
        raise ValueError(f"unknown SAM preset {preset!r}; expected one of {', '.join(SAM_PRESETS)}")
    return SamConfig(**SAM_PRESETS[preset])


def build_random_sam(preset: str = "tiny", seed: int = 0):
    """``(SamModel, SamProcessor)`` with random weights (seeded), the processor sized to the model's input."""
    import torch
    from transformers import SamImageProcessor, SamModel, SamProcessor

    config = random_sam_config(preset)
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    side = config.vision_config.image_size
    mask_side = 4 * config.prompt_encoder_config.image_embedding_size  # the mask decoder upscales 4x
    image_processor = SamImageProcessor(
        size={"longest_edge": side}, pad_size={"height": side, "width": side},
        mask_size={"longest_edge": mask_side}, mask_pad_size={"height": mask_side, "width": mask_side},
    )
    return model, SamProcessor(image_processor)


def save_random_sam(folder: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """Save :func:`build_random_sam`'s model and processor to ``folder`` (loadable with
    ``SamModel.from_pretrained`` / ``SamProcessor.from_pretrained``, or ``--model folder``)."""
    model, processor = build_random_sam(preset, seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
