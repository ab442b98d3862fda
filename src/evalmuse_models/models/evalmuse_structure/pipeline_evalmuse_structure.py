"""The ``t2i-structure`` pipeline: generated image (+ its prompt) -> structure score, distortion
heatmap, masks and regions, by the EvalMuse structure model and its processor.

Registered with transformers' ``PIPELINE_REGISTRY`` when this package is imported, and declared in the
``config.json`` of every saved structure model (``custom_pipelines``), with this file shipped next to
the model's code, so that ``pipeline("t2i-structure", model=folder, trust_remote_code=True)`` works
without this package. This file imports only transformers, torch and its siblings.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline

from .processing_evalmuse_structure import load_rgb_image

TASK = "t2i-structure"


def custom_pipelines() -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` entry of a saved model's ``config.json`` (what ``Pipeline.save_pretrained``
    writes for a registered pipeline): transformers reads it to build the pipeline from remote code."""
    module = EvalMuseStructurePipeline.__module__.rsplit(".", 1)[-1]
    return {TASK: {"impl": f"{module}.{EvalMuseStructurePipeline.__name__}", "pt": ["AutoModel"], "type": "multimodal"}}


class EvalMuseStructurePipeline(Pipeline):
    r"""Structural-distortion assessment of generated images (EvalMuse-Structure).

    Inputs: an image (a PIL image, a local path or an ``http(s)://`` URL) or a list of them, with
    ``prompts`` (one per image) for models that embed the prompt (the ``altclip-fuser`` preset, EM-RAHF); or
    ``{"image": ..., "prompt": ...}`` dicts (also from a dataset or a generator). Images are read as
    the official evaluation reads them: converted to RGB, alpha dropped, no EXIF rotation unless
    ``exif_transpose=True``.

    Parameters (at construction or per call): ``threshold`` (heatmap level in [0, 1], default the
    model's ``config.threshold``), ``min_area`` (default ``config.min_region_area``),
    ``exif_transpose``, ``timeout`` (for URLs), and transformers' ``batch_size`` / ``num_workers``.

    Output per image: [`StructureResult.to_dict`]: ``score`` (1-5), ``heatmap`` (float32 512 x 512),
    ``mask_512`` and ``mask`` (uint8 0/1 arrays, the latter at the image's size), ``regions``
    (``[{"bbox": [x0, y0, x1, y1], "area": int}]``) and ``threshold``.

    Example:

    ```python
    >>> from PIL import Image
    >>> from transformers import pipeline
    >>> from evalmuse_models.models.evalmuse_structure import (
    ...     EvalMuseStructureConfig, EvalMuseStructureModel, EvalMuseStructureProcessor)
    >>> config = EvalMuseStructureConfig.from_preset("tiny")
    >>> pipe = pipeline("t2i-structure", model=EvalMuseStructureModel(config).eval(),
    ...                 processor=EvalMuseStructureProcessor.from_model_config(config))
    >>> result = pipe(Image.new("RGB", (300, 200)))
    >>> sorted(result), result["mask"].shape
    (['heatmap', 'mask', 'mask_512', 'regions', 'score', 'threshold'], (200, 300))

    ```

    A saved folder (model and processor)::

        pipe = pipeline("t2i-structure", model="path/to/folder", trust_remote_code=True)
        pipe(["a.png", "b.png"], batch_size=8)
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "the t2i-structure pipeline needs the model's processor: save it with the model, or pass "
                "processor=EvalMuseStructureProcessor.from_model_config(model.config)"
            )

    def _sanitize_parameters(self, threshold=None, min_area=None, exif_transpose=None, timeout=None):
        preprocess = {}
        if exif_transpose is not None:
            preprocess["exif_transpose"] = bool(exif_transpose)
        if timeout is not None:
            preprocess["timeout"] = timeout
        postprocess = {}
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold must be a heatmap level in [0, 1], got {threshold}")
            postprocess["threshold"] = float(threshold)
        if min_area is not None:
            postprocess["min_area"] = int(min_area)
        return preprocess, {}, postprocess

    def __call__(self, images, prompts=None, **kwargs):
        """Assess ``images`` (one or a list; see the class docstring), ``prompts`` one per image."""
        if isinstance(images, (list, tuple)):
            images = list(images)
            if prompts is not None:
                if isinstance(prompts, str) or len(prompts) != len(images):
                    count = 1 if isinstance(prompts, str) else len(prompts)
                    raise ValueError(f"got {len(images)} images but {count} prompts; give one prompt per image")
                images = [{"image": image, "prompt": prompt} for image, prompt in zip(images, prompts, strict=True)]
        elif prompts is not None:
            images = {"image": images, "prompt": prompts}
        return super().__call__(images, **kwargs)

    def preprocess(self, inputs, exif_transpose: bool = False, timeout: float | None = None):
        if isinstance(inputs, dict):
            if "image" not in inputs:
                raise ValueError(f"an input dict needs an 'image' key, got keys {sorted(inputs)}")
            image, prompt = inputs["image"], inputs.get("prompt")
        else:
            image, prompt = inputs, None
        image = load_rgb_image(image, exif_transpose=exif_transpose, timeout=timeout)
        text = None
        if self.model.config.uses_text:
            if prompt is None:
                raise ValueError("this model embeds the prompt: pass prompts=[...] (one per image)")
            text = [prompt]
        model_inputs = self.processor(images=[image], text=text, return_tensors="pt")
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        model_inputs["target_size"] = torch.tensor([[image.height, image.width]])
        return model_inputs

    def _forward(self, model_inputs):
        target_size = model_inputs.pop("target_size")
        outputs = self.model(**model_inputs)
        return outputs.__class__(
            {"target_size": target_size, "heatmap": outputs.heatmap, "structure_score": outputs.structure_score}
        )

    def postprocess(self, model_outputs, threshold: float | None = None, min_area: int | None = None):
        config = self.model.config
        result = self.processor.post_process_distortion(
            model_outputs,
            threshold=config.threshold if threshold is None else threshold,
            target_sizes=model_outputs["target_size"],
            min_area=config.min_region_area if min_area is None else min_area,
        )[0]
        return result.to_dict()

    def save_pretrained(self, save_directory, **kwargs):
        """The model (with this pipeline declared and shipped) and the processor, in one folder."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


__all__ = ["TASK", "EvalMuseStructurePipeline", "custom_pipelines"]
