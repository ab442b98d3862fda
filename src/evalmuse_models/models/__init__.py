"""Model families, one per sub-package (transformers' layout: configuration_*, modeling_*, processing_*).

Each family's ``__init__`` exposes ``register()``, which registers its config, model and processor
with transformers' Auto classes. :func:`register_with_transformers` discovers the families, so
adding a family needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

_REGISTERED = False


def register_family(config_class, model_class, processor_class) -> None:
    """Register one family with ``AutoConfig``, ``AutoModel`` and ``AutoProcessor`` (idempotent), and mark
    the classes so that ``save_pretrained`` ships their code (``trust_remote_code=True`` loading)."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoProcessor.register(config_class, processor_class, exist_ok=True)
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")
    processor_class.register_for_auto_class("AutoProcessor")


def register_with_transformers() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.ispkg and not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            module.register()
    _REGISTERED = True
