"""HNU-VPAI's LoDa structure-score model (EvalMuse-Structure, NTIRE 2025 track 2, 1st place), exactly as
published: config, model, processor, Auto-class registration. ``evalmuse convert hnu-vpai`` turns their
published checkpoint into a folder of this family.

Example::

    from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel

    model = LodaModel(LodaConfig.from_preset("tiny"))
    scores = model.predict(["image.jpg"])  # cosines in [-1, 1], higher is better
"""

from __future__ import annotations

from .configuration_hnu_vpai_loda import PRESETS, LodaConfig
from .modeling_hnu_vpai_loda import (
    LodaCrossAttention,
    LodaLearner,
    LodaModel,
    LodaNormedLinear,
    LodaOutput,
    LodaPreTrainedModel,
    build_cnn,
    build_vit,
    loda_plcc_loss,
)
from .processing_hnu_vpai_loda import CROPS, LodaProcessor


def register() -> None:
    """Register the family with transformers' Auto classes (see :func:`evalmuse_models.models.register_family`)."""
    from .. import register_family

    register_family(LodaConfig, LodaModel, LodaProcessor)


__all__ = [
    "CROPS",
    "PRESETS",
    "LodaConfig",
    "LodaCrossAttention",
    "LodaLearner",
    "LodaModel",
    "LodaNormedLinear",
    "LodaOutput",
    "LodaPreTrainedModel",
    "LodaProcessor",
    "build_cnn",
    "build_vit",
    "loda_plcc_loss",
    "register",
]
