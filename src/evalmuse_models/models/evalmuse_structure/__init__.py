"""The EvalMuse structure model family (CNN + ViT fuser: distortion heatmap and structure score):
config, model, processor, Auto-class registration. The post-processing (heatmap -> masks and
regions) is the model file's own; :mod:`evalmuse_models.models.evalmuse_structure.postprocess`
wraps it with input checks and adds the evaluation and the threshold search (not shipped as
remote code).

Example::

    from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureModel

    model = EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny"))
    results = model.predict(["image.jpg"])  # score, heatmap, mask, mask_512, regions
"""

from __future__ import annotations

from .configuration_evalmuse_structure import PRESETS, EvalMuseStructureConfig
from .modeling_evalmuse_structure import (
    EvalMuseStructureModel,
    EvalMuseStructureOutput,
    EvalMuseStructurePreTrainedModel,
    binarize_heatmap,
    label_regions,
    regions_from_labels,
)
from .processing_evalmuse_structure import EvalMuseStructureProcessor


def register() -> None:
    """Register the family with transformers' Auto classes (see :func:`evalmuse_models.models.register_family`)."""
    from .. import register_family

    register_family(EvalMuseStructureConfig, EvalMuseStructureModel, EvalMuseStructureProcessor)


__all__ = [
    "PRESETS",
    "EvalMuseStructureConfig",
    "EvalMuseStructureModel",
    "EvalMuseStructureOutput",
    "EvalMuseStructurePreTrainedModel",
    "EvalMuseStructureProcessor",
    "binarize_heatmap",
    "label_regions",
    "regions_from_labels",
    "register",
]
