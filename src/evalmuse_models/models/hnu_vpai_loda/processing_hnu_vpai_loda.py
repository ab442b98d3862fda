"""Processor of the LoDa structure-score model: HNU-VPAI's image pipeline.

Their test-time transform (``LoDa/src/dataset/dataloader.py``) is torchvision's ``Resize(518)`` (shorter
side to 518, bilinear on the PIL image), ``RandomCrop(518)``, ``ToTensor()`` and ImageNet
normalisation: a RANDOM 518 x 518 crop even at test time. ``crop="random"`` reproduces it (the same
draws as torchvision's ``RandomCrop``, from torch's global generator or from ``seed``); the default
``crop="center"`` takes torchvision's ``CenterCrop`` instead, so that scores are deterministic.

This file imports only transformers, torch (and PIL, lazily), so it ships as remote code.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

CROPS = ("center", "random")


class LodaProcessor(ProcessorMixin):
    r"""Image processor of [`LodaModel`]: shorter side resized to ``size`` (PIL bilinear), a
    ``size x size`` crop (``"center"`` or HNU-VPAI's ``"random"``), then ``image_processor`` rescales
    to [0, 1] and normalises (ImageNet mean / std).

    Args:
        image_processor: a [`CLIPImageProcessor`] that only rescales and normalises (no resize, no crop:
            those are done here, exactly as torchvision does them on PIL images).
        size: the model's input size (518 for the published model).
        crop: ``"center"`` (default, deterministic) or ``"random"`` (HNU-VPAI's test-time policy).
        seed: for ``crop="random"``: ``None`` draws from torch's global generator (as torchvision does);
            an integer gives the processor its own generator, so a run is reproducible.

    Example:

    ```python
    >>> from PIL import Image
    >>> from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaProcessor
    >>> processor = LodaProcessor.from_model_config(LodaConfig.from_preset("hnu-vpai"))
    >>> processor(images=[Image.new("RGB", (700, 300))])["pixel_values"].shape
    torch.Size([1, 3, 518, 518])

    ```
    """

    def __init__(self, image_processor=None, size: int = 518, crop: str = "center", seed: int | None = None, **kwargs):
        if image_processor is None:
            raise ValueError("LodaProcessor needs an image_processor (rescale and normalise)")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self.crop = crop
        self.seed = seed
        self._generator = None
        super().__init__(image_processor=image_processor, **kwargs)

    @classmethod
    def from_model_config(cls, config, crop: str = "center", seed: int | None = None) -> LodaProcessor:
        """The processor matching a [`LodaConfig`] (its ``image_size``, ``image_mean`` and ``image_std``)."""
        size = int(config.image_size)
        # resize and crop happen in resize_and_crop (torchvision's rules on PIL images); the recorded size,
        # crop size and resample only describe them
        image_processor = CLIPImageProcessor(
            do_resize=False,
            size={"shortest_edge": size},
            resample=2,  # bilinear
            do_center_crop=False,
            crop_size={"height": size, "width": size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
        )
        return cls(image_processor=image_processor, size=size, crop=crop, seed=seed)

    def _randint(self, high: int) -> int:
        if self.seed is None:
            return int(torch.randint(0, high, size=(1,)).item())
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.seed))
        return int(torch.randint(0, high, size=(1,), generator=self._generator).item())

    def resize_and_crop(self, image: Any) -> Any:
        """One RGB PIL image (or a path, read as ``Image.open(path).convert("RGB")``) resized and cropped to
        ``size x size``: torchvision's ``Resize(size)`` then ``CenterCrop(size)`` or ``RandomCrop(size)``."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image file not found: {image}")
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        elif not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images or paths, got {type(image).__name__}")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        size = self.size
        if width <= height:
            new_width, new_height = size, int(size * height / width)
        else:
            new_width, new_height = int(size * width / height), size
        image = image.resize((new_width, new_height), Image.BILINEAR)
        if self.crop == "random":
            if (new_height, new_width) == (size, size):
                top = left = 0
            else:
                top = self._randint(new_height - size + 1)
                left = self._randint(new_width - size + 1)
        else:
            top = round((new_height - size) / 2.0)
            left = round((new_width - size) / 2.0)
        return image.crop((left, top, left + size, top + size))

    def __call__(self, images=None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """``pixel_values`` ``(batch, 3, size, size)`` of PIL images or image paths."""
        if images is None:
            raise ValueError("give images (PIL images or paths)")
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        crops = [self.resize_and_crop(image) for image in images]
        return BatchFeature(
            data=dict(self.image_processor(images=crops, return_tensors=return_tensors, **kwargs)),
            tensor_type=return_tensors,
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values"]


__all__ = ["CROPS", "LodaProcessor"]
