"""Turn raw EvalMuse releases into a Hub-ready dataset folder (Parquet shards + dataset card).

The output folder holds ``alignment/<split>-XXXXX-of-YYYYY.parquet`` and
``structure/<split>-XXXXX-of-YYYYY.parquet`` (images embedded as bytes, ``datasets`` features
stored in the Parquet metadata), the official truth files of the labelled splits
(``official/alignment/<split>/eval.json``, ``official/structure/<split>/gt.pkl``, see
:func:`write_official_truth`) and a ``README.md`` whose YAML ``configs:`` declares the two
configs, so that::

    from datasets import load_dataset

    ds = load_dataset("path/to/evalmuse", "alignment")              # DatasetDict of the splits
    it = load_dataset("path/to/evalmuse", "structure", split="train", streaming=True)

work offline, and the folder can be pushed to the Hub as is
(``huggingface_hub.upload_folder(repo_id=..., folder_path=..., repo_type="dataset")``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError, atomic_write_text, replace_directory
from .alignment import (
    AlignmentRecord,
    element_record_key,
    find_alignment_files,
    generator_from_img_path,
    inside_release,
    load_alignment_records,
    read_generator_map,
)
from .errors import InvalidValue, RecordError, SkippedRecord, write_skipped_report
from .masks import TRUTH_SIZE, truth_maps
from .splits import HOLDOUT_MANIFEST, HOLDOUT_SPLIT, parse_generator_list, split_by_generator
from .structure import StructureRecord, find_structure_files, load_structure_records, resolve_images

CONFIG_NAMES = ("alignment", "structure")
HEATMAP_SIZE = TRUTH_SIZE
SKIPPED_REPORT_NAME = "skipped_records.jsonl"
#: Where the official truth files go in a prepared folder: ``official/<config>/<split>/<file>``.
OFFICIAL_DIR = "official"
OFFICIAL_TRUTH_FILES = {"alignment": "eval.json", "structure": "gt.pkl"}
CARD_TEMPLATE = Path(__file__).resolve().parent / "resources" / "dataset_card_template.md"


def alignment_features():
    """The ``datasets.Features`` of the ``alignment`` config."""
    from datasets import Features, Image, List, Value

    return Features({
        "image": Image(),
        "img_path": Value("string"),
        "generator": Value("string"),
        "prompt_id": Value("string"),
        "prompt": Value("string"),
        "prompt_type": Value("string"),
        "total_score": Value("float64"),
        "total_score_votes": List(Value("int64")),
        "prompt_variance": Value("float64"),
        "elements": List({
            "phrase": Value("string"),
            "category": Value("string"),
            "subcategory": Value("string"),
            "score": Value("float64"),
            "votes": List(Value("int64")),
            "key": Value("string"),
        }),
        "prompt_meaningless": Value("float64"),
        "split_confidence": Value("float64"),
        "attribute_confidence": Value("float64"),
        "fidelity_label": List(Value("string")),
    })


def structure_features():
    """The ``datasets.Features`` of the ``structure`` config."""
    from datasets import Features, Image, List, Value

    return Features({
        "image": Image(),
        "image_name": Value("string"),
        "prompt": Value("string"),
        "mos": Value("float64"),
        "shapes": List(List({"type": Value("string"), "points": List(List(Value("float64")))})),
        "mask": Image(),
        "heatmap": Image(),
    })


@dataclass
class PreparedDataset:
    """What :func:`prepare_dataset` wrote."""

    path: Path
    num_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # config -> split -> rows
    skipped: list[SkippedRecord] = field(default_factory=list)
    skipped_report: Path | None = None
    #: config -> split -> the official truth file (``eval.json`` / ``gt.pkl``) of each labelled split
    official_truth: dict[str, dict[str, Path]] = field(default_factory=dict)
    #: the held-out generators' manifest (``official/alignment/holdout.json``), with ``holdout_generators``
    holdout_manifest: Path | None = None

    @property
    def num_records(self) -> int:
        return sum(n for splits in self.num_rows.values() for n in splits.values())


# ---------------------------------------------------------------------------------------------
# Rows


def _read_image(path: Path, source: str, record_id: str, field_name: str) -> tuple[bytes, int, int]:
    """The file's bytes and size, after fully decoding it (catches truncated or corrupt files)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(source, record_id, field_name, f"image file {path} does not exist") from None
    except OSError as error:
        raise RecordError(source, record_id, field_name, f"cannot read image {path}: {error.strerror}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise RecordError(source, record_id, field_name, f"image {path} is corrupt or not an image ({error})") from None
    return data, width, height


def _png(array: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def _locate_alignment_image(root: Path, img_path: str) -> Path:
    """``root/img_path``, else ``root/images/img_path``; it must lie inside ``root`` once links are
    followed (``InvalidValue`` otherwise)."""
    candidate = root / img_path
    if not candidate.is_file() and (root / "images" / img_path).is_file():
        candidate = root / "images" / img_path
    return inside_release(candidate, root)


def alignment_row(record: AlignmentRecord, root) -> dict[str, Any]:
    """The dataset row of one alignment record, with its image bytes (validated) embedded."""
    try:
        path = _locate_alignment_image(Path(root), record.img_path)
    except InvalidValue as error:
        raise RecordError(record.source, record.record_id, "img_path", str(error)) from None
    data, _, _ = _read_image(path, record.source, record.record_id, "img_path")
    row = {"image": {"bytes": data, "path": record.img_path}}
    row.update(record.to_row())
    return row


def structure_row(record: StructureRecord, *, mask_min_votes: int = 1) -> dict[str, Any]:
    """The dataset row of one structure record: image bytes, binary mask (original size, 255 where at
    least ``mask_min_votes`` annotators marked a problem) and the baseline's 512x512 heatmap, both
    by :func:`~evalmuse_models.data.masks.truth_maps` (the organisers' rasterisation)."""
    if record.image_path is None:
        raise RecordError(
            record.source, record.record_id, "<image>",
            f"no image {record.image_name}.jpg beside the JSON file or in its split sub-folder",
        )
    data, width, height = _read_image(record.image_path, record.source, record.record_id, "<image>")
    record.width, record.height = width, height
    maps = truth_maps(record.shapes, width, height, min_votes=mask_min_votes, size=HEATMAP_SIZE)
    mask, heatmap = maps.mask * np.uint8(255), maps.heatmap
    return {
        "image": {"bytes": data, "path": record.image_path.name},
        "image_name": record.image_name,
        "prompt": record.prompt,
        "mos": record.mos,
        "shapes": record.shapes_as_dicts(),
        "mask": {"bytes": _png(mask), "path": None},
        "heatmap": {"bytes": _png(heatmap), "path": None},
    }


# ---------------------------------------------------------------------------------------------
# Sharded Parquet writing


class _ShardedParquetWriter:
    """Writes rows to ``<directory>/<split>-XXXXX.parquet`` shards, starting a new shard when the
    current one reaches ``max_bytes`` (or at fixed record boundaries when ``num_shards`` is given);
    :meth:`finish` renames them ``<split>-XXXXX-of-YYYYY.parquet``.

    ``state`` (a dict persisted by the caller) records every completed shard and how many records
    had been offered when it completed, so an interrupted split resumes after its last complete
    shard; ``on_checkpoint`` is called each time a shard completes.
    """

    def __init__(self, directory: Path, split: str, features, *, max_bytes: int, num_shards: int | None,
                 total: int, state: dict, on_checkpoint: Callable[[], None]):
        self.directory, self.split, self.features = directory, split, features
        self.max_bytes, self.num_shards, self.total = max_bytes, num_shards, total
        self.state = state
        state.setdefault("shards", [])  # [{"name", "seen", "rows", "bytes"}] of completed shards
        self.on_checkpoint = on_checkpoint
        self.writer = None
        self.shard_bytes = 0
        self.shard_rows = 0
        self.seen = state["shards"][-1]["seen"] if state["shards"] else 0  # records offered so far

    @property
    def num_rows(self) -> int:
        return sum(s["rows"] for s in self.state["shards"])

    @property
    def num_bytes(self) -> int:
        return sum(s["bytes"] for s in self.state["shards"])

    def _path(self, index: int) -> Path:
        return self.directory / f"{self.split}-{index:05d}.parquet"

    def _open(self):
        from datasets.arrow_writer import ParquetWriter

        self.writer = ParquetWriter(features=self.features, path=str(self._path(len(self.state["shards"]))))
        self.shard_bytes = self.shard_rows = 0

    def _complete(self):
        if self.writer is not None:
            _, num_bytes = self.writer.finalize()
            self.writer = None
            index = len(self.state["shards"])
            self.state["shards"].append(
                {"name": self._path(index).name, "seen": self.seen, "rows": self.shard_rows, "bytes": num_bytes})
            self.on_checkpoint()

    def abort(self):
        """Close an unfinished shard without recording it (it is rewritten on resume)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _boundary(self) -> bool:
        if self.num_shards:
            shard = min(self.seen * self.num_shards // max(self.total, 1), self.num_shards - 1)
            return shard >= len(self.state["shards"]) + 1
        return self.shard_bytes >= self.max_bytes

    def offer(self, row: dict[str, Any] | None) -> None:
        """Write ``row`` (``None`` for a skipped record, which still counts towards boundaries)."""
        if row is not None:
            if self.writer is not None and self._boundary():
                self._complete()
            if self.writer is None:
                self._open()
            self.writer.write(self.features.encode_example(row))
            self.shard_rows += 1
            self.shard_bytes += sum(
                len(v["bytes"]) for v in row.values() if isinstance(v, dict) and isinstance(v.get("bytes"), bytes)
            ) + 256
        self.seen += 1

    def finish(self) -> list[Path]:
        self._complete()
        shards = self.state["shards"]
        final = []
        for i, shard in enumerate(shards):
            target = self.directory / f"{self.split}-{i:05d}-of-{len(shards):05d}.parquet"
            os.replace(self.directory / shard["name"], target)
            final.append(target)
        return final


def _map_in_order(function: Callable[[Any], Any], items: Iterable, num_workers: int) -> Iterator:
    """``function`` over ``items``, results in order, in a thread pool (image decoding, PNG encoding and
    OpenCV drawing release the GIL) with a bounded look-ahead."""
    if num_workers <= 1:
        yield from map(function, items)
        return
    items = iter(items)
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        while chunk := list(islice(items, num_workers * 16)):
            yield from pool.map(function, chunk)


def _rows_in_order(
    make_row: Callable[[Any], dict[str, Any]], records: list, num_workers: int
) -> Iterable[tuple[Any, dict[str, Any] | None, RecordError | None]]:
    """Yield ``(record, row, error)`` in record order, building rows in a thread pool."""

    def safe(record):
        try:
            return record, make_row(record), None
        except RecordError as error:
            return record, None, error

    return _map_in_order(safe, records, num_workers)


def _write_split(
    records: list, make_row, directory: Path, split: str, features, *, skip_invalid: bool,
    state: dict, checkpoint: Callable[[], None], max_bytes: int, num_shards: int | None, num_workers: int,
    progress: bool, desc: str,
) -> list[Path]:
    """Write one split; ``state`` holds its completed shards and the records skipped while
    writing them (``state["skipped"]``), so a second call after an interruption resumes."""
    from tqdm.auto import tqdm

    state.setdefault("skipped", [])
    skipped_so_far = list(state["skipped"])

    def save():
        state["skipped"] = list(skipped_so_far)
        checkpoint()

    writer = _ShardedParquetWriter(
        directory, split, features, max_bytes=max_bytes, num_shards=num_shards, total=len(records),
        state=state, on_checkpoint=save,
    )
    start = writer.seen
    try:
        with tqdm(total=len(records), initial=start, desc=desc, unit="rec", disable=not progress) as bar:
            for _record, row, error in _rows_in_order(make_row, records[start:], num_workers):
                if error is not None:
                    if not skip_invalid:
                        raise error
                    pending = asdict(SkippedRecord.from_error(error))
                else:
                    pending = None
                writer.offer(row)  # may complete a shard: the checkpoint covers records before this one
                if pending is not None:
                    skipped_so_far.append(pending)
                bar.update()
        paths = writer.finish()
        save()  # records skipped after the last shard (or in a split without any row) are recorded too
    except BaseException:
        writer.abort()
        raise
    return paths


# ---------------------------------------------------------------------------------------------
# Official truth files


def _has_label(config: str, record) -> bool:
    if config == "alignment":
        return record.total_score is not None and all(e.score is not None for e in record.elements)
    return record.mos is not None


def _alignment_truth(item, where: str) -> dict[str, Any]:
    if isinstance(item, AlignmentRecord):
        prompt, img_path, total, elements = item.prompt, item.img_path, item.total_score, item.element_scores()
    else:
        prompt, img_path, total = item.get("prompt", ""), item.get("img_path"), item.get("total_score")
        elements = {element_record_key(e): e.get("score") for e in item.get("elements") or []}
    unlabelled = "total_score" if total is None else next(
        (f"the score of element {key!r}" for key, value in elements.items() if value is None), None)
    if unlabelled:
        raise UserInputError(f"{where}: no label ({unlabelled} is null); official truth files are made of "
                             "labelled records only (the test split has none)")
    return {"prompt": prompt, "img_path": img_path, "total_score": total, "element_score": elements}


def _structure_truth(item, where: str, min_votes: int) -> tuple[str, dict[str, Any]]:
    name, mos = (item.image_name, item.mos) if isinstance(item, StructureRecord) else (
        item.get("image_name"), item.get("mos"))
    if mos is None:
        raise UserInputError(f"{where}: no label (mos is null); official truth files are made of labelled "
                             "records only")
    try:
        truth = truth_maps(item, min_votes=min_votes).truth
    except (ValueError, OSError) as error:
        raise UserInputError(f"{where}: cannot draw the truth mask ({error})") from None
    return name, {"pred_area": truth, "score": float(mos)}


#: The splits whose official truth files ``prepare-data`` writes by default (``--official-truth-train`` adds train).
OFFICIAL_TRUTH_SPLITS = ("validation", "test")


def build_official_truth(config: str, records, *, min_votes: int = 1, num_workers: int = 1):
    """The official truth of labelled records, in the layout the NTIRE 2025 scoring programs read.

    Args:
        config: ``"alignment"`` or ``"structure"``.
        records: parsed records (:class:`AlignmentRecord` / :class:`StructureRecord`) or rows of a
            prepared ``alignment`` / ``structure`` split (dicts, or a ``datasets.Dataset``, whose
            images are then not decoded).
        min_votes: structure: annotators needed for a truth pixel (1 = union, as the ``mask``
            column of ``prepare-data`` by default).
        num_workers: structure: threads drawing the masks.

    Returns:
        alignment: the ``eval.json`` records, ``[{"prompt", "img_path", "total_score",
        "element_score": {raw key, byte for byte: mean vote}}]`` in record order; structure: the
        ``gt.pkl`` dict ``{image_name: {"pred_area": 512x512 uint8 0/1, "score": mos}}``, the
        mask made by :func:`~evalmuse_models.data.masks.truth_maps` (the one truth rule).

    Raises:
        UserInputError: an unknown config, a record without a label (``total_score``, an element
            score or ``mos`` null), or an image named twice.
    """
    if config not in OFFICIAL_TRUTH_FILES:
        raise UserInputError(f"config must be 'alignment' or 'structure', got {config!r}")
    if hasattr(records, "select_columns") and hasattr(records, "column_names"):  # a datasets.Dataset
        records = _dataset_columns(config, records)

    def where(index: int, item) -> str:
        if isinstance(item, (AlignmentRecord, StructureRecord)):
            return f"{item.source}: record {item.record_id}"
        key = "img_path" if config == "alignment" else "image_name"
        return f"row {index} ({key}={item.get(key)!r})" if isinstance(item, dict) else f"row {index}"

    if config == "alignment":
        return [_alignment_truth(item, where(i, item)) for i, item in enumerate(records)]
    if not hasattr(records, "column_names"):
        records = list(records)
        unsized = [r for r in records if isinstance(r, StructureRecord) and (r.width is None or r.height is None)]
        resolve_images(unsized)  # image sizes from the file headers
    truth: dict[str, dict[str, Any]] = {}
    entries = _map_in_order(lambda pair: _structure_truth(pair[1], where(*pair), min_votes),
                            enumerate(records), num_workers)
    for index, (name, entry) in enumerate(entries):
        if name in truth:
            raise UserInputError(f"the image {name!r} appears twice (the second time at position {index}); an "
                                 "image has one truth")
        truth[name] = entry
    return truth


def _dataset_columns(config: str, dataset):
    columns = {"alignment": ["img_path", "prompt", "total_score", "elements"],
               "structure": ["image_name", "mos", "shapes", "image"]}[config]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserInputError(f"the official {config} truth needs the columns {', '.join(missing)}; give a split "
                             f"of a prepared {config!r} dataset")
    dataset = dataset.select_columns(columns)
    if config == "structure":
        from datasets import Image

        dataset = dataset.cast_column("image", Image(decode=False))  # the size is read from the header
    return dataset


def write_official_truth(config: str, records, path, *, min_votes: int = 1, num_workers: int = 1) -> Path:
    """Write the official truth file of labelled records: ``eval.json`` (alignment, with
    :func:`evalmuse_models.metrics.write_alignment_truth`) or ``gt.pkl`` (structure, with
    :func:`evalmuse_models.metrics.write_structure_truth`), atomically. See :func:`build_official_truth`
    for the arguments; ``evalmuse prepare-data`` writes one per labelled evaluation split (train on
    request) in ``OUT_DIR/official/<config>/<split>/``.

    Example::

        from datasets import load_dataset
        from evalmuse_models.data import write_official_truth

        test = load_dataset("evalmuse", "structure", split="test")
        write_official_truth("structure", test, "ref/gt.pkl")   # then: evalmuse eval structure --truth ref/gt.pkl
    """
    from ..metrics import write_alignment_truth, write_structure_truth

    truth = build_official_truth(config, records, min_votes=min_votes, num_workers=num_workers)
    writer = write_alignment_truth if config == "alignment" else write_structure_truth
    return writer(truth, path)


def _written(records: list, state: dict) -> list:
    """The records of a split that were written (not skipped as invalid)."""
    dropped = {(item["file"], item["record"]) for item in state.get("skipped", [])}
    return [r for r in records if (r.source, r.record_id) not in dropped]


def _write_split_truth(config: str, split: str, records: list, state: dict, folder: Path, *, min_votes: int,
                       num_workers: int, labelled_only: bool = False) -> str | None:
    """Write the truth file of one written split when every record written is labelled (with
    ``labelled_only``: of its labelled records, when it has any); its path relative to ``folder`` (the
    dataset folder being built), or None."""
    written = _written(records, state)
    labelled = sum(_has_label(config, r) for r in written)
    if labelled_only and labelled:
        if labelled < len(written):
            print(f"note: {config}/{split}: the official truth file holds the {labelled} labelled records of "
                  f"{len(written)} (the others come from an unlabelled split)", file=sys.stderr)
        written = [r for r in written if _has_label(config, r)]
    elif not written or labelled < len(written):
        if labelled:
            print(f"note: {config}/{split}: {len(written) - labelled} of {len(written)} records have no label; no "
                  "official truth file is written for this split", file=sys.stderr)
        return None
    relative = f"{OFFICIAL_DIR}/{config}/{split}/{OFFICIAL_TRUTH_FILES[config]}"
    write_official_truth(config, written, folder / relative, min_votes=min_votes, num_workers=num_workers)
    return relative


# ---------------------------------------------------------------------------------------------
# Dataset card


def _render_card(
    out: Path, infos: dict, data_files: dict, num_rows: dict, skipped: int, mask_min_votes: int, template: Path,
    official_truth: list[str] = (),
):
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        pretty_name="EvalMuse (prepared)",
        task_categories=["text-to-image"],
        tags=["image-quality-assessment", "text-image-alignment", "evalmuse"],
        size_categories=[_size_category(sum(sum(s.values()) for s in num_rows.values()))],
    )
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    MetadataConfigs({
        name: {"data_files": [{"split": split, "path": pattern} for split, pattern in files.items()],
               **({"default": True} if name == "alignment" or len(data_files) == 1 else {})}
        for name, files in data_files.items()
    }).to_dataset_card_data(card_data)
    table = "\n".join(
        f"| `{config}` | {split} | {rows} |" for config, splits in num_rows.items() for split, rows in splits.items()
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template),
        split_table=table,
        configs=list(num_rows),
        skipped=skipped,
        mask_min_votes=mask_min_votes,
        official_truth=list(official_truth),
    )
    card.save(out / "README.md")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


# ---------------------------------------------------------------------------------------------
# Entry point


def prepare_dataset(
    out_dir,
    alignment_dir=None,
    structure_dir=None,
    *,
    skip_invalid: bool = False,
    overwrite: bool = False,
    num_shards: int | None = None,
    max_shard_size: int | str = "500MB",
    mask_min_votes: int = 1,
    num_workers: int | None = None,
    progress: bool | None = None,
    card_template=None,
    resume: bool = True,
    generator_map=None,
    official_truth: bool | Sequence[str] = OFFICIAL_TRUTH_SPLITS,
    holdout_generators: str | Sequence[str] | None = None,
) -> PreparedDataset:
    """Parse raw EvalMuse releases and write a Hub-ready dataset folder.

    Args:
        out_dir: the dataset folder to create (built aside and moved into place at the end, so
            it appears complete or not at all). Name it ``evalmuse`` to load it as
            ``load_dataset("evalmuse", ...)`` from its parent folder.
        alignment_dir: an EvalMuse-40K release folder (``train_list.json``, ``val_list.json`` /
            ``val.json``, ``test.json``, whichever exist, and the images ``img_path`` points to).
        structure_dir: an EvalMuse-Structure release folder (``train_info.json``,
            ``val_info.json``, ``test_info.json``; images ``<key>.jpg`` beside them or in
            ``train/``, ``val/``, ``test/``).
        skip_invalid: leave invalid records (bad fields, missing or corrupt images) out instead
            of stopping; they are listed with their reasons in ``skipped_records.jsonl`` inside
            the output folder.
        overwrite: replace an existing ``out_dir``.
        num_shards: Parquet shards per split (default: as many as ``max_shard_size`` needs).
        max_shard_size: shard size limit, bytes or a string such as ``"500MB"``.
        mask_min_votes: annotators needed for a pixel to be 255 in the ``mask`` column
            (1 = union, the default).
        num_workers: threads decoding and encoding images (default ``min(4, cpu count)``).
        progress: show tqdm progress bars (default: when stderr is a terminal).
        card_template: a Jinja dataset card template (default: the packaged one, also in
            ``dataset_scripts/``); it receives ``card_data``, ``split_table``, ``configs``,
            ``skipped`` and ``mask_min_votes``.
        resume: the dataset is built in a hidden sibling folder ``.<name>.partial`` with a
            progress file; after an interruption (Ctrl-C, a crash, a full disk) the same call
            continues after the last completed shard. The run must be the same: same raw JSON
            files (size and modification time) and options, otherwise it starts again. Pass
            ``False`` to always start from scratch. Bad input (an error naming a record) removes
            the partial folder.
        generator_map: the generator of each alignment image, for releases whose ``img_path``
            is flat (``img_0001.png``): a file read by
            :func:`~evalmuse_models.data.read_generator_map` (CSV ``img_path,generator`` or JSON
            ``{img_path: generator}``) or a dict. A listed image takes the map's generator;
            others keep the folder of their ``img_path``, or ``""`` (unknown) when it has none.
        official_truth: the splits whose official truth file is also written, when labelled (every
            record written has its labels): ``official/alignment/<split>/eval.json`` and
            ``official/structure/<split>/gt.pkl`` (see :func:`write_official_truth`; the
            structure masks use ``mask_min_votes``), for ``evalmuse eval ... --truth``. Default:
            the evaluation splits (``validation``, ``test``); ``True`` adds ``train`` (a ``gt.pkl``
            takes 256 KiB per image: 2.6 GB for the 10,000 training images); ``False`` none.
        holdout_generators: alignment generators to hold out (a list or ``"A,B"``): every image of
            theirs, from every split, goes to a ``test_unseen`` split instead (see
            :func:`~evalmuse_models.data.splits.split_by_generator`), whose official truth (its
            labelled records) is written unless ``official_truth`` is ``False``, and
            ``official/alignment/holdout.json`` marks each of its images ``prompt_seen`` (its prompt is
            in the train split) or ``prompt_unseen``, for ``evalmuse eval alignment --by seen/unseen``.

    Returns:
        A :class:`PreparedDataset` with the rows written per config and split, the skipped
        records and the official truth files.

    An image must lie inside its release folder, links followed; an image (``img_path`` or
    structure key) belongs to one split: a repeat in a later split is invalid (refused, or left
    out of that later split with ``skip_invalid``).

    Example::

        from evalmuse_models.data import prepare_dataset
        from datasets import load_dataset

        prepare_dataset("out/evalmuse", alignment_dir="EvalMuse-40K", structure_dir="EvalMuse-Structure")
        val = load_dataset("out/evalmuse", "alignment", split="validation")
    """
    from datasets.info import DatasetInfo
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.py_utils import convert_file_size_to_int

    if alignment_dir is None and structure_dir is None:
        raise UserInputError("nothing to prepare: give an alignment release folder, a structure one, or both")
    if mask_min_votes < 1:
        raise UserInputError(f"mask_min_votes must be at least 1, got {mask_min_votes}")
    if num_shards is not None and num_shards < 1:
        raise UserInputError(f"num_shards must be at least 1, got {num_shards}")
    try:
        max_bytes = convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise UserInputError(f"max_shard_size {max_shard_size!r} is not a size such as 500MB") from None
    num_workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    progress = sys.stderr.isatty() if progress is None else progress
    out_dir = Path(out_dir)
    card_template = Path(card_template) if card_template is not None else CARD_TEMPLATE
    if not card_template.is_file():
        raise UserInputError(f"dataset card template {card_template} does not exist")
    if out_dir.exists() and not overwrite:
        raise UserInputError(f"{out_dir} already exists; choose another output folder or pass --overwrite")
    if generator_map is not None and alignment_dir is None:
        raise UserInputError("a generator map names the generators of alignment images; give an alignment release "
                             "folder (--alignment) too")
    if generator_map is not None:
        generator_map = read_generator_map(generator_map)
    if holdout_generators is not None:
        if alignment_dir is None:
            raise UserInputError("held-out generators are alignment generators; give an alignment release folder "
                                 "(--alignment) too (EvalMuse-Structure images have no generator)")
        holdout_generators = parse_generator_list(holdout_generators)

    # Parse every JSON file first: bad records are reported before any image is read.
    skipped: list[SkippedRecord] = []
    jobs = []  # (config, split, json path, records, make_row, features)
    if alignment_dir is not None:
        root = Path(alignment_dir)
        files = _split_files(root, find_alignment_files, "alignment", "train_list.json, val_list.json, test.json")
        features = alignment_features()
        matched: set[str] = set()
        for split, path in files.items():
            records = load_alignment_records(path, skip_invalid=skip_invalid, skipped=skipped)
            if generator_map:
                for record in records:
                    record.generator = generator_from_img_path(record.img_path, generator_map)
                matched.update(r.img_path for r in records if r.img_path in generator_map)
            jobs.append(("alignment", split, path, records, lambda r, root=root: alignment_row(r, root), features))
        if generator_map and len(matched) < len(generator_map):
            print(f"note: {len(generator_map) - len(matched)} of the {len(generator_map)} images of the generator map "
                  "are in no alignment split file", file=sys.stderr)
    if structure_dir is not None:
        root = Path(structure_dir)
        files = _split_files(root, find_structure_files, "structure", "train_info.json, val_info.json, test_info.json")
        features = structure_features()
        for split, path in files.items():
            records = load_structure_records(path, skip_invalid=skip_invalid, skipped=skipped)
            jobs.append(("structure", split, path, records,
                         lambda r: structure_row(r, mask_min_votes=mask_min_votes), features))
    for config, field_name in (("alignment", "img_path"), ("structure", "<key>")):
        _one_split_per_image([job[1:4] for job in jobs if job[0] == config], field_name, skip_invalid, skipped)
    manifest = None
    if holdout_generators:
        jobs, manifest = _hold_out(jobs, holdout_generators)

    fingerprint = _fingerprint(
        [(config, split, path) for config, split, path, *_ in jobs],
        {"skip_invalid": skip_invalid, "num_shards": num_shards, "max_bytes": max_bytes,
         "mask_min_votes": mask_min_votes,
         "official_truth": official_truth if isinstance(official_truth, bool) else sorted(official_truth),
         "generator_map": sorted(generator_map.items()) if generator_map else None,
         "holdout_generators": list(holdout_generators or ())},
    )
    staging = _Staging(out_dir, fingerprint, resume=resume)
    result = PreparedDataset(path=out_dir, skipped=skipped)
    infos: dict[str, DatasetInfo] = {}
    data_files: dict[str, dict[str, str]] = {}
    with staging:
        tmp = staging.path
        for config, split, _path, records, make_row, features in jobs:
            directory = tmp / config
            directory.mkdir(exist_ok=True)
            state = staging.split_state(f"{config}/{split}")
            if state.get("done"):
                paths = [directory / name for name in state["final"]]
            else:
                paths = _write_split(
                    records, make_row, directory, split, features, skip_invalid=skip_invalid, state=state,
                    checkpoint=staging.save, max_bytes=max_bytes, num_shards=num_shards, num_workers=num_workers,
                    progress=progress, desc=f"{config}/{split}",
                )
                state.update(done=True, final=[p.name for p in paths])
                staging.save()
            skipped.extend(SkippedRecord(**item) for item in state["skipped"])
            num_rows = sum(s["rows"] for s in state["shards"])
            if num_rows == 0:
                for path in paths:
                    path.unlink(missing_ok=True)
                print(f"note: {config}/{split} has no valid record and is left out", file=sys.stderr)
                continue
            result.num_rows.setdefault(config, {})[split] = num_rows
            data_files.setdefault(config, {})[split] = f"{config}/{split}-*.parquet"
            held_out = manifest is not None and config == "alignment" and split == HOLDOUT_SPLIT
            if official_truth is True or (official_truth and (split in official_truth or held_out)):
                if "truth" not in state:
                    state["truth"] = _write_split_truth(config, split, records, state, tmp,
                                                        min_votes=mask_min_votes, num_workers=num_workers,
                                                        labelled_only=held_out)
                    staging.save()
                if state["truth"]:
                    result.official_truth.setdefault(config, {})[split] = out_dir / state["truth"]
            if held_out:
                written = {r.img_path for r in _written(records, state)}
                manifest = replace(manifest, images={p: mark for p, mark in manifest.images.items() if p in written})
                manifest.write(tmp / HOLDOUT_MANIFEST)
                result.holdout_manifest = out_dir / HOLDOUT_MANIFEST
            info = infos.setdefault(config, DatasetInfo(config_name=config, features=features, splits=SplitDict()))
            info.splits.add(SplitInfo(name=split, num_bytes=sum(s["bytes"] for s in state["shards"]),
                                      num_examples=num_rows))
        if not data_files:
            raise UserInputError("every record was invalid: nothing to write (see the skipped records)")
        if skipped:
            write_skipped_report(tmp / SKIPPED_REPORT_NAME, skipped)
        truth_files = [path.relative_to(out_dir).as_posix()
                       for splits in result.official_truth.values() for path in splits.values()]
        _render_card(tmp, infos, data_files, result.num_rows, len(skipped), mask_min_votes, card_template,
                     truth_files)
        staging.publish(overwrite=overwrite)
    if skipped:
        result.skipped_report = out_dir / SKIPPED_REPORT_NAME
    return result


def _hold_out(jobs: list, holdout_generators: Sequence[str]):
    """The jobs with the held-out generators' alignment records moved into a ``test_unseen`` job
    (after the other alignment splits), and the :class:`~evalmuse_models.data.splits.HoldoutManifest`."""
    alignment = [job for job in jobs if job[0] == "alignment"]
    held = split_by_generator({split: records for _, split, _, records, *_ in alignment}, holdout_generators)
    for _, split, _, records, *_ in alignment:
        records[:] = held.splits[split]
    _, _, first_path, _, make_row, features = alignment[0]
    at = jobs.index(alignment[-1]) + 1
    unseen = ("alignment", HOLDOUT_SPLIT, first_path, held.splits[HOLDOUT_SPLIT], make_row, features)
    return [*jobs[:at], unseen, *jobs[at:]], held.manifest


def _one_split_per_image(splits: list[tuple[str, Path, list]], field_name: str, skip_invalid: bool,
                         skipped: list[SkippedRecord]) -> None:
    """An image (alignment ``img_path``, structure key) belongs to one split: a repeat in a later
    split (in the order train, validation, test) is refused, or with ``skip_invalid`` removed from
    that split's ``records`` (in place) and reported."""
    first: dict[str, tuple[str, Path, str]] = {}
    for split, path, records in splits:
        kept = []
        for record in records:
            key = record.img_path if isinstance(record, AlignmentRecord) else record.image_name
            if key in first:
                other_split, other_path, other_id = first[key]
                error = RecordError(
                    path, record.record_id, field_name,
                    f"the same image is in split {other_split!r} ({other_path.name}, record {other_id}) and in split "
                    f"{split!r}; an image belongs to one split",
                    f"remove it from one of the two files, or pass --skip-invalid (skip_invalid=True) to keep it only "
                    f"in {other_split!r}",
                )
                if not skip_invalid:
                    raise error
                skipped.append(SkippedRecord.from_error(error))
                continue
            first[key] = (split, Path(path), record.record_id)
            kept.append(record)
        records[:] = kept


def _fingerprint(files: list[tuple[str, str, Path]], options: dict) -> str:
    """Identifies a run: the raw JSON files (path, size, modification time), the options and the
    format version (2: masks and heatmaps drawn by the organisers' rule, so a run started before
    that change is not resumed into a mix of both)."""
    described = [
        [config, split, str(Path(path).resolve()), Path(path).stat().st_size, Path(path).stat().st_mtime_ns]
        for config, split, path in files
    ]
    text = json.dumps({"files": described, "options": options, "version": 2}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Staging:
    """The hidden sibling ``.<name>.partial`` where the dataset is built, with a progress file
    listing completed shards; moved into place in one rename at the end."""

    PROGRESS = ".progress.json"

    def __init__(self, out_dir: Path, fingerprint: str, *, resume: bool):
        self.out_dir = out_dir
        self.path = out_dir.parent / f".{out_dir.name}.partial"
        self.state = {"fingerprint": fingerprint, "splits": {}}
        previous = None
        if resume and (self.path / self.PROGRESS).is_file():
            try:
                previous = json.loads((self.path / self.PROGRESS).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
        if previous is not None and previous.get("fingerprint") == fingerprint:
            self.state = previous
        else:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def split_state(self, key: str) -> dict:
        return self.state["splits"].setdefault(key, {})

    def has_progress(self) -> bool:
        return any(s.get("shards") for s in self.state["splits"].values())

    def save(self) -> None:
        atomic_write_text(self.path / self.PROGRESS, json.dumps(self.state))

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        """A failed build: bad input discards it (nothing worth resuming); any other failure or an interruption
        keeps the completed shards for the same command to resume, and says so. The error propagates."""
        if kind is not None:
            if issubclass(kind, UserInputError) or not self.has_progress():
                self.discard()
            else:
                print(f"interrupted: completed shards are kept in {self.path}; run the same command again to "
                      "resume", file=sys.stderr)
        return False

    def publish(self, *, overwrite: bool) -> None:
        (self.path / self.PROGRESS).unlink(missing_ok=True)
        if self.out_dir.exists() and not overwrite:
            raise UserInputError(f"{self.out_dir} appeared while it was being built; pass --overwrite")
        replace_directory(self.path, self.out_dir)


def _split_files(root: Path, finder, kind: str, expected: str) -> dict[str, Path]:
    if not root.is_dir():
        raise UserInputError(f"{kind} release folder {root} does not exist or is not a folder")
    files = finder(root)
    if not files:
        raise UserInputError(f"{root} holds no {kind} split file; expected one or more of {expected}")
    return files
