"""Parser for the EvalMuse-Structure (structure track) raw release.

A release folder holds ``train_info.json`` / ``val_info.json`` / ``test_info.json`` (whichever
exist) and the images ``<key>.jpg``, beside the JSON files or in ``train/``, ``val/``, ``test/``
sub-folders. Each JSON file is a dict keyed by image name without extension::

    {"a2dc7a57553211efa973a68a9e2fa7c5": {
        "prompt_en": "a girl holding a cat",
        "mos": 2.6666666666666665,
        "bbox_info": [
            [],                                                       # annotator 1: no problem
            [{"bbox_type": 1, "bbox": [{"x": 10, "y": 20}, {"x": 80, "y": 90}]}],   # rectangle
            [{"bbox_type": 2, "bbox": [[10, 20], [80, 25], [40, 90]]}],             # polygon
        ]}}

Rectangles are two corners (top-left, bottom-right); polygon vertices may be ``[x, y]`` pairs
or ``{"x", "y"}`` dicts. Coordinates are pixels of the original image and corners are kept as
given, in their order: rasterising follows the organisers' rule (a rectangle whose corners are
reversed covers nothing; shapes partly outside the image are clipped), see :mod:`.masks`.

Example::

    from evalmuse_models.data import load_structure_records, binary_mask

    records = load_structure_records("EvalMuse-Structure/val_info.json")
    truth = binary_mask(records[0], size=(512, 512))   # 0/1 uint8, union of annotators
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils import UserInputError
from ..utils.jsonio import JsonObject
from .alignment import duplicate_key_error, inside_release, read_release_json
from .errors import InvalidValue, RecordError, SkippedRecord
from .masks import MAX_COORDINATE

#: Split name -> raw file names, and the image sub-folder names tried for that split.
STRUCTURE_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train_info.json",),
    "validation": ("val_info.json", "valid_info.json", "validation_info.json"),
    "test": ("test_info.json",),
}
STRUCTURE_IMAGE_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("val", "valid", "validation"),
    "test": ("test",),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".webp")

SHAPE_TYPES = {1: "rectangle", 2: "polygon"}


@dataclass(frozen=True)
class Shape:
    """One annotated region: ``type`` is ``"rectangle"`` (two corners: top-left, bottom-right, as
    annotated) or ``"polygon"``; ``points`` are ``(x, y)`` pixel coordinates of the original image."""

    type: str
    points: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "points": [[x, y] for x, y in self.points]}


@dataclass
class StructureRecord:
    """One parsed EvalMuse-Structure image.

    ``shapes`` holds one list per annotator (empty = that annotator saw no problem). ``width``
    and ``height`` are the original image size once known (set by :func:`resolve_images` or by
    the export; needed to rasterise masks).
    """

    image_name: str
    prompt: str
    mos: float | None
    shapes: list[list[Shape]]
    image_path: Path | None = None
    width: int | None = None
    height: int | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def record_id(self) -> str:
        return repr(self.image_name)

    @property
    def num_annotators(self) -> int:
        return len(self.shapes)

    def shapes_as_dicts(self) -> list[list[dict[str, Any]]]:
        return [[shape.to_dict() for shape in annotator] for annotator in self.shapes]


def _coordinate(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValue(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidValue(f"{what} must be finite, got {value!r}")
    if abs(value) > MAX_COORDINATE:
        raise InvalidValue(f"{what} = {value!r} is no pixel position (the limit is +-{MAX_COORDINATE})")
    return value


def _point(value, what: str) -> tuple[float, float]:
    if isinstance(value, dict):
        if "x" not in value or "y" not in value:
            raise InvalidValue(f"{what} must have 'x' and 'y', got {value!r}")
        return _coordinate(value["x"], f"{what}.x"), _coordinate(value["y"], f"{what}.y")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _coordinate(value[0], f"{what}[0]"), _coordinate(value[1], f"{what}[1]")
    raise InvalidValue(f"{what} must be an {{'x', 'y'}} dict or an [x, y] pair, got {value!r}")


def parse_shape(raw, what: str = "shape") -> Shape:
    """Parse one ``{"bbox_type": 1|2, "bbox": [...]}`` entry."""
    if not isinstance(raw, dict):
        raise InvalidValue(f"{what} must be an object with 'bbox_type' and 'bbox', got {type(raw).__name__}")
    for key in ("bbox_type", "bbox"):
        if key not in raw:
            raise InvalidValue(f"{what} has no {key!r}")
    kind = raw["bbox_type"]
    if isinstance(kind, str) and kind.strip().isdigit():
        kind = int(kind)
    if kind not in SHAPE_TYPES or isinstance(kind, bool):
        raise InvalidValue(f"{what}: bbox_type must be 1 (rectangle) or 2 (polygon), got {raw['bbox_type']!r}")
    points_raw = raw["bbox"]
    if not isinstance(points_raw, (list, tuple)):
        raise InvalidValue(f"{what}: bbox must be a list of points, got {type(points_raw).__name__}")
    kind_name = SHAPE_TYPES[kind]
    if kind_name == "rectangle":
        if len(points_raw) == 4 and all(isinstance(v, (int, float)) for v in points_raw):
            points_raw = [points_raw[:2], points_raw[2:]]  # a flat [x1, y1, x2, y2]
        if len(points_raw) != 2:
            raise InvalidValue(f"{what}: a rectangle needs 2 corners, got {len(points_raw)} points")
        # as given (top-left, bottom-right): the organisers' slicing gives nothing for reversed corners
        points = tuple(_point(p, f"{what}.bbox[{i}]") for i, p in enumerate(points_raw))
    else:
        if len(points_raw) < 3:
            raise InvalidValue(f"{what}: a polygon needs at least 3 points, got {len(points_raw)}")
        points = tuple(_point(p, f"{what}.bbox[{i}]") for i, p in enumerate(points_raw))
    return Shape(kind_name, points)


def parse_annotations(bbox_info) -> list[list[Shape]]:
    """Parse ``bbox_info``: one entry per annotator; empty (or null) = no problem seen."""
    if not isinstance(bbox_info, (list, tuple)):
        raise InvalidValue(f"must be a list with one entry per annotator, got {type(bbox_info).__name__}")
    annotators = []
    for a, entry in enumerate(bbox_info):
        if entry is None or entry == "" or entry == {}:
            annotators.append([])
            continue
        if isinstance(entry, dict):  # a single shape not wrapped in a list
            entry = [entry]
        if not isinstance(entry, (list, tuple)):
            raise InvalidValue(f"annotator {a}: expected a list of shapes, got {type(entry).__name__}")
        annotators.append([parse_shape(s, f"annotator {a} shape {i}") for i, s in enumerate(entry)])
    return annotators


def parse_structure_record(key, raw, *, source: str = "<memory>") -> StructureRecord:
    """Validate and parse one ``<key>: {...}`` entry; raises :class:`RecordError`."""
    record_id = repr(key)
    if not isinstance(key, str) or not key:
        raise RecordError(source, record_id, "<key>", "the image name must be a non-empty string")
    if any(c in key for c in "/\\\0"):
        # the image is <key>.jpg in the release folder: a path such as "../x" would read a file outside it
        raise RecordError(source, record_id, "<key>",
                          "the image name must be a file name (no '/', '\\' or NUL): the image is <key>.jpg in "
                          "the release folder or its split folder")
    if not isinstance(raw, dict):
        raise RecordError(source, record_id, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    duplicate = duplicate_key_error(source, record_id, raw)
    if duplicate is not None:
        raise duplicate
    for name in ("prompt_en", "bbox_info"):
        if name not in raw:
            raise RecordError(source, record_id, name, "missing")
    prompt = raw["prompt_en"]
    if not isinstance(prompt, str):
        raise RecordError(source, record_id, "prompt_en", f"must be a string, got {type(prompt).__name__}")
    mos = raw.get("mos")
    if mos is not None:
        if isinstance(mos, str):
            try:
                mos = float(mos)
            except ValueError:
                raise RecordError(source, record_id, "mos", f"must be a number, got {mos!r}") from None
        if isinstance(mos, bool) or not isinstance(mos, (int, float)) or not math.isfinite(mos) or not 1 <= mos <= 5:
            raise RecordError(source, record_id, "mos", f"must be a number in [1, 5] or null, got {mos!r}")
        mos = float(mos)
    try:
        shapes = parse_annotations(raw["bbox_info"])
    except ValueError as error:
        raise RecordError(source, record_id, "bbox_info", str(error)) from None
    known = {"prompt_en", "mos", "bbox_info"}
    image_name = key
    for ext in IMAGE_EXTENSIONS:
        if image_name.endswith(ext):
            image_name = image_name[: -len(ext)]
            break
    return StructureRecord(
        image_name=image_name, prompt=prompt, mos=mos, shapes=shapes, source=str(source),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def load_structure_records(
    path,
    *,
    image_dir=None,
    skip_invalid: bool = False,
    skipped: list[SkippedRecord] | None = None,
) -> list[StructureRecord]:
    """Parse and validate one EvalMuse-Structure ``*_info.json`` file.

    Args:
        path: the JSON file (a dict keyed by image name).
        image_dir: where to look for ``<key>.jpg``; by default beside the JSON file or in the
            split's sub-folder (``train/``, ``val/``, ``test/``). Images are located (and their
            sizes read from the file header) only when found; see :func:`resolve_images`. An image
            must lie inside ``image_dir`` (by default the JSON file's folder) once links are
            followed.
        skip_invalid: leave invalid records out instead of raising, appending each to ``skipped``.

    Returns:
        The records in file order.

    Raises:
        UserInputError: malformed JSON, or (unless ``skip_invalid``) a :class:`RecordError`
        naming the record and the field: an invalid field, a key that is not a file name, a key
        written twice in the file or in a record (the first entry of a repeated key is kept when
        skipping), two keys naming one image (``abc`` and ``abc.jpg``), an image outside the
        release folder.
    """
    path = Path(path)
    data = read_release_json(path)
    if not isinstance(data, dict):
        raise UserInputError(
            f"{path}: expected a JSON object keyed by image name, got {type(data).__name__}; "
            "is this an EvalMuse-Structure *_info.json file?"
        )
    root = Path(image_dir) if image_dir is not None else path.parent
    dirs = [Path(image_dir)] if image_dir is not None else candidate_image_dirs(path)

    def invalid(error: RecordError) -> None:
        if not skip_invalid:
            raise error
        if skipped is not None:
            skipped.append(SkippedRecord.from_error(error))

    repeated = set(data.duplicate_keys) if isinstance(data, JsonObject) else set()
    records = []
    first_key: dict[str, str] = {}  # image name -> the key that named it first
    for key, raw in data.items():
        if key in repeated:
            # json would keep the last entry silently: refused, or skipped keeping the first entry
            invalid(RecordError(path, repr(key), "<key>",
                                "the key appears twice in this JSON object (skipping keeps the first entry and "
                                "leaves the later one out)",
                                "keep one of the entries, or pass --skip-invalid (skip_invalid=True) to keep only "
                                "the first"))
        try:
            record = parse_structure_record(key, raw, source=str(path))
            if record.image_name in first_key:
                raise RecordError(path, repr(key), "<key>",
                                  f"names the same image as the key {first_key[record.image_name]!r}",
                                  "keep one of the two entries, or pass --skip-invalid (skip_invalid=True) to keep "
                                  "only the first")
            try:
                record.image_path = find_image(record.image_name, dirs, root=root)
            except InvalidValue as error:
                raise RecordError(path, record.record_id, "<image>", str(error)) from None
        except RecordError as error:
            invalid(error)
            continue
        first_key[record.image_name] = key
        records.append(record)
    return records


def candidate_image_dirs(json_path) -> list[Path]:
    """Folders where the images of a ``*_info.json`` may be: beside it, then its split folder."""
    json_path = Path(json_path)
    root = json_path.parent
    dirs = [root]
    for split, names in STRUCTURE_SPLIT_FILES.items():
        if json_path.name in names:
            dirs += [root / d for d in STRUCTURE_IMAGE_DIRS[split]]
    dirs.append(root / "images")
    return [d for d in dirs if d.is_dir()]


def find_image(image_name: str, dirs, *, root=None) -> Path | None:
    """The first ``<image_name><ext>`` file in ``dirs``, or None. With ``root`` (the release folder)
    the file found must lie inside it once links are followed (see
    :func:`~evalmuse_models.data.alignment.inside_release`, which raises ``InvalidValue``)."""
    for directory in dirs:
        for ext in IMAGE_EXTENSIONS:
            candidate = Path(directory) / f"{image_name}{ext}"
            if candidate.is_file():
                return candidate if root is None else inside_release(candidate, root)
    return None


def resolve_images(records: list[StructureRecord]) -> None:
    """Fill ``width``/``height`` from the image headers (cheap: pixels are not decoded)."""
    from PIL import Image

    for record in records:
        if record.image_path is None:
            raise RecordError(record.source, record.record_id, "<image>",
                              f"no image {record.image_name}.jpg beside the JSON file or in its split folder")
        try:
            with Image.open(record.image_path) as image:
                record.width, record.height = image.size
        except OSError as error:
            raise RecordError(record.source, record.record_id, "<image>",
                              f"cannot open {record.image_path}: {error}") from None


def find_structure_files(raw_dir) -> dict[str, Path]:
    """The split files present in a structure release folder: ``{"train": path, ...}``."""
    raw_dir = Path(raw_dir)
    found = {}
    for split, names in STRUCTURE_SPLIT_FILES.items():
        for name in names:
            if (raw_dir / name).is_file():
                found[split] = raw_dir / name
                break
    return found
