"""Adapters between the scoring engine and the models: one small class per model kind.

The engine only knows this interface::

    scorer = ALIGN.load(spec, device="cpu", dtype=torch.float32)   # or STRUCTURE / MLLM
    outputs = scorer(batch)   # batch: list of items with a PIL "image", "prompt", "elements"
                              # returns one dict per item, e.g. {"alignment": {...}}

so new model kinds plug in without touching the engine. A ``spec`` is

* a local folder written by ``save_pretrained`` or a Hub id of this package's models
  (loaded with ``AutoModel`` / ``AutoProcessor``),
* ``mllm:<folder or Hub id>`` for a multimodal LLM scorer (:mod:`evalmuse_models.mllm`),
* ``package.module:factory`` - a Python callable ``factory(device=..., dtype=...)`` returning an
  object with the model's ``score(...)`` (alignment) or ``predict(...)`` (structure) method,
* or such an object itself (when calling :func:`evalmuse_models.scoring.score` from Python).
"""

from __future__ import annotations

import base64
import importlib
import io
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError
from .rle import mask_to_rle

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def describe_spec(spec: Any) -> str:
    return spec if isinstance(spec, str) else f"<{type(spec).__name__}>"


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _load_factory(spec: str, device, dtype):
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserInputError(f"cannot import {module_name!r} for scorer spec {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserInputError(f"module {module_name!r} has no {attr!r} (scorer spec {spec!r})")
    return factory(device=device, dtype=dtype)


def load_exact_weights(auto_class, spec: str, **kwargs):
    """``auto_class.from_pretrained(spec)`` that refuses to score with weights that do not match the
    config: a missing, unexpected or mis-shaped tensor (which transformers would only print, leaving
    random weights in place) and an unreadable weights file raise :class:`UserInputError`."""
    import pickle
    import re

    try:
        model, info = auto_class.from_pretrained(spec, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        # an UnpicklingError: a .bin file that torch's weights_only loading refused
        raise UserInputError(f"cannot load the model weights of {spec}: {' '.join(str(err).split())[:400]}") from None
    except Exception as err:  # e.g. safetensors' SafetensorError on a truncated file
        if type(err).__module__.split(".")[0] != "safetensors":
            raise
        raise UserInputError(f"cannot read the weights file of {spec} (damaged or truncated?): {err}") from None
    allowed = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
    problems = {
        "missing": sorted(k for k in info.get("missing_keys", ()) if not any(p.search(k) for p in allowed)),
        "unexpected": sorted(info.get("unexpected_keys", ())),
        "mis-shaped": sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())),
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems or info.get("error_msgs"):
        said = "; ".join(f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                         for kind, keys in problems.items()) or "; ".join(info["error_msgs"])
        raise UserInputError(
            f"the weights of {spec} do not match its config: {said}. Scoring would use random weights for "
            "them; re-save the model with save_pretrained or convert the checkpoint again"
        )
    return model


def _load_pretrained(spec: str, device, dtype, expected: str | tuple[str, ...]):
    """``AutoModel`` + ``AutoProcessor`` from a folder or Hub id, on ``device`` in ``dtype``; ``expected``: the
    model type (or types) the option takes."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    import evalmuse_models  # noqa: F401 - registers the model families with the Auto classes

    path = Path(spec)
    if path.exists() and not (path / "config.json").is_file():
        raise UserInputError(f"{spec} is not a model folder (no config.json); pass a folder written by save_pretrained")
    if not path.exists() and os.environ.get("HF_HUB_OFFLINE") == "1" and spec.count("/") != 1:
        raise UserInputError(f"model {spec} does not exist locally (offline mode: pass a local model folder)")
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise UserInputError(f"cannot load a model config from {spec}: {err}") from None
    model_type = getattr(config, "model_type", "")
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    if not any(kind in model_type for kind in expected):
        raise UserInputError(f"{spec} is a {model_type!r} model, but this option needs an {' or '.join(expected)} "
                             "model")
    model = load_exact_weights(AutoModel, spec, dtype=dtype)
    model.to(device).eval()
    try:
        processor = AutoProcessor.from_pretrained(spec)
    except (OSError, ValueError, TypeError):
        processor = None
    return model, processor


class AlignScorer:
    """Alignment: overall score (1-5) and per-element probabilities of each image.

    The model's ``score(images, prompts, elements=..., batch_size=...)`` (``EvalMuseAlignModel.score``, given
    the processor saved with it, or an MLLM judge's) returns one
    :class:`~evalmuse_models.results.AlignmentResult` per image; its ``to_dict()`` is the row's ``alignment``
    object (``docs/results.md``). A factory's scorer may return plain dicts with the same keys.
    """

    kind = "align"
    method = "score"
    model_type = "evalmuse_align"

    def __init__(self, model, processor=None, name: str = ""):
        if not callable(getattr(model, self.method, None)):
            raise UserInputError(f"{name or type(model).__name__} has no {self.method}() method; not an {self.kind} scorer")
        self.model = model
        self.processor = processor
        self.name = name

    @classmethod
    def load(cls, spec: Any, device="cpu", dtype=None) -> AlignScorer:
        if not isinstance(spec, str):
            return cls(spec, getattr(spec, "processor", None), describe_spec(spec))
        if _FACTORY.match(spec) and not Path(spec).exists():
            model = _load_factory(spec, device, dtype)
            return cls(model, getattr(model, "processor", None), spec)
        model, processor = _load_pretrained(spec, device, dtype, cls.model_type)
        if processor is None:
            raise UserInputError(f"{spec} has no processor (processor_config.json): save the model's processor with it")
        return cls(model, processor, spec)

    def __call__(self, batch: list[dict]) -> list[dict]:
        import torch

        images = [item["image"] for item in batch]
        prompts = [item["prompt"] for item in batch]
        elements = [item.get("elements") or [] for item in batch]
        kwargs = {"batch_size": len(images)}
        if self.processor is not None:
            kwargs["processor"] = self.processor
        with torch.inference_mode():
            outputs = self.model.score(images, prompts, elements=elements if any(elements) else None, **kwargs)
        return [{"alignment": _alignment_row(out)} for out in outputs]


def _alignment_row(result: Any) -> dict:
    """A scorer's result (an ``AlignmentResult``, or a dict with its keys) as a results row's ``alignment``
    object: ``AlignmentResult.to_dict()`` with non-finite numbers written as null."""
    data = dict(result.to_dict() if hasattr(result, "to_dict") else result)
    row = {
        "overall": _finite(data["overall"]),
        "elements": {str(k): _finite(v) for k, v in (data.get("elements") or {}).items()},
        "unmatched_elements": list(data.get("unmatched_elements") or []),
    }
    for name in ("token_scores", "level_probs"):
        if data.get(name) is not None:
            row[name] = [_finite(v) for v in data[name]]
    return row


class MLLMScorer(AlignScorer):
    """An MLLM judge (``mllm:<model>``): the same ``score()`` and results as the alignment model."""

    kind = "mllm"

    @classmethod
    def load(cls, spec: Any, device="cpu", dtype=None) -> MLLMScorer:
        if not isinstance(spec, str):
            return cls(spec, None, describe_spec(spec))
        target = spec.removeprefix("mllm:")
        try:
            from ..mllm import load_scorer
        except ImportError as err:
            raise UserInputError(f"MLLM scoring is unavailable: {err}") from None
        return cls(load_scorer(target, device=device, dtype=dtype), None, spec)


#: The structure model families ``--structure`` takes, and what each predicts: a distortion heatmap and a score
#: (run by the ``t2i-structure`` pipeline), or a score only (HNU-VPAI's LoDa, by its ``predict``).
STRUCTURE_FAMILIES = {"evalmuse_structure": "heatmap", "em_rahf": "heatmap", "hnu_vpai_loda": "score"}


class StructureScorer:
    """Structure: score, distortion mask (RLE), regions and a small heatmap of each image.

    A model of the ``evalmuse_structure`` or ``em_rahf`` family runs the ``t2i-structure`` pipeline
    (``EvalMuseStructureModel.predict`` is that pipeline), which returns one
    :class:`~evalmuse_models.results.StructureResult` per image. A score-only ``hnu_vpai_loda`` model (HNU-VPAI's
    LoDa) gives the ``score`` alone: its cosine ``c`` in [-1, 1] written as ``3 + 2c`` on the 1-5 scale of the
    other families (the ranking, SRCC and the logistic-fit PLCC are unchanged; ``evalmuse submit --rescale
    minmax`` rescales over the set as HNU-VPAI did); its rows have no mask, regions or heatmap (``evalmuse score
    --masks-from`` adds an instance-segmentation model's masks). A model saved without its processor gets the
    one its config describes. Any other object needs a ``predict(images, prompts=..., processor=...,
    batch_size=..., threshold=...)`` returning results (or plain dicts with their keys).
    """

    kind = "structure"
    model_type = tuple(STRUCTURE_FAMILIES)

    def __init__(self, model, processor=None, name: str = "", threshold: float | None = None, heatmap_size: int = 64):
        shown = name or type(model).__name__
        config = getattr(model, "config", None)
        family = STRUCTURE_FAMILIES.get(getattr(config, "model_type", None))
        if family is not None and processor is None:
            processor = _structure_processor(config, shown)
        self.score_only = family == "score"
        if self.score_only and threshold is not None:
            raise UserInputError(f"{shown} predicts a structure score only: there is no heatmap to cut at threshold "
                                 f"{threshold}")
        if family == "heatmap" and not callable(getattr(model, "predict", None)):
            from ..models.evalmuse_structure.pipeline_evalmuse_structure import EvalMuseStructurePipeline

            self._pipeline = EvalMuseStructurePipeline(model=model, processor=processor, device=model.device)
        elif not callable(getattr(model, "predict", None)):
            raise UserInputError(f"{shown} has no predict() method; not a structure model")
        else:
            self._pipeline = None
        self.model = model
        self.processor = processor
        self.name = name
        self.threshold = threshold
        self.heatmap_size = heatmap_size

    @classmethod
    def load(cls, spec: Any, device="cpu", dtype=None, threshold: float | None = None,
             heatmap_size: int = 64) -> StructureScorer:
        if not isinstance(spec, str):
            return cls(spec, getattr(spec, "processor", None), describe_spec(spec), threshold, heatmap_size)
        if _FACTORY.match(spec) and not Path(spec).exists():
            model = _load_factory(spec, device, dtype)
            return cls(model, getattr(model, "processor", None), spec, threshold, heatmap_size)
        model, processor = _load_pretrained(spec, device, dtype, cls.model_type)
        return cls(model, processor, spec, threshold, heatmap_size)

    def _predict(self, images: list, prompts: list[str]) -> list:
        kwargs: dict[str, Any] = {"batch_size": len(images)}
        if self.threshold is not None:
            kwargs["threshold"] = self.threshold
        if self._pipeline is not None:
            return self._pipeline(images, prompts=prompts, **kwargs)
        if self.processor is not None:
            kwargs["processor"] = self.processor
        return self.model.predict(images, prompts=prompts, **kwargs)

    def __call__(self, batch: list[dict]) -> list[dict]:
        import torch

        images = [item["image"] for item in batch]
        if self.score_only:
            with torch.inference_mode():
                cosines = self.model.predict(images, batch_size=len(images), processor=self.processor)
            return [{"structure": {"score": _finite(3 + 2 * cosine)}} for cosine in cosines]
        with torch.inference_mode():
            outputs = self._predict(images, [item["prompt"] for item in batch])
        # The heatmap level the masks were cut at (shown on the report's heatmap legend).
        default_threshold = self.threshold if self.threshold is not None else getattr(
            getattr(self.model, "config", None), "threshold", None)
        results = []
        for out in outputs:
            out = out.to_dict() if hasattr(out, "to_dict") else out
            threshold = out.get("threshold", default_threshold)
            mask = np.asarray(out["mask"])
            entry = {
                "score": _finite(out["score"]),
                "threshold": None if threshold is None else _finite(threshold),
                "mask": mask_to_rle(mask),
                # The official scorer compares masks at 512x512: submissions use this one, so that
                # resizing a small image's mask back to 512 loses no pixel.
                "mask_512": mask_to_rle(np.asarray(out["mask_512"])),
                "regions": [
                    {"bbox": [int(v) for v in region["bbox"]], "area": float(region["area"])}
                    for region in out.get("regions") or []
                ],
            }
            if self.heatmap_size and out.get("heatmap") is not None:
                entry["heatmap_png"] = encode_heatmap(out["heatmap"], self.heatmap_size)
            results.append({"structure": entry})
        return results


def _structure_processor(config, name: str):
    """The processor a structure model's config describes (for a folder saved without one): the family's
    processor class (registered with ``AutoProcessor``), ``from_model_config``."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    try:
        return PROCESSOR_MAPPING[type(config)].from_model_config(config)
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"{name} has no processor (processor_config.json) and its config cannot build one: {err}; save the "
            "model's processor with it"
        ) from None


def encode_heatmap(heatmap: Any, size: int = 64) -> str:
    """A [0, 1] heatmap as a base64 grayscale PNG of ``size``×``size`` (compact, for reports)."""
    from PIL import Image

    array = np.asarray(heatmap, dtype=np.float32)
    array = np.clip(np.nan_to_num(array), 0.0, 1.0)
    image = Image.fromarray(np.round(array * 255).astype(np.uint8), mode="L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_heatmap(text: str) -> np.ndarray:
    """Inverse of :func:`encode_heatmap`: a float32 array in [0, 1]."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(text)))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def load_align(spec: Any, device="cpu", dtype=None) -> AlignScorer:
    """The right adapter for an ``--align`` spec (``mllm:...`` selects the MLLM adapter)."""
    if isinstance(spec, str) and spec.startswith("mllm:"):
        return MLLMScorer.load(spec, device, dtype)
    return AlignScorer.load(spec, device, dtype)
