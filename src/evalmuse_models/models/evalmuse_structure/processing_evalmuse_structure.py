"""Processor of the EvalMuse structure model: images resized (no crop) to the preset's square
size and normalised; for presets that embed the prompt (EM-RAHF), ``text_prefix + prompt``
tokenised with the AltCLIP (XLM-R) tokenizer; and the model's outputs turned into typed results
(:class:`StructureResult`: score, heatmap, masks, regions) by ``post_process_distortion``.

Images are read as the official evaluation reads them (:func:`load_rgb_image`):
``Image.open(path).convert("RGB")``, the alpha channel dropped and the EXIF orientation NOT applied
unless asked.

This file imports only transformers, torch, numpy, PIL and its siblings, so it ships as remote code.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .configuration_evalmuse_structure import BASELINE_THRESHOLD, MIN_REGION_AREA
from .post_processing_evalmuse_structure import masks_and_regions


@dataclass
class StructureResult:
    """The structure assessment of one image.

    Args:
        score: structure score on the MOS scale, 1 (badly broken) to 5 (intact).
        heatmap: float32 ``(512, 512)`` distortion probability in [0, 1] (None when not kept).
        mask_512: uint8 0/1 ``(512, 512)`` mask: ``round(heatmap * 255) > threshold * 255`` without
            its 8-connected regions under the minimum area (what the official score compares).
        mask: uint8 0/1 ``mask_512`` at the image's own size (nearest resize, pixel centres aligned).
        regions: the 8-connected components of ``mask``, ``[{"bbox": [x0, y0, x1, y1], "area": int}]``
            in original pixels (``x1``, ``y1`` exclusive), in raster order of their first pixel.
        threshold: the heatmap level the masks were cut at.
    """

    score: float
    heatmap: np.ndarray | None
    mask_512: np.ndarray
    mask: np.ndarray
    regions: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = BASELINE_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (arrays kept as arrays, not copied)."""
        return {
            "score": self.score,
            "heatmap": self.heatmap,
            "mask_512": self.mask_512,
            "mask": self.mask,
            "regions": self.regions,
            "threshold": self.threshold,
        }


def load_rgb_image(image: Any, exif_transpose: bool = False, timeout: float | None = None) -> Image.Image:
    """An RGB PIL image from a PIL image, a local path or an ``http(s)://`` URL, read as the official
    evaluation reads it: ``Image.open(path).convert("RGB")`` (an alpha channel dropped, the colours
    stored under it kept) with the EXIF orientation applied only when ``exif_transpose=True``
    (transformers' ``load_image`` always applies it)."""
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if source.startswith(("http://", "https://")):
            from huggingface_hub import get_session

            response = get_session().get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
            image = Image.open(io.BytesIO(response.content))
        elif os.path.isfile(source):
            with Image.open(source) as opened:
                image = opened.copy()  # read, and detached from the file
        else:
            raise FileNotFoundError(f"image file not found: {source}")
    elif not isinstance(image, Image.Image):
        raise TypeError(f"images must be PIL images, paths or URLs, got {type(image).__name__}")
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


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

    def post_process_distortion(
        self,
        outputs,
        threshold: float = BASELINE_THRESHOLD,
        target_sizes: Sequence[tuple[int, int] | None] | torch.Tensor | None = None,
        min_area: int = MIN_REGION_AREA,
        backend: str = "auto",
    ) -> list[StructureResult]:
        """The model's outputs as one [`StructureResult`] per image: score, heatmap, masks and regions.

        Args:
            outputs: an [`EvalMuseStructureOutput`] (``heatmap`` ``(batch, H, W)`` in [0, 1] and
                ``structure_score`` ``(batch,)``).
            threshold: heatmap level in [0, 1]: mask = ``round(heatmap * 255) > threshold * 255``
                (default: the baseline's 40/255; a trained model's is ``model.config.threshold``,
                which the ``t2i-structure`` pipeline uses).
            target_sizes: per image, ``(height, width)`` of the original image (a list of pairs or a
                ``(batch, 2)`` tensor); None: the heatmap's size.
            min_area: 8-connected regions of the 512 x 512 mask with fewer pixels are removed
                (a model's own is ``model.config.min_region_area``).
            backend: region labelling: ``"auto"`` (OpenCV when importable, else SciPy, else torch on
                the heatmaps' device) or one of them; all give the same result.

        Example:

        ```python
        >>> import torch
        >>> from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureOutput
        >>> processor = EvalMuseStructureProcessor.from_model_config(EvalMuseStructureConfig.from_preset("tiny"))
        >>> heatmap = torch.zeros(1, 512, 512)
        >>> heatmap[0, 100:200, 50:150] = 0.9
        >>> outputs = EvalMuseStructureOutput(heatmap=heatmap, structure_score=torch.tensor([2.5]))
        >>> result = processor.post_process_distortion(outputs, target_sizes=[(256, 1024)])[0]
        >>> result.score, result.mask.shape, result.regions
        (2.5, (256, 1024), [{'bbox': [100, 50, 300, 100], 'area': 10000}])

        ```
        """
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a heatmap level in [0, 1], got {threshold}")
        heatmaps = torch.as_tensor(outputs.heatmap).detach().float()
        scores = torch.as_tensor(outputs.structure_score).detach().float().reshape(-1).cpu().tolist()
        if heatmaps.dim() != 3 or heatmaps.shape[0] != len(scores):
            raise ValueError(
                f"outputs must hold heatmaps (batch, H, W) and one score per heatmap, got heatmaps of shape "
                f"{tuple(heatmaps.shape)} and {len(scores)} scores"
            )
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        parts = masks_and_regions(heatmaps, float(threshold), int(min_area), target_sizes, backend)
        heatmaps = heatmaps.cpu().numpy()
        return [
            StructureResult(score=score, heatmap=heatmap.copy(), threshold=float(threshold), **part)
            for score, heatmap, part in zip(scores, heatmaps, parts, strict=True)
        ]

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


__all__ = ["BASELINE_THRESHOLD", "MIN_REGION_AREA", "EvalMuseStructureProcessor", "StructureResult", "load_rgb_image"]
