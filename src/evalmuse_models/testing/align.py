"""Offline tiny tokenizer and processor of the EvalMuse alignment model (FGA-BLIP2), for tests, demos and
benchmarks: no download, every prompt of the synthetic release tokenizes without ``[UNK]``.

Example::

    from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    from evalmuse_models.testing.align import build_tiny_processor

    config = EvalMuseAlignConfig.from_preset("tiny")
    model, processor = EvalMuseAlignModel(config), build_tiny_processor(config)
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from typing import Any

from transformers import BertTokenizer

from ..models.evalmuse_align import EvalMuseAlignProcessor

#: Words of the synthetic EvalMuse prompts and common T2I vocabulary; anything else falls back to
#: WordPiece characters, so every prompt tokenizes without [UNK].
TINY_VOCAB_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "or", "with", "without", "in", "on", "at", "to", "from", "by", "for",
    "under", "over", "above", "below", "behind", "beside", "near", "next", "left", "right", "front",
    "back", "top", "bottom", "middle", "center", "inside", "outside", "between", "among", "around",
    "across", "into", "onto", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "zero", "single", "pair", "couple", "few", "many", "several", "some", "no", "red", "green",
    "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "grey", "golden",
    "silver", "colorful", "dark", "light", "cube", "sphere", "ball", "cone", "cylinder", "pyramid",
    "ring", "star", "circle", "square", "triangle", "rectangle", "heart", "box", "disk", "round",
    "flat", "tall", "short", "big", "small", "large", "tiny", "huge", "long", "thin", "thick", "wooden",
    "metal", "glass", "plastic", "stone", "paper", "cat", "dog", "bird", "horse", "cow", "fish",
    "rabbit", "fox", "bear", "lion", "tiger", "elephant", "pig", "sheep", "duck", "owl", "mouse",
    "monkey", "man", "woman", "boy", "girl", "child", "person", "people", "king", "queen", "robot",
    "astronaut", "car", "bus", "bike", "boat", "plane", "train", "house", "tree", "flower", "apple",
    "banana", "cake", "cup", "chair", "table", "book", "lamp", "clock", "hat", "shoe", "bag",
    "umbrella", "guitar", "bottle", "bowl", "vase", "window", "door", "road", "river", "mountain",
    "sky", "sea", "beach", "city", "forest", "garden", "street", "room", "kitchen", "field", "snow",
    "rain", "sun", "moon", "cloud", "sitting", "standing", "running", "jumping", "flying", "eating",
    "holding", "playing", "reading", "walking", "sleeping", "swimming", "is", "are", "was", "were",
    "be", "has", "have", "made", "stands", "sits", "lies", "next", "photo", "image", "picture",
    "painting", "drawing", "render", "style", "realistic", "cartoon", "anime", "oil", "watercolor",
    "sketch", "digital", "art", "scene", "view", "close", "up",
    "circles", "squares", "triangles", "stars", "houses", "trees", "apples", "waving", "striped", "checkered",
    "night", "grass", "highly", "detailed", "trending", "artstation", "4k", "minimalism", "illustration",
    "octane",
)


def build_tiny_tokenizer(words: Sequence[str] | None = None, save_directory: str | os.PathLike | None = None):
    """A small uncased WordPiece ``BertTokenizer`` built offline (no download), for tests and demos.

    The vocabulary holds BERT's special tokens, every lowercase letter, digit and ASCII punctuation
    (plain and as ``##`` continuation) and ``words`` (default :data:`TINY_VOCAB_WORDS`); ``[DEC]`` is
    added as BOS like FGA-BLIP2's tokenizer. Unknown words split into characters, never ``[UNK]``.

    Example::

        tokenizer = build_tiny_tokenizer()
        tokenizer("a red cube").input_ids
    """
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens += characters + ["##" + c for c in string.ascii_lowercase + string.digits]
    for word in TINY_VOCAB_WORDS if words is None else words:
        word = word.lower().strip()
        if word and word not in tokens:
            tokens.append(word)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, truncation_side="right")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if save_directory is not None:
        tokenizer.save_pretrained(save_directory)
    return tokenizer


def build_tiny_processor(config: Any, words: Sequence[str] | None = None) -> EvalMuseAlignProcessor:
    """:class:`EvalMuseAlignProcessor` for a (tiny) config with the offline tokenizer of
    :func:`build_tiny_tokenizer`; raises if the tokenizer has more ids than the model's vocabulary."""
    tokenizer = build_tiny_tokenizer(words)
    if len(tokenizer) > config.qformer_config.vocab_size:
        raise ValueError(
            f"the tiny tokenizer has {len(tokenizer)} ids but the model's vocabulary has "
            f"{config.qformer_config.vocab_size}; raise qformer_config.vocab_size or pass fewer words"
        )
    return EvalMuseAlignProcessor.from_config(config, tokenizer=tokenizer)


__all__ = ["TINY_VOCAB_WORDS", "build_tiny_processor", "build_tiny_tokenizer"]
