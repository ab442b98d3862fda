"""Turn a results file into the official NTIRE 2025 submission files (``evalmuse submit``).

The file formats and ``readme.txt`` / ``submission.zip`` are written by
:func:`evalmuse_models.metrics.write_alignment_submission` and
:func:`evalmuse_models.metrics.write_structure_submission`; this module maps results rows onto their
records, optionally with the structure masks of an instance-segmentation model
(:mod:`~evalmuse_models.scoring.detections`) and the scores min–max rescaled over the set
(:func:`rescale_minmax`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils import UserInputError
from .inputs import IMAGE_EXTENSIONS
from .results import read_results
from .rle import rle_to_mask

if TYPE_CHECKING:
    from .detections import DetectionMasks

#: ``write_submission(rescale=...)`` / ``evalmuse submit --rescale``: what each method does to the scores.
RESCALE_METHODS = ("minmax",)


def structure_key(row_id: str) -> str:
    """The official structure-track key of a row: its id without an image extension."""
    stem, ext = os.path.splitext(row_id)
    return stem if ext.lower() in IMAGE_EXTENSIONS else row_id


def _usable(rows: list[dict], field: str, path: Path, allow_missing: bool) -> list[dict]:
    other_run = [row["id"] for row in rows if row.get("status") == "ok" and field not in row]
    if other_run and len(other_run) < len(rows) and not allow_missing:
        flag = "--align" if field == "alignment" else "--structure"
        raise UserInputError(
            f"{path}: {len(other_run)} row(s) were scored without {flag} (e.g. {other_run[0]}): this file mixes "
            "several scoring runs. Give submit the results file of one run per track (the demo writes "
            "results_alignment.jsonl and results_structure.jsonl; its results.jsonl feeds the report), "
            "or pass --allow-missing to leave those rows out"
        )
    bad = [row["id"] for row in rows if row.get("status") != "ok" or field not in row]
    if bad and not allow_missing:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise UserInputError(
            f"{path}: {len(bad)} image(s) have no {field} result ({shown}); fix the images and rerun "
            "`evalmuse score` (it resumes), or pass --allow-missing to leave them out of the submission"
        )
    bad_ids = set(bad)
    kept = [row for row in rows if row["id"] not in bad_ids]
    if not kept:
        raise UserInputError(f"{path}: no row has a {field} result; score with --{'align' if field == 'alignment' else 'structure'}")
    return kept


def alignment_records(rows: list[dict]) -> list[dict[str, Any]]:
    """The official ``output.json`` records of results rows: a row's ``alignment`` object
    (``AlignmentResult.to_dict()``, see ``docs/results.md``) gives ``total_score`` and ``element_score``."""
    return [
        {"prompt": row.get("prompt", ""), "img_path": row["id"], "total_score": row["alignment"]["overall"],
         "element_score": dict(row["alignment"]["elements"])}
        for row in rows
    ]


def rescale_minmax(scores: Mapping[str, float | None], low: float = 1.0, high: float = 5.0) -> dict[str, float]:
    """Scores mapped linearly onto ``[low, high]`` over the set: ``low + (high - low) · (s - min) / (max - min)``.

    HNU-VPAI's submission rescaled their LoDa model's cosines this way over the test set. A set whose scores
    are all equal (one image, or a constant model) has no range to rescale and is refused, as is a missing
    score.

    >>> rescale_minmax({"a": -0.2, "b": 0.3, "c": 0.8})
    {'a': 1.0, 'b': 3.0, 'c': 5.0}
    """
    missing = [key for key, value in scores.items() if value is None or not math.isfinite(value)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserInputError(f"min-max rescaling: {len(missing)} image(s) have no score ({shown})")
    if not scores:
        return {}
    smallest, largest = min(scores.values()), max(scores.values())
    if smallest == largest:
        raise UserInputError(
            f"min-max rescaling: all {len(scores)} score(s) are {smallest}, so there is no range to map onto "
            f"[{low:g}, {high:g}]; submit without --rescale"
        )
    span = largest - smallest
    return {key: low + (high - low) * (value - smallest) / span for key, value in scores.items()}


def structure_records(rows: list[dict], masks: DetectionMasks | None = None,
                      rescale: str | None = None) -> dict[str, dict[str, Any]]:
    """The official ``output.pkl`` records of results rows: ``pred_area`` is the row's ``structure.mask_512``
    (or, with ``masks``, the detections' mask of the image read as the official scorer reads masks: see
    :meth:`DetectionMasks.mask_512`), ``score`` its ``structure.score`` (min–max rescaled with
    ``rescale="minmax"``)."""
    keys: dict[str, dict] = {}
    for row in rows:
        key = structure_key(row["id"])
        if key in keys:
            raise UserInputError(f"two results rows map to the structure key {key!r}; image names must be unique")
        keys[key] = row
    unscored = [row["id"] for row in rows if row["structure"].get("score") is None]
    if unscored:
        shown = ", ".join(unscored[:5]) + (" ..." if len(unscored) > 5 else "")
        raise UserInputError(
            f"{len(unscored)} structure row(s) have no score ({shown}): scored by `evalmuse score --masks-from` "
            "without a structure model (or the model's score was not finite); score the images with "
            "--structure MODEL too"
        )
    scores = {key: row["structure"]["score"] for key, row in keys.items()}
    if rescale == "minmax":
        scores = rescale_minmax(scores)
    if masks is not None:
        masks.check_keys(keys, "the results' images")
    records: dict[str, dict[str, Any]] = {}
    for key, row in keys.items():
        if masks is not None:
            if not isinstance(row.get("height"), int) or not isinstance(row.get("width"), int):
                raise UserInputError(f"results row {row['id']} has no image size (width, height)")
            pred_area = masks.mask_512(key, (row["height"], row["width"]))
        elif "mask_512" in row["structure"]:
            pred_area = rle_to_mask(row["structure"]["mask_512"])
        else:
            raise UserInputError(
                f"results row {row['id']} has a structure score but no mask (a score-only model): give the masks "
                "with --masks-from DETECTIONS.json"
            )
        records[key] = {"pred_area": pred_area, "score": scores[key]}
    return records


def _runtime_and_gpu(rows: list[dict]) -> tuple[float, bool]:
    times = [row.get("meta", {}).get("seconds_per_image") for row in rows]
    times = [t for t in times if isinstance(t, (int, float))]
    gpu = any(row.get("meta", {}).get("device") == "cuda" for row in rows)
    return (sum(times) / len(times) if times else 0.0), gpu


def write_submission(
    results: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    track: str = "auto",
    runtime_per_image: float | None = None,
    gpu: bool | None = None,
    extra_data: bool = False,
    llm: bool | None = None,
    description: str = "",
    allow_missing: bool = False,
    masks: DetectionMasks | None = None,
    rescale: str | None = None,
) -> dict[str, dict[str, Path]]:
    """Write ``<out_dir>/alignment/`` and/or ``<out_dir>/structure/`` submissions from a results file.

    ``track="auto"`` writes every track the results have. Runtime per image and the GPU flag
    default to what the scoring run measured (``meta.seconds_per_image``, ``meta.device``).
    ``masks`` (:func:`~evalmuse_models.scoring.detections.load_detection_masks`) replaces the structure
    rows' masks with an instance-segmentation model's. ``rescale="minmax"`` maps each track's image scores
    (``total_score``, the structure ``score``; not the element scores) linearly onto [1, 5] over the
    submitted set (:func:`rescale_minmax`). Returns ``{track: {"output", "readme", "zip"}}``.

    Example::

        write_submission("results.jsonl", "submission/", description="FGA-BLIP2 fine-tuned")
    """
    from ..metrics import write_alignment_submission, write_structure_submission

    path = Path(results)
    rows = read_results(path)
    if not rows:
        raise UserInputError(f"{path} has no rows")
    if track not in ("auto", "alignment", "structure", "both"):
        raise UserInputError(f"unknown track {track!r}; use alignment, structure, both or auto")
    tracks = []
    for name in ("alignment", "structure"):
        present = any(name in row for row in rows)
        if track in (name, "both") or (track == "auto" and present):
            tracks.append(name)
    if not tracks:
        raise UserInputError(f"{path} has neither alignment nor structure results")
    if rescale not in (None, *RESCALE_METHODS):
        raise UserInputError(f"unknown rescaling {rescale!r}; use {' or '.join(RESCALE_METHODS)} (or none)")
    if masks is not None and "structure" not in tracks:
        raise UserInputError(f"detection masks replace structure masks, but {path} gives no structure submission "
                             f"(tracks: {', '.join(tracks)}); score the images with --structure MODEL")
    measured_runtime, measured_gpu = _runtime_and_gpu(rows)
    runtime = measured_runtime if runtime_per_image is None else runtime_per_image
    on_gpu = measured_gpu if gpu is None else gpu
    written = {}
    for name in tracks:
        kept = _usable(rows, name, path, allow_missing)
        if name == "alignment":
            is_llm = any((row.get("meta") or {}).get("align_model", "").startswith("mllm:") for row in kept)
            records = alignment_records(kept)
            if rescale == "minmax":
                rescaled = rescale_minmax({record["img_path"]: record["total_score"] for record in records})
                records = [{**record, "total_score": rescaled[record["img_path"]]} for record in records]
            written[name] = write_alignment_submission(
                records, Path(out_dir) / name, runtime_per_image=runtime, gpu=on_gpu,
                extra_data=extra_data, llm=is_llm if llm is None else llm, description=description,
            )
        else:
            written[name] = write_structure_submission(
                structure_records(kept, masks=masks, rescale=rescale), Path(out_dir) / name,
                runtime_per_image=runtime, gpu=on_gpu, extra_data=extra_data, llm=llm, description=description,
            )
    return written
