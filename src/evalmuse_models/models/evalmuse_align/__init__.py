"""The EvalMuse alignment model family (FGA-BLIP2): config, model, processor, Auto-class registration.

Example::

    from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel

    model = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny"))
"""

from __future__ import annotations

from .configuration_evalmuse_align import LOSS_WEIGHTINGS, PRESETS, EvalMuseAlignConfig
from .modeling_evalmuse_align import (
    DEFAULT_ITC_TEMPERATURE,
    MATCH_HEADS,
    EvalMuseAlignMaskHead,
    EvalMuseAlignModel,
    EvalMuseAlignOutput,
    EvalMuseAlignPreTrainedModel,
    vision_autocast_context,
)
from .processing_evalmuse_align import (
    DEFAULT_TOKENIZER,
    ELEMENT_KEY_RULES,
    IMAGE_ALPHA_MODES,
    TEXT_TRUNCATIONS,
    EvalMuseAlignProcessor,
    build_tiny_processor,
    build_tiny_tokenizer,
    clean_prompt,
    element_phrase,
    find_sublist,
    load_rgb_image,
)


def register() -> None:
    """Register the family with transformers' Auto classes (see :func:`evalmuse_models.models.register_family`)."""
    from .. import register_family

    register_family(EvalMuseAlignConfig, EvalMuseAlignModel, EvalMuseAlignProcessor)


__all__ = [
    "DEFAULT_ITC_TEMPERATURE",
    "DEFAULT_TOKENIZER",
    "ELEMENT_KEY_RULES",
    "IMAGE_ALPHA_MODES",
    "LOSS_WEIGHTINGS",
    "MATCH_HEADS",
    "PRESETS",
    "TEXT_TRUNCATIONS",
    "EvalMuseAlignConfig",
    "EvalMuseAlignMaskHead",
    "EvalMuseAlignModel",
    "EvalMuseAlignOutput",
    "EvalMuseAlignPreTrainedModel",
    "EvalMuseAlignProcessor",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "clean_prompt",
    "element_phrase",
    "find_sublist",
    "load_rgb_image",
    "register",
    "vision_autocast_context",
]
