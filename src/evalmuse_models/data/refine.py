"""Box annotations refined into object masks with Segment Anything (``evalmuse refine-masks``).

EvalMuse-Structure annotators mark a distortion with a rectangle or a polygon drawn around it, so
the truth masks (:func:`~evalmuse_models.data.masks.truth_maps`) hold background as well as the
broken hand or face. This module asks Segment Anything (transformers' ``SamModel`` and
``SamProcessor``) for the object inside each annotated shape and writes a ``structure_refined``
config, with the same columns as ``structure``, whose ``mask`` and ``heatmap`` are made of the
refined shapes. Training on boxes or on refined masks is then the same recipe with another config.

The rule, per image:

1. each annotated shape is drawn at the original size by the official rule
   (:func:`~evalmuse_models.data.masks.rasterize_annotators`); the bounding box of its pixels,
   ``[x_min, y_min, x_max, y_max]`` (the first and last pixel, as SAM itself boxes a mask), is SAM's
   box prompt;
2. SAM predicts one mask per box (``multimask_output=False``, as SAM recommends for box prompts), which
   ``SamProcessor.post_process_masks`` brings to the original size (logits above 0);
3. the refined shape is SAM's mask **intersected with the shape as drawn**: refinement only removes
   pixels. A polygon leaves out part of its box on purpose, and SAM prompted with the box may
   segment a whole object reaching past it, so intersecting with the box alone would add pixels the
   annotator excluded. A shape of which SAM keeps at most ``min_keep`` of the pixels (default 0:
   none) is kept whole: SAM found no object there, and the annotator's mark is not dropped;
4. an annotator's refined mask is the union of their refined shapes;
5. the refined annotator masks go through :func:`~evalmuse_models.data.masks.truth_maps` unchanged:
   ``mask`` = pixels marked by at least ``mask_min_votes`` annotators (0/255, original size),
   ``heatmap`` = the baseline levels 64/127/180/255 of 1/2/3/4+ annotators resized to 512x512.

So every refined annotator mask lies inside its original one, the refined ``mask`` inside the
original ``mask`` and the refined heatmap is nowhere above the original. The ``shapes`` column keeps
the annotations as drawn (evaluations that draw the truth from ``shapes``, such as
:func:`~evalmuse_models.evaluation.structure.evaluate_structure`, still score against the official
box truth); the refined truth of the labelled evaluation splits is written as official truth files
(``official/structure_refined/<split>/gt.pkl``) for ``evalmuse eval structure --truth``.

The output folder::

    OUT_DIR/
      README.md                                   dataset card (YAML ``configs:`` with structure_refined)
      structure_refined/<split>-XXXXX-of-YYYYY.parquet
      refine_report.json                          area before/after and shrink of every image, summary
      official/structure_refined/<split>/gt.pkl   refined truth of the labelled validation/test splits
      .evalmuse-output.json                       marks the folder as written by this package

It is built in a hidden sibling ``.<name>.partial`` (shards of ``shard_rows`` rows written as they
complete, with a progress file) and moved into place at the end; an interrupted run resumes after
its last complete shard when run again with the same input and options.

Example::

    from datasets import load_dataset
    from evalmuse_models.data.refine import refine_dataset

    result = refine_dataset("data/evalmuse", "data/evalmuse-refined", model="facebook/sam-vit-base")
    print(result.summary["pooled_shrink"])               # share of the truth-mask area SAM removed
    refined = load_dataset("data/evalmuse-refined", "structure_refined", split="train")
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError
from ..utils.io import OUTPUT_MARKER, atomic_write_text, claim_output_directory
from .masks import TRUTH_SIZE, rasterize_annotators, truth_maps

__all__ = [
    "DEFAULT_SAM_MODEL",
    "REFINED_CONFIG",
    "REPORT_NAME",
    "RefinedDataset",
    "SamBoxRefiner",
    "refine_annotators",
    "refine_dataset",
    "region_box",
    "shape_regions",
    "summarize_shrink",
]

DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
REFINED_CONFIG = "structure_refined"
SOURCE_CONFIG = "structure"
REPORT_NAME = "refine_report.json"
#: The ``kind`` in the output folder's marker (only such a folder is replaced with ``overwrite``).
OUTPUT_KIND = "refined dataset"
#: Splits whose refined official truth (``gt.pkl``) is written when every row is labelled.
TRUTH_SPLITS = ("validation", "test")
_COLUMNS = ("image", "image_name", "prompt", "mos", "shapes", "mask", "heatmap")


# ---------------------------------------------------------------------------------------------
# SAM


class SamBoxRefiner:
    """Segment Anything prompted with boxes: one mask per box, at the image's original size.

    Args:
        model: a ``SamModel``.
        processor: its ``SamProcessor``.
        device, dtype: where and in what precision the model runs (the model is moved there).

    Example::

        refiner = SamBoxRefiner.from_pretrained("facebook/sam-vit-base")
        masks = refiner.predict([image], [np.array([[10, 20, 109, 89]])])   # [bool (1, height, width)]
    """

    def __init__(self, model, processor, *, device=None, dtype=None):
        import torch

        self.device = torch.device(device) if device is not None else model.device
        self.dtype = dtype if dtype is not None else model.dtype
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.name = getattr(model, "name_or_path", None) or type(model).__name__

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = DEFAULT_SAM_MODEL, *, device: str | None = "auto",
                        dtype: Any = "auto") -> SamBoxRefiner:
        """Load ``SamModel`` and ``SamProcessor`` from a Hub id or a local folder, on accelerate's device
        (``"auto"``: the GPU when there is one) in bf16 on a GPU that has it, fp32 elsewhere."""
        from transformers import SamModel, SamProcessor

        from ..scoring.engine import resolve_device_dtype

        state = None
        if device in (None, "auto"):
            from accelerate import PartialState

            state = PartialState()
        resolved_device, resolved_dtype = resolve_device_dtype(device, dtype, state)
        try:
            sam = SamModel.from_pretrained(model)
            processor = SamProcessor.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise UserInputError(
                f"cannot load the SAM model {str(model)!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
                "give a local folder with config.json, the weights and processor_config.json, or a Hub id such as "
                f"{DEFAULT_SAM_MODEL} (downloading needs the network)"
            ) from None
        refiner = cls(sam, processor, device=resolved_device, dtype=resolved_dtype)
        refiner.name = str(model)
        return refiner

    def predict(self, images: Sequence, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """SAM's masks of ``boxes`` in ``images``, one batch.

        Args:
            images: PIL images (RGB).
            boxes: per image, an ``(n, 4)`` array of ``[x_min, y_min, x_max, y_max]`` pixel boxes (``n`` may
                be 0).

        Returns:
            Per image, a ``bool`` array ``(n, height, width)`` at the image's size.
        """
        import torch

        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} lists of boxes")
        out = [np.zeros((0, im.size[1], im.size[0]), dtype=bool) for im in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return out
        most = max(len(boxes[i]) for i in todo)
        prompts = []
        for i in todo:  # the boxes of a batch form one (images, boxes, 4) tensor: pad with copies of the first box
            own = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
            prompts.append(np.concatenate([own, np.repeat(own[:1], most - len(own), axis=0)]).tolist())
        inputs = self.processor(images=[images[i] for i in todo], input_boxes=prompts, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(
                pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                input_boxes=inputs["input_boxes"].to(self.device),  # fp32: SAM normalises them before casting
                multimask_output=False,
            )
        masks = self.processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"])
        for i, mask in zip(todo, masks):
            out[i] = mask[: len(boxes[i]), 0].numpy()
        return out


# ---------------------------------------------------------------------------------------------
# The refinement rule


def shape_regions(shapes, width: int, height: int) -> list[list[np.ndarray]]:
    """Each annotated shape drawn alone by the official rule: per annotator, per shape, a ``bool``
    ``(height, width)`` mask (shapes that cover no pixel, such as a rectangle with reversed corners,
    are left out: they mark nothing)."""
    regions = []
    for annotator in shapes or []:
        drawn = [rasterize_annotators([[shape]], width, height)[0].astype(bool) for shape in annotator or []]
        regions.append([region for region in drawn if region.any()])
    return regions


def region_box(region: np.ndarray) -> list[int]:
    """``[x_min, y_min, x_max, y_max]``: the first and last column and row of a region's pixels (SAM's
    own box of a mask, as its automatic mask generation makes it)."""
    ys = np.flatnonzero(region.any(axis=1))
    xs = np.flatnonzero(region.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])]


def refine_annotators(regions: list[list[np.ndarray]], sam_masks: Sequence[np.ndarray], *,
                      min_keep: float = 0.0) -> tuple[np.ndarray, int]:
    """The refined annotator masks (see the module doc) and how many shapes were kept whole.

    Args:
        regions: :func:`shape_regions` of an image (``A`` annotators).
        sam_masks: SAM's mask of each region, in the order of ``regions`` flattened.
        min_keep: a shape of which SAM's mask keeps at most this share of the pixels is kept whole.

    Returns:
        ``(masks, kept_whole)``: ``masks`` a 0/1 ``uint8`` array ``(A, height, width)`` for
        :func:`~evalmuse_models.data.masks.truth_maps`, each annotator's the union of their
        refined shapes.
    """
    flat = [region for annotator in regions for region in annotator]
    if len(sam_masks) != len(flat):
        raise ValueError(f"{len(flat)} shapes but {len(sam_masks)} SAM masks")
    if not flat:
        raise ValueError("refine_annotators needs the image size: give at least one shape")
    height, width = flat[0].shape
    masks = np.zeros((len(regions), height, width), dtype=np.uint8)
    kept_whole = 0
    k = 0
    for a, annotator in enumerate(regions):
        for region in annotator:
            refined = region & np.asarray(sam_masks[k], dtype=bool)
            k += 1
            if refined.sum() <= min_keep * region.sum():
                refined, kept_whole = region, kept_whole + 1
            masks[a] |= refined
    return masks, kept_whole


# ---------------------------------------------------------------------------------------------
# Report


def _quantile(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if values.size else None


def summarize_shrink(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary of per-image report entries: images, shapes, areas before and after, the pooled shrink
    (``1 - area_after / area_before`` over all images), the mean, median and quantiles of the per-image
    shrink (images whose truth mask has pixels), how many images kept their whole mask or lost it all."""
    before = np.array([e["area_before"] for e in entries], dtype=np.int64)
    after = np.array([e["area_after"] for e in entries], dtype=np.int64)
    shrink = np.array([e["shrink"] for e in entries if e["shrink"] is not None], dtype=np.float64)
    total_before = int(before.sum())
    return {
        "num_images": len(entries),
        "images_with_regions": int((before > 0).sum()),
        "num_shapes": int(sum(e["shapes"] for e in entries)),
        "shapes_kept_whole": int(sum(e["kept_whole"] for e in entries)),
        "area_before": total_before,
        "area_after": int(after.sum()),
        "pooled_shrink": None if total_before == 0 else 1.0 - float(after.sum()) / total_before,
        "mean_shrink": float(shrink.mean()) if shrink.size else None,
        "median_shrink": _quantile(shrink, 0.5),
        "quantiles": {f"p{round(100 * q)}": _quantile(shrink, q) for q in (0.1, 0.25, 0.75, 0.9)},
        "images_unchanged": int((shrink == 0).sum()),
        "images_emptied": int((shrink == 1).sum()),
    }


# ---------------------------------------------------------------------------------------------
# One batch of rows


def _where(split: str, index: int, row: dict) -> str:
    return f"split {split!r}, row {index} (image_name={row.get('image_name')!r})"


def _decode(value, what: str, where: str):
    from PIL import Image, UnidentifiedImageError

    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    if not data and not path:
        raise UserInputError(f"{where}: the {what} column is empty")
    try:
        with Image.open(io.BytesIO(data) if data else path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise UserInputError(f"{where}: the {what} is corrupt or not an image ({error})") from None


@dataclass
class _Pending:
    """A row between its drawing and SAM's masks."""

    index: int
    row: dict
    image: Any
    regions: list[list[np.ndarray]]
    boxes: np.ndarray


def _prepare(split: str, index: int, row: dict, min_votes: int) -> _Pending:
    where = _where(split, index, row)
    image = _decode(row["image"], "image", where)
    width, height = image.size
    try:
        regions = shape_regions(row["shapes"], width, height)
    except (ValueError, TypeError, KeyError) as error:
        raise UserInputError(f"{where}, column 'shapes': {error}") from None
    if row.get("mask") is not None:
        stored = np.asarray(_decode(row["mask"], "mask", where).convert("L")) > 0
        drawn = truth_maps(_union_masks(regions, width, height), min_votes=min_votes, size=None).mask
        if stored.shape != drawn.shape or not np.array_equal(stored, drawn.astype(bool)):
            raise UserInputError(
                f"{where}: the mask column is not the pixels marked by at least {min_votes} annotator(s) of the row's "
                "shapes; pass the --mask-min-votes the dataset was prepared with (evalmuse prepare-data "
                "--mask-min-votes), or prepare it again")
    boxes = np.array([region_box(r) for annotator in regions for r in annotator], dtype=np.int64).reshape(-1, 4)
    return _Pending(index, row, image.convert("RGB"), regions, boxes)


def _union_masks(regions: list[list[np.ndarray]], width: int, height: int) -> np.ndarray:
    """The original annotator masks, from the drawn shapes."""
    masks = np.zeros((len(regions), height, width), dtype=np.uint8)
    for a, annotator in enumerate(regions):
        for region in annotator:
            masks[a] |= region
    return masks


def _finish(split: str, pending: _Pending, sam_masks: np.ndarray, *, min_votes: int,
            min_keep: float) -> tuple[dict, dict]:
    from .export import _png

    row, regions = pending.row, pending.regions
    width, height = pending.image.size
    original = _union_masks(regions, width, height)
    before = truth_maps(original, min_votes=min_votes, size=None).mask
    if len(pending.boxes):
        refined, kept_whole = refine_annotators(regions, sam_masks, min_keep=min_keep)
    else:
        refined, kept_whole = original, 0
    maps = truth_maps(refined, min_votes=min_votes, size=TRUTH_SIZE)
    area_before, area_after = int(before.sum()), int(maps.mask.sum())
    entry = {
        "split": split,
        "row": pending.index,
        "image_name": row.get("image_name"),
        "width": width,
        "height": height,
        "shapes": len(pending.boxes),
        "kept_whole": kept_whole,
        "area_before": area_before,
        "area_after": area_after,
        "shrink": None if area_before == 0 else 1.0 - area_after / area_before,
    }
    out = {key: row[key] for key in _COLUMNS}
    out["mask"] = {"bytes": _png(maps.mask * np.uint8(255)), "path": None}
    out["heatmap"] = {"bytes": _png(maps.heatmap), "path": None}
    return out, entry


# ---------------------------------------------------------------------------------------------
# The dataset


@dataclass
class RefinedDataset:
    """What :func:`refine_dataset` wrote."""

    path: Path
    report_path: Path
    num_rows: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    #: split -> the refined official truth file (``gt.pkl``) of the labelled evaluation splits
    official_truth: dict[str, Path] = field(default_factory=dict)
    #: images SAM refined in this call (not those of shards resumed from an earlier run), and the time taken
    images_refined: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float | None:
        return self.images_refined / self.seconds if self.images_refined and self.seconds > 0 else None


def _load_source(dataset_dir: Path, splits: Sequence[str] | None):
    from datasets import Image, load_dataset

    if not dataset_dir.is_dir():
        raise UserInputError(f"dataset folder {dataset_dir} does not exist or is not a folder; build it with "
                             "`evalmuse prepare-data`")
    try:
        dataset = load_dataset(str(dataset_dir), SOURCE_CONFIG)
    except (FileNotFoundError, ValueError) as error:
        raise UserInputError(f"cannot load the {SOURCE_CONFIG!r} config of {dataset_dir} ({error}); build the folder "
                             "with `evalmuse prepare-data --structure ...`") from None
    names = list(dataset) if splits is None else list(splits)
    unknown = [s for s in names if s not in dataset]
    if unknown:
        raise UserInputError(f"{dataset_dir}: no split {', '.join(map(repr, unknown))} in the {SOURCE_CONFIG!r} config "
                             f"(splits: {', '.join(dataset)})")
    if not names:
        raise UserInputError("no split to refine")
    out = {}
    for name in names:
        split = dataset[name]
        missing = [c for c in _COLUMNS if c not in split.column_names]
        if missing:
            raise UserInputError(f"{dataset_dir}, split {name!r}: missing columns {', '.join(missing)}; expected the "
                                 f"{SOURCE_CONFIG!r} config of a prepared EvalMuse dataset")
        for column in ("image", "mask", "heatmap"):
            split = split.cast_column(column, Image(decode=False))  # bytes kept as they are, decoded here
        out[name] = split.select_columns(list(_COLUMNS))
    return out


def _fingerprint(dataset_dir: Path, splits: Sequence[str], options: dict) -> str:
    """Identifies a run: the dataset folder's files (path, size, modification time), the splits and the options."""
    files = sorted(
        [path.relative_to(dataset_dir).as_posix(), path.stat().st_size, path.stat().st_mtime_ns]
        for path in dataset_dir.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(dataset_dir).parts)
    )
    text = json.dumps({"dataset": str(dataset_dir.resolve()), "files": files, "splits": list(splits),
                       "options": options, "version": 1}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _refine_split(name: str, split, refiner: SamBoxRefiner, directory: Path, state: dict, checkpoint, *,
                  batch_size: int, shard_rows: int, min_votes: int, min_keep: float, progress: bool) -> int:
    """Refine one split into Parquet shards; returns the rows SAM refined in this call."""
    from tqdm.auto import tqdm

    from .export import _ShardedParquetWriter, structure_features

    entries = list(state.get("report", []))

    def save():
        state["report"] = list(entries)  # the rows of the completed shards: the row being offered is not yet in
        checkpoint()

    total = len(split)
    writer = _ShardedParquetWriter(
        directory, name, structure_features(), max_bytes=0, num_shards=max(1, math.ceil(total / shard_rows)),
        total=total, state=state, on_checkpoint=save)
    start = writer.seen
    try:
        with tqdm(total=total, initial=start, desc=f"refine {name}", unit="img", disable=not progress) as bar:
            for first in range(start, total, batch_size):
                batch = split[first:first + batch_size]
                rows = [{key: batch[key][i] for key in batch} for i in range(len(batch["image"]))]
                pending = [_prepare(name, first + i, row, min_votes) for i, row in enumerate(rows)]
                masks = refiner.predict([p.image for p in pending], [p.boxes for p in pending])
                for p, sam in zip(pending, masks):
                    row, entry = _finish(name, p, sam, min_votes=min_votes, min_keep=min_keep)
                    writer.offer(row)  # may complete a shard, whose rows' entries are then saved
                    entries.append(entry)
                    bar.update()
        paths = writer.finish()
        state["final"] = [p.name for p in paths]
        save()
    except BaseException:
        writer.abort()
        raise
    return total - start


def _write_truth(directory: Path, files: list[str], target: Path) -> None:
    """The refined official truth (``gt.pkl``) of a written split: each row's ``mask`` through the same
    resize-and-binarise rule as the structure truth (:func:`truth_maps` of the mask as one annotator)."""
    import pyarrow.parquet as pq

    from ..metrics import write_structure_truth

    truth = {}
    for file in files:
        table = pq.read_table(directory / file, columns=["image_name", "mos", "mask"])
        for name, mos, mask in zip(*(table.column(c).to_pylist() for c in ("image_name", "mos", "mask"))):
            drawn = (np.asarray(_decode(mask, "mask", f"{file}: {name!r}").convert("L")) > 0).astype(np.uint8)
            truth[name] = {"pred_area": truth_maps(drawn[None], size=TRUTH_SIZE).truth, "score": float(mos)}
    write_structure_truth(truth, target)


def _write_card(folder: Path, infos: dict, num_rows: dict[str, int], settings: dict, truth_files: list[str]) -> None:
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(pretty_name="EvalMuse-Structure (SAM-refined masks)",
                                tags=["image-quality-assessment", "evalmuse"])
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    MetadataConfigs({REFINED_CONFIG: {
        "data_files": [{"split": s, "path": f"{REFINED_CONFIG}/{s}-*.parquet"} for s in num_rows], "default": True,
    }}).to_dataset_card_data(card_data)
    table = "\n".join(f"| `{REFINED_CONFIG}` | {s} | {n} |" for s, n in num_rows.items())
    whole = ("a shape SAM finds nothing in is kept whole" if settings["min_keep"] == 0 else
             f"a shape of which SAM keeps at most {settings['min_keep']:.0%} of the pixels is kept whole")
    truth = ("\nRefined official truth files (`gt.pkl`, for `evalmuse eval structure --truth`): "
             + ", ".join(f"`{f}`" for f in truth_files) + ".\n") if truth_files else ""
    body = f"""
# EvalMuse-Structure with SAM-refined masks

The `structure` config of a prepared EvalMuse dataset with its `mask` and `heatmap` made again from the
annotated shapes refined by Segment Anything (`{settings['model']}`), with `evalmuse refine-masks`
(package `evalmuse-models`): each shape's bounding box prompts SAM, the refined shape is SAM's mask inside
the shape as drawn ({whole}), an annotator's mask
the union of their refined shapes, and `mask` (pixels of at least {settings['mask_min_votes']} annotator(s),
0/255) and `heatmap` (levels 64/127/180/255 of 1/2/3/4+ annotators, 512x512) follow the rule of the
`structure` config. The other columns, `shapes` included, are those of `structure`. `refine_report.json`
gives the mask area of every image before and after.

| config | split | rows |
|---|---|---|
{table}
{truth}
```python
from datasets import load_dataset

refined = load_dataset("path/or/repo", "{REFINED_CONFIG}", split="train")
```
"""
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}").save(folder / "README.md")


def refine_dataset(
    dataset_dir,
    out_dir,
    *,
    model: str | os.PathLike | SamBoxRefiner = DEFAULT_SAM_MODEL,
    splits: Sequence[str] | None = None,
    batch_size: int = 8,
    mask_min_votes: int = 1,
    min_keep: float = 0.0,
    shard_rows: int = 256,
    device: str | None = "auto",
    dtype: Any = "auto",
    overwrite: bool = False,
    resume: bool = True,
    progress: bool | None = None,
) -> RefinedDataset:
    """Refine the ``structure`` config of a prepared dataset with SAM and write the ``structure_refined``
    config, its report and dataset card to ``out_dir`` (see the module doc for the rule and the layout).

    Args:
        dataset_dir: a folder written by ``evalmuse prepare-data`` (its ``structure`` config is read).
        out_dir: the dataset folder to write (built aside and moved into place at the end).
        model: a SAM Hub id or local folder (``SamModel`` + ``SamProcessor``), or a :class:`SamBoxRefiner`.
        splits: the splits to refine (default: all of them).
        batch_size: images per SAM forward pass.
        mask_min_votes: annotators needed for a ``mask`` pixel; the dataset's own ``mask`` column is checked
            against it (use the value given to ``prepare-data``).
        min_keep: a shape of which SAM keeps at most this share of the pixels is kept whole (0: only a shape
            SAM finds nothing in).
        shard_rows: rows per Parquet shard (an interrupted run resumes after its last complete shard).
        device, dtype: ``"auto"``: accelerate's device (the GPU when there is one), bf16 on a GPU that has it.
        overwrite: replace an ``out_dir`` this function wrote before.
        resume: continue an interrupted run with the same input and options (``False``: start over).
        progress: show progress bars (default: when stderr is a terminal).

    Returns:
        A :class:`RefinedDataset`: rows per split, the summary of the report, the official truth files.

    Raises:
        UserInputError: a missing dataset or config, missing columns, a corrupt image, bad shapes, a ``mask``
            column made with another ``mask_min_votes``, an ``out_dir`` that may not be written, a model that
            cannot be loaded, or a bad option.
    """
    from datasets.info import DatasetInfo
    from datasets.splits import SplitDict, SplitInfo

    from .export import _Staging, structure_features

    for option, value in (("batch_size", batch_size), ("shard_rows", shard_rows), ("mask_min_votes", mask_min_votes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{option} must be an integer >= 1, got {value!r}")
    if not 0.0 <= float(min_keep) < 1.0:
        raise UserInputError(f"min_keep must be in [0, 1), got {min_keep!r}")
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserInputError(f"{out_dir} already exists; choose another output folder or pass --overwrite")
    claim_output_directory(out_dir, OUTPUT_KIND, inputs=[dataset_dir], overwrite=overwrite)
    progress = sys.stderr.isatty() if progress is None else progress
    sources = _load_source(dataset_dir, splits)
    refiner = model if isinstance(model, SamBoxRefiner) else SamBoxRefiner.from_pretrained(model, device=device,
                                                                                            dtype=dtype)
    settings = {"model": refiner.name, "mask_min_votes": mask_min_votes, "min_keep": float(min_keep),
                "prompt": "bounding box of each annotated shape", "refined_shape": "SAM mask inside the shape as drawn"}
    fingerprint = _fingerprint(dataset_dir, list(sources), {**settings, "shard_rows": shard_rows})
    staging = _Staging(out_dir, fingerprint, resume=resume)
    result = RefinedDataset(path=out_dir, report_path=out_dir / REPORT_NAME)
    started = time.perf_counter()
    with staging:
        tmp = staging.path
        directory = tmp / REFINED_CONFIG
        directory.mkdir(exist_ok=True)
        info = DatasetInfo(config_name=REFINED_CONFIG, features=structure_features(), splits=SplitDict())
        entries: list[dict] = []
        truth_files: list[str] = []
        for name, split in sources.items():
            state = staging.split_state(name)
            if not state.get("done"):
                result.images_refined += _refine_split(
                    name, split, refiner, directory, state, staging.save, batch_size=batch_size,
                    shard_rows=shard_rows, min_votes=mask_min_votes, min_keep=float(min_keep), progress=progress)
                state["done"] = True
                staging.save()
            entries.extend(state["report"])
            result.num_rows[name] = len(split)
            info.splits.add(SplitInfo(name=name, num_bytes=sum(s["bytes"] for s in state["shards"]),
                                      num_examples=len(split)))
            if name in TRUTH_SPLITS and len(split) and all(m is not None for m in split["mos"]):
                relative = f"official/{REFINED_CONFIG}/{name}/gt.pkl"
                if not state.get("truth"):
                    _write_truth(directory, state["final"], tmp / relative)
                    state["truth"] = relative
                    staging.save()
                truth_files.append(relative)
                result.official_truth[name] = out_dir / relative
        result.seconds = time.perf_counter() - started
        summary = summarize_shrink(entries)
        summary["splits"] = {name: summarize_shrink([e for e in entries if e["split"] == name]) for name in sources}
        result.summary = summary
        report = {"analysis": "refine", "dataset": str(dataset_dir), "config": REFINED_CONFIG,
                  "settings": settings, "summary": summary, "images": entries}
        atomic_write_text(tmp / REPORT_NAME, json.dumps(report, indent=1) + "\n")
        _write_card(tmp, {REFINED_CONFIG: info}, result.num_rows, settings, truth_files)
        atomic_write_text(tmp / OUTPUT_MARKER, json.dumps({"written_by": "evalmuse-models", "kind": OUTPUT_KIND}) + "\n")
        claim_output_directory(out_dir, OUTPUT_KIND, inputs=[dataset_dir], overwrite=overwrite)
        staging.publish(overwrite=overwrite)
    return result
