"""SFT data for the MLLM scorer: chat conversations built from the prepared ``alignment`` dataset.

One alignment record (``image``, ``prompt``, ``prompt_type``, ``total_score``,
``total_score_votes``, ``elements`` = ``[{phrase, category, score, votes}]``) becomes one or
more conversations in TRL's vision format (``messages`` with string contents + the ``image``
column, which TRL's collator inserts before the first user text):

* the overall-rating turn: the level word of the MOS bin (5 or 15 levels);
* element turns: the category-specific question, answered ``Yes`` when the mean vote ≥ 0.5;
* chain of thought (``chain_of_thought=True``): the assistant first checks each element, then
  gives the level word on its own line;
* options: prompt-type hints, score perturbation, lighting augmentation (applied on the fly by
  the SFT collator, or eagerly here), soft level targets (a Gaussian over the levels whose
  expectation equals the mean rating) for the KL loss.

Example::

    from datasets import load_dataset
    from evalmuse_models.mllm.data import ConversationOptions, build_sft_dataset

    ds = load_dataset("path/to/evalmuse", "alignment", split="train")
    sft = build_sft_dataset(ds, ConversationOptions(chain_of_thought=True, soft_labels=True))
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.alignment import element_record_key
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


@dataclass
class ConversationOptions:
    """How alignment records become SFT conversations.

    Attributes:
        levels: level scale (5 words or 15 levels).
        include_overall / include_elements: which turns to produce.
        element_turns: ``"multi_turn"`` (element questions follow the rating in one conversation,
            one image per record) or ``"separate"`` (one conversation per question, each exactly
            the shape the scorer asks at inference).
        chain_of_thought: the rating answer first checks every element, then gives the level.
        prompt_type_hint: mention whether the prompt is real or synthetic.
        score_noise: std of Gaussian noise added to the mean rating before binning (perturbation).
        lighting: strength of the brightness/contrast jitter (0 = off), applied by :func:`lighting_augment`.
        soft_labels: add ``level_target`` (a distribution over the levels) for the KL loss.
        soft_label_min_sigma: floor of the spread of the ratings used for the soft label.
        element_threshold: an element is present when its mean vote is ≥ this.
        question_templates: per-category overrides of the element questions.
        seed: seed of the random choices (noise, lighting).
    """

    levels: LevelScale | int | str = FIVE_LEVELS
    include_overall: bool = True
    include_elements: bool = True
    element_turns: str = "multi_turn"
    chain_of_thought: bool = False
    prompt_type_hint: bool = False
    score_noise: float = 0.0
    lighting: float = 0.0
    soft_labels: bool = False
    soft_label_min_sigma: float = 0.5
    element_threshold: float = 0.5
    question_templates: dict[str, str] | None = None
    seed: int = 0

    def __post_init__(self):
        self.levels = level_scale(self.levels)
        if self.element_turns not in {"multi_turn", "separate"}:
            raise UserInputError(f"element_turns must be 'multi_turn' or 'separate', got {self.element_turns!r}")
        if not (self.include_overall or self.include_elements):
            raise UserInputError("at least one of include_overall / include_elements must be true")
        if self.score_noise < 0 or self.lighting < 0 or self.lighting >= 1:
            raise UserInputError("score_noise must be >= 0 and lighting in [0, 1)")


# ----------------------------------------------------------------------------- soft labels
def soft_level_distribution(
    mean: float,
    std: float,
    levels: LevelScale = FIVE_LEVELS,
    min_sigma: float = 0.5,
) -> list[float]:
    """A Gaussian over the level values, tilted so that its expectation equals ``mean``.

    ``g_k ∝ exp(−(v_k − mean)² / 2σ²)`` with ``σ = max(std, min_sigma)``. Truncating to the level
    range moves the expectation towards the middle; the distribution is corrected by an
    exponential tilt ``p_k ∝ g_k · exp(λ v_k)`` with λ solved so that ``Σ p_k v_k = mean``
    (the closest distribution to g in KL with that expectation). A mean at (or beyond) an end of
    the scale gives all the mass to that end.
    """
    from scipy.optimize import brentq

    values = [float(v) for v in levels.values]
    lo, hi = values[0], values[-1]
    if not math.isfinite(mean):
        raise UserInputError(f"cannot build a soft label from a non-finite mean rating {mean!r}")
    if mean <= lo + 1e-9:
        return [1.0] + [0.0] * (len(values) - 1)
    if mean >= hi - 1e-9:
        return [0.0] * (len(values) - 1) + [1.0]
    sigma = max(float(std or 0.0), float(min_sigma), 1e-3)
    logg = [-((v - mean) ** 2) / (2 * sigma * sigma) for v in values]

    def dist(lam):
        logits = [lg + lam * v for lg, v in zip(logg, values)]
        top = max(logits)
        w = [math.exp(x - top) for x in logits]
        s = sum(w)
        return [x / s for x in w]

    def gap(lam):
        return sum(p * v for p, v in zip(dist(lam), values)) - mean

    a, b = -1.0, 1.0
    while gap(a) > 0:
        a *= 2
    while gap(b) < 0:
        b *= 2
    lam = brentq(gap, a, b, xtol=1e-12, rtol=1e-12, maxiter=200)
    return dist(lam)


def _std(votes: Sequence[float]) -> float:
    if not votes:
        return 0.0
    m = sum(votes) / len(votes)
    return math.sqrt(sum((v - m) ** 2 for v in votes) / len(votes))


# ----------------------------------------------------------------------------- augmentation
def lighting_augment(image, rng: random.Random, strength: float = 0.2):
    """Random brightness and contrast jitter (factors in ``[1 − strength, 1 + strength]``)."""
    from PIL import ImageEnhance

    if strength <= 0:
        return image
    image = image.convert("RGB")
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - strength, 1 + strength))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(1 - strength, 1 + strength))


def perturb_score(score: float, rng: random.Random, noise: float, levels: LevelScale = FIVE_LEVELS) -> float:
    if noise <= 0:
        return score
    return min(levels.values[-1], max(levels.values[0], score + rng.gauss(0.0, noise)))


# ----------------------------------------------------------------------------- conversations
def _record_elements(record: Mapping, where: str) -> list[tuple[str, str, str | None, float | None]]:
    """``(key, phrase, category, score)`` of each element record; ``key`` is the raw release key
    (what the scorer is given at inference), the category is normalised by :func:`element_question`."""
    raw = record.get("elements") or []
    out = []
    for k, el in enumerate(raw):
        if not isinstance(el, Mapping) or "phrase" not in el:
            raise UserInputError(f"{where}: elements[{k}] must be a record with 'phrase', 'category', 'score'")
        out.append((element_record_key(el), str(el["phrase"]), el.get("category"), el.get("score")))
    return out


def build_conversations(record: Mapping, options: ConversationOptions | None = None,
                        rng: random.Random | None = None, where: str = "record") -> list[dict]:
    """The SFT conversations of one alignment record: ``[{"messages": [...], "level_target": [...]?}]``.

    Labels are needed: a record without ``total_score`` (test split) raises :class:`UserInputError`
    when the rating turn is requested; elements without ``score`` are skipped.
    """
    opts = options or ConversationOptions()
    rng = rng or random.Random(opts.seed)
    levels: LevelScale = opts.levels
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise UserInputError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    context = image_context(prompt, record.get("prompt_type"), hint=opts.prompt_type_hint)
    elements = [e for e in _record_elements(record, where) if e[3] is not None]
    conversations: list[dict] = []

    element_turns = []
    for key, phrase, category, score in elements:
        answer = YES_WORD if float(score) >= opts.element_threshold else NO_WORD
        element_turns.append((key, element_question(phrase, category, opts.question_templates), answer))

    rating_turn = None
    target = None
    if opts.include_overall:
        total = record.get("total_score")
        if total is None:
            raise UserInputError(f"{where}: 'total_score' is missing (an unlabelled split?); pseudo-label it first")
        total = perturb_score(float(total), rng, opts.score_noise, levels)
        word = levels.word_for_score(total)
        if opts.chain_of_thought:
            checks = [(key, ans == YES_WORD) for key, _, ans in element_turns]
            rating_turn = (cot_question(levels), cot_answer(checks, word))
        else:
            rating_turn = (overall_question(levels), word)
        if opts.soft_labels:
            votes = [float(v) for v in (record.get("total_score_votes") or [])]
            target = soft_level_distribution(total, _std(votes), levels, opts.soft_label_min_sigma)

    def first_user(question):
        return {"role": "user", "content": context + question}

    if opts.element_turns == "multi_turn":
        messages = []
        if rating_turn:
            messages += [first_user(rating_turn[0]), {"role": "assistant", "content": rating_turn[1]}]
        if opts.include_elements:
            for _, question, answer in element_turns:
                turn = first_user(question) if not messages else {"role": "user", "content": question}
                messages += [turn, {"role": "assistant", "content": answer}]
        if messages:
            conversations.append({"messages": messages, "level_target": target})
    else:
        if rating_turn:
            conversations.append({
                "messages": [first_user(rating_turn[0]), {"role": "assistant", "content": rating_turn[1]}],
                "level_target": target,
            })
        if opts.include_elements:
            for _, question, answer in element_turns:
                conversations.append({
                    "messages": [first_user(question), {"role": "assistant", "content": answer}],
                    "level_target": None,
                })
    if opts.lighting > 0 and record.get("image") is not None:
        for conv in conversations:
            conv["image"] = lighting_augment(record["image"], rng, opts.lighting)
    return conversations


_TEXT_COLUMNS = ("prompt", "prompt_type", "total_score", "total_score_votes", "elements")


def build_sft_dataset(dataset, options: ConversationOptions | None = None, image_column: str = "image"):
    """Turn a prepared ``alignment`` split (``datasets.Dataset``) into a TRL vision SFT dataset.

    Columns of the result: ``image`` (the original images, never re-encoded), ``messages`` and,
    with ``soft_labels``, ``level_target`` (zeros for conversations without a rating turn).
    Lighting augmentation is left to the collator (:class:`~evalmuse_models.mllm.sft.LevelTargetCollator`)
    so that each epoch sees new draws.
    """
    import datasets

    opts = options or ConversationOptions()
    missing = [c for c in (image_column, "prompt") if c not in dataset.column_names]
    if missing:
        raise UserInputError(
            f"the dataset lacks the column(s) {missing}; pass the prepared 'alignment' configuration "
            f"(columns: {list(dataset.column_names)})"
        )
    eager = ConversationOptions(**{**opts.__dict__, "lighting": 0.0})
    rng = random.Random(opts.seed)
    text = dataset.select_columns([c for c in _TEXT_COLUMNS if c in dataset.column_names])
    rows, messages, targets = [], [], []
    for i, record in enumerate(text):
        for conv in build_conversations(record, eager, rng, where=f"row {i}"):
            rows.append(i)
            messages.append(conv["messages"])
            targets.append(conv["level_target"] or [0.0] * opts.levels.num_levels)
    if not rows:
        raise UserInputError("no conversation could be built (no labelled rating or element in the dataset)")
    out = dataset.select_columns([image_column]).select(rows).flatten_indices()
    if image_column != "image":
        out = out.rename_column(image_column, "image")
    out = out.add_column("messages", messages)
    if opts.soft_labels:
        out = out.add_column("level_target", targets, feature=datasets.Sequence(datasets.Value("float32")))
    return out


# ----------------------------------------------------------------------------- scoring a split
def dataset_element_keys(dataset) -> list[list[str]]:
    """The official element keys ``"<phrase> (<category>)"`` of every row of an alignment split."""
    if "elements" not in dataset.column_names:
        return [[] for _ in range(len(dataset))]
    return [[element_record_key(e) for e in (els or [])] for els in dataset["elements"]]


def score_dataset(scorer, dataset, batch_size: int = 8, chunk_size: int = 256,
                  cache_path: str | os.PathLike | None = None, progress: bool = True) -> list[dict]:
    """``scorer.score`` over an alignment split, ``chunk_size`` rows at a time (images are decoded per chunk).

    With ``cache_path`` every finished chunk is appended to a JSON-lines file (one
    ``{"index", "output"}`` per row) and a rerun skips the rows already there, so an interrupted
    long job resumes where it stopped (a torn last line is ignored).
    """
    import json

    from tqdm.auto import tqdm

    n = len(dataset)
    keys = dataset_element_keys(dataset)
    has_types = "prompt_type" in dataset.column_names
    done: dict[int, dict] = {}
    if cache_path is not None and os.path.exists(cache_path):
        with open(cache_path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by an interruption
                if isinstance(row, dict) and isinstance(row.get("index"), int) and 0 <= row["index"] < n:
                    done[row["index"]] = row["output"]
    todo = [i for i in range(n) if i not in done]
    bar = tqdm(total=n, initial=n - len(todo), desc="MLLM scoring", unit="img", disable=not progress)
    for start in range(0, len(todo), chunk_size):
        idx = todo[start:start + chunk_size]
        chunk = dataset.select(idx)
        outs = scorer.score(chunk["image"], chunk["prompt"], elements=[keys[i] for i in idx], batch_size=batch_size,
                            prompt_types=chunk["prompt_type"] if has_types else None)
        outs = [out.to_dict() if hasattr(out, "to_dict") else out for out in outs]  # AlignmentResult -> JSON-ready
        for i, out in zip(idx, outs):
            done[i] = out
        if cache_path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
            with open(cache_path, "a", encoding="utf-8") as handle:
                handle.write("".join(json.dumps({"index": i, "output": o}) + "\n" for i, o in zip(idx, outs)))
                handle.flush()
                os.fsync(handle.fileno())
        bar.update(len(idx))
    bar.close()
    return [done[i] for i in range(n)]


# ----------------------------------------------------------------------------- pseudo-labels
def pseudo_label_dataset(scorer, dataset, batch_size: int = 8, progress: bool = True, chunk_size: int = 256,
                         cache_path: str | os.PathLike | None = None):
    """Score an unlabelled split and return it with the predictions as labels (training records).

    ``total_score`` becomes the predicted overall score, every element's ``score`` its predicted
    probability (``votes`` stay empty); ``total_score_votes`` is ``[]`` and a ``pseudo_label``
    column marks the rows. The columns otherwise match the prepared ``alignment`` configuration.
    ``cache_path`` makes the scoring resumable (see :func:`score_dataset`).
    """
    outputs = score_dataset(scorer, dataset, batch_size=batch_size, chunk_size=chunk_size, cache_path=cache_path,
                            progress=progress)
    keys = dataset_element_keys(dataset)

    def relabel(elements, idx):
        pred = outputs[idx]
        new_elements = [
            {**el, "score": float(pred["elements"][key]), "votes": []}
            for el, key in zip(elements or [], keys[idx])
        ]
        return {
            "total_score": float(pred["overall"]),
            "total_score_votes": [],
            "elements": new_elements,
            "pseudo_label": True,
        }

    if "elements" not in dataset.column_names:
        raise UserInputError("the dataset has no 'elements' column; pass the prepared 'alignment' configuration")
    # only the text column is decoded; the images are carried over untouched
    return dataset.map(relabel, with_indices=True, input_columns=["elements"], desc="pseudo-labels")


def save_pseudo_labels(dataset, path: str | os.PathLike) -> str:
    """Write pseudo-labelled records as one Parquet file, atomically."""
    from ..utils.io import atomic_file

    path = os.fspath(path)
    with atomic_file(path) as tmp:
        dataset.to_parquet(str(tmp))
    return path


def records_from_rows(rows: Sequence[Mapping[str, Any]]):
    """A ``datasets.Dataset`` from hand-written alignment records (handy for tests and small jobs)."""
    import datasets

    return datasets.Dataset.from_list([dict(r) for r in rows])
