"""Turn a results file into the official NTIRE 2025 submission files (``evalmuse submit``).

The file formats and ``readme.txt`` / ``submission.zip`` are written by
:func:`evalmuse_models.metrics.write_alignment_submission` and
:func:`evalmuse_models.metrics.write_structure_submission`; this module only maps results rows
onto their records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..utils import UserInputError
from .inputs import IMAGE_EXTENSIONS
from .results import read_results
from .rle import rle_to_mask


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


def structure_records(rows: list[dict]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = structure_key(row["id"])
        if key in records:
            raise UserInputError(f"two results rows map to the structure key {key!r}; image names must be unique")
        structure = row["structure"]
        mask = structure["mask_512"]
        records[key] = {"pred_area": rle_to_mask(mask), "score": structure["score"]}
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
) -> dict[str, dict[str, Path]]:
    """Write ``<out_dir>/alignment/`` and/or ``<out_dir>/structure/`` submissions from a results file.

    ``track="auto"`` writes every track the results have. Runtime per image and the GPU flag
    default to what the scoring run measured (``meta.seconds_per_image``, ``meta.device``).
    Returns ``{track: {"output", "readme", "zip"}}``.

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
    measured_runtime, measured_gpu = _runtime_and_gpu(rows)
    runtime = measured_runtime if runtime_per_image is None else runtime_per_image
    on_gpu = measured_gpu if gpu is None else gpu
    written = {}
    for name in tracks:
        kept = _usable(rows, name, path, allow_missing)
        if name == "alignment":
            is_llm = any((row.get("meta") or {}).get("align_model", "").startswith("mllm:") for row in kept)
            written[name] = write_alignment_submission(
                alignment_records(kept), Path(out_dir) / name, runtime_per_image=runtime, gpu=on_gpu,
                extra_data=extra_data, llm=is_llm if llm is None else llm, description=description,
            )
        else:
            written[name] = write_structure_submission(
                structure_records(kept), Path(out_dir) / name, runtime_per_image=runtime, gpu=on_gpu,
                extra_data=extra_data, llm=llm, description=description,
            )
    return written
