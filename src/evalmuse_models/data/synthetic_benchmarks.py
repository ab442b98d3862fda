"""Synthetic benchmarks in other public formats, for offline tests and demos of ``evalmuse benchmark``.

:func:`write_genai_bench` writes a GenAI-Bench folder (``genai_image.json``, ``genai_skills.json``,
``<MODEL>/<id>.jpeg``) whose images and ratings are those of the synthetic EvalMuse-40K release
(:func:`~evalmuse_models.data.synthetic.write_alignment_release`: each generator draws an element right
with its own probability, three simulated annotators rate 1-5 after the share drawn right), so that an
alignment model trained on the synthetic EvalMuse release can be tested "on another benchmark".

Example::

    from evalmuse_models.data.synthetic_benchmarks import write_genai_bench

    write_genai_bench("GenAI-Image-synthetic", num_prompts=24, seed=0)
    # evalmuse benchmark genai-bench GenAI-Image-synthetic --align MODEL --out results.jsonl \
    #     --elements GenAI-Image-synthetic/elements.json
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..utils import atomic_write_text
from .alignment import element_score_dict, split_element_key
from .benchmarks import GENAI_IMAGE_FILE, GENAI_SKILLS_FILE

__all__ = ["GENAI_SKILL_OF_CATEGORY", "write_genai_bench"]

#: EvalMuse element category -> the GenAI-Bench skill a prompt with such an element exercises.
GENAI_SKILL_OF_CATEGORY = {
    "color": "attribute",
    "material": "attribute",
    "attribute": "attribute",
    "shape": "attribute",
    "location": "scene",
    "spatial": "spatial relation",
    "activity": "action relation",
    "counting": "counting",
}
#: GenAI-Bench's advanced skills (a prompt with none of them is "basic").
GENAI_ADVANCED_SKILLS = ("counting", "comparison", "differentiation", "negation", "universal")
#: The file :func:`write_genai_bench` writes the prompts' elements to (``load_benchmark(..., elements=...)``).
ELEMENTS_FILE = "elements.json"


def write_genai_bench(out_dir: str | os.PathLike, num_prompts: int = 24, seed: int = 0, *,
                      generators: dict[str, tuple] | None = None, jpeg_quality: int = 95) -> dict:
    """Write a synthetic GenAI-Bench folder into ``out_dir``.

    Files: ``genai_image.json`` (``{"00001": {"id", "prompt", "models": {generator: [3 ratings]}}}``),
    ``genai_skills.json`` (``{skill: [prompt index, ...]}``: ``attribute``, ``scene``, ``spatial relation``,
    ``action relation``, ``counting``, ``basic`` / ``advanced``, from the prompts' element categories),
    ``<generator>/<id>.jpeg`` (one image per prompt and generator) and ``elements.json``
    (``{id: ["<phrase> (<category>)", ...]}``, which GenAI-Bench itself does not have: pass it as
    ``elements=`` / ``--elements`` for the element-score variants).

    Args:
        out_dir: the folder (created if needed; files with the same names are replaced).
        num_prompts: prompts; every generator draws each once.
        seed: everything is deterministic given the seed.
        generators: as :func:`~evalmuse_models.data.synthetic.write_alignment_release` takes them
            (default: its four generators of clearly different quality).
        jpeg_quality: the JPEG quality of the images (GenAI-Bench ships JPEG).

    Returns:
        ``{"prompts", "images", "generators"}``.
    """
    from PIL import Image

    from .synthetic import write_alignment_release

    if num_prompts < 1:
        raise ValueError(f"num_prompts must be at least 1, got {num_prompts}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # One prompt more than asked: the release always keeps one prompt's labels back as its test split.
        write_alignment_release(tmp, num_prompts=num_prompts + 1, seed=seed, generators=generators,
                                val_fraction=0.0, test_fraction=0.0, extra_image_rate=0.0)
        labelled: dict[str, list[dict]] = {}
        for name in ("train_list.json", "val_list.json"):
            for record in json.loads((Path(tmp) / name).read_text(encoding="utf-8")):
                labelled.setdefault(record["prompt_id"], []).append(record)
        prompts, elements, skills = {}, {}, {}
        images = 0
        for index, old_id in enumerate(sorted(labelled)[:num_prompts], start=1):
            prompt_id = f"{index:05d}"  # GenAI-Bench numbers its prompts from 00001
            records = labelled[old_id]
            models = {}
            for record in records:
                generator = record["img_path"].split("/", 1)[0]
                target = out_dir / generator / f"{prompt_id}.jpeg"
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(Path(tmp) / record["img_path"]) as image:
                    image.convert("RGB").save(target, format="JPEG", quality=jpeg_quality)
                models[generator] = list(record["total_score"])
                images += 1
            prompts[prompt_id] = {"id": prompt_id, "prompt": records[0]["prompt"], "models": models}
            keys = list(element_score_dict(records[0]["element_score"]))
            elements[prompt_id] = keys
            tags = {GENAI_SKILL_OF_CATEGORY[category] for category in (split_element_key(k)[1] for k in keys)
                    if category in GENAI_SKILL_OF_CATEGORY}
            tags.add("advanced" if tags & set(GENAI_ADVANCED_SKILLS) else "basic")
            for tag in tags:
                skills.setdefault(tag, []).append(index)
    atomic_write_text(out_dir / GENAI_IMAGE_FILE, json.dumps(prompts, indent=1))
    atomic_write_text(out_dir / GENAI_SKILLS_FILE, json.dumps(dict(sorted(skills.items())), indent=1))
    atomic_write_text(out_dir / ELEMENTS_FILE, json.dumps(elements, indent=1))
    return {"prompts": len(prompts), "images": images,
            "generators": sorted({g for p in prompts.values() for g in p["models"]})}
