"""Other text-to-image alignment benchmarks, read from their public formats into one ``datasets`` form.

An evaluator trained on EvalMuse-40K is only as good as it is on images and ratings it never saw.
:func:`load_benchmark` reads four benchmarks from local folders, as they are published, into a
``datasets.Dataset`` with the columns of the ``alignment`` config that a benchmark can fill (so the
scoring engine and the metrics read it the same way) and two of its own:

=================== ============================================================================
column              meaning
=================== ============================================================================
``image``           the image (``datasets.Image``, referenced by path: nothing is copied)
``img_path``        the image path relative to the benchmark folder: the row id of the results
``generator``       the model that made the image
``prompt_id``       the prompt's id in the benchmark
``prompt``          the text-to-image prompt
``total_score``     the per-image human score: the mean rating (1-5); ``None`` without ratings
``total_score_votes`` the individual ratings (``None`` without ratings)
``elements``        the prompt's elements ``"<phrase> (<category>)"`` (``score`` and ``votes`` are
                    ``None``: no benchmark here labels elements per image); ``[]`` when it has none
``skills``          GenAI-Bench's skill tags of the prompt (``genai_skills.json``); ``[]`` elsewhere
``benchmark``       the benchmark's name
=================== ============================================================================

The benchmarks and the files each reads (``root`` is the folder holding them; the main file itself
is accepted too):

``genai-bench`` (GenAI-Bench, ``version`` 527 or 1600)
    ``genai_image.json``: ``{"00001": {"id": "00001", "prompt": "...", "models": {"DALLE_3": [5, 4, 5],
    ...}}, ...}``, three 1-5 ratings per model; images ``<MODEL>/<id>.jpeg``; optional
    ``genai_skills.json`` ``{skill: [prompt index, ...]}``. With ``version``, a ``GenAI-Image-<version>``
    sub-folder of ``root`` is used when ``root`` itself has no ``genai_image.json``. Prompts without
    ratings (no ``models``) have no images here. The record's key is its id (and names its images): the
    release writes some ``id`` fields without the leading zeros (``"00527": {"id": "527", ...}``).
``tifa`` (TIFA v1.0 human judgements)
    ``human_annotations_with_scores.json`` (or ``human_annotations.json``): ``{key: {"text_id",
    "image_path", "text", "human_scores": [1-5, ...], "human_avg", ...}}``; the images are found under
    ``root``, ``root/images`` or another sub-folder holding them. The generator is the end of the
    image name after ``<text_id>_`` (``coco_669925_mini_dalle.jpg`` -> ``mini_dalle``). Elements come
    from ``tifa_v1.0_question_answers.json`` when it is in ``root`` (or ``root/tifa_v1.0``): the
    ``element`` and ``element_type`` of each question, ``"surfer (animal/human)"``, once per prompt.
``evalmuse-prompts`` (EvalMuse's ranking prompts, no human scores)
    ``prompt_t2i.json``: a list of records (or an object keyed by prompt id) with ``prompt_id`` (or
    ``id``), ``prompt`` and the elements as ``element_score`` (the release's Python-literal dict, or a
    dict; values ignored), ``elements`` or ``tags`` (a list of keys, or a dict keyed by them); the
    images of each generator under ``<generator>/<prompt_id>.<ext>`` (extra images
    ``<prompt_id>_1.<ext>`` ...).
``evalscope`` (evalscope's EvalMuse-style JSON Lines, no human scores)
    a ``.jsonl`` file (``root`` itself, or the one ``.jsonl`` file in ``root``), one line per image:
    ``{"id": ..., "prompt": "...", "tags": ["phrase (category)", ...], "image_path": "..."}``; ``tags``
    may also be a dict keyed by the element keys; ``image_path`` relative to the file's folder (or
    absolute). The generator is an optional ``generator`` (or ``model``) field, else the name of the
    folder holding the image (``outputs/images/flux-dev/0.png`` -> ``flux-dev``).

``elements=FILE`` gives the elements of benchmarks that have none (GenAI-Bench) or replaces theirs:
a JSON object ``{prompt_id: ["<phrase> (<category>)", ...]}``. Element keys follow the package's one
rule (:func:`~evalmuse_models.data.element_key_parts`): the category is the text inside the last
parentheses.

Example::

    from evalmuse_models.data.benchmarks import load_benchmark

    genai = load_benchmark("genai-bench", "GenAI-Image-527", version=527)
    genai[0]["prompt"], genai[0]["generator"], genai[0]["total_score"]
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from ..utils import UserInputError
from ..utils.jsonio import load_json, read_json_file
from .alignment import (
    Element,
    _check_img_path,
    _parse_votes,
    element_key_parts,
    element_score_dict,
    generator_from_img_path,
)
from .errors import InvalidValue, RecordError

__all__ = ["BENCHMARKS", "GENAI_BENCH_VERSIONS", "benchmark_features", "benchmark_rows", "load_benchmark"]

#: The benchmarks :func:`load_benchmark` reads.
BENCHMARKS = ("genai-bench", "tifa", "evalmuse-prompts", "evalscope")
#: GenAI-Bench releases: version -> number of prompts.
GENAI_BENCH_VERSIONS = {"527": 527, "1600": 1600}

GENAI_IMAGE_FILE = "genai_image.json"
GENAI_SKILLS_FILE = "genai_skills.json"
TIFA_ANNOTATION_FILES = ("human_annotations_with_scores.json", "human_annotations.json")
TIFA_QUESTIONS_FILE = "tifa_v1.0_question_answers.json"
EVALMUSE_PROMPTS_FILE = "prompt_t2i.json"

_EXTRA_IMAGE = re.compile(r"^(?P<prompt_id>.+)_(?P<n>\d+)$")
_HINT = "fix the file (it must be the benchmark's file unchanged)"


def benchmark_features():
    """The ``datasets.Features`` of a loaded benchmark: the ``alignment`` config's columns that a benchmark
    fills, plus ``skills`` and ``benchmark``."""
    from datasets import Features, List, Value

    from .export import alignment_features

    shared = alignment_features()
    columns = ("image", "img_path", "generator", "prompt_id", "prompt", "total_score", "total_score_votes", "elements")
    return Features({**{name: shared[name] for name in columns}, "skills": List(Value("string")),
                     "benchmark": Value("string")})


def load_benchmark(name: str, root: str | os.PathLike, *, version: str | int | None = None,
                   elements: str | os.PathLike | None = None, generators: Sequence[str] | None = None):
    """Read a benchmark from its public files (see the module docstring) into a ``datasets.Dataset``.

    Args:
        name: one of :data:`BENCHMARKS`.
        root: the benchmark folder (or its main file).
        version: GenAI-Bench's release, ``527`` or ``1600`` (selects a ``GenAI-Image-<version>`` sub-folder
            and checks the number of prompts); ``None`` takes ``root`` as it is.
        elements: a JSON file ``{prompt_id: [element keys]}`` giving (or replacing) the prompts' elements.
        generators: keep only these generators' images.

    Returns:
        One row per image, in the benchmark's order (:func:`benchmark_features`).

    Raises:
        UserInputError: an unknown benchmark, a missing file or image, or an invalid record (a
            :class:`~evalmuse_models.data.RecordError` naming the file, the record and the field).
    """
    import datasets

    rows = benchmark_rows(name, root, version=version, elements=elements, generators=generators)
    features = benchmark_features()
    columns = {column: [row[column] for row in rows] for column in features}
    info = datasets.DatasetInfo(description=f"{name}{'' if version is None else f' {version}'} read from {root}",
                                features=features)
    return datasets.Dataset.from_dict(columns, features=features, info=info)


def benchmark_rows(name: str, root: str | os.PathLike, *, version: str | int | None = None,
                   elements: str | os.PathLike | None = None,
                   generators: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows :func:`load_benchmark` turns into a dataset, as plain dicts (``image``: the absolute path)."""
    readers: dict[str, Callable[..., list[dict]]] = {
        "genai-bench": _genai_bench_rows,
        "tifa": _tifa_rows,
        "evalmuse-prompts": _evalmuse_prompt_rows,
        "evalscope": _evalscope_rows,
    }
    if name not in readers:
        raise UserInputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    root = Path(root)
    if not root.exists():
        raise UserInputError(f"benchmark folder {root} does not exist")
    if version is not None and name != "genai-bench":
        raise UserInputError(f"--version is for genai-bench (527 or 1600); {name} has a single release")
    rows = readers[name](root, version) if name == "genai-bench" else readers[name](root)
    if elements is not None:
        _replace_elements(rows, Path(elements))
    if generators is not None:
        wanted = set(generators)
        unknown = sorted(wanted - {row["generator"] for row in rows})
        if unknown:
            found = sorted({row["generator"] for row in rows})
            raise UserInputError(f"{name}: no image of generator(s) {', '.join(unknown)} (found: {', '.join(found)})")
        rows = [row for row in rows if row["generator"] in wanted]
    if not rows:
        raise UserInputError(f"{name}: {root} holds no image to score")
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if row["img_path"] in seen:
            raise UserInputError(f"{name}: image {row['img_path']!r} is listed twice (records #{seen[row['img_path']]} "
                                 f"and #{index}); list each image once")
        seen[row["img_path"]] = index
        row["benchmark"] = name
        row.setdefault("skills", [])
    return rows


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _main_file(root: Path, names: Sequence[str], benchmark: str) -> Path:
    """``root`` itself when it is a file, else the first of ``names`` inside it."""
    if root.is_file():
        return root
    for candidate in names:
        if (root / candidate).is_file():
            return root / candidate
    raise UserInputError(f"{benchmark}: {root} has no {' or '.join(names)}; pass the folder that holds it")


def _element(key: Any, source, record: str, field: str) -> dict[str, Any]:
    """An element key as a dataset element (``phrase``, ``category``, ... ``key``), checked by the package's rule."""
    try:
        phrase, category, subcategory = element_key_parts(key)
    except InvalidValue as error:
        raise RecordError(source, record, field, str(error), _HINT) from None
    return asdict(Element(phrase=phrase, category=category, score=None, votes=None, key=key, subcategory=subcategory))


def _element_list(value: Any, source, record: str, field: str) -> list[dict[str, Any]]:
    """Elements given as a list of keys, a dict keyed by them, or (``element_score``) the release's literal."""
    if value is None:
        return []
    if field == "element_score":
        try:
            value = element_score_dict(value)
        except InvalidValue as error:
            raise RecordError(source, record, field, str(error), _HINT) from None
    if isinstance(value, Mapping):
        value = list(value)
    if not isinstance(value, list):
        raise RecordError(source, record, field, f"expected a list of '<phrase> (<category>)' keys, got "
                          f"{type(value).__name__}", _HINT)
    out, seen = [], set()
    for key in value:
        if key not in seen:
            seen.add(key)
            out.append(_element(key, source, record, field))
    return out


def _ratings(value: Any, source, record: str, field: str) -> tuple[float | None, list[int] | None]:
    """1-5 ratings: their rounded mean and the list (the release's rule, :func:`~.alignment.official_mean`)."""
    try:
        return _parse_votes(value, low=1, high=5, what=field)
    except InvalidValue as error:
        raise RecordError(source, record, field, str(error), _HINT) from None


def _string(raw: Mapping, field: str, source, record: str, *, required: bool = True) -> str | None:
    value = raw.get(field)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        reason = "missing" if field not in raw else f"must be a string, got {value!r}"
        raise RecordError(source, record, field, reason, _HINT)
    return str(value)


def _image_row(*, image: Path, img_path: str, generator: str, prompt_id: str, prompt: str,
               total_score: float | None = None, votes: list[int] | None = None,
               elements: list[dict] | None = None, skills: list[str] | None = None) -> dict[str, Any]:
    return {"image": str(image), "img_path": img_path, "generator": generator, "prompt_id": prompt_id,
            "prompt": prompt, "total_score": total_score, "total_score_votes": votes, "elements": elements or [],
            "skills": skills or []}


def _require_images(rows: list[dict], benchmark: str, hint: str) -> None:
    """One error for every missing image file (how many, and the first few)."""
    missing = [row["image"] for row in rows if not Path(row["image"]).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserInputError(f"{benchmark}: {len(missing)} of {len(rows)} images are missing ({shown}); {hint}")


def _replace_elements(rows: list[dict], path: Path) -> None:
    data = read_json_file(path, hint="give a JSON object {prompt_id: [\"<phrase> (<category>)\", ...]}")
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object {{prompt_id: [element keys]}}, got {type(data).__name__}")
    prompt_ids = {row["prompt_id"] for row in rows}
    unknown = [key for key in data if key not in prompt_ids]
    if unknown:
        raise UserInputError(f"{path}: prompt id(s) {', '.join(repr(k) for k in unknown[:3])} match no prompt of the "
                             "benchmark; key the file by the benchmark's prompt ids")
    parsed = {key: _element_list(value, path, f"key {key!r}", "elements") for key, value in data.items()}
    for row in rows:
        if row["prompt_id"] in parsed:
            row["elements"] = [dict(e) for e in parsed[row["prompt_id"]]]


def _image_files(folder: Path) -> Iterable[Path]:
    from ..scoring.inputs import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# GenAI-Bench


def _genai_bench_rows(root: Path, version: str | int | None) -> list[dict]:
    if version is not None:
        version = str(version)
        if version not in GENAI_BENCH_VERSIONS:
            raise UserInputError(f"GenAI-Bench version {version!r}: choose one of {', '.join(GENAI_BENCH_VERSIONS)}")
        if root.is_dir() and not (root / GENAI_IMAGE_FILE).is_file() and (root / f"GenAI-Image-{version}").is_dir():
            root = root / f"GenAI-Image-{version}"
    path = _main_file(root, (GENAI_IMAGE_FILE,), "genai-bench")
    folder = path.parent
    data = read_json_file(path, hint=_HINT)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected one JSON object {{prompt id: record}}, got {type(data).__name__}")
    if version is not None and len(data) != GENAI_BENCH_VERSIONS[version]:
        warnings.warn(f"{path} lists {len(data)} prompts; GenAI-Bench-{version} has {GENAI_BENCH_VERSIONS[version]} "
                      "(a subset is scored as given)", stacklevel=3)
    skills = _genai_skills(folder / GENAI_SKILLS_FILE, list(data))
    rows = []
    for key, raw in data.items():
        record = f"{key!r}"
        if not isinstance(raw, dict):
            raise RecordError(path, record, "<record>", f"expected a JSON object, got {type(raw).__name__}", _HINT)
        stated = _string(raw, "id", path, record, required=False) or key
        if stated != key and not (stated.isdigit() and key.isdigit() and int(stated) == int(key)):
            raise RecordError(path, record, "id", f"{stated!r} differs from the record's key {key!r}", _HINT)
        prompt = _string(raw, "prompt", path, record)
        models = raw.get("models") or {}
        if not isinstance(models, dict):
            raise RecordError(path, record, "models", f"expected {{model: [ratings]}}, got {type(models).__name__}",
                              _HINT)
        for model, ratings in models.items():
            total, votes = _ratings(ratings, path, record, f"models.{model}")
            if total is None:
                continue
            img_path = f"{model}/{key}.jpeg"
            rows.append(_image_row(image=folder / img_path, img_path=img_path, generator=generator_from_img_path(img_path),
                                   prompt_id=key, prompt=prompt, total_score=total, votes=votes,
                                   skills=skills.get(key)))
    _require_images(rows, "genai-bench", f"each model's images go to {folder}/<MODEL>/<id>.jpeg (unzip <MODEL>.zip "
                    "there), or keep the models you have with generators=[...] (--generators)")
    return rows


def _genai_skills(path: Path, prompt_ids: list[str]) -> dict[str, list[str]]:
    """``{prompt id: [skill, ...]}`` from ``genai_skills.json`` (``{skill: [prompt index, ...]}``), if present."""
    if not path.is_file():
        return {}
    data = read_json_file(path, hint=_HINT)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected one JSON object {{skill: [prompt index, ...]}}")
    by_index = {}
    for prompt_id in prompt_ids:
        if prompt_id.isdigit():
            by_index[int(prompt_id)] = prompt_id
    out: dict[str, list[str]] = {}
    for skill, indices in data.items():
        if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise RecordError(path, repr(skill), skill, "expected a list of integer prompt indices", _HINT)
        for index in indices:
            if index in by_index:
                out.setdefault(by_index[index], []).append(skill)
    return out


# ---------------------------------------------------------------------------------------------
# TIFA


def _tifa_rows(root: Path) -> list[dict]:
    path = _main_file(root, TIFA_ANNOTATION_FILES, "tifa")
    folder = path.parent
    data = read_json_file(path, hint=_HINT)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected one JSON object {{image key: record}}, got {type(data).__name__}")
    questions = _tifa_elements(folder)
    rows = []
    for key, raw in data.items():
        record = f"{key!r}"
        if not isinstance(raw, dict):
            raise RecordError(path, record, "<record>", f"expected a JSON object, got {type(raw).__name__}", _HINT)
        text_id = _string(raw, "text_id", path, record)
        prompt = _string(raw, "text", path, record)
        try:
            image_name = _check_img_path(raw.get("image_path"))
        except InvalidValue as error:
            raise RecordError(path, record, "image_path", str(error), _HINT) from None
        if raw.get("human_scores") is not None:
            total, votes = _ratings(raw["human_scores"], path, record, "human_scores")
        else:
            total, votes = _ratings(raw.get("human_avg"), path, record, "human_avg")
        if total is None:
            raise RecordError(path, record, "human_scores", "missing (no human_scores and no human_avg)", _HINT)
        stem = PurePosixPath(image_name).stem
        generator = stem[len(text_id) + 1:] if stem.startswith(f"{text_id}_") else ""
        rows.append(_image_row(image=Path(image_name), img_path=image_name, generator=generator, prompt_id=text_id,
                               prompt=prompt, total_score=total, votes=votes,
                               elements=[dict(e) for e in questions.get(text_id, [])]))
    images = _tifa_image_folder(folder, [row["img_path"] for row in rows])
    for row in rows:
        row["image"] = str(images / row["img_path"])
    _require_images(rows, "tifa", f"unpack the TIFA human-judgement images into {folder} (or {folder}/images)")
    return rows


def _tifa_image_folder(folder: Path, names: list[str]) -> Path:
    """The folder holding the annotated images: ``folder``, ``folder/images`` or another sub-folder (the one
    holding the first image)."""
    candidates = [folder, folder / "images", *sorted(p for p in folder.iterdir() if p.is_dir())]
    for candidate in candidates:
        if names and (candidate / names[0]).is_file():
            return candidate
    return folder


def _tifa_elements(folder: Path) -> dict[str, list[dict]]:
    """``{text_id: [element, ...]}`` from TIFA's question-answer file, when it is there."""
    path = next((p for p in (folder / TIFA_QUESTIONS_FILE, folder / "tifa_v1.0" / TIFA_QUESTIONS_FILE) if p.is_file()),
                None)
    if path is None:
        return {}
    data = read_json_file(path, hint=_HINT)
    if not isinstance(data, list):
        raise UserInputError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    out: dict[str, list[dict]] = {}
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(data):
        record = f"#{index}"
        if not isinstance(raw, dict):
            raise RecordError(path, record, "<record>", f"expected a JSON object, got {type(raw).__name__}", _HINT)
        text_id = _string(raw, "id", path, record)
        element = _string(raw, "element", path, record)
        element_type = _string(raw, "element_type", path, record)
        key = f"{element} ({element_type})"
        if (text_id, key) not in seen:
            seen.add((text_id, key))
            out.setdefault(text_id, []).append(_element(key, path, record, "element"))
    return out


# ---------------------------------------------------------------------------------------------
# EvalMuse ranking prompts


def _evalmuse_prompt_rows(root: Path) -> list[dict]:
    path = _main_file(root, (EVALMUSE_PROMPTS_FILE,), "evalmuse-prompts")
    folder = path.parent
    data = read_json_file(path, hint=_HINT)
    if isinstance(data, dict):
        items = [(f"{key!r}", key, raw) for key, raw in data.items()]
    elif isinstance(data, list):
        items = [(f"#{index}", None, raw) for index, raw in enumerate(data)]
    else:
        raise UserInputError(f"{path}: expected a JSON list of prompt records, got {type(data).__name__}")
    prompts: dict[str, tuple[str, list[dict]]] = {}
    for record, key, raw in items:
        if not isinstance(raw, dict):
            raise RecordError(path, record, "<record>", f"expected a JSON object, got {type(raw).__name__}", _HINT)
        id_field = "prompt_id" if "prompt_id" in raw else "id"
        prompt_id = _string(raw, id_field, path, record, required=key is None) or key
        if prompt_id in prompts:
            raise RecordError(path, record, id_field, f"prompt id {prompt_id!r} is listed twice", _HINT)
        field = next((f for f in ("element_score", "elements", "tags") if f in raw), None)
        elements = _element_list(raw.get(field), path, record, field) if field else []
        prompts[prompt_id] = (_string(raw, "prompt", path, record), elements)
    rows, strays = [], []
    for generator_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in _image_files(generator_dir):
            stem = image.stem
            if stem not in prompts:
                match = _EXTRA_IMAGE.match(stem)
                stem = match.group("prompt_id") if match else stem
            if stem not in prompts:
                strays.append(image)
                continue
            prompt, elements = prompts[stem]
            img_path = f"{generator_dir.name}/{image.name}"
            rows.append(_image_row(image=image, img_path=img_path, generator=generator_from_img_path(img_path),
                                   prompt_id=stem, prompt=prompt, elements=[dict(e) for e in elements]))
    if strays:
        warnings.warn(f"evalmuse-prompts: {len(strays)} image(s) under {folder} are named after no prompt of {path.name} "
                      f"(e.g. {strays[0]}) and are left out", stacklevel=3)
    if not rows:
        raise UserInputError(f"evalmuse-prompts: no image under {folder}/<generator>/<prompt_id>.<ext> for the "
                             f"{len(prompts)} prompts of {path.name}")
    return rows


# ---------------------------------------------------------------------------------------------
# evalscope JSON Lines


def _evalscope_rows(root: Path) -> list[dict]:
    if root.is_dir():
        files = sorted(root.glob("*.jsonl"))
        if len(files) != 1:
            raise UserInputError(f"evalscope: {root} holds {len(files)} .jsonl files; pass the file itself")
        root = files[0]
    path, folder = root, root.parent
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: cannot read as UTF-8 text ({error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = f"line {number}"
        raw = load_json(line, f"{path}, line {number}", hint=_HINT)
        if not isinstance(raw, dict):
            raise RecordError(path, record, "<record>", f"expected a JSON object, got {type(raw).__name__}", _HINT)
        prompt_id = _string(raw, "id", path, record)
        prompt = _string(raw, "prompt", path, record)
        image = raw.get("image_path")
        if not isinstance(image, str) or not image.strip():
            raise RecordError(path, record, "image_path", "missing or empty (the path of the generated image)", _HINT)
        image_file = Path(image) if Path(image).is_absolute() else folder / image
        try:
            img_path = image_file.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:  # an absolute path outside the file's folder
            img_path = image_file.as_posix()
        named = next((f for f in ("generator", "model") if raw.get(f) is not None), None)
        generator = _string(raw, named, path, record) if named else PurePosixPath(img_path).parent.name
        rows.append(_image_row(image=image_file, img_path=img_path, generator=generator, prompt_id=prompt_id,
                               prompt=prompt, elements=_element_list(raw.get("tags"), path, record, "tags")))
    if not rows:
        raise UserInputError(f"{path} lists no image")
    _require_images(rows, "evalscope", f"image_path is read relative to {folder}")
    return rows

