"""Processor of the EvalMuse alignment model (FGA-BLIP2): image + prompt -> tensors, and model outputs ->
:class:`AlignmentResult` (overall score, element scores).

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
* Elements (:meth:`EvalMuseAlignProcessor.post_process_alignment`): an element key ``"<phrase> (<category>)"``
  is matched by the official rule: the phrase (the text before the LAST ``(``) is tokenized, CLS/SEP
  dropped, and its span is the FIRST exact sub-sequence of the prompt's token ids the model got; its score is
  the mean token score over that span. Not found -> the element scores 0 (as official) and is listed in
  ``unmatched_elements``. A key without ``(`` has an empty phrase and so scores 0, as official;
  ``element_key_rule="plain_phrase"`` matches such a key as a whole phrase instead.

This module imports only transformers, torch and PIL (which transformers' image processors need), so it
ships as remote code.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
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

#: How an element key gives its phrase: ``"official"`` (the text before the last ``(``; none -> empty phrase ->
#: score 0) or ``"plain_phrase"`` (a key without a trailing ``(category)`` is the phrase itself).
ElementKeyRule = Literal["official", "plain_phrase"]
#: What happens to transparency: ``"drop"`` (PIL ``convert("RGB")``, official) or ``"white"`` (composite over white).
ImageAlpha = Literal["drop", "white"]
#: Which prompt tokens the model gets: ``"eval"`` (the whole cleaned prompt, ``eval.py``) or ``"forward"`` (cut to
#: ``max_text_length`` tokens, the model's ``forward(inference=True)``).
TextTruncation = Literal["eval", "forward"]

ELEMENT_KEY_RULES: tuple[str, ...] = get_args(ElementKeyRule)
IMAGE_ALPHA_MODES: tuple[str, ...] = get_args(ImageAlpha)
TEXT_TRUNCATIONS: tuple[str, ...] = get_args(TextTruncation)

_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the option when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


@dataclass
class AlignmentResult:
    """The alignment of one image with its prompt, the same from every scorer (FGA-BLIP2, an MLLM judge, an
    ensemble).

    Args:
        overall: the alignment score, 1 (no match) to 5 (perfect match).
        elements: per element key, exactly as given (``"<phrase> (<category>)"``), the probability that the
            element is in the image (0-1). Keys keep their order.
        unmatched_elements: keys whose phrase could not be located in the prompt's tokens (scored 0, as the
            official FGA-BLIP2 evaluation does); always empty for scorers that read no tokens.
        token_scores: FGA-BLIP2 only: P(match) of every prompt token the model got, CLS and SEP included.
        level_probs: MLLM judges only: the probability of each rating level (their expectation is ``overall``).

    ``to_dict()`` is the ``"alignment"`` object of a results row (see ``docs/results.md``).
    """

    overall: float
    elements: dict[str, float] = field(default_factory=dict)
    unmatched_elements: list[str] = field(default_factory=list)
    token_scores: list[float] | None = None
    level_probs: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``overall``, ``elements``, ``unmatched_elements``, and ``token_scores`` /
        ``level_probs`` when the scorer gives them."""
        data: dict[str, Any] = {
            "overall": self.overall,
            "elements": dict(self.elements),
            "unmatched_elements": list(self.unmatched_elements),
        }
        for name in ("token_scores", "level_probs"):
            value = getattr(self, name)
            if value is not None:
                data[name] = list(value)
        return data


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


def element_phrase(key: str, rule: ElementKeyRule = "official") -> str:
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
    check_choice("element_key_rule", rule, ELEMENT_KEY_RULES)
    if rule == "plain_phrase":
        stripped = key.rstrip()
        if not (stripped.endswith(")") and "(" in stripped):
            return key
    return key.rpartition("(")[0]


def load_rgb_image(image: Any, image_alpha: ImageAlpha = "drop", exif_transpose: bool = False,
                   timeout: float | None = None) -> Any:
    """An RGB PIL image from a path, an ``http(s)://`` URL or a PIL image, as the official evaluation reads it.

    Official (the defaults): ``Image.open(path).convert("RGB")``: the EXIF orientation is NOT applied and an
    alpha channel is dropped (the colours stored under transparent pixels stay). ``exif_transpose=True``
    rotates by the EXIF orientation first; ``image_alpha="white"`` composites a transparent image over white.
    Arrays and tensors are returned unchanged (the image processor takes them as they are).

    transformers' ``image_utils.load_image`` always applies the EXIF orientation, so it cannot give the
    official pixels; this is the one loader of the family (the ``t2i-alignment`` pipeline uses it too).
    """
    check_choice("image_alpha", image_alpha, IMAGE_ALPHA_MODES)
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if source.startswith(("http://", "https://")):
            from huggingface_hub.utils import httpx  # the HTTP client transformers' load_image uses

            response = httpx.get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
            opened = Image.open(io.BytesIO(response.content))
        elif os.path.isfile(source):
            opened = Image.open(source)
        else:
            raise FileNotFoundError(f"image file {source!r} does not exist; pass an image path, URL or PIL image")
        with opened:
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
    Image processor + BERT tokenizer + the official prompt cleaning, and the post-processing of the model's
    outputs into :class:`AlignmentResult` (with the official element matching).

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
    >>> inputs = processor(images=[image], text=["A red cube."], return_tensors="pt")  # doctest: +SKIP
    >>> outputs = model(**inputs)  # doctest: +SKIP
    >>> processor.post_process_alignment(outputs, inputs["input_ids"], inputs["attention_mask"],
    ...                                  elements=[["red cube (object)"]])  # doctest: +SKIP
    [AlignmentResult(overall=3.1, elements={'red cube (object)': 0.72}, unmatched_elements=[], ...)]
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_words: int = 50,
        max_text_length: int = 32,
        element_key_rule: ElementKeyRule = "official",
        image_alpha: ImageAlpha = "drop",
        exif_transpose: bool = False,
        **kwargs,
    ):
        check_choice("element_key_rule", element_key_rule, ELEMENT_KEY_RULES)
        check_choice("image_alpha", image_alpha, IMAGE_ALPHA_MODES)
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

    def load_image(self, image: Any, timeout: float | None = None) -> Any:
        """A path, URL or PIL image as an RGB PIL image, by this processor's ``image_alpha`` / ``exif_transpose``."""
        return load_rgb_image(image, self.image_alpha, self.exif_transpose, timeout=timeout)

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
        return_tensors: str | None = "pt",
        padding: bool | str = "longest",
        truncation: bool | None = None,
        max_length: int | None = None,
        clean_text: bool = True,
        text_truncation: TextTruncation | None = None,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            images: PIL image(s), path(s) or URL(s) (read by :meth:`load_image`).
            text: prompt(s); cleaned with the official rule unless ``clean_text=False``.
            padding, truncation, max_length: passed to the tokenizer. The official inference neither
                truncates nor pads (one prompt at a time); padding to the longest prompt with an
                attention mask gives the same scores. Training uses ``padding="max_length"``,
                ``truncation=True``, ``max_length=32``.
            text_truncation: ``"eval"`` (no truncation: the official ``eval.py``) or ``"forward"``
                (truncate to ``max_text_length`` tokens: the model's ``forward(inference=True)``); overrides
                ``truncation`` / ``max_length``.

        Returns:
            `BatchFeature` with ``pixel_values``, ``input_ids`` and ``attention_mask``. Elements are scored
            afterwards, in the tokens the model got, by :meth:`post_process_alignment`.
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
                check_choice("text_truncation", text_truncation, TEXT_TRUNCATIONS)
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
        if images is not None:
            image_list = images if isinstance(images, (list, tuple)) else [images]
            image_list = [self.load_image(image) for image in image_list]
            data["pixel_values"] = self.image_processor(image_list, return_tensors="pt")["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ post-processing
    def post_process_alignment(
        self,
        outputs: Any,
        input_ids: Any,
        attention_mask: Any = None,
        elements: Sequence[Sequence[str] | None] | None = None,
    ) -> list[AlignmentResult]:
        """Turn the outputs of the ITM head into one :class:`AlignmentResult` per image.

        ``overall`` is the model's ``alignment_score`` (mean P(match) of the query tokens x 4 + 1); each element
        key is located by the official rule (see :meth:`match_elements`) in the prompt tokens the model got,
        and scores the mean of their ``token_scores`` over its span; a key not found scores 0 and is listed in
        ``unmatched_elements``.

        Args:
            outputs: the model's output (``EvalMuseAlignOutput`` of ``match_head="itm"``, or any mapping with
                ``alignment_score`` `(batch,)` and ``token_scores`` `(batch, length)`).
            input_ids: `(batch, length)`: the token ids the model got (from this processor).
            attention_mask: `(batch, length)`: 1 on real tokens; left or right padding. Default: all real.
            elements: per image, element keys ``"<phrase> (<category>)"`` (see ``element_key_rule``) or `None`.
        """
        alignment_score, token_scores = outputs.get("alignment_score"), outputs.get("token_scores")
        if alignment_score is None or token_scores is None:
            if outputs.get("itc_score") is not None:
                raise ValueError(
                    "these outputs come from the ITC head (match_head='itc'), which gives no alignment or element "
                    "scores: read outputs.itc_score, or run the model with match_head='itm'"
                )
            raise ValueError("the outputs hold no alignment_score / token_scores: pass the model's ITM outputs")
        input_ids = torch.as_tensor(input_ids).cpu()
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).cpu()
        token_scores = token_scores.detach().float().cpu()
        overall = alignment_score.detach().float().cpu().tolist()
        if not (input_ids.shape == attention_mask.shape == token_scores.shape):
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
                f"token_scores {tuple(token_scores.shape)} must have the same shape: pass the inputs the model got"
            )
        batch_size = len(overall)
        if elements is None:
            elements = [None] * batch_size
        elif len(elements) != batch_size:
            raise ValueError(f"got {len(elements)} element lists for {batch_size} prompts")
        results = []
        for row, keys in enumerate(elements):
            keep = attention_mask[row].bool()
            ids, scores = input_ids[row][keep].tolist(), token_scores[row][keep]
            keys = list(keys or [])
            element_scores, unmatched = {}, []
            for key, span in zip(keys, self.match_elements(ids, keys)):
                if span is None:
                    element_scores[key] = 0.0
                    unmatched.append(key)
                else:
                    element_scores[key] = float(scores[span[0] : span[1]].mean())
            results.append(
                AlignmentResult(
                    overall=float(overall[row]),
                    elements=element_scores,
                    unmatched_elements=unmatched,
                    token_scores=scores.tolist(),
                )
            )
        return results

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


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


__all__ = [
    "DEFAULT_TOKENIZER",
    "ELEMENT_KEY_RULES",
    "IMAGE_ALPHA_MODES",
    "TEXT_TRUNCATIONS",
    "AlignmentResult",
    "ElementKeyRule",
    "EvalMuseAlignProcessor",
    "ImageAlpha",
    "TextTruncation",
    "check_choice",
    "clean_prompt",
    "element_phrase",
    "find_sublist",
    "load_rgb_image",
]
