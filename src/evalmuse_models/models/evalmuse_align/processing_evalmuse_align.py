"""Processor of the EvalMuse alignment model (FGA-BLIP2): image + prompt + element phrases -> tensors.

Every default follows the official evaluation (EvalMuse ``eval.py`` with LAVIS's processors); each place
where another behaviour is also reasonable has a named option:

* Images: a path is opened with PIL and converted with ``convert("RGB")``: no EXIF rotation
  (``exif_transpose=True`` applies it) and any alpha channel dropped, keeping the colours stored under it
  (``image_alpha="white"`` composites over white instead). Then a resize to the model's size (364x364 for
  FGA-BLIP2) with PIL bicubic, rescale to [0, 1] and the CLIP mean/std (LAVIS ``blip_image_eval``), by
  transformers' ``BlipImageProcessorPil``.
* Prompts: the official text cleaning (LAVIS ``blip_caption``): lowercase, each of ``.!"()*#:;~`` replaced
  by a space, runs of whitespace collapsed, stripped, at most 50 words; then the BERT tokenizer
  (``bert-base-uncased`` with ``[DEC]`` added as BOS, as in LAVIS). ``text_truncation="eval"`` keeps every
  token (``eval.py``); ``"forward"`` cuts to ``max_text_length`` (32) tokens like the model's ``forward``.
* Elements: an element key ``"<phrase> (<category>)"`` is matched by the official rule: the phrase (the
  text before the LAST ``(``) is tokenized, CLS/SEP dropped, and its span is the FIRST exact
  sub-sequence of the prompt's token ids. Not found -> the element scores 0 (as official) and is
  reported in ``element_found``. A key without ``(`` has an empty phrase and so scores 0, as official;
  ``element_key_rule="plain_phrase"`` matches such a key as a whole phrase instead.

This module imports only transformers and PIL (which transformers' image processors need), so it ships as
remote code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageOps
from transformers import BatchFeature, BertTokenizer, BlipImageProcessorPil
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PILImageResampling,
)
from transformers.processing_utils import ProcessorMixin

#: The Hub id of FGA-BLIP2's tokenizer.
DEFAULT_TOKENIZER = "bert-base-uncased"

#: ``element_key_rule`` values: ``"official"`` (the phrase is the text before the last ``(``; none -> empty
#: phrase -> score 0) and ``"plain_phrase"`` (a key without a trailing ``(category)`` is the phrase itself).
ELEMENT_KEY_RULES = ("official", "plain_phrase")
#: ``image_alpha`` values: ``"drop"`` (PIL ``convert("RGB")``, official) and ``"white"`` (composite over white).
IMAGE_ALPHA_MODES = ("drop", "white")
#: ``text_truncation`` values: ``"eval"`` (the whole cleaned prompt, ``eval.py``) and ``"forward"`` (cut to
#: ``max_text_length`` tokens, the model's ``forward(inference=True)``).
TEXT_TRUNCATIONS = ("eval", "forward")

_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def clean_prompt(prompt: str, max_words: int = 50) -> str:
    """The official prompt cleaning (LAVIS ``BlipCaptionProcessor.pre_caption``).

    >>> clean_prompt('A "Red" cube: on (the) table!')
    'a red cube on the table'
    """
    text = _PUNCTUATION.sub(" ", prompt.lower())
    text = _SPACES.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def element_phrase(key: str, rule: str = "official") -> str:
    """The phrase of an element key ``"<phrase> (<category>)"``.

    ``rule="official"`` (``eval.py``: ``key.rpartition("(")[0]``): the text before the LAST ``(``; a key
    without ``(`` gives an empty phrase, which is never found, so the element scores 0.
    ``rule="plain_phrase"``: the same for keys ending in ``(...)``; any other key is its own phrase.

    >>> element_phrase("pig giants (animal)")
    'pig giants '
    >>> element_phrase("red cube")
    ''
    >>> element_phrase("red cube", rule="plain_phrase")
    'red cube'
    """
    if rule == "official":
        return key.rpartition("(")[0]
    if rule == "plain_phrase":
        stripped = key.rstrip()
        if stripped.endswith(")") and "(" in stripped:
            return stripped.rpartition("(")[0]
        return key
    raise ValueError(f"element_key_rule must be one of {ELEMENT_KEY_RULES}, got {rule!r}")


def load_rgb_image(image: Any, image_alpha: str = "drop", exif_transpose: bool = False) -> Any:
    """An RGB PIL image from a path or a PIL image, as the official evaluation reads it.

    Official (the defaults): ``Image.open(path).convert("RGB")``: the EXIF orientation is NOT applied and an
    alpha channel is dropped (the colours stored under transparent pixels stay). ``exif_transpose=True``
    rotates by the EXIF orientation first; ``image_alpha="white"`` composites a transparent image over white.
    Arrays and tensors are returned unchanged (the image processor takes them as they are).
    """
    if image_alpha not in IMAGE_ALPHA_MODES:
        raise ValueError(f"image_alpha must be one of {IMAGE_ALPHA_MODES}, got {image_alpha!r}")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path!r} does not exist; pass an image path or a PIL image")
        with Image.open(path) as opened:
            opened.load()
            return load_rgb_image(opened, image_alpha, exif_transpose)
    if not isinstance(image, Image.Image):
        return image
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image_alpha == "white" and has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def find_sublist(needle: Sequence[int], haystack: Sequence[int]) -> int:
    """Official ``get_index``: start of the first exact occurrence of ``needle`` in ``haystack``, else 0.

    0 doubles as "not found" (position 0 is the CLS token, so a real match never starts there).
    """
    needle, haystack = list(needle), list(haystack)
    if not needle:
        return 0
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start : start + len(needle)] == needle:
            return start
    return 0


class EvalMuseAlignProcessor(ProcessorMixin):
    r"""
    Image processor + BERT tokenizer + the official prompt cleaning and element matching.

    Args:
        image_processor (`BlipImageProcessorPil`): resize (bicubic), rescale, CLIP-normalise.
        tokenizer (`BertTokenizer`): ``bert-base-uncased`` + ``[DEC]`` for FGA-BLIP2.
        max_words (`int`, defaults to 50): prompts are cut to this many words after cleaning.
        max_text_length (`int`, defaults to 32): length used by ``padding="max_length"`` (training) and by
            ``text_truncation="forward"``.
        element_key_rule (`str`, defaults to `"official"`): how an element key gives its phrase (see
            :func:`element_phrase`): ``"official"`` or ``"plain_phrase"`` (keys without ``(category)`` are
            matched whole instead of scoring 0).
        image_alpha (`str`, defaults to `"drop"`): ``"drop"`` (official ``convert("RGB")``) or ``"white"``
            (composite transparent images over white).
        exif_transpose (`bool`, defaults to `False`): apply the EXIF orientation (the official code does not).

    Example:

    ```python
    >>> processor = EvalMuseAlignProcessor.from_pretrained("path/to/evalmuse-align")  # doctest: +SKIP
    >>> batch = processor(images=[image], text=["A red cube."], elements=[["red cube (object)"]],
    ...                   return_tensors="pt")  # doctest: +SKIP
    >>> batch["element_mask"].shape  # (batch, elements, tokens)  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_words: int = 50,
        max_text_length: int = 32,
        element_key_rule: str = "official",
        image_alpha: str = "drop",
        exif_transpose: bool = False,
        **kwargs,
    ):
        if element_key_rule not in ELEMENT_KEY_RULES:
            raise ValueError(f"element_key_rule must be one of {ELEMENT_KEY_RULES}, got {element_key_rule!r}")
        if image_alpha not in IMAGE_ALPHA_MODES:
            raise ValueError(f"image_alpha must be one of {IMAGE_ALPHA_MODES}, got {image_alpha!r}")
        self.max_words = max_words
        self.max_text_length = max_text_length
        self.element_key_rule = element_key_rule
        self.image_alpha = image_alpha
        self.exif_transpose = bool(exif_transpose)
        super().__init__(_pil_image_processor(image_processor), tokenizer, **kwargs)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Any, tokenizer: Any = None, tokenizer_name_or_path: str = DEFAULT_TOKENIZER):
        """Build a processor matching a model config (image size, text length).

        ``tokenizer`` defaults to ``BertTokenizer.from_pretrained(tokenizer_name_or_path)`` with
        ``[DEC]`` added as BOS token, as in LAVIS (30,523 ids: the FGA-BLIP2 vocabulary).
        """
        if tokenizer is None:
            tokenizer = BertTokenizer.from_pretrained(tokenizer_name_or_path, truncation_side="right")
            tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        vision = config.vision_config
        size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        image_processor = BlipImageProcessorPil(
            size={"height": size, "width": size},
            resample=PILImageResampling.BICUBIC,
            image_mean=list(OPENAI_CLIP_MEAN),
            image_std=list(OPENAI_CLIP_STD),
        )
        return cls(image_processor=image_processor, tokenizer=tokenizer, max_text_length=config.max_text_length)

    # ------------------------------------------------------------------ text
    def clean(self, prompt: str) -> str:
        """The official cleaning with this processor's ``max_words``."""
        return clean_prompt(prompt, self.max_words)

    def prompt_ids(self, prompt: str, clean: bool = True, max_length: int | None = None) -> list[int]:
        """Token ids of a prompt (CLS ... SEP), as the model sees it."""
        text = self.clean(prompt) if clean else prompt
        if max_length is None:
            return self.tokenizer(text).input_ids
        return self.tokenizer(text, truncation=True, max_length=max_length).input_ids

    def element_ids(self, key: str) -> list[int]:
        """Token ids of an element's phrase without CLS/SEP (official: ``tokenizer(phrase).input_ids[1:-1]``),
        the phrase taken by this processor's ``element_key_rule``."""
        return self.tokenizer(element_phrase(key, self.element_key_rule)).input_ids[1:-1]

    def load_image(self, image: Any) -> Any:
        """A path or PIL image as an RGB PIL image, by this processor's ``image_alpha`` / ``exif_transpose``."""
        return load_rgb_image(image, self.image_alpha, self.exif_transpose)

    def match_elements(self, prompt_ids: Sequence[int], keys: Sequence[str]) -> list[tuple[int, int] | None]:
        """Token span ``(start, end)`` of each element in ``prompt_ids``, or `None` when not found."""
        spans: list[tuple[int, int] | None] = []
        for key in keys:
            ids = self.element_ids(key)
            start = find_sublist(ids, prompt_ids)
            spans.append((start, start + len(ids)) if start else None)
        return spans

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        elements: Sequence[Sequence[str] | None] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = "longest",
        truncation: bool | None = None,
        max_length: int | None = None,
        clean_text: bool = True,
        text_truncation: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            images: PIL image(s) or path(s) (read by :meth:`load_image`).
            text: prompt(s); cleaned with the official rule unless ``clean_text=False``.
            elements: per prompt, a list of element keys ``"<phrase> (<category>)"`` (see ``element_key_rule``).
            padding, truncation, max_length: passed to the tokenizer. The official inference neither
                truncates nor pads (one prompt at a time); padding to the longest prompt with an
                attention mask gives the same scores. Training uses ``padding="max_length"``,
                ``truncation=True``, ``max_length=32``.
            text_truncation: ``"eval"`` (no truncation: the official ``eval.py``) or ``"forward"``
                (truncate to ``max_text_length`` tokens: the model's ``forward(inference=True)``); overrides
                ``truncation`` / ``max_length``. Elements are located in the tokens the model gets.

        Returns:
            `BatchFeature` with ``pixel_values``, ``input_ids``, ``attention_mask`` and, when elements are
            given, ``element_mask`` `(batch, max_elements, length)` (1 on each found span),
            ``element_found`` `(batch, max_elements)` (bool) and ``num_elements`` `(batch,)`.
        """
        if images is None and text is None:
            raise ValueError("pass images, text, or both")
        data: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("text must be a string or a list of strings")
            cleaned = [self.clean(t) if clean_text else t for t in texts]
            if text_truncation is not None:
                if text_truncation not in TEXT_TRUNCATIONS:
                    raise ValueError(f"text_truncation must be one of {TEXT_TRUNCATIONS}, got {text_truncation!r}")
                truncation = text_truncation == "forward"
                max_length = self.max_text_length if truncation else None
            if padding == "max_length" and max_length is None:
                max_length = self.max_text_length
            encoding = self.tokenizer(
                cleaned,
                padding=padding,
                truncation=truncation if truncation is not None else max_length is not None,
                max_length=max_length,
                return_token_type_ids=False,
            )
            data["input_ids"] = encoding["input_ids"]
            data["attention_mask"] = encoding["attention_mask"]
            if elements is not None:
                if len(elements) != len(texts):
                    raise ValueError(f"got {len(elements)} element lists for {len(texts)} prompts")
                data.update(self._element_tensors(encoding, elements))
        elif elements is not None:
            raise ValueError("elements need the prompts (text=...)")
        if images is not None:
            image_list = images if isinstance(images, (list, tuple)) else [images]
            image_list = [self.load_image(image) for image in image_list]
            pixel_values = self.image_processor(image_list, return_tensors="pt")["pixel_values"]
            data["pixel_values"] = pixel_values
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _element_tensors(self, encoding, elements) -> dict[str, list]:
        lengths = [sum(mask) for mask in encoding["attention_mask"]]
        padded_length = len(encoding["input_ids"][0]) if encoding["input_ids"] else 0
        max_elements = max([len(keys or []) for keys in elements] + [1])
        element_mask, element_found, num_elements = [], [], []
        for row, keys in enumerate(elements):
            keys = list(keys or [])
            ids = encoding["input_ids"][row][: lengths[row]] if self.tokenizer.padding_side == "right" else [
                token for token, keep in zip(encoding["input_ids"][row], encoding["attention_mask"][row]) if keep
            ]
            offset = 0 if self.tokenizer.padding_side == "right" else padded_length - lengths[row]
            spans = self.match_elements(ids, keys)
            rows = []
            for span in spans:
                mask = [0] * padded_length
                if span is not None:
                    for position in range(span[0] + offset, span[1] + offset):
                        mask[position] = 1
                rows.append(mask)
            rows += [[0] * padded_length for _ in range(max_elements - len(keys))]
            element_mask.append(rows)
            element_found.append([span is not None for span in spans] + [False] * (max_elements - len(keys)))
            num_elements.append(len(keys))
        return {"element_mask": element_mask, "element_found": element_found, "num_elements": num_elements}

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "element_mask"]


_IMAGE_PROCESSOR_FIELDS = (
    "size",
    "resample",
    "image_mean",
    "image_std",
    "do_resize",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "do_convert_rgb",
)


def _pil_image_processor(image_processor):
    """The official pipeline resizes with PIL (torchvision ``Resize`` on PIL images): keep the PIL backend
    even when ``AutoImageProcessor`` resolved the saved ``BlipImageProcessor`` to its torchvision variant."""
    if image_processor is None or isinstance(image_processor, BlipImageProcessorPil):
        return image_processor
    fields = {name: getattr(image_processor, name) for name in _IMAGE_PROCESSOR_FIELDS if hasattr(image_processor, name)}
    if isinstance(fields.get("size"), dict) is False and fields.get("size") is not None:
        size = fields["size"]
        fields["size"] = {"height": size.height, "width": size.width} if hasattr(size, "height") else size
    return BlipImageProcessorPil(**fields)


# ---------------------------------------------------------------------- tiny, offline tokenizer
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
    import string

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


__all__ = [
    "DEFAULT_TOKENIZER",
    "ELEMENT_KEY_RULES",
    "IMAGE_ALPHA_MODES",
    "TEXT_TRUNCATIONS",
    "TINY_VOCAB_WORDS",
    "EvalMuseAlignProcessor",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "clean_prompt",
    "element_phrase",
    "find_sublist",
    "load_rgb_image",
]
