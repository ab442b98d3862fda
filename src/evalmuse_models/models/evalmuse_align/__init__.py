"""The EvalMuse alignment model family (FGA-BLIP2): config, model, processor (with the post-processing into
:class:`AlignmentResult`), the ``t2i-alignment`` pipeline, and their registration with transformers.

Example::

    from transformers import pipeline

    import evalmuse_models  # registers the family

    scorer = pipeline("t2i-alignment", model=model, processor=processor)  # or model="folder", trust_remote_code=True
    scorer("a.png", prompt="a red cube", elements=["red cube (object)"])
"""

from __future__ import annotations

from .configuration_evalmuse_align import LOSS_WEIGHTINGS, PRESETS, EvalMuseAlignConfig, LossWeighting
from .modeling_evalmuse_align import (
    DEFAULT_ITC_TEMPERATURE,
    MATCH_HEADS,
    EvalMuseAlignMaskHead,
    EvalMuseAlignModel,
    EvalMuseAlignOutput,
    EvalMuseAlignPreTrainedModel,
    MatchHead,
    vision_autocast_context,
)
from .pipeline_evalmuse_align import TASK, EvalMuseAlignPipeline
from .processing_evalmuse_align import (
    DEFAULT_TOKENIZER,
    ELEMENT_KEY_RULES,
    IMAGE_ALPHA_MODES,
    TEXT_TRUNCATIONS,
    AlignmentResult,
    ElementKeyRule,
    EvalMuseAlignProcessor,
    ImageAlpha,
    TextTruncation,
    clean_prompt,
    element_phrase,
    find_sublist,
    load_rgb_image,
)


def register() -> None:
    """Register the family with transformers' Auto classes (see :func:`evalmuse_models.models.register_family`)
    and the ``t2i-alignment`` task with its pipeline registry."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .. import register_family

    register_family(EvalMuseAlignConfig, EvalMuseAlignModel, EvalMuseAlignProcessor)
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=EvalMuseAlignPipeline, pt_model=AutoModel,
                                        type="multimodal")


__all__ = [
    "DEFAULT_ITC_TEMPERATURE",
    "DEFAULT_TOKENIZER",
    "ELEMENT_KEY_RULES",
    "IMAGE_ALPHA_MODES",
    "LOSS_WEIGHTINGS",
    "MATCH_HEADS",
    "PRESETS",
    "TASK",
    "TEXT_TRUNCATIONS",
    "AlignmentResult",
    "ElementKeyRule",
    "EvalMuseAlignConfig",
    "EvalMuseAlignMaskHead",
    "EvalMuseAlignModel",
    "EvalMuseAlignOutput",
    "EvalMuseAlignPipeline",
    "EvalMuseAlignPreTrainedModel",
    "EvalMuseAlignProcessor",
    "ImageAlpha",
    "LossWeighting",
    "MatchHead",
    "TextTruncation",
    "clean_prompt",
    "element_phrase",
    "find_sublist",
    "load_rgb_image",
    "register",
    "vision_autocast_context",
]
