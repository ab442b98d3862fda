"""MLLM alignment scorer: level-token expectation for the overall score, P(yes) for each element.

Works with any ``AutoModelForImageTextToText`` and its processor (default family: Qwen2.5-VL),
optionally with a PEFT LoRA adapter. For each image:

* overall = Σ_k p_k · v_k where p is the softmax over the CLOSED set of level-word logits at the
  answer position (renormalised over that set, never over the whole vocabulary) and v_k the
  level values (1..5);
* element score = P(yes) / (P(yes) + P(no)) for a category-specific question per element.

Each image gets an :class:`~evalmuse_models.results.AlignmentResult`, as from the alignment model
(``unmatched_elements`` is always empty: every element is asked about; ``level_probs`` holds the closed-set
level probabilities).

Every question about one image shares the same prefix (system turn, image, prompt). With
``share_prefix=True`` the prefix is encoded once per image (one forward with ``use_cache``), its
key/value cache is repeated for each question, and only the short question suffixes are run —
the image is never re-encoded per question.

Example::

    from evalmuse_models.mllm import MLLMAlignmentScorer

    scorer = MLLMAlignmentScorer.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", adapter="my-lora")
    [result] = scorer.score([image], ["a red cat on a mat"], elements=[["red cat (animal)", "mat (object)"]])
    result.overall, result.elements["red cat (animal)"]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.alignment import element_record_key, split_element_key
from ..models.evalmuse_align import AlignmentResult, load_rgb_image
from ..utils import UserInputError
from .prompts import (
    FIVE_LEVELS,
    NO_WORD,
    YES_WORD,
    LevelScale,
    cot_answer,
    cot_question,
    element_question,
    image_context,
    level_scale,
    overall_question,
)

DEFAULT_MODEL_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
_SENTINEL = "\u2063QUESTION\u2063"


# ----------------------------------------------------------------------------- reading logits
def single_token_ids(tokenizer, words: Sequence[str], what: str = "level word") -> list[int]:
    """The token id of each word; raises :class:`UserInputError` when a word is not exactly one token."""
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise UserInputError(
                f"the {what} {word!r} is {len(encoded)} tokens ({encoded}) for the tokenizer "
                f"{type(tokenizer).__name__}; the scorer reads one token per answer. Choose words that are single "
                "tokens for this tokenizer (pass a custom LevelScale / yes_word / no_word)."
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise UserInputError(f"the {what}s {list(words)} map to repeated token ids {ids}; they must be distinct")
    return ids


def level_probabilities(logits, level_ids):
    """Softmax over the closed set of level tokens: ``logits[..., V]`` → ``[..., K]`` (float32)."""
    import torch

    index = torch.as_tensor(level_ids, device=logits.device)
    return torch.softmax(logits.index_select(-1, index).float(), dim=-1)


def expected_level(probs, values):
    """Σ_k p_k · v_k."""
    import torch

    return probs @ torch.as_tensor(values, dtype=probs.dtype, device=probs.device)


def yes_probability(logits, yes_id: int, no_id: int):
    """P(yes) / (P(yes) + P(no)) from the full-vocabulary logits (= sigmoid(logit_yes − logit_no))."""
    return (logits[..., yes_id].float() - logits[..., no_id].float()).sigmoid()


def set_pixel_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Bound the image resolution of a Qwen2-VL-style processor (``size`` shortest/longest edge, in pixels)."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or (min_pixels is None and max_pixels is None):
        return
    size = dict(getattr(image_processor, "size", None) or {})
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    image_processor.size = size


# ----------------------------------------------------------------------------- inputs
def _load_image(image, index: int):
    """An RGB PIL image read like the alignment model reads it (alpha dropped, no EXIF rotation), or a
    :class:`UserInputError` naming the image."""
    from PIL import Image

    if not isinstance(image, (str, Image.Image)) and not hasattr(image, "__fspath__"):
        raise UserInputError(f"image #{index} has type {type(image).__name__}; pass a PIL image, a file path or a URL")
    try:
        return load_rgb_image(image)
    except (OSError, ValueError) as err:
        raise UserInputError(f"image #{index} ({image}) cannot be read: {err}; pass a PIL image or a readable path") from err


def _element_keys(elements, n: int) -> list[list[str]]:
    if elements is None:
        return [[] for _ in range(n)]
    if len(elements) != n:
        raise UserInputError(f"elements has {len(elements)} entries for {n} images; pass one list of keys per image")
    out = []
    for i, item in enumerate(elements):
        if item is None:
            out.append([])
        elif isinstance(item, Mapping):
            out.append([str(k) for k in item])
        elif isinstance(item, (list, tuple)):
            keys = []
            for el in item:
                if isinstance(el, Mapping):  # prepared-dataset element records {phrase, category, ...}
                    if "phrase" not in el:
                        raise UserInputError(f"elements[{i}] has a record without 'phrase': {el}")
                    keys.append(element_record_key(el))
                else:
                    keys.append(str(el))
            out.append(keys)
        else:
            raise UserInputError(f"elements[{i}] has type {type(item).__name__}; pass a list of element keys")
    return out


class MLLMAlignmentScorer:
    """Score image–prompt alignment with a (LoRA-tuned) multimodal LLM.

    Args:
        model: an image-text-to-text model (``Qwen2_5_VLForConditionalGeneration``, a ``PeftModel``...).
        processor: its processor (tokenizer + image processor + chat template).
        levels: a :class:`LevelScale`, or ``5`` / ``15``.
        share_prefix: encode the image prefix once and reuse its key/value cache for every question.
        overall_mode: ``"direct"`` (read the level right after the rating question) or ``"cot"``
            (feed the chain-of-thought checklist built from the element answers, then read the level).
        prompt_type_hint: prepend the real/synthetic hint when ``prompt_types`` are given.
        question_templates: per-category overrides of the element questions (key ``"default"`` too).
        question_batch_size: how many question suffixes run in one forward.
    """

    def __init__(
        self,
        model,
        processor,
        levels: LevelScale | int | str = FIVE_LEVELS,
        share_prefix: bool = True,
        overall_mode: str = "direct",
        prompt_type_hint: bool = False,
        question_templates: dict[str, str] | None = None,
        yes_word: str = YES_WORD,
        no_word: str = NO_WORD,
        question_batch_size: int = 64,
    ):
        if overall_mode not in {"direct", "cot"}:
            raise ValueError(f"overall_mode must be 'direct' or 'cot', got {overall_mode!r}")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.levels = level_scale(levels)
        self.share_prefix = share_prefix
        self.overall_mode = overall_mode
        self.prompt_type_hint = prompt_type_hint
        self.question_templates = question_templates
        self.question_batch_size = max(1, int(question_batch_size))
        self.level_ids = single_token_ids(self.tokenizer, self.levels.words, "level word")
        self.yes_id, self.no_id = single_token_ids(self.tokenizer, [yes_word, no_word], "yes/no word")
        if self.tokenizer.pad_token_id is None:
            raise UserInputError("the tokenizer has no pad token; set tokenizer.pad_token before scoring")
        self._prefix_tail = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        adapter: str | None = None,
        merge_adapter: bool = True,
        dtype: Any = "auto",
        device: str | None = None,
        attn_implementation: str | None = None,
        processor_id: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> MLLMAlignmentScorer:
        """Load a base model (Hub id or folder), optionally a LoRA adapter, and its processor.

        ``dtype="auto"``: bf16 on a CUDA device that supports it, else float32 (the scoring engine's rule,
        :func:`evalmuse_models.scoring.engine.resolve_device_dtype`). ``adapter`` is a PEFT adapter folder or
        Hub id; it is merged into the weights unless ``merge_adapter=False``. ``max_pixels`` caps
        the image resolution (e.g. ``448 * 448``).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..scoring.engine import resolve_device_dtype

        device, dtype = resolve_device_dtype(device, dtype)
        load_kwargs = {"dtype": dtype}
        if attn_implementation:
            load_kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(model_id, **load_kwargs)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
            if merge_adapter:
                model = model.merge_and_unload()
        model.to(device).eval()
        processor = AutoProcessor.from_pretrained(processor_id or adapter or model_id)
        set_pixel_budget(processor, min_pixels, max_pixels)
        return cls(model, processor, **kwargs)

    # ------------------------------------------------------------------ text pieces
    @property
    def device(self):
        return next(self.model.parameters()).device

    def _render_prefix_and_tail(self, context: str) -> tuple[str, str]:
        """Render the chat template once with a sentinel question: prefix (up to the question) and tail."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context + _SENTINEL}]}
        ]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        cut = text.index(_SENTINEL)
        return text[:cut], text[cut + len(_SENTINEL):]

    def _questions(self, keys: list[str]) -> list[str]:
        out = []
        for key in keys:
            phrase, category = split_element_key(key)
            out.append(element_question(phrase, category, self.question_templates))
        return out

    # ------------------------------------------------------------------ model calls
    def _rope_positions(self, inputs):
        """Position ids of the prefix and the next text position of each row (Qwen-VL M-RoPE or 1-D)."""

        base = getattr(self.model, "get_base_model", None)
        core = base() if callable(base) else self.model
        inner = getattr(core, "model", core)
        if hasattr(inner, "get_rope_index") and inputs.get("image_grid_thw") is not None:
            kwargs = {
                "image_grid_thw": inputs["image_grid_thw"],
                "attention_mask": inputs["attention_mask"],
            }
            if "mm_token_type_ids" in inputs:
                kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"]
            position_ids, _ = inner.get_rope_index(inputs["input_ids"], **kwargs)
            nxt = position_ids.amax(dim=(0, 2)) + 1  # (B,)
            return position_ids, nxt, position_ids.shape[0]
        mask = inputs["attention_mask"]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return position_ids, mask.sum(-1), 0

    def _forward_last(self, **inputs):
        import torch

        with torch.inference_mode():
            out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :]

    def _score_full(self, images, prefixes: list[str], suffixes: list[list[str]]) -> list[list[Any]]:
        """Baseline: every (image, question) is a full sequence (the image is re-encoded per question)."""
        rows = [(i, j) for i in range(len(images)) for j in range(len(suffixes[i]))]
        results = [[None] * len(s) for s in suffixes]
        step = self.question_batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            texts = [prefixes[i] + suffixes[i][j] for i, j in chunk]
            imgs = [images[i] for i, _ in chunk]
            inputs = self.processor(text=texts, images=imgs, padding=True, padding_side="left", return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            logits = self._forward_last(**inputs)
            for (i, j), row in zip(chunk, logits):
                results[i][j] = row
        return results

    def _encode_prefix(self, images, prefixes):
        import torch

        inputs = self.processor(text=prefixes, images=images, padding=True, padding_side="left", return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        positions, next_pos, mrope = self._rope_positions(inputs)
        with torch.inference_mode():
            out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise RuntimeError(f"{type(self.model).__name__} returned no key/value cache; use share_prefix=False")
        return cache, inputs["attention_mask"], next_pos, mrope

    @staticmethod
    def _select_cache(cache, rows):
        """A new cache holding ``rows`` of ``cache`` (batch dim); the original cache is left intact."""
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in cache.layers]
        selected.batch_select_indices(rows)
        return selected

    def _score_shared(self, images, prefixes, suffixes, prefix_state=None):
        """Shared prefix: one forward per image batch, then the question suffixes over the cached keys/values."""
        import torch

        cache, prefix_mask, next_pos, mrope = prefix_state or self._encode_prefix(images, prefixes)
        rows = [(i, j) for i in range(len(images)) for j in range(len(suffixes[i]))]
        results = [[None] * len(s) for s in suffixes]
        tok = self.tokenizer
        step = self.question_batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            enc = tok([suffixes[i][j] for i, j in chunk], add_special_tokens=False, padding=True,
                      padding_side="left", return_tensors="pt")
            ids = enc["input_ids"].to(self.device)
            smask = enc["attention_mask"].to(self.device)
            index = torch.tensor([i for i, _ in chunk], device=self.device)
            attn = torch.cat([prefix_mask.index_select(0, index), smask], dim=1)
            pos = next_pos.index_select(0, index)[:, None] + (smask.long().cumsum(-1) - 1).clamp(min=0)
            if mrope:
                pos = pos[None].expand(mrope, -1, -1)
            sub_cache = self._select_cache(cache, index)
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=sub_cache,
                                 use_cache=True, logits_to_keep=1)
            for (i, j), row in zip(chunk, out.logits[:, -1, :]):
                results[i][j] = row
        return results, (cache, prefix_mask, next_pos, mrope)

    # ------------------------------------------------------------------ public API
    def score(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        elements: Sequence[Any] | None = None,
        batch_size: int = 8,
        prompt_types: Sequence[str | None] | None = None,
        progress: bool = False,
    ) -> list[AlignmentResult]:
        """Score each (image, prompt); returns one :class:`AlignmentResult` per image.

        ``images`` are PIL images, paths or URLs. ``elements`` holds, per image, the official element keys
        ``"<phrase> (<category>)"`` (a list, a dict whose keys are used, or prepared-dataset element
        records); the result's ``elements`` dict is keyed by exactly those strings. ``overall`` is in
        ``[min level value, max level value]`` (1–5), element scores in ``[0, 1]``, ``level_probs`` the
        probability of each level.
        """
        from tqdm.auto import tqdm

        n = len(images)
        if len(prompts) != n:
            raise UserInputError(f"got {n} images but {len(prompts)} prompts; pass one prompt per image")
        if prompt_types is not None and len(prompt_types) != n:
            raise UserInputError(f"got {len(prompt_types)} prompt_types for {n} images")
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        keys = _element_keys(elements, n)
        results: list[AlignmentResult] = []
        bar = tqdm(total=n, desc="MLLM scoring", unit="img", disable=not progress)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch_images = [_load_image(images[i], i) for i in range(start, stop)]
            results.extend(
                self._score_batch(
                    batch_images,
                    [prompts[i] for i in range(start, stop)],
                    keys[start:stop],
                    [prompt_types[i] if prompt_types is not None else None for i in range(start, stop)],
                )
            )
            bar.update(stop - start)
        bar.close()
        return results

    def _score_batch(self, images, prompts, keys, prompt_types) -> list[AlignmentResult]:
        contexts = [image_context(p, t, hint=self.prompt_type_hint) for p, t in zip(prompts, prompt_types)]
        rendered = [self._render_prefix_and_tail(c) for c in contexts]
        prefixes = [r[0] for r in rendered]
        tails = [r[1] for r in rendered]
        rating_q = cot_question(self.levels) if self.overall_mode == "cot" else overall_question(self.levels)
        suffixes = []
        for tail, key_list in zip(tails, keys):
            qs = [q + tail for q in self._questions(key_list)]
            if self.overall_mode == "direct":
                qs.append(rating_q + tail)
            suffixes.append(qs)
        run = self._score_shared if self.share_prefix else self._score_full
        if self.share_prefix:
            logits, state = run(images, prefixes, suffixes)
        else:
            logits, state = run(images, prefixes, suffixes), None
        element_probs = []
        for i, key_list in enumerate(keys):
            rows = logits[i][: len(key_list)]
            element_probs.append([float(yes_probability(r, self.yes_id, self.no_id)) for r in rows])
        if self.overall_mode == "direct":
            level_logits = [logits[i][-1] for i in range(len(images))]
        else:
            cot_suffixes = []
            for tail, key_list, probs in zip(tails, keys, element_probs):
                checks = [(k, p >= 0.5) for k, p in zip(key_list, probs)]
                cot_suffixes.append([rating_q + tail + cot_answer(checks, None)])
            if self.share_prefix:
                cot_logits, _ = self._score_shared(images, prefixes, cot_suffixes, prefix_state=state)
            else:
                cot_logits = self._score_full(images, prefixes, cot_suffixes)
            level_logits = [row[0] for row in cot_logits]
        out = []
        for i, key_list in enumerate(keys):
            probs = level_probabilities(level_logits[i], self.level_ids)
            overall = float(expected_level(probs, self.levels.values))
            if not math.isfinite(overall):
                raise RuntimeError(f"non-finite overall score for image #{i}; check the model dtype / weights")
            out.append(
                AlignmentResult(
                    overall=overall,
                    elements=dict(zip(key_list, element_probs[i])),
                    level_probs=[float(p) for p in probs],
                )
            )
        return out


# ----------------------------------------------------------------------------- ensembles
def ensemble_outputs(
    outputs: Sequence[Sequence[AlignmentResult]], weights: Sequence[float] | None = None
) -> list[AlignmentResult]:
    """Weighted average of several scorers' ``score()`` results (same images, same order).

    ``overall`` and every element score are averaged with ``weights`` (normalised to sum 1);
    ``level_probs`` are averaged when every member has them with the same number of levels. An element
    missing from some member is averaged over the members that have it; it is unmatched when a member
    could not locate it (that member's 0 is averaged, as that scorer's own result).
    """
    if not outputs:
        raise UserInputError("ensemble_outputs needs at least one member output")
    m = len(outputs)
    weights = [1.0] * m if weights is None else [float(w) for w in weights]
    if len(weights) != m:
        raise UserInputError(f"got {len(weights)} weights for {m} ensemble members")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserInputError(f"ensemble weights must be non-negative with a positive sum, got {weights}")
    n = len(outputs[0])
    for k, member in enumerate(outputs):
        if len(member) != n:
            raise UserInputError(f"ensemble member #{k} scored {len(member)} images, member #0 scored {n}")
    total = sum(weights)
    weights = [w / total for w in weights]
    merged = []
    for i in range(n):
        items = [member[i] for member in outputs]
        overall = sum(w * float(it.overall) for w, it in zip(weights, items))
        elem_sum: dict[str, float] = {}
        elem_w: dict[str, float] = {}
        for w, it in zip(weights, items):
            for key, val in it.elements.items():
                elem_sum[key] = elem_sum.get(key, 0.0) + w * float(val)
                elem_w[key] = elem_w.get(key, 0.0) + w
        order = list(items[0].elements)
        order += [k for k in elem_sum if k not in order]
        elements = {k: elem_sum[k] / elem_w[k] if elem_w[k] > 0 else 0.0 for k in order}
        unmatched = list(dict.fromkeys(k for it in items for k in it.unmatched_elements))
        lps = [it.level_probs for it in items]
        level_probs = None
        if all(lp is not None for lp in lps) and len({len(lp) for lp in lps}) == 1:
            level_probs = [sum(w * lp[k] for w, lp in zip(weights, lps)) for k in range(len(lps[0]))]
        merged.append(AlignmentResult(overall=overall, elements=elements, unmatched_elements=unmatched,
                                      level_probs=level_probs))
    return merged


class EnsembleScorer:
    """Several scorers (checkpoints, models) behind one ``score()``; their results are weight-averaged."""

    def __init__(self, scorers: Sequence[Any], weights: Sequence[float] | None = None):
        if not scorers:
            raise UserInputError("EnsembleScorer needs at least one scorer")
        self.scorers = list(scorers)
        self.weights = weights

    def score(self, images, prompts, elements=None, batch_size: int = 8, **kwargs) -> list[AlignmentResult]:
        outs = [s.score(images, prompts, elements=elements, batch_size=batch_size, **kwargs) for s in self.scorers]
        return ensemble_outputs(outs, self.weights)
