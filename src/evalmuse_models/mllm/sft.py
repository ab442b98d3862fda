"""TRL supervised fine-tuning of an MLLM alignment scorer (LoRA, assistant-only loss, soft labels).

Pieces used by ``train_scripts/sft_mllm.py``:

* :func:`make_lora_config`: a PEFT ``LoraConfig`` over the language and/or vision towers;
* :class:`LevelTargetCollator`: TRL's vision collator plus on-the-fly lighting augmentation and
  the soft level targets (position of the level token, target distribution);
* :func:`level_kl_loss`: KL(target ‖ softmax over the level tokens) at those positions;
* :class:`LevelSFTTrainer`: ``trl.SFTTrainer`` whose loss, when soft targets are present, is
  ``(Σ CE over the other assistant tokens + w · Σ KL at the level tokens) / #assistant tokens``.

Example::

    from evalmuse_models.mllm.sft import LevelSFTTrainer, LevelTargetCollator, make_lora_config
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import lighting_augment

LANGUAGE_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LORA_MODULES = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")


def lora_target_regex(
    towers: Sequence[str] = ("language",),
    language_modules: Sequence[str] = LANGUAGE_LORA_MODULES,
    vision_modules: Sequence[str] = VISION_LORA_MODULES,
) -> str:
    """A PEFT ``target_modules`` regex selecting linear layers of the language and/or vision towers.

    Matches transformers 5 Qwen2-VL / Qwen2.5-VL module names
    (``model.language_model.layers.N.self_attn.q_proj``, ``model.visual.blocks.N.attn.qkv``).
    """
    towers = {t.lower() for t in towers}
    unknown = towers - {"language", "vision"}
    if unknown or not towers:
        raise ValueError(f"towers must be a non-empty subset of ('language', 'vision'), got {sorted(towers)}")
    parts = []
    if "language" in towers:
        parts.append(r".*language_model\.layers\.\d+\..*\.(" + "|".join(language_modules) + ")")
    if "vision" in towers:
        parts.append(r".*visual\.blocks\.\d+\..*\.(" + "|".join(vision_modules) + ")")
    return "|".join(f"(?:{p})" for p in parts)


def make_lora_config(
    r: int = 16,
    alpha: int | None = None,
    dropout: float = 0.05,
    towers: Sequence[str] = ("language", "vision"),
    language_modules: Sequence[str] = LANGUAGE_LORA_MODULES,
    vision_modules: Sequence[str] = VISION_LORA_MODULES,
    modules_to_save: Sequence[str] | None = None,
):
    """A ``peft.LoraConfig`` (causal LM task) on the chosen towers; ``alpha`` defaults to ``2 r``."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=lora_target_regex(towers, language_modules, vision_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type="CAUSAL_LM",
        bias="none",
    )


def level_kl_loss(level_logits, targets, reduction: str = "sum"):
    """KL(targets ‖ softmax(level_logits)) per row; ``level_logits``/``targets``: ``[N, K]``.

    The model's distribution is renormalised over the K level tokens (softmax of their logits).
    Rows whose target sums to 0 are ignored. ``reduction``: ``"sum"``, ``"mean"`` or ``"none"``.
    """
    import torch

    logp = torch.log_softmax(level_logits.float(), dim=-1)
    t = targets.float()
    valid = t.sum(-1) > 0
    t = t / t.sum(-1, keepdim=True).clamp(min=1e-12)
    kl = torch.where(t > 0, t * (torch.log(t.clamp(min=1e-12)) - logp), torch.zeros_like(t)).sum(-1)
    kl = kl * valid
    if reduction == "none":
        return kl
    if reduction == "mean":
        return kl.sum() / valid.sum().clamp(min=1)
    return kl.sum()


def find_level_positions(input_ids, labels, level_ids: Sequence[int], end_id: int):
    """Per row, the first labelled position holding a level token that closes its turn (next = ``end_id``); -1 if none."""
    import torch

    is_level = torch.isin(input_ids, torch.as_tensor(list(level_ids), device=input_ids.device))
    closes = torch.zeros_like(is_level)
    closes[:, :-1] = input_ids[:, 1:] == end_id
    hit = is_level & closes & (labels != -100)
    hit[:, 0] = False  # position 0 has no predicting logit
    any_hit = hit.any(-1)
    first = hit.float().argmax(-1)
    return torch.where(any_hit, first, torch.full_like(first, -1))


@dataclass
class LevelTargetCollator:
    """Wraps TRL's vision collator: lighting jitter on the fly, soft level targets as tensors.

    Examples may carry ``level_target`` (a list of K floats, zeros = no soft target). The batch
    then also holds ``level_targets`` ``[B, K]`` and ``level_positions`` ``[B]`` (index of the
    level token of the rating turn, -1 when absent).
    """

    base: Any
    level_ids: Sequence[int]
    end_id: int
    lighting: float = 0.0
    seed: int = 0

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        targets = []
        prepared = []
        for ex in examples:
            ex = dict(ex)
            target = ex.pop("level_target", None)
            targets.append(target)
            if self.lighting > 0:
                if ex.get("image") is not None:
                    ex["image"] = lighting_augment(ex["image"], self._rng, self.lighting)
                if ex.get("images"):
                    ex["images"] = [lighting_augment(im, self._rng, self.lighting) for im in ex["images"]]
            prepared.append(ex)
        batch = self.base(prepared)
        if any(t is not None for t in targets):
            k = len(self.level_ids)
            rows = [list(t) if t is not None else [0.0] * k for t in targets]
            if any(len(r) != k for r in rows):
                raise ValueError(f"level_target must have {k} values (one per level)")
            batch["level_targets"] = torch.tensor(rows, dtype=torch.float32)
            pos = find_level_positions(batch["input_ids"], batch["labels"], self.level_ids, self.end_id)
            no_target = batch["level_targets"].sum(-1) <= 0
            batch["level_positions"] = torch.where(no_target, torch.full_like(pos, -1), pos)
        return batch


def _trl_sft_trainer():
    from trl import SFTTrainer

    return SFTTrainer


def build_level_sft_trainer_class():
    """``LevelSFTTrainer``: created lazily so that importing this module does not import TRL."""
    import torch

    base = _trl_sft_trainer()

    class LevelSFTTrainer(base):
        """``trl.SFTTrainer`` with the soft-label KL loss on the level-token distribution."""

        def __init__(self, *args, level_ids: Sequence[int] | None = None, soft_label_weight: float = 1.0, **kwargs):
            self.level_ids = list(level_ids or [])
            self.soft_label_weight = float(soft_label_weight)
            super().__init__(*args, **kwargs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "level_target" not in self._signature_columns:
                self._signature_columns = list(self._signature_columns) + ["level_target"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs.pop("level_targets", None)
            positions = inputs.pop("level_positions", None)
            if targets is None or positions is None or not bool((positions >= 0).any()) or not self.level_ids:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            labels = inputs.pop("labels")
            inputs["use_cache"] = False
            # project onto the vocabulary only where a label is predicted (saves the B x L x V logits)
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100
            outputs = model(**inputs, logits_to_keep=keep)
            loss, level_logits, level_targets = compact_soft_label_sft_loss(
                outputs.logits, labels, keep, targets, positions, self.level_ids, self.soft_label_weight,
                num_items_in_batch,
            )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if self.model.training else "eval"
            with torch.no_grad():
                flat_labels = labels[:, 1:][keep[:, :-1]].to(outputs.logits.device)
                correct = (outputs.logits.argmax(-1) == flat_labels).float().mean()
                self._metrics[mode]["mean_token_accuracy"].append(correct.item())
                self._metrics[mode]["level_kl"].append(
                    float(level_kl_loss(level_logits, level_targets, reduction="mean"))
                )
            return (loss, outputs) if return_outputs else loss

    return LevelSFTTrainer


def soft_label_sft_loss(logits, labels, targets, positions, level_ids, weight: float = 1.0,
                        num_items_in_batch=None):
    """Token-level SFT loss where the rating token's cross-entropy is replaced by the soft-label KL.

    ``(Σ_{assistant tokens except level} CE + weight · Σ_rows KL(target ‖ p_level)) / N`` with N the
    number of labelled tokens (``num_items_in_batch`` when given, as ``Trainer`` counts across
    gradient-accumulation steps).
    """
    import torch
    import torch.nn.functional as F

    labels = labels.to(logits.device)
    has = positions >= 0
    hard = labels.clone()
    rows = torch.nonzero(has).squeeze(-1)
    hard[rows, positions[rows]] = -100
    shift_logits = logits[:, :-1, :]
    shift_labels = hard[:, 1:]
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]).float(), shift_labels.reshape(-1),
                         ignore_index=-100, reduction="sum")
    lv = logits[rows, positions[rows] - 1][:, list(level_ids)]
    kl = level_kl_loss(lv, targets[rows].to(lv.device), reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum()
    n = torch.as_tensor(n, device=logits.device).clamp(min=1)
    return (ce + weight * kl) / n


def compact_soft_label_sft_loss(flat_logits, labels, keep, targets, positions, level_ids, weight: float = 1.0,
                                num_items_in_batch=None):
    """:func:`soft_label_sft_loss` on logits computed only where ``keep`` is true.

    ``flat_logits`` ``[N, V]`` are the logits at the ``keep`` positions (``logits_to_keep`` with a
    boolean ``[B, L]`` mask, row-major order); ``keep[:, t]`` marks that position t predicts a
    labelled token ``labels[:, t + 1]``. Returns ``(loss, level_logits [R, K], level_targets [R, K])``.
    """
    import torch
    import torch.nn.functional as F

    device = flat_logits.device
    labels, keep, positions = labels.to(device), keep.to(device), positions.to(device)
    flat_labels = labels[:, 1:][keep[:, :-1]]
    flat_index = (keep.flatten().long().cumsum(0) - 1).view_as(keep)
    rows = torch.nonzero(positions >= 0).squeeze(-1)
    level_index = flat_index[rows, positions[rows] - 1]
    hard = flat_labels.clone()
    hard[level_index] = -100
    ce = F.cross_entropy(flat_logits.float(), hard, ignore_index=-100, reduction="sum")
    level_logits = flat_logits[level_index][:, list(level_ids)]
    level_targets = targets[rows].to(device)
    kl = level_kl_loss(level_logits, level_targets, reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else flat_labels.numel()
    n = torch.as_tensor(n, device=device).clamp(min=1)
    return (ce + weight * kl) / n, level_logits, level_targets
