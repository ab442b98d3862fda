"""The EvalMuse structure model family (CNN + ViT fuser: distortion heatmap and structure score):
config, model, processor (inputs, and ``post_process_distortion``: heatmap -> masks and regions as a
typed :class:`StructureResult`), the ``t2i-structure`` pipeline, and their registration with
transformers' Auto classes and pipeline registry. These files ship as remote code with saved models;
:mod:`evalmuse_models.models.evalmuse_structure.postprocess` (library only) wraps the mask helpers with
input checks for :mod:`evalmuse_models.evaluation.structure`.

Example::

    from transformers import pipeline
    from evalmuse_models.models.evalmuse_structure import (
        EvalMuseStructureConfig, EvalMuseStructureModel, EvalMuseStructureProcessor)

    config = EvalMuseStructureConfig.from_preset("tiny")
    pipe = pipeline("t2i-structure", model=EvalMuseStructureModel(config).eval(),
                    processor=EvalMuseStructureProcessor.from_model_config(config))
    results = pipe(["image.jpg"])  # score, heatmap, mask_512, mask, regions, threshold
"""

from __future__ import annotations

from .configuration_evalmuse_structure import PRESETS, EvalMuseStructureConfig
from .modeling_evalmuse_structure import (
    EvalMuseStructureModel,
    EvalMuseStructureOutput,
    EvalMuseStructurePreTrainedModel,
)
from .pipeline_evalmuse_structure import TASK, EvalMuseStructurePipeline
from .processing_evalmuse_structure import EvalMuseStructureProcessor, StructureResult


def register() -> None:
    """Register the family with transformers' Auto classes (see :func:`evalmuse_models.models.register_family`)
    and the ``t2i-structure`` pipeline with ``PIPELINE_REGISTRY``."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .. import register_family

    register_family(EvalMuseStructureConfig, EvalMuseStructureModel, EvalMuseStructureProcessor)
    if TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=EvalMuseStructurePipeline, pt_model=AutoModel, type="multimodal"
        )


__all__ = [
    "PRESETS",
    "TASK",
    "EvalMuseStructureConfig",
    "EvalMuseStructureModel",
    "EvalMuseStructureOutput",
    "EvalMuseStructurePipeline",
    "EvalMuseStructurePreTrainedModel",
    "EvalMuseStructureProcessor",
    "StructureResult",
    "register",
]
