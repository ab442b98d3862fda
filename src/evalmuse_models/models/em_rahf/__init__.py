"""EM-RAHF, the official EvalMuse-Structure baseline (NTIRE 2025 track 2), exactly as its training code
builds it: config (``em-rahf`` and ``tiny`` presets), model, processor and their registration with
transformers' Auto classes. ``evalmuse convert em-rahf`` turns a checkpoint saved by the official training
code into a folder of this family. The model's outputs follow the structure family's contract (``heatmap``,
``structure_score`` on 1-5), so the ``t2i-structure`` pipeline runs it too.

Example::

    from evalmuse_models.models.em_rahf import EmRahfConfig, EmRahfModel, EmRahfProcessor

    config = EmRahfConfig.from_preset("em-rahf")      # random init, no network
    model = EmRahfModel(config)
    model.load_pretrained_encoders()                  # BAAI/AltCLIP's vision tower and text embeddings
    processor = EmRahfProcessor.from_model_config(config)
"""

from __future__ import annotations

from .configuration_em_rahf import PRESETS, EmRahfConfig
from .modeling_em_rahf import EmRahfModel, EmRahfOutput, EmRahfPreTrainedModel, interpolate_position_embeddings
from .processing_em_rahf import OFFICIAL_THRESHOLD, EmRahfProcessor


def register() -> None:
    """Register the family with transformers' Auto classes (see :func:`evalmuse_models.models.register_family`)."""
    from .. import register_family

    register_family(EmRahfConfig, EmRahfModel, EmRahfProcessor)


__all__ = [
    "OFFICIAL_THRESHOLD",
    "PRESETS",
    "EmRahfConfig",
    "EmRahfModel",
    "EmRahfOutput",
    "EmRahfPreTrainedModel",
    "EmRahfProcessor",
    "interpolate_position_embeddings",
    "register",
]
