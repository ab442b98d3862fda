"""The EvalMuse alignment model family (FGA-BLIP2): config, model, processor, Auto-class registration.

Example::

    from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel

    model = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny"))
"""

from __future__ import annotations

from .configuration_evalmuse_align import LOSS_WEIGHTINGS, PRESETS, EvalMuseAlignConfig
from .modeling_evalmuse_align import (
    EvalMuseAlignMaskHead,
    EvalMuseAlignModel,
    EvalMuseAlignOutput,
    EvalMuseAlignPreTrainedModel,
)
from .processing_evalmuse_align import (
    DEFAULT_TOKENIZER,
    EvalMuseAlignProcessor,
    build_tiny_processor,
    build_tiny_tokenizer,
    clean_prompt,
    element_phrase,
    find_sublist,
)

_REGISTERED = False


def register() -> None:
    """Register the family with ``AutoConfig``, ``AutoModel`` and ``AutoProcessor`` (idempotent), and mark
    the classes so that ``save_pretrained`` ships their code (``trust_remote_code=True`` loading)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register(EvalMuseAlignConfig.model_type, EvalMuseAlignConfig, exist_ok=True)
    AutoModel.register(EvalMuseAlignConfig, EvalMuseAlignModel, exist_ok=True)
    AutoProcessor.register(EvalMuseAlignConfig, EvalMuseAlignProcessor, exist_ok=True)
    EvalMuseAlignConfig.register_for_auto_class()
    EvalMuseAlignModel.register_for_auto_class("AutoModel")
    EvalMuseAlignProcessor.register_for_auto_class("AutoProcessor")
    _REGISTERED = True


__all__ = [
    "DEFAULT_TOKENIZER",
    "LOSS_WEIGHTINGS",
    "PRESETS",
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
    "register",
]
