"""What ``evalmuse score`` reads: a folder of images with a prompts file, or a prepared dataset split.

Both become a :class:`ScoringSource`, a map-style ``torch.utils.data.Dataset`` whose items are
plain dicts (``id``, ``image`` as a decoded RGB ``PIL.Image`` or ``None``, ``error``, ``prompt``,
``elements``, ``generator``, ``reference``, ``source``). Images are opened inside ``__getitem__``
(so in the data-loader workers) and an unreadable or missing image becomes an item with
``error`` set instead of an exception: one bad file never stops a 40K-image run.

Prompts file (``prompts.jsonl``, ``prompts.csv``, ``metadata.jsonl`` or ``metadata.csv`` in the
folder, or any file passed as ``prompts_file``), one record per image:

========== ======== =================================================================
field      required meaning
========== ======== =================================================================
image      yes      image path relative to the folder (``file_name`` is accepted too)
prompt     yes      the text-to-image prompt
elements   no       the prompt's elements, ``"<phrase> (<category>)"`` keys: a JSON list,
                    or in CSV a JSON list or ``|``-separated text
generator  no       the model that made the image (the report's leaderboard groups by it)
========== ======== =================================================================

Example ``prompts.jsonl`` line::

    {"image": "sdxl/0001.png", "prompt": "a red cube on a blue sphere",
     "elements": ["red cube (object)", "blue sphere (object)", "on (spatial)"], "generator": "sdxl"}
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.alignment import element_record_key
from ..utils import UserInputError
from ..utils.jsonio import load_json

PROMPT_FILE_NAMES = ("prompts.jsonl", "prompts.csv", "metadata.jsonl", "metadata.csv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ScoringRecord:
    """One image to score (before its pixels are read)."""

    id: str
    prompt: str
    elements: list[str] | None = None
    generator: str | None = None
    path: str | None = None  # absolute path of an image file
    index: int | None = None  # row of a dataset split
    reference: dict | None = None  # ground-truth labels, when the input has them
    extra: dict = field(default_factory=dict)


def element_key(element: Any) -> str:
    """The official key of a string or dataset-record element (its raw ``key``, else ``"<phrase> (<category>)"``)."""
    if isinstance(element, str) or (isinstance(element, dict) and "phrase" in element):
        return element_record_key(element)
    raise TypeError(f"an element must be a string or a {{'phrase', 'category'}} dict, got {element!r}")


def _parse_elements(value: Any, where: str) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserInputError(f"{where}: 'elements' is not a valid JSON list ({err.msg})") from None
        else:
            return [part.strip() for part in text.split("|") if part.strip()]
    if isinstance(value, dict):
        return [str(key) for key in value]
    if isinstance(value, (list, tuple)):
        try:
            return [element_key(item) for item in value]
        except TypeError as err:
            raise UserInputError(f"{where}: {err}") from None
    raise UserInputError(f"{where}: 'elements' must be a list of '<phrase> (<category>)' strings, got {value!r}")


def find_prompts_file(folder: Path) -> Path | None:
    for name in PROMPT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_prompt_rows(path: Path) -> list[tuple[str, dict]]:
    """``(where, record)`` pairs from a JSONL or CSV prompts file (UTF-8)."""
    try:
        return _prompt_rows(path)
    except UnicodeDecodeError as err:
        raise UserInputError(
            f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at position {err.start}); "
            "save the prompts file as UTF-8"
        ) from None


def _prompt_rows(path: Path) -> list[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            data = load_json(text, str(path))
            if not isinstance(data, list):
                raise UserInputError(f"{path}: expected a JSON list of records")
            return [(f"{path}, record {i}", rec) for i, rec in enumerate(data)]
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                where = f"{path}, line {number}"
                rows.append((where, load_json(line, where)))
        return rows
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            return [(f"{path}, row {number}", dict(rec)) for number, rec in enumerate(reader, start=2)]
    raise UserInputError(f"{path}: unsupported prompts file type {suffix!r}; use .jsonl or .csv")


def records_from_folder(folder: str | os.PathLike, prompts_file: str | os.PathLike | None = None,
                        *, require_prompts: bool = True) -> list[ScoringRecord]:
    """Records of a folder of images described by a prompts file (see the module docstring).

    With ``require_prompts=False`` and no prompts file, every image under the folder is listed
    with an empty prompt (enough for structure scoring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"input folder {folder} does not exist")
    path = Path(prompts_file) if prompts_file else find_prompts_file(folder)
    if path is None:
        if require_prompts:
            raise UserInputError(
                f"no prompts file in {folder}: add one of {', '.join(PROMPT_FILE_NAMES)} with 'image' and 'prompt' "
                "fields, or pass --prompts FILE"
            )
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        return [ScoringRecord(id=p.relative_to(folder).as_posix(), prompt="", path=str(p.resolve())) for p in images]
    if not path.is_file():
        raise UserInputError(f"prompts file {path} does not exist")
    records: list[ScoringRecord] = []
    seen: dict[str, str] = {}
    for where, rec in _read_prompt_rows(path):
        if not isinstance(rec, dict):
            raise UserInputError(f"{where}: expected an object with 'image' and 'prompt' fields")
        image = rec.get("image", rec.get("file_name", rec.get("img_path")))
        if not image:
            raise UserInputError(f"{where}: missing field 'image' (the image path relative to {folder})")
        prompt = rec.get("prompt")
        if prompt is None:
            raise UserInputError(f"{where}: missing field 'prompt' for image {image!r}")
        key = Path(str(image)).as_posix()
        if key in seen:
            raise UserInputError(f"{where}: image {key!r} is listed twice (first at {seen[key]}); list each image once")
        seen[key] = where
        generator = rec.get("generator") or None
        image_path = Path(str(image)) if Path(str(image)).is_absolute() else folder / str(image)
        records.append(
            ScoringRecord(
                id=key,
                prompt=str(prompt),
                elements=_parse_elements(rec.get("elements"), where),
                generator=str(generator) if generator is not None else None,
                path=str(image_path.resolve()),
            )
        )
    if not records:
        raise UserInputError(f"{path} lists no images")
    return records


def is_dataset_folder(path: str | os.PathLike) -> bool:
    """A prepared dataset folder: a README with ``configs:`` or Parquet files, and no prompts file."""
    path = Path(path)
    if not path.is_dir() or find_prompts_file(path) is not None:
        return False
    readme = path / "README.md"
    if readme.is_file() and "configs:" in readme.read_text(encoding="utf-8", errors="replace"):
        return True
    return any(path.rglob("*.parquet"))


def _alignment_reference(row: dict) -> dict | None:
    total = row.get("total_score")
    elements = row.get("elements") or []
    element_scores = {element_key(e): e.get("score") for e in elements if isinstance(e, dict)}
    if total is None and not any(v is not None for v in element_scores.values()):
        return None
    return {
        "overall": None if total is None else float(total),
        "elements": {k: (None if v is None else float(v)) for k, v in element_scores.items()},
    }


def load_dataset_split(dataset: str, config: str | None = None, split: str = "test"):
    """``datasets.load_dataset(dataset, config, split=split)`` with a clear error."""
    import datasets

    try:
        return datasets.load_dataset(str(dataset), config, split=split)
    except ValueError as err:
        raise UserInputError(f"cannot load split {split!r} of config {config!r} from {dataset}: {err}") from None
    except Exception as err:  # noqa: BLE001 - not found, offline, bad files: all end the run here
        raise UserInputError(
            f"cannot load dataset {dataset} ({type(err).__name__}: {err}); pass a prepared dataset folder or a Hub id"
        ) from None


def records_from_dataset(ds, *, config: str) -> list[ScoringRecord]:
    """Records of a prepared ``alignment`` or ``structure`` split (see ``evalmuse_models.data``)."""
    columns = set(ds.column_names)
    if "image" not in columns:
        raise UserInputError(f"the dataset split has no 'image' column (columns: {sorted(columns)})")
    light = ds.remove_columns([c for c in ("image", "mask", "heatmap") if c in columns])
    records = []
    for index, row in enumerate(light):
        if config == "structure" or ("image_name" in columns and "img_path" not in columns):
            key = str(row.get("image_name", index))
            reference = None
            if row.get("mos") is not None:
                reference = {"mos": float(row["mos"])}
            records.append(ScoringRecord(id=key, prompt=str(row.get("prompt") or ""), index=index,
                                         generator=row.get("generator"), reference=reference))
        else:
            key = str(row.get("img_path", index))
            elements = [element_key(e) for e in (row.get("elements") or [])] or None
            records.append(
                ScoringRecord(
                    id=key,
                    prompt=str(row.get("prompt") or ""),
                    elements=elements,
                    generator=row.get("generator"),
                    index=index,
                    reference=_alignment_reference(row),
                    extra={"prompt_id": row.get("prompt_id"), "prompt_type": row.get("prompt_type")},
                )
            )
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise UserInputError("the dataset split has duplicate image ids; each image must appear once")
    return records


def _decode_image(value: Any):
    """A decoded PIL image from a path, bytes, a datasets ``{"bytes", "path"}`` dict or a PIL image, in its
    own mode: the model's processor makes it RGB by its own rule (e.g. FGA-BLIP2's ``image_alpha``)."""
    from PIL import Image

    if value is None:
        raise FileNotFoundError("no image")
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise FileNotFoundError("empty image entry")
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    else:
        image = Image.open(value)
    image.load()
    return image


class ScoringSource:
    """A map-style dataset over :class:`ScoringRecord` items (``torch.utils.data.Dataset`` protocol).

    ``dataset`` is the ``datasets.Dataset`` the records index into (images stay encoded until
    ``__getitem__``), or ``None`` for image files.
    """

    def __init__(self, records: Sequence[ScoringRecord], dataset=None, description: dict | None = None):
        self.records = list(records)
        self.description = description or {}
        self._dataset = None
        if dataset is not None:
            import datasets

            keep = [c for c in ("image", "mask") if c in dataset.column_names]
            self._dataset = dataset.select_columns(keep)
            for column in keep:
                self._dataset = self._dataset.cast_column(column, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def load_image(self, record: ScoringRecord):
        if self._dataset is not None:
            return _decode_image(self._dataset[record.index]["image"])
        return _decode_image(record.path)

    def load_reference_mask(self, record: ScoringRecord):
        """The ground-truth distortion mask (uint8 0/1) of a structure dataset row, or None."""
        if self._dataset is None or "mask" not in self._dataset.column_names:
            return None
        import numpy as np

        value = self._dataset[record.index]["mask"]
        if value is None:
            return None
        from PIL import Image

        mask = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
        return (np.asarray(mask.convert("L")) > 127).astype(np.uint8)

    def __getitem__(self, position: int) -> dict:
        record = self.records[position]
        item = {
            "position": position,
            "id": record.id,
            "prompt": record.prompt,
            "elements": record.elements,
            "generator": record.generator,
            "reference": record.reference,
            "extra": record.extra,
            "image": None,
            "error": None,
        }
        try:
            item["image"] = self.load_image(record)
        except Exception as err:  # noqa: BLE001 - any unreadable image is reported, not fatal
            item["error"] = f"cannot read image: {type(err).__name__}: {err}"
        if record.reference is not None and self._dataset is not None and "mask" in self._dataset.column_names:
            try:
                mask = self.load_reference_mask(record)
                if mask is not None:
                    from .rle import mask_to_rle

                    item["reference"] = {**record.reference, "mask": mask_to_rle(mask)}
            except Exception as err:  # noqa: BLE001
                item["error"] = item["error"] or f"cannot read reference mask: {type(err).__name__}: {err}"
        return item


def keep_items(batch: list[dict]) -> list[dict]:
    """The data loader's collate function: keep the list of dicts (and their PIL images) as is."""
    return batch


def open_source(input_path: str, *, prompts_file: str | None = None, config: str | None = None,
                split: str = "test", require_prompts: bool = True) -> ScoringSource:
    """Open ``evalmuse score``'s INPUT: an image folder (+ prompts file) or a dataset split.

    ``config`` (``alignment`` / ``structure``) selects a dataset config; given with a path that
    is not a local folder, ``input_path`` is treated as a Hub dataset id.
    """
    path = Path(input_path)
    if config is not None or is_dataset_folder(path):
        if config is None:
            config = "alignment"
        if config not in ("alignment", "structure"):
            raise UserInputError(f"unknown dataset config {config!r}; use 'alignment' or 'structure'")
        if not path.exists() and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in input_path:
            raise UserInputError(f"input {input_path} does not exist")
        ds = load_dataset_split(str(path.resolve()) if path.exists() else input_path, config, split)
        records = records_from_dataset(ds, config=config)
        description = {"kind": "dataset", "path": str(path.resolve()) if path.exists() else input_path,
                       "config": config, "split": split}
        return ScoringSource(records, dataset=ds, description=description)
    if not path.exists():
        raise UserInputError(f"input {input_path} does not exist; pass a folder of images or a prepared dataset")
    records = records_from_folder(path, prompts_file, require_prompts=require_prompts)
    return ScoringSource(records, description={"kind": "folder", "path": str(path.resolve())})
