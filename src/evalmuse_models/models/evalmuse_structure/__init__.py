"""The EvalMuse structure model family (CNN + ViT fuser: distortion heatmap and structure score):
config, model, processor, Auto-class registration. The OpenCV post-processing and the threshold
search live in :mod:`evalmuse_models.models.evalmuse_structure.postprocess` (not shipped as
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

_REGISTERED = False


def register() -> None:
    """Register the family with ``AutoConfig``, ``AutoModel`` and ``AutoProcessor`` (idempotent), and mark
    the classes so that ``save_pretrained`` ships their code (``trust_remote_code=True`` loading)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register(EvalMuseStructureConfig.model_type, EvalMuseStructureConfig, exist_ok=True)
    AutoModel.register(EvalMuseStructureConfig, EvalMuseStructureModel, exist_ok=True)
    AutoProcessor.register(EvalMuseStructureConfig, EvalMuseStructureProcessor, exist_ok=True)
    EvalMuseStructureConfig.register_for_auto_class()
    EvalMuseStructureModel.register_for_auto_class("AutoModel")
    EvalMuseStructureProcessor.register_for_auto_class("AutoProcessor")
    _REGISTERED = True


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
