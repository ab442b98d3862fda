"""The ``t2i-alignment`` pipeline: how well does an image match its text-to-image prompt, element by element.

Example::

    from transformers import pipeline

    scorer = pipeline("t2i-alignment", model="path/to/evalmuse-align", trust_remote_code=True)
    scorer("a.png", prompt="A red cube on a wooden table.", elements=["red cube (object)", "wooden table (object)"])
    # {"overall": 3.87, "elements": {"red cube (object)": 0.91, "wooden table (object)": 0.64},
    #  "unmatched_elements": [], "token_scores": [...]}
    scorer([{"image": "a.png", "prompt": "..."}, {"image": "https://.../b.png", "prompt": "...", "elements": [...]}],
           batch_size=8)

Each image goes through the model's processor (its image reader, prompt cleaning and tokenization), the model
(``match_head="itm"``) and ``processor.post_process_alignment``; the output is ``AlignmentResult.to_dict()``.
Batches are padded to the longest prompt with an attention mask, which changes no score.

This module imports only transformers, so it ships as remote code with the model: a folder written by
``EvalMuseAlignModel.save_pretrained`` records the task in ``config.json`` (``custom_pipelines``) and holds this
file, so ``pipeline("t2i-alignment", model=folder, trust_remote_code=True)`` works without this package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import Pipeline

#: The pipeline's task name.
TASK = "t2i-alignment"


class EvalMuseAlignPipeline(Pipeline):
    """Score images against their prompts (overall 1-5, elements 0-1) with an EvalMuse alignment model.

    Call it with one image (a path, an ``http(s)://`` URL or a PIL image) and ``prompt=`` (and ``elements=``, a
    list of keys ``"<phrase> (<category>)"``); with lists of images, prompts and element lists; or with dicts
    ``{"image", "prompt", "elements"}`` (one, a list, or any iterable, e.g. a dataset). Options:
    ``batch_size``, ``text_truncation`` (``"eval"``, the official whole prompt, or ``"forward"``: 32 tokens),
    ``vision_autocast`` (the official fp16 autocast of the image encoder on CUDA) and ``timeout`` (URLs).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None or not hasattr(self.processor, "post_process_alignment"):
            raise ValueError(f"the {TASK} pipeline needs the model's EvalMuseAlignProcessor: pass processor=...")

    def __call__(self, inputs: Any, prompt: str | Sequence[str] | None = None,
                 elements: Sequence[str] | Sequence[Sequence[str] | None] | None = None, **kwargs: Any):
        if prompt is not None:
            inputs = _as_records(inputs, prompt, elements)
        elif elements is not None:
            raise ValueError("elements= goes with prompt=; in dict inputs give each one its own 'elements'")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, text_truncation=None, vision_autocast=None, timeout=None, **kwargs):
        if kwargs:
            raise TypeError(f"the {TASK} pipeline got unknown options {sorted(kwargs)}")
        preprocess = {"text_truncation": text_truncation or "eval", "timeout": timeout}
        forward = {} if vision_autocast is None else {"vision_autocast": vision_autocast}
        return preprocess, forward, {}

    def preprocess(self, inputs: Mapping[str, Any], text_truncation: str = "eval", timeout: float | None = None):
        if not isinstance(inputs, Mapping) or "image" not in inputs or "prompt" not in inputs:
            raise ValueError(
                f"each {TASK} input is a dict with 'image', 'prompt' and optional 'elements' (or call the pipeline "
                f"with an image and prompt=...); got {type(inputs).__name__}"
            )
        image = self.processor.load_image(inputs["image"], timeout=timeout)
        model_inputs = self.processor(images=image, text=inputs["prompt"], text_truncation=text_truncation,
                                      return_tensors="pt")
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        # A batch of one, like the tensors: the pipeline's collation and un-batching keep one list per image.
        model_inputs["elements"] = [list(inputs.get("elements") or [])]
        return model_inputs

    def _forward(self, model_inputs, vision_autocast: bool | None = None):
        outputs = self.model(
            pixel_values=model_inputs["pixel_values"],
            input_ids=model_inputs["input_ids"],
            attention_mask=model_inputs["attention_mask"],
            predict_element_mask=False,
            vision_autocast=vision_autocast,
        )
        return {
            "alignment_score": outputs.alignment_score,
            "token_scores": outputs.token_scores,
            "input_ids": model_inputs["input_ids"],
            "attention_mask": model_inputs["attention_mask"],
            "elements": model_inputs["elements"],
        }

    def postprocess(self, model_outputs):
        [result] = self.processor.post_process_alignment(
            model_outputs, model_outputs["input_ids"], model_outputs["attention_mask"], model_outputs["elements"]
        )
        return result.to_dict()

    def save_pretrained(self, save_directory, **kwargs):
        """Save the model (with this pipeline's code, see ``EvalMuseAlignModel.save_pretrained``) and processor."""
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


def custom_pipelines() -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` entry of ``config.json`` that makes ``pipeline(TASK, model=folder,
    trust_remote_code=True)`` load this file (the model through ``AutoModel``)."""
    module = __name__.rpartition(".")[2]
    return {TASK: {"impl": f"{module}.{EvalMuseAlignPipeline.__name__}", "pt": ["AutoModel"], "type": "multimodal"}}


def _as_records(images, prompt, elements) -> Any:
    """``pipe(image, prompt=..., elements=...)`` or the same with lists -> the pipeline's dict inputs."""
    if isinstance(prompt, str):
        return {"image": images, "prompt": prompt, "elements": elements}
    images, prompts = list(images), list(prompt)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
    if elements is not None and len(elements) != len(prompts):
        raise ValueError(f"got {len(elements)} element lists for {len(prompts)} prompts")
    return [
        {"image": image, "prompt": text, "elements": None if elements is None else elements[i]}
        for i, (image, text) in enumerate(zip(images, prompts))
    ]


__all__ = ["TASK", "EvalMuseAlignPipeline", "custom_pipelines"]
