"""Processor of the EvalMuse structure model: images resized (no crop) to the preset's square
size and normalised; for presets that embed the prompt (EM-RAHF), ``text_prefix + prompt``
tokenised with the AltCLIP (XLM-R) tokenizer.

This file imports only transformers and its siblings, so it ships as remote code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature


class _Attributes:
    """``get_attributes`` that works on the class (all possible sub-processors, for loading) and
    on an instance (only those present: the tokenizer is optional for image-only presets)."""

    def __get__(self, instance, owner):
        def get_attributes():
            if instance is None or getattr(instance, "tokenizer", None) is not None:
                return ["image_processor", "tokenizer"]
            return ["image_processor"]

        return get_attributes


class EvalMuseStructureProcessor(ProcessorMixin):
    r"""Image (+ optional prompt) processor of [`EvalMuseStructureModel`].

    Args:
        image_processor: a [`CLIPImageProcessor`] resizing to ``(image_size, image_size)`` without
            cropping (bicubic) and normalising with the preset's mean / std.
        tokenizer (*optional*): the text tokenizer for presets that embed the prompt.
        text_prefix: prepended to every prompt (EM-RAHF: ``"human artifact "``).
        max_text_length: prompts are truncated to this many tokens.

    Example:

    ```python
    >>> from PIL import Image
    >>> from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureProcessor
    >>> processor = EvalMuseStructureProcessor.from_model_config(EvalMuseStructureConfig.from_preset("tiny"))
    >>> processor(images=[Image.new("RGB", (300, 200))], return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 64, 64])

    ```
    """

    get_attributes = _Attributes()

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        text_prefix: str = "human artifact ",
        max_text_length: int = 77,
        **kwargs,
    ):
        if image_processor is None:
            raise ValueError("EvalMuseStructureProcessor needs an image_processor")
        self.tokenizer = tokenizer
        self.text_prefix = text_prefix
        self.max_text_length = int(max_text_length)
        if tokenizer is None:
            super().__init__(image_processor=image_processor, **kwargs)
        else:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        from transformers import AutoImageProcessor, AutoTokenizer

        subfolder = kwargs.pop("subfolder", "")
        image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        tokenizer = None
        if (processor_dict or {}).get("has_tokenizer", False):
            tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return [image_processor, tokenizer]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["has_tokenizer"] = self.tokenizer is not None
        return output

    @classmethod
    def from_args_and_dict(cls, args, processor_dict: dict[str, Any], **kwargs):
        processor_dict = {k: v for k, v in processor_dict.items() if k != "has_tokenizer"}
        return super().from_args_and_dict(args, processor_dict, **kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer=None) -> EvalMuseStructureProcessor:
        """The processor matching an [`EvalMuseStructureConfig`]. For presets that embed the
        prompt, ``tokenizer`` defaults to ``AutoTokenizer.from_pretrained(config.text_pretrained_id)``."""
        size = int(config.image_size)
        image_processor = CLIPImageProcessor(
            size={"height": size, "width": size},
            do_center_crop=False,
            resample=3,  # bicubic
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
        )
        if config.text_config is not None and tokenizer is None:
            if not config.text_pretrained_id:
                raise ValueError(
                    "this config embeds the prompt but has no text_pretrained_id: pass tokenizer=... explicitly"
                )
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.text_pretrained_id)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer if config.text_config is not None else None,
            text_prefix=config.text_prefix,
            max_text_length=config.max_text_length,
        )

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """``pixel_values`` for ``images``; plus ``input_ids`` / ``attention_mask`` of
        ``text_prefix + prompt`` when ``text`` is given and the processor has a tokenizer."""
        if images is None and text is None:
            raise ValueError("give images (and, for presets that embed the prompt, text)")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images=images, return_tensors=return_tensors))
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("this processor has no tokenizer: the preset does not use the prompt")
            texts = [text] if isinstance(text, str) else list(text)
            texts = [self.text_prefix + (t or "") for t in texts]
            data.update(
                self.tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_tensors=return_tensors,
                )
            )
            data.pop("token_type_ids", None)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        names = ["pixel_values"]
        if self.tokenizer is not None:
            names += ["input_ids", "attention_mask"]
        return names


__all__ = ["EvalMuseStructureProcessor"]
