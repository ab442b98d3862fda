"""Processor of EM-RAHF: the official baseline's inputs, and its outputs as masks and regions.

Inputs as the official ``dataset.py`` / ``evaluate.py`` make them: the image resized to 448 x 448 by PIL's
LANCZOS filter (in its own mode, then converted to RGB), rescaled to [0, 1] and normalised with CLIP's
mean and std (AltCLIP's image processor with its resize and crop turned off); the text
``"human artifact " + prompt`` tokenised by AltCLIP's XLM-R tokenizer, padded and truncated to 512 tokens,
and only the token ids passed on (the official model has no attention mask).

Outputs: ``post_process_distortion`` is the structure family's
[`EvalMuseStructureProcessor.post_process_distortion`] (one implementation of the mask rule
``round(heatmap * 255) > threshold * 255``, the regions and the resizing to the image), with this model's
defaults: the official threshold 40/255 and no region removed.

This file imports only transformers, torch (and PIL, lazily), so it ships as remote code; there, the
inputs are prepared without this package, and ``post_process_distortion`` needs it installed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

#: The official inference mask: ``round(heatmap * 255) > 40``.
OFFICIAL_THRESHOLD = 40 / 255
LANCZOS = 1  # PIL.Image.Resampling.LANCZOS


class EmRahfProcessor(ProcessorMixin):
    r"""Image and prompt processor of [`EmRahfModel`].

    Args:
        image_processor: a [`CLIPImageProcessor`] that only rescales and normalises (CLIP mean / std); the
            resize to ``size x size`` (PIL LANCZOS) happens in :meth:`resize`, as the official code does it.
        tokenizer: AltCLIP's tokenizer (``BAAI/AltCLIP``, XLM-R).
        size: the square input size (448).
        text_prefix: prepended to every prompt (``"human artifact "``).
        max_text_length: prompts are padded and truncated to this many tokens (512).

    Example:

    ```python
    >>> from PIL import Image
    >>> from evalmuse_models.models.em_rahf import EmRahfConfig, EmRahfProcessor
    >>> processor = EmRahfProcessor.from_model_config(EmRahfConfig.from_preset("em-rahf"))  # doctest: +SKIP
    >>> batch = processor(images=[Image.new("RGB", (640, 480))], text=["a man waving"])  # doctest: +SKIP
    >>> batch["pixel_values"].shape, batch["input_ids"].shape  # doctest: +SKIP
    (torch.Size([1, 3, 448, 448]), torch.Size([1, 512]))

    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        size: int = 448,
        text_prefix: str = "human artifact ",
        max_text_length: int = 512,
        **kwargs,
    ):
        if image_processor is None or tokenizer is None:
            raise ValueError("EmRahfProcessor needs an image_processor and a tokenizer (AltCLIP's, BAAI/AltCLIP)")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 1:
            raise ValueError(f"max_text_length must be a positive integer, got {max_text_length!r}")
        self.size = size
        self.text_prefix = text_prefix
        self.max_text_length = max_text_length
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer=None) -> EmRahfProcessor:
        """The processor of an [`EmRahfConfig`]: its image size, CLIP normalisation, text prefix and length;
        ``tokenizer`` defaults to ``AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)``
        (``BAAI/AltCLIP``)."""
        size = int(config.image_size)
        image_processor = CLIPImageProcessor(
            do_resize=False,  # done by ``resize`` (PIL LANCZOS); size and resample only describe it
            size={"height": size, "width": size},
            resample=LANCZOS,
            do_center_crop=False,
            crop_size={"height": size, "width": size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
        )
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            size=size,
            text_prefix=config.text_prefix,
            max_text_length=config.max_text_length,
        )

    def resize(self, image: Any) -> Any:
        """One image (a PIL image or a path) as the official code prepares it:
        ``Image.open(path).resize((size, size), LANCZOS)`` in the image's own mode, then RGB."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image file not found: {image}")
            with Image.open(image) as opened:
                image = opened.resize((self.size, self.size), Image.Resampling.LANCZOS)
        elif isinstance(image, Image.Image):
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        else:
            raise TypeError(f"images must be PIL images or paths, got {type(image).__name__}")
        return image if image.mode == "RGB" else image.convert("RGB")

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """``pixel_values`` ``(batch, 3, size, size)`` of ``images`` and ``input_ids``
        ``(batch, max_text_length)`` of ``text_prefix + prompt`` for each prompt in ``text``."""
        if images is None and text is None:
            raise ValueError("give images and their prompts (text=...)")
        data: dict[str, Any] = {}
        if images is not None:
            if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
                images = [images]
            resized = [self.resize(image) for image in images]
            data.update(self.image_processor(images=resized, return_tensors=return_tensors, **kwargs))
        if text is not None:
            prompts = [text] if isinstance(text, str) else list(text)
            if images is not None and len(prompts) != len(data["pixel_values"]):
                raise ValueError(f"got {len(data['pixel_values'])} images but {len(prompts)} prompts; give one per image")
            encoded = self.tokenizer(
                [self.text_prefix + (prompt or "") for prompt in prompts],
                padding="max_length",
                truncation=True,
                max_length=self.max_text_length,
                return_tensors=return_tensors,
            )
            data["input_ids"] = encoded["input_ids"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_distortion(
        self,
        outputs,
        threshold: float = OFFICIAL_THRESHOLD,
        target_sizes: Sequence[tuple[int, int] | None] | Any = None,
        min_area: int = 0,
        backend: str = "auto",
    ) -> list:
        """One ``StructureResult`` per image (score 1-5, heatmap, ``mask_512``, ``mask`` at the image's size,
        ``regions``): [`EvalMuseStructureProcessor.post_process_distortion`] on the model's output, with the
        official threshold (40/255) and no region removed by default. Needs ``evalmuse-models``."""
        try:
            from evalmuse_models.models.evalmuse_structure.processing_evalmuse_structure import (
                EvalMuseStructureProcessor,
            )
        except ImportError as error:
            raise ImportError(
                "post_process_distortion is the evalmuse-models package's (pip install evalmuse-models); without "
                "it, the official mask is (outputs.heatmap * 255).round() > threshold * 255"
            ) from error
        return EvalMuseStructureProcessor.post_process_distortion(
            self, outputs, threshold=threshold, target_sizes=target_sizes, min_area=min_area, backend=backend
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids"]


__all__ = ["OFFICIAL_THRESHOLD", "EmRahfProcessor"]
