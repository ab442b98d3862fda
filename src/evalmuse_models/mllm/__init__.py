"""MLLM (Qwen2.5-VL family) alignment scoring, SFT data and TRL fine-tuning.

* :class:`MLLMAlignmentScorer` — overall score from the level-token expectation, element scores
  from P(yes); shared-prefix (cached image) batching; output shaped like the alignment model's.
* :func:`ensemble_outputs` / :class:`EnsembleScorer` — weighted averages of several scorers.
* :mod:`.data` — conversations from the prepared ``alignment`` dataset (element turns, chain of
  thought, hints, perturbation, lighting, soft labels), pseudo-labels.
* :mod:`.sft` / :mod:`.train` — TRL ``SFTTrainer`` + LoRA with the soft-label KL loss.

Offline random Qwen2.5-VL models and processors for tests and benchmarks live in
:mod:`evalmuse_models.testing.mllm` (``load_scorer("tiny")`` builds one).

Example::

    from evalmuse_models.mllm import load_scorer

    scorer = load_scorer("runs/qwen-lora/adapter")       # or a merged folder / Hub id
    scorer.score(images, prompts, elements=element_keys)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.alignment import split_element_key
from .prompts import (
    FIFTEEN_LEVELS,
    FIVE_LEVELS,
    LevelScale,
    element_question,
)
from .scoring import (
    DEFAULT_MODEL_ID,
    EnsembleScorer,
    MLLMAlignmentScorer,
    ensemble_outputs,
    expected_level,
    level_probabilities,
    yes_probability,
)

#: File written next to trained checkpoints with the scorer settings they were trained for.
SCORER_SETTINGS = "evalmuse_mllm.json"
_SETTING_KEYS = {"levels", "prompt_type_hint", "overall_mode"}


def load_scorer(spec: str, device=None, dtype=None, weights=None, **kwargs):
    """A scorer from a spec: a merged model folder / Hub id, a PEFT adapter folder, or ``"tiny"``.

    Several specs separated by commas give an :class:`EnsembleScorer` (``weights`` optional).
    A folder holding ``adapter_config.json`` is loaded on top of its ``base_model_name_or_path``.
    Settings saved by the training recipe (``evalmuse_mllm.json``: levels, prompt-type hint,
    chain of thought) are applied unless overridden by ``kwargs``.
    """
    from ..utils import UserInputError

    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserInputError("empty MLLM scorer spec; pass a model folder, Hub id or adapter folder")
    if len(parts) > 1:
        return EnsembleScorer([load_scorer(p, device=device, dtype=dtype, **kwargs) for p in parts], weights)
    target = parts[0]
    if target.startswith("tiny"):
        from ..testing.mllm import build_tiny_qwen2_5_vl

        preset = target.split(":", 1)[1] if ":" in target else "tiny"
        model, processor = build_tiny_qwen2_5_vl(preset)
        if device is not None:
            model.to(device)
        return MLLMAlignmentScorer(model, processor, **kwargs)
    dtype = "auto" if dtype is None else dtype
    settings = Path(target) / SCORER_SETTINGS
    if settings.is_file():  # how the checkpoint was trained: levels, hints, chain of thought
        try:
            saved = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserInputError(f"{settings} cannot be read: {err}") from err
        kwargs = {**{k: v for k, v in saved.items() if k in _SETTING_KEYS}, **kwargs}
    adapter_cfg = Path(target) / "adapter_config.json"
    if adapter_cfg.is_file():
        try:
            base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError) as err:
            raise UserInputError(f"{adapter_cfg} cannot be read: {err}") from err
        if not base:
            raise UserInputError(f"{adapter_cfg} names no base_model_name_or_path; pass the base model explicitly")
        return MLLMAlignmentScorer.from_pretrained(base, adapter=target, dtype=dtype, device=device, **kwargs)
    if not os.path.exists(target) and os.environ.get("HF_HUB_OFFLINE") == "1" and target.count("/") != 1:
        raise UserInputError(f"MLLM {target} does not exist locally (offline mode: pass a local folder)")
    return MLLMAlignmentScorer.from_pretrained(target, dtype=dtype, device=device, **kwargs)


__all__ = [
    "DEFAULT_MODEL_ID",
    "FIFTEEN_LEVELS",
    "FIVE_LEVELS",
    "EnsembleScorer",
    "LevelScale",
    "MLLMAlignmentScorer",
    "element_question",
    "ensemble_outputs",
    "expected_level",
    "level_probabilities",
    "load_scorer",
    "split_element_key",
    "yes_probability",
]
