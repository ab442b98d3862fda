"""Structure masks from an instance-segmentation model's COCO-format results (``--masks-from``).

HNU-VPAI, winners of the EvalMuse-Structure track, found the distorted regions with an instance
segmentation model (Co-DETR, trained on the distortion boxes) and scored the images with another
model: each image's mask is the union of the detector's instances of one category (2) with a
confidence of at least 0.3. This module reads such results and gives every image its united mask, for
``evalmuse score --masks-from`` (masks from the detector, scores from any structure model) and
``evalmuse submit --masks-from`` (the masks of a results file replaced).

The results are COCO's detection-results format, as mmdetection writes it (``results.segm.json``): a
JSON list of ``{"image_id", "category_id", "score", "segmentation"}`` records, ``segmentation`` an RLE
(``counts`` a string, as pycocotools and mmdetection write it, or a list of run lengths) or polygons.
Image ids are mapped to images by the COCO annotation file the detector ran on (its ``images``:
``[{"id", "file_name", "height", "width"}]``), or each record names its image with a ``file_name``.
An image is keyed as submissions key it (:func:`~evalmuse_models.scoring.submission.structure_key`:
the file name without an image extension), which is how it meets the scoring rows' ids. Masks are
decoded by ``pycocotools`` (:func:`~evalmuse_models.scoring.rle.coco_rle`).

Example::

    from evalmuse_models.scoring.detections import load_detection_masks

    masks = load_detection_masks("results.segm.json", annotations="test.json", categories=[2], min_score=0.3)
    mask = masks["0a1b2c"]            # uint8 0/1 at the image's size: the union of its kept instances
    masks.instances("0a1b2c")         # how many instances were united
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError
from ..utils.jsonio import read_json_file
from .rle import coco_rle, decode_rle, mask_to_rle
from .submission import structure_key

#: HNU-VPAI's selection: the detector's category 2, instances with a score of at least 0.3.
DEFAULT_CATEGORIES = (2,)
DEFAULT_MIN_SCORE = 0.3

_FORMAT = "a JSON list of {image_id, category_id, score, segmentation} records, as mmdetection writes them"


@dataclass
class _Instance:
    record: int  # its index in the results file
    segmentation: Any  # as read (polygons wait here for the image's size)
    rle: dict | None = None  # pycocotools' compressed RLE, once decodable


@dataclass
class _Image:
    key: str
    file_name: str
    size: tuple[int, int] | None = None  # (height, width)
    size_from: str = ""  # what gave the size, for error messages
    instances: list[_Instance] = field(default_factory=list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class DetectionMasks(Mapping):
    """Each image's united detection mask, keyed by :func:`structure_key` of its file name.

    ``masks[key]`` is the uint8 0/1 mask at the image's size (all zeros when no instance was kept);
    :meth:`mask` also takes the size of an image that the results alone do not give (polygons without an
    annotation file). Built by :func:`load_detection_masks`.
    """

    def __init__(self, path: Path, images: dict[str, _Image], *, complete: bool, annotations: Path | None,
                 categories: tuple[int, ...] | None, min_score: float):
        self.path = path
        self.annotations = annotations
        self.categories = categories
        self.min_score = min_score
        #: True when an annotation file lists every image: a key it lacks is an error, not an empty mask.
        self.complete = complete
        self._images = images

    # Mapping: the images the results (or the annotation file) know.
    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._images:
            raise KeyError(key)
        return self.mask(key)

    def __contains__(self, key: object) -> bool:  # without decoding the mask
        return key in self._images

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        kept = sum(len(image.instances) for image in self._images.values())
        return (f"DetectionMasks({str(self.path)!r}, images={len(self)}, instances={kept}, "
                f"categories={self.categories}, min_score={self.min_score})")

    def describe(self) -> dict[str, Any]:
        """Where the masks come from (recorded in each results row's ``meta.masks_from``)."""
        return {
            "results": str(self.path),
            "annotations": None if self.annotations is None else str(self.annotations),
            "categories": None if self.categories is None else list(self.categories),
            "min_score": self.min_score,
        }

    def size(self, key: str) -> tuple[int, int] | None:
        """``(height, width)`` of an image as the annotation file or its RLE masks give it (None: not known)."""
        image = self._images.get(key)
        return None if image is None else image.size

    def instances(self, key: str) -> int:
        """How many instances of the image were kept (selected category, score at least ``min_score``)."""
        image = self._images.get(key)
        return 0 if image is None else len(image.instances)

    def _unknown(self, head: str) -> UserInputError:
        names = ", ".join(repr(k) for k in list(self._images)[:3])
        return UserInputError(
            f"{self.path}: {head} (its {len(self)} images are keyed like {names}: file names without the extension); "
            "give the annotation file of the images being scored"
        )

    def mask(self, key: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """The union of the image's kept instances, uint8 0/1 of shape ``(height, width)``.

        Args:
            key: the image's key (:func:`structure_key` of its file name or results id).
            size: the image's ``(height, width)``; checked against the size the detections give, and
                needed where they give none (polygons only, or no kept instance, without an annotation file).

        Raises:
            UserInputError: the key is not in the annotation file, a mask is not of the image's size,
                or a polygon cannot be drawn; the message names the file and the record.
        """
        from pycocotools import mask as mask_utils

        image = self._images.get(key)
        if image is None:
            if self.complete:
                raise self._unknown(f"image {key!r} is not in {self.annotations}")
            if size is None:
                raise UserInputError(f"{self.path}: no detection names image {key!r} and its size is not given")
            return np.zeros(tuple(int(v) for v in size), dtype=np.uint8)
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if image.size is not None and image.size != size:
                raise UserInputError(
                    f"{self.path}: image {key!r} is {_hw(size)} (height x width) but {image.size_from} makes it "
                    f"{_hw(image.size)}; are these the detections of these images?"
                )
        size = image.size or size
        if size is None:
            raise UserInputError(f"{self.path}: the size of image {key!r} is unknown (polygons only); pass it")
        rles = [self._rle(image, instance, size) for instance in image.instances]
        if not rles:
            return np.zeros(size, dtype=np.uint8)
        united = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=False)
        return decode_rle(united)

    def _rle(self, image: _Image, instance: _Instance, size: tuple[int, int]) -> dict:
        if instance.rle is None or list(instance.rle["size"]) != list(size):
            try:
                instance.rle = coco_rle(instance.segmentation, *size)
            except UserInputError as err:
                raise UserInputError(f"{self.path}: record {instance.record} (image {image.key!r}): {err}") from None
        return instance.rle

    def mask_512(self, key: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """The united mask as the official scorer reads a submitted one: resized to 512 x 512 (bilinear) and
        ``> 0`` (:func:`~evalmuse_models.metrics.binarize_prediction`), so that submitting it scores as
        submitting the mask at the image's size."""
        from ..metrics import binarize_prediction

        return binarize_prediction(self.mask(key, size))

    def structure_entry(self, key: str, size: tuple[int, int]) -> dict[str, Any]:
        """A results row's ``structure`` fields from the detections: ``mask``, ``mask_512`` (RLE), ``regions``
        (the mask's 8-connected components, by the structure model's post-processing) and ``instances``."""
        from ..metrics import binarize_prediction
        from ..models.evalmuse_structure.post_processing_evalmuse_structure import mask_to_regions

        mask = self.mask(key, size)
        return {
            "mask": mask_to_rle(mask),
            "mask_512": mask_to_rle(binarize_prediction(mask)),
            "regions": [{"bbox": [int(v) for v in region["bbox"]], "area": float(region["area"])}
                        for region in mask_to_regions(mask)],
            "instances": self.instances(key),
        }

    def check_keys(self, keys: Iterable[str], what: str = "the images") -> None:
        """Refuse a set of image keys the detections cannot be about: a key the annotation file lacks, or (without
        one) no key the detections name at all."""
        keys = list(keys)
        if self.complete:
            missing = [key for key in keys if key not in self._images]
            if missing:
                shown = ", ".join(repr(k) for k in missing[:3]) + (" ..." if len(missing) > 3 else "")
                raise self._unknown(f"{len(missing)} of {what} are not in {self.annotations} ({shown})")
        elif keys and self._images and not any(key in self._images for key in keys):
            ours = ", ".join(repr(k) for k in list(self._images)[:3])
            theirs = ", ".join(repr(k) for k in keys[:3])
            raise UserInputError(
                f"{self.path}: none of {what} ({theirs}, ...) is named by the detections ({ours}, ...); images are "
                "matched by file name without the extension"
            )


def _read_annotation_images(path: Path) -> tuple[dict[Any, _Image], dict[str, _Image], dict[int, str]]:
    """``(by image id, by key, categories {id: name})`` of a COCO annotation file."""
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserInputError(
            f"{path}: expected a COCO annotation file, an object with \"images\": [{{\"id\", \"file_name\", "
            f"\"height\", \"width\"}}, ...], got {'an object without an images list' if isinstance(data, dict) else 'a ' + type(data).__name__}"
        )
    by_id: dict[Any, _Image] = {}
    by_key: dict[str, _Image] = {}
    for index, entry in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict):
            raise UserInputError(f"{where}: expected an object {{id, file_name, height, width}}")
        image_id, file_name = entry.get("id"), entry.get("file_name")
        height, width = entry.get("height"), entry.get("width")
        if not (_is_int(image_id) or isinstance(image_id, str)):
            raise UserInputError(f"{where}: 'id' must be an integer or a string, got {image_id!r}")
        if not isinstance(file_name, str) or not file_name:
            raise UserInputError(f"{where}: 'file_name' must be a file name, got {file_name!r}")
        if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
            raise UserInputError(f"{where}: 'height' and 'width' must be positive integers, got {height!r}, {width!r}")
        if image_id in by_id:
            raise UserInputError(f"{where}: image id {image_id!r} appears twice")
        key = structure_key(file_name)
        if key in by_key:
            raise UserInputError(f"{where}: {file_name!r} and {by_key[key].file_name!r} are the same image {key!r} "
                                 "(file names without the extension must be unique)")
        image = _Image(key, file_name, (height, width), f"{path.name} ({file_name!r})")
        by_id[image_id] = by_key[key] = image
    categories = {}
    for entry in data.get("categories") or []:
        if isinstance(entry, dict) and _is_int(entry.get("id")):
            categories[entry["id"]] = str(entry.get("name", ""))
    return by_id, by_key, categories


def load_detection_masks(
    results_json: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    categories: Sequence[int] | None = DEFAULT_CATEGORIES,
    min_score: float = DEFAULT_MIN_SCORE,
) -> DetectionMasks:
    """Read an instance-segmentation model's COCO-format results into each image's united mask.

    Args:
        results_json: the detector's results, a JSON list of ``{"image_id", "category_id", "score",
            "segmentation"}`` (mmdetection's ``*.segm.json``; optional ``file_name``).
        annotations: the COCO annotation file the detector ran on, whose ``images`` map ids to file names and
            sizes. Without it every record needs a ``file_name``.
        categories: the category ids whose instances make the mask (None: every category).
        min_score: instances with a lower score are left out.

    Returns:
        a :class:`DetectionMasks`: image key → uint8 mask, the union of the image's kept instances. An image
        without a kept instance has an empty mask.

    Raises:
        UserInputError: naming the file and the record: not a JSON list, a record without an image the
            annotation file knows (or without ``file_name``), a bad ``category_id`` / ``score``, no or an
            undecodable ``segmentation``, a mask whose size is not the image's.
    """
    path = Path(results_json)
    if not path.is_file():
        raise UserInputError(f"{path}: no such detection results file")
    if not (isinstance(min_score, (int, float)) and math.isfinite(min_score)):
        raise UserInputError(f"the minimum instance score must be a finite number, got {min_score!r}")
    selected = None if categories is None else tuple(sorted({int(c) for c in categories}))
    annotation_path = None if annotations is None else Path(annotations)
    by_id: dict[Any, _Image] | None = None
    images: dict[str, _Image] = {}
    if annotation_path is not None:
        by_id, images, known_categories = _read_annotation_images(annotation_path)
        if selected is not None and known_categories and not set(selected) & set(known_categories):
            listed = ", ".join(f"{k} ({v})" if v else str(k) for k, v in sorted(known_categories.items()))
            raise UserInputError(f"{annotation_path}: no category {', '.join(map(str, selected))}; its categories are "
                                 f"{listed}")

    records = read_json_file(path)
    if not isinstance(records, list):
        hint = ""
        if isinstance(records, dict) and "images" in records:
            hint = ("; this looks like a COCO annotation file: give it as the annotations (--mask-annotations) and "
                    "the detector's results as --masks-from")
        raise UserInputError(f"{path}: expected {_FORMAT}, got a JSON {type(records).__name__}{hint}")
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            raise UserInputError(f"{where}: expected an object {{image_id, category_id, score, segmentation}}")
        if by_id is not None:
            image_id = record.get("image_id")
            try:
                image = by_id[image_id]
            except (KeyError, TypeError):
                raise UserInputError(f"{where}: unknown image id {image_id!r}: {annotation_path} has no such image "
                                     "(give the annotation file the detector ran on)") from None
        else:
            file_name = record.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise UserInputError(
                    f"{where}: no 'file_name' naming the image; give the COCO annotation file the detector ran on "
                    "(--mask-annotations), which maps image ids to file names"
                )
            key = structure_key(file_name)
            image = images.setdefault(key, _Image(key, file_name))
            if image.file_name != file_name:
                raise UserInputError(f"{where}: {file_name!r} and {image.file_name!r} are the same image {key!r} "
                                     "(file names without the extension must be unique)")
        category, score = record.get("category_id"), record.get("score")
        if not _is_int(category):
            raise UserInputError(f"{where} (image {image.key!r}): 'category_id' must be an integer, got {category!r}")
        if not (isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)):
            raise UserInputError(f"{where} (image {image.key!r}): 'score' must be a finite number, got {score!r}")
        if "segmentation" not in record:
            raise UserInputError(
                f"{where} (image {image.key!r}): no 'segmentation': these are box detections; masks need the "
                "instance-segmentation results (mmdetection writes them to *.segm.json)"
            )
        if (selected is not None and category not in selected) or score < min_score:
            continue
        instance = _Instance(index, record["segmentation"])
        if isinstance(instance.segmentation, dict) or image.size is not None:
            try:  # decoded now: a bad mask is reported at once
                instance.rle = coco_rle(instance.segmentation, *(image.size or (None, None)))
            except UserInputError as err:
                context = f" (as {image.size_from} gives it)" if image.size is not None else ""
                raise UserInputError(f"{where} (image {image.key!r}): {err}{context}") from None
            if image.size is None:
                image.size, image.size_from = tuple(instance.rle["size"]), f"record {index}'s mask"
        image.instances.append(instance)
    masks = DetectionMasks(path, images, complete=by_id is not None, annotations=annotation_path,
                           categories=selected, min_score=float(min_score))
    for image in images.values():  # polygons read before the image's size was known
        if image.size is not None:
            for instance in image.instances:
                masks._rle(image, instance, image.size)
    return masks


class DetectionMaskScorer:
    """The structure scorer of ``evalmuse score --masks-from``: each image's ``mask``, ``mask_512``, ``regions``
    and ``instances`` from the detections, its ``score`` from a structure scorer (``None`` without one).

    The structure model's own masks, heatmap and threshold are not kept: the row's mask was not cut from
    its heatmap.
    """

    kind = "structure"

    def __init__(self, masks: DetectionMasks, model: Any = None):
        self.masks = masks
        self.model = model

    def __call__(self, batch: list[dict]) -> list[dict]:
        scored = self.model(batch) if self.model is not None else [{} for _ in batch]
        results = []
        for item, output in zip(batch, scored, strict=True):
            width, height = item["image"].size
            entry = {"score": (output.get("structure") or {}).get("score")}
            entry.update(self.masks.structure_entry(structure_key(item["id"]), (height, width)))
            results.append({"structure": entry})
        return results
