"""One evaluation path for every scorer: the official scores of a model on a dataset split.

Training (per-epoch evaluation and the final threshold search), the MLLM recipe, the demo and the
CLI all score through these functions, with the truth of the one rule in :mod:`evalmuse_models.data`.

* :func:`evaluate_alignment` — NTIRE 2025 Main Score (SRCC, PLCC, element ACC) of an alignment scorer.
* :func:`evaluate_structure` — Final score (F1, PLCC, SRCC) of structure predictions.
* :func:`search_threshold` — the heatmap threshold that maximises the Final score on a split.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_alignment": "alignment",
    "evaluate_structure": "structure",
    "search_threshold": "structure",
}

__all__ = ["evaluate_alignment", "evaluate_structure", "search_threshold"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
