"""Parser for the EvalMuse-40K (alignment track) raw release.

A release folder holds ``train_list.json`` (labelled), optionally a validation file
(``val_list.json`` or ``val.json``), ``test.json`` (same fields, labels null) and the images
their ``img_path`` fields point to (``<generator>/<id>.png``). Each JSON file is a list of
records::

    {"prompt_id": "00805", "prompt": "...", "type": "real", "img_path": "SDXL-Turbo/00805.png",
     "total_score": [3, 4, 3],
     "element_score": "{'pig giants (animal)': [1, 0, 1], 'attack (activity)': [0, 0, 0]}",
     "promt_meaningless": [0, 0, 0], "split_confidence": [0, 0, 0],
     "attribute_confidence": [1, 1, 1], "fidelity_label": [...]}

``element_score`` is a Python-literal string (parsed with :func:`ast.literal_eval`, never
``eval``); in ``test.json`` its values and ``total_score`` are null and the confidence flags are
already averaged floats. The official preprocessing is reproduced: the overall score is the mean
rating rounded to 6 decimals, an element score is the mean of its 0/1 votes (rounded to 6
decimals), the confidence flags are averaged, and ``prompt_variance`` is the sample variance
(``ddof=1``) of the mean overall scores of all images sharing the same prompt text in the same
file (``None`` when undefined: one image, or no labels).

Quirks of the real files, and what the parser does with them:

* ``img_path`` is flat in the validation/test releases (``"img_0001.png"``): the generator is
  unknown (``""``, never the file name) unless a generator map names it
  (:func:`read_generator_map`, ``evalmuse prepare-data --generator-map``);
* ``prompt_id`` is an int or a string such as ``"val_0001"``: kept as a string;
* the confidence flags are vote lists or already averaged floats (``0.333333``): both give the mean;
* ``element_score`` is a Python-literal string or an already parsed dict;
* element keys are kept byte for byte (``"Pale (Color) "``) in ``Element.key``; the category is
  normalised (``"Color"`` -> ``"color"``, ``"object-vehicle"`` -> ``"object"`` with subcategory
  ``"vehicle"``) and a key without a parenthesised category gets ``"other"``;
* ``fidelity_label`` (``[]`` or tags such as ``"非真实场景"``) is kept as a list of strings.

Example::

    from evalmuse_models.data import load_alignment_records

    records = load_alignment_records("EvalMuse/train_list.json")
    records[0].total_score, [(e.phrase, e.category, e.score) for e in records[0].elements]
"""

from __future__ import annotations

import ast
import csv
import io
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..utils import UserInputError
from ..utils.jsonio import JsonObject, find_duplicate_key, load_json, read_json_file
from .errors import InvalidValue, RecordError, SkippedRecord

#: Raw file name -> split name, in the order splits are listed.
ALIGNMENT_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train_list.json", "train.json"),
    "validation": ("val_list.json", "val.json", "validation.json"),
    "test": ("test.json", "test_list.json"),
}

#: Element categories seen in EvalMuse-40K.
ELEMENT_CATEGORIES = (
    "object", "attribute", "activity", "location", "color", "counting", "material",
    "spatial", "shape", "food", "animal", "human", "other",
)

REQUIRED_FIELDS = ("prompt_id", "prompt", "type", "img_path", "total_score", "element_score")
CONFIDENCE_FIELDS = {
    # column name -> accepted raw spellings (the release spells the first one "promt_meaningless")
    "prompt_meaningless": ("promt_meaningless", "prompt_meaningless"),
    "split_confidence": ("split_confidence",),
    "attribute_confidence": ("attribute_confidence",),
}

_ELEMENT_KEY = re.compile(r"^(?P<phrase>.*?)\s*\((?P<category>[^()]*)\)\s*$", re.DOTALL)


@dataclass
class Element:
    """One element of a prompt: ``"<phrase> (<category>)"`` with its annotator votes.

    ``category`` is normalised (:func:`normalize_category`: ``"Color"`` -> ``"color"``,
    ``"object-vehicle"`` -> ``"object"`` with ``subcategory`` ``"vehicle"``); ``key`` is the raw
    key byte for byte (trailing spaces included), the one ``eval.json`` / ``output.json`` use.
    """

    phrase: str
    category: str
    score: float | None  # mean of the 0/1 votes; None where unlabelled (test)
    votes: list[int] | None
    #: the raw key exactly as the release spells it (what ``eval.json`` / ``output.json`` match on)
    key: str = ""
    #: the sub-type after the first ``-`` of the raw category (``"household goods"``), or ``""``
    subcategory: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = f"{self.phrase} ({self.category})"


def element_record_key(element: Any) -> str:
    """The official key of an element given as a dataset record (``{"key", "phrase", "category", ...}``)
    or as a string. Records without a ``key`` (hand-written ones) get ``"<phrase> (<category>)"``."""
    if isinstance(element, str):
        return element
    if element.get("key"):
        return str(element["key"])
    category = element.get("category")
    return f"{element['phrase']} ({category})" if category else str(element["phrase"])


@dataclass
class AlignmentRecord:
    """One parsed image-prompt pair of EvalMuse-40K."""

    img_path: str
    generator: str
    prompt_id: str
    prompt: str
    prompt_type: str
    total_score: float | None
    total_score_votes: list[int] | None
    elements: list[Element]
    prompt_meaningless: float | None = None
    split_confidence: float | None = None
    attribute_confidence: float | None = None
    prompt_variance: float | None = None
    #: per-annotator structural-problem tags as released (``[]``, ``["非真实场景"]``); None when absent
    fidelity_label: list[str] | None = None
    source: str = ""
    index: int = -1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def record_id(self) -> str:
        return f"#{self.index} (img_path={self.img_path!r})"

    def element_scores(self) -> dict[str, float | None]:
        """``{"<phrase> (<category>)": score}``, the ``element_score`` of ``eval.json``."""
        return {e.key: e.score for e in self.elements}

    def to_row(self) -> dict[str, Any]:
        """The dataset row (every column of the ``alignment`` config except ``image``)."""
        return {
            "img_path": self.img_path,
            "generator": self.generator,
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "prompt_type": self.prompt_type,
            "total_score": self.total_score,
            "total_score_votes": self.total_score_votes,
            "prompt_variance": self.prompt_variance,
            "elements": [asdict(e) for e in self.elements],
            "prompt_meaningless": self.prompt_meaningless,
            "split_confidence": self.split_confidence,
            "attribute_confidence": self.attribute_confidence,
            "fidelity_label": self.fidelity_label,
        }


def normalize_category(raw: str | None) -> tuple[str, str]:
    """``(category, subcategory)`` of the text inside an element key's parentheses: the category
    is ``raw.split("-")[0].strip().lower()`` (the rule of the public tools), the subcategory the
    rest after the first ``-``, stripped (``""`` when there is none). An empty or missing
    category is ``"other"``.

    >>> normalize_category("object-household goods"), normalize_category("Color ")
    (('object', 'household goods'), ('color', ''))
    """
    head, _, rest = str(raw or "").partition("-")
    return head.strip().lower() or "other", rest.strip()


def element_key_parts(key: str) -> tuple[str, str, str]:
    """``(phrase, category, subcategory)`` of an element key ``"<phrase> (<category>)"``.

    The category is the text inside the LAST parentheses, normalised by
    :func:`normalize_category`. A key without a parenthesised category at its end (or with
    empty parentheses) keeps its whole text as the phrase and gets the category ``"other"``.

    >>> element_key_parts("car (object-vehicle)"), element_key_parts("Pale (Color) ")
    (('car', 'object', 'vehicle'), ('Pale', 'color', ''))

    Raises:
        InvalidValue: the key is not a string or has no phrase (``"(animal)"``, ``""``).
    """
    if not isinstance(key, str):
        raise InvalidValue(f"element key {key!r} is not a string")
    match = _ELEMENT_KEY.match(key)
    if match is not None and match.group("phrase").strip() and match.group("category").strip():
        return (match.group("phrase").strip(), *normalize_category(match.group("category")))
    phrase = match.group("phrase").strip() if match is not None else key.strip()
    if not phrase:
        raise InvalidValue(f"element key {key!r} has no phrase; expected '<phrase> (<category>)'")
    return phrase, "other", ""


def split_element_key(key: str) -> tuple[str, str]:
    """``(phrase, category)`` of an element key, the category normalised (see :func:`element_key_parts`):
    the one rule every consumer uses (dataset, per-category scores, MLLM questions, report).

    >>> split_element_key("man (in red) (human)"), split_element_key("cup (object-household goods)")
    (('man (in red)', 'human'), ('cup', 'object'))
    """
    return element_key_parts(key)[:2]


def _is_int_vote(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def official_mean(values) -> float:
    """The official preprocessing's mean of ratings or votes, rounded to 6 decimals."""
    return round(float(sum(values)) / len(values), 6)


def _parse_votes(value, *, low: int, high: int, what: str) -> tuple[float | None, list[int] | None]:
    """Votes as a list of ints -> (rounded mean, votes); a number -> (it, None); null -> (None, None)."""
    if value is None:
        return None, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value) or not low <= value <= high:
            raise InvalidValue(f"{what} {value!r} is outside [{low}, {high}]")
        return round(value, 6), None
    if isinstance(value, (list, tuple)):
        if not value:
            raise InvalidValue(f"{what} is an empty list (expected one vote per annotator)")
        if not all(_is_int_vote(v) for v in value):
            raise InvalidValue(f"{what} must hold integer votes, got {value!r}")
        if not all(low <= v <= high for v in value):
            raise InvalidValue(f"{what} votes must lie in [{low}, {high}], got {value!r}")
        return official_mean(value), [int(v) for v in value]
    raise InvalidValue(f"{what} must be a list of integer votes, a number or null, got {type(value).__name__}")


def element_score_dict(value) -> dict:
    """``element_score`` as a dict: the release's Python-literal string parsed safely (never
    ``eval``), or an already parsed dict (as the organisers' own preprocessing treats it) as is.

    A key written twice in the literal is refused (``literal_eval`` would keep the last silently).

    >>> element_score_dict("{'Pale (Color) ': [1, 0, 1]}")
    {'Pale (Color) ': [1, 0, 1]}
    """
    if isinstance(value, str):
        try:
            tree = ast.parse(value.strip(), mode="eval")
            if isinstance(tree.body, ast.Dict):
                keys = [k.value for k in tree.body.keys if isinstance(k, ast.Constant)]
                doubled = sorted({k for k in keys if keys.count(k) > 1}, key=str)
                if doubled:
                    raise InvalidValue(f"element key {doubled[0]!r} appears twice")
            value = ast.literal_eval(tree)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            if isinstance(error, InvalidValue):
                raise
            raise InvalidValue(f"not a Python-literal dict ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise InvalidValue(f"expected a dict of '<phrase> (<category>)' -> votes, got {type(value).__name__}")
    return value


def parse_element_score(value) -> list[Element]:
    """Parse ``element_score`` (see :func:`element_score_dict`) into elements.

    Values are lists of 0/1 votes (averaged), a number (already averaged) or ``None`` (test).
    """
    value = element_score_dict(value)
    elements = []
    for key, votes in value.items():
        phrase, category, subcategory = element_key_parts(key)
        score, vote_list = _parse_votes(votes, low=0, high=1, what=f"votes of element {key!r}")
        elements.append(Element(phrase=phrase, category=category, score=score, votes=vote_list, key=key,
                                subcategory=subcategory))
    return elements


def _check_img_path(img_path) -> str:
    if not isinstance(img_path, str) or not img_path.strip():
        raise InvalidValue("must be a non-empty relative path string")
    posix = PurePosixPath(img_path.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise InvalidValue(f"{img_path!r} must be relative to the release folder and stay inside it")
    return str(posix)


def inside_release(path, root) -> Path:
    """``path`` itself, once it is known to lead to a file inside the release folder ``root``:
    both are resolved (symbolic links followed, ``..`` removed) and the first must lie under the
    second. A link to a file elsewhere, or inside a linked folder that lies elsewhere, is refused.

    Raises:
        InvalidValue: the path resolves outside ``root`` (the message names both).
    """
    path, root = Path(path), Path(root)
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as error:  # a link loop
        raise InvalidValue(f"{path} cannot be resolved ({error})") from None
    if not resolved.is_relative_to(base):
        raise InvalidValue(
            f"{path} leads to {resolved}, outside the release folder {root}; images must lie inside the "
            "release folder (a link to a file or folder elsewhere is refused): copy the image into it"
        )
    return path


def duplicate_key_error(source, record_id: str, raw) -> RecordError | None:
    """The error for a key written twice in one JSON object of the raw record ``raw`` (read by
    :func:`read_release_json`, which marks them; plain ``json`` would keep the last silently):
    the field is the record's key under which the repeat lies."""
    found = find_duplicate_key(raw)
    if found is None:
        return None
    path, key = found
    where = "".join(f"[{p}]" if isinstance(p, int) else f"[{p!r}]" for p in path[1:])
    reason = (f"the key {key!r} appears twice in one JSON object" + (f" (at {path[0]}{where})" if path else "")
              + "; which one is meant is unknown")
    return RecordError(source, record_id, str(path[0]) if path else key, reason,
                       "keep one of the two, or pass --skip-invalid (skip_invalid=True) to leave the record out")


def generator_from_img_path(img_path: str, generator_map: Mapping[str, str] | None = None) -> str:
    """The generator of an image: its entry in ``generator_map`` (see :func:`read_generator_map`),
    else the first folder of ``img_path`` (``"SDXL-Turbo/00805.png"`` -> ``"SDXL-Turbo"``), else
    ``""``: a flat path such as the validation release's ``"img_0001.png"`` has an UNKNOWN
    generator (never the file name).

    >>> generator_from_img_path("PixArt-alpha/00108_1.png"), generator_from_img_path("img_0001.png")
    ('PixArt-alpha', '')
    >>> generator_from_img_path("img_0001.png", {"img_0001.png": "SDXL-Turbo"})
    'SDXL-Turbo'
    """
    path = str(PurePosixPath(str(img_path).replace("\\", "/")))
    if generator_map:
        mapped = generator_map.get(path)
        if mapped:
            return mapped
    return path.split("/", 1)[0] if "/" in path else ""


def read_generator_map(path) -> dict[str, str]:
    """Read a file naming the generator of each image: ``{img_path: generator}``.

    The validation and test releases have flat ``img_path`` values (``"img_0001.png"``) that do
    not say which model made the image; this file does. Two formats, chosen by the extension:

    * ``.csv`` (or ``.tsv``): a header with the columns ``img_path`` and ``generator`` (other
      columns are ignored), one image per row;
    * ``.json``: one object ``{"img_0001.png": "SDXL-Turbo", ...}``.

    ``img_path`` values are written as in the release (relative, ``/`` separators; ``\\`` is
    read as ``/``). Each image is listed once with a non-empty generator.

    Raises:
        UserInputError: the file is missing, unreadable, not UTF-8, malformed, of another type,
            lacks a column, lists an image twice or gives an empty generator; the message names
            the file and the row or key.

    A mapping given instead of a file goes through the same checks (so every caller accepts both).

    Example::

        from evalmuse_models.data import read_generator_map

        generators = read_generator_map("val_generators.csv")   # {"img_0001.png": "SDXL-Turbo", ...}
    """
    if isinstance(path, Mapping):  # checked and normalised like a file's entries
        entries = [(f"key {key!r}", key, generator) for key, generator in path.items()]
        path = "generator map"
    else:
        path = Path(path)
        entries = _generator_map_entries(path)
    mapping: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for where, img_path, generator in entries:
        try:
            key = _check_img_path(img_path)
        except ValueError as error:
            raise UserInputError(f"{path}: {where}: img_path {error}") from None
        if not isinstance(generator, str) or not generator.strip():
            raise UserInputError(
                f"{path}: {where} (img_path={key!r}): the generator must be a non-empty string, got {generator!r}; "
                "leave an image out of the map to keep its generator unknown"
            )
        if key in mapping:
            raise UserInputError(
                f"{path}: {where}: img_path {key!r} is listed twice (first at {first_seen[key]}); list each image once"
            )
        mapping[key] = generator.strip()
        first_seen[key] = where
    if not mapping:
        raise UserInputError(f"{path}: the generator map lists no image")
    return mapping


def _generator_map_entries(path: Path) -> list[tuple[str, Any, Any]]:
    """``(where, img_path, generator)`` of each entry of a generator-map file."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json"):
        raise UserInputError(
            f"{path}: a generator map must be a .csv file (columns img_path,generator) or a .json object "
            f"{{img_path: generator}}, got {suffix or 'a file without extension'!r}"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserInputError(f"generator map {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: not UTF-8 text ({error}); save the generator map as UTF-8") from None
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the generator map ({error.strerror})") from None
    return _generator_map_json(path, text) if suffix == ".json" else _generator_map_csv(path, text, suffix)


def _generator_map_json(path: Path, text: str) -> list[tuple[str, Any, Any]]:
    data = load_json(text, str(path), duplicates="mark")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else type(data).__name__
        raise UserInputError(f"{path}: expected one JSON object {{img_path: generator}}, got {kind}")
    if isinstance(data, JsonObject) and data.duplicate_keys:
        key = data.duplicate_keys[0]
        raise UserInputError(f"{path}: key {key!r}: img_path {key!r} is listed twice; list each image once")
    return [(f"key {key!r}", key, value) for key, value in data.items()]


def _generator_map_csv(path: Path, text: str, suffix: str) -> list[tuple[str, Any, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        rows = list(reader)
    except csv.Error as error:
        raise UserInputError(f"{path}: malformed CSV at line {reader.line_num}: {error}") from None
    if not rows:
        raise UserInputError(f"{path}: empty file; expected a header with the columns img_path and generator")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in ("img_path", "generator") if name not in header]
    if missing:
        raise UserInputError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must name img_path and generator "
            f"(found: {', '.join(repr(h) for h in header) or 'nothing'})"
        )
    at_path, at_generator = header.index("img_path"), header.index("generator")
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) <= max(at_path, at_generator):
            raise UserInputError(f"{path}: row {number}: {len(row)} cell(s), the header has {len(header)}")
        entries.append((f"row {number}", row[at_path].strip(), row[at_generator]))
    return entries


def parse_alignment_record(raw, *, source: str = "<memory>", index: int = -1) -> AlignmentRecord:
    """Validate and parse one raw record; raises :class:`RecordError` naming the field."""
    record_id = f"#{index}"
    if isinstance(raw, dict) and isinstance(raw.get("img_path"), str):
        record_id = f"#{index} (img_path={raw['img_path']!r})"
    if not isinstance(raw, dict):
        raise RecordError(source, record_id, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    duplicate = duplicate_key_error(source, record_id, raw)
    if duplicate is not None:
        raise duplicate
    for name in REQUIRED_FIELDS:
        if name not in raw:
            raise RecordError(source, record_id, name, "missing")

    def fail(name, reason):
        return RecordError(source, record_id, name, reason)

    try:
        img_path = _check_img_path(raw["img_path"])
    except ValueError as error:
        raise fail("img_path", str(error)) from None
    prompt_id = raw["prompt_id"]
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)):
        raise fail("prompt_id", f"must be a string or an integer, got {prompt_id!r}")
    prompt = raw["prompt"]
    if not isinstance(prompt, str):
        raise fail("prompt", f"must be a string, got {type(prompt).__name__}")
    prompt_type = raw["type"]
    if not isinstance(prompt_type, str) or not prompt_type:
        raise fail("type", f"must be a non-empty string ('real' or 'synthetic'), got {prompt_type!r}")
    try:
        total_score, total_votes = _parse_votes(raw["total_score"], low=1, high=5, what="total_score")
    except ValueError as error:
        raise fail("total_score", str(error)) from None
    try:
        elements = parse_element_score(raw["element_score"])
    except ValueError as error:
        raise fail("element_score", str(error)) from None
    confidences = {}
    for column, spellings in CONFIDENCE_FIELDS.items():
        name = next((s for s in spellings if s in raw), None)
        if name is None:
            confidences[column] = None
            continue
        try:
            confidences[column] = _parse_votes(raw[name], low=0, high=1, what=name)[0]
        except ValueError as error:
            raise fail(name, str(error)) from None
    fidelity_label = raw.get("fidelity_label")
    if fidelity_label is not None and (
        not isinstance(fidelity_label, list) or not all(isinstance(tag, str) for tag in fidelity_label)
    ):
        raise fail("fidelity_label", f"must be a list of strings (tags), got {fidelity_label!r}")
    generator = generator_from_img_path(img_path)
    known = {*REQUIRED_FIELDS, "fidelity_label", *(s for spellings in CONFIDENCE_FIELDS.values() for s in spellings)}
    return AlignmentRecord(
        img_path=img_path,
        generator=generator,
        prompt_id=str(prompt_id),
        prompt=prompt,
        prompt_type=prompt_type,
        total_score=total_score,
        total_score_votes=total_votes,
        elements=elements,
        fidelity_label=None if fidelity_label is None else list(fidelity_label),
        source=str(source),
        index=index,
        extra={k: v for k, v in raw.items() if k not in known},
        **confidences,
    )


def add_prompt_variance(records: list[AlignmentRecord]) -> None:
    """Set ``prompt_variance``: sample variance (ddof=1) of the mean overall scores of the
    images sharing a prompt text (the official grouping); ``None`` when fewer than 2 are labelled."""
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.total_score is not None:
            by_prompt[record.prompt].append(record.total_score)
    for record in records:
        scores = by_prompt.get(record.prompt, [])
        record.prompt_variance = (
            float(statistics.variance(scores)) if record.total_score is not None and len(scores) >= 2 else None
        )


def read_release_json(path: Path):
    """A raw release file, parsed; a key written twice in one object is marked (see
    :mod:`evalmuse_models.utils.jsonio`) for the parsers to refuse or skip the record concerned."""
    return read_json_file(path, duplicates="mark", hint="fix the file (it must be the release's JSON unchanged)")


def load_alignment_records(
    path,
    *,
    skip_invalid: bool = False,
    skipped: list[SkippedRecord] | None = None,
) -> list[AlignmentRecord]:
    """Parse and validate one EvalMuse-40K JSON file (``train_list.json``, ``test.json``, ...).

    Args:
        path: the JSON file (a list of records).
        skip_invalid: leave invalid records out instead of raising; each one is appended to
            ``skipped`` (a list you pass) with its reason.
        skipped: where skipped records are collected.

    Returns:
        The records in file order, with ``prompt_variance`` filled in.

    Raises:
        UserInputError: malformed JSON, or (unless ``skip_invalid``) a :class:`RecordError`
        naming the record (position and ``img_path``) and the field: an invalid field, an
        ``img_path`` leaving the release folder or repeated in the file (the first record is
        kept when skipping), a key written twice in one JSON object of the record.
    """
    path = Path(path)
    data = read_release_json(path)
    if not isinstance(data, list):
        raise UserInputError(
            f"{path}: expected a JSON list of records, got {type(data).__name__}; "
            "is this an EvalMuse-40K file (structure files are dicts keyed by image name)?"
        )
    records: list[AlignmentRecord] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(data):
        try:
            record = parse_alignment_record(raw, source=str(path), index=index)
            if record.img_path in seen:
                raise RecordError(
                    path, record.record_id, "img_path",
                    f"duplicate of record #{seen[record.img_path]} (records are matched by img_path)",
                )
        except RecordError as error:
            if not skip_invalid:
                raise
            if skipped is not None:
                skipped.append(SkippedRecord.from_error(error))
            continue
        seen[record.img_path] = index
        records.append(record)
    add_prompt_variance(records)
    return records


def find_alignment_files(raw_dir) -> dict[str, Path]:
    """The split files present in an alignment release folder: ``{"train": path, ...}``."""
    raw_dir = Path(raw_dir)
    found = {}
    for split, names in ALIGNMENT_SPLIT_FILES.items():
        for name in names:
            if (raw_dir / name).is_file():
                found[split] = raw_dir / name
                break
    return found
