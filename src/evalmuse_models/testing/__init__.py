"""Helpers for tests, demos and benchmarks: offline tiny models and the shared model-family tests.

Nothing here downloads anything; every model has random weights.

* :func:`save_tiny_models` — the ``tiny`` alignment and structure models saved as folders, to try
  ``evalmuse score`` / ``report`` end to end.
* :mod:`.align` — the offline tokenizer and processor of the alignment model
  (:func:`build_tiny_tokenizer`, :func:`build_tiny_processor`).
* :mod:`.mllm` — a random Qwen2.5-VL (``tiny``, ``small`` or the real ``7b`` architecture) with an
  offline processor and a chat template marked for assistant-only loss
  (:func:`build_tiny_qwen2_5_vl`).
* :mod:`.sam` — a random ``SamModel`` (``tiny`` or SAM-base-sized) saved as a folder, for
  ``evalmuse refine-masks`` offline (:func:`build_random_sam`, :func:`save_random_sam`).
* :mod:`.mixins` — :class:`ModelFamilyTesterMixin`, the tests every model family passes (config
  round trip, preset merging, Auto-class save/load, remote-code loading), driven by a
  :class:`ModelFamilySpec`.

Example::

    from evalmuse_models.testing import build_tiny_qwen2_5_vl, save_tiny_models

    align_dir, structure_dir = save_tiny_models("tiny-models")
    model, processor = build_tiny_qwen2_5_vl(seed=0)
"""

from __future__ import annotations

import importlib

#: Names served lazily from the sub-modules (importing this package stays cheap).
_EXPORTS = {
    "ModelFamilySpec": "mixins",
    "ModelFamilyTesterMixin": "mixins",
    "QWEN2_VL_CHAT_TEMPLATE": "mllm",
    "build_random_sam": "sam",
    "build_tiny_processor": "align",
    "build_tiny_tokenizer": "align",
    "build_tiny_qwen2_5_vl": "mllm",
    "save_random_sam": "sam",
    "tiny_qwen2_5_vl_config": "mllm",
}


def save_tiny_models(root, seed: int = 0):
    """Save the ``tiny`` alignment model (with its offline processor) and the ``tiny`` structure model,
    random weights, under ``root/align`` and ``root/structure``; returns the two folders.

    Handy to try ``evalmuse score``/``report`` end to end without any download::

        align_dir, structure_dir = save_tiny_models("tiny-models")
    """
    from pathlib import Path

    import torch

    from ..models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    from ..models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureModel
    from .align import build_tiny_processor

    root = Path(root)
    torch.manual_seed(seed)
    config = EvalMuseAlignConfig.from_preset("tiny")
    EvalMuseAlignModel(config).save_pretrained(root / "align")
    build_tiny_processor(config).save_pretrained(root / "align")
    EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny")).save_pretrained(root / "structure")
    return root / "align", root / "structure"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "QWEN2_VL_CHAT_TEMPLATE",
    "ModelFamilySpec",
    "ModelFamilyTesterMixin",
    "build_random_sam",
    "build_tiny_processor",
    "build_tiny_qwen2_5_vl",
    "build_tiny_tokenizer",
    "save_random_sam",
    "save_tiny_models",
    "tiny_qwen2_5_vl_config",
]
