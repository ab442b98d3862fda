"""The batch scoring engine behind ``evalmuse score``.

Input → :class:`~evalmuse_models.scoring.inputs.ScoringSource` → ``torch.utils.data.DataLoader``
(workers open the images; unreadable ones travel as error items) → the model adapters
(:mod:`~evalmuse_models.scoring.adapters`) → :class:`~evalmuse_models.scoring.results.ResultsWriter`
(append-only, fsync'd, resumable). Under ``accelerate launch`` each rank scores every
``world_size``-th remaining image into its own shard and rank 0 merges the shards at the end.

Example::

    from evalmuse_models.scoring import score

    summary = score("my_images/", align="org/evalmuse-align", structure="org/evalmuse-structure",
                    out="results.jsonl", batch_size=16, num_workers=2)
    print(summary["images_per_second"])
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..utils import UserInputError
from . import results as results_io
from .adapters import StructureScorer, describe_spec, load_align
from .detections import DetectionMasks, DetectionMaskScorer, load_detection_masks
from .inputs import ScoringSource, keep_items, open_source
from .submission import structure_key

#: A run stops when the model fails on this many readable images in a row (a broken model, not bad data).
MAX_MODEL_FAILURES_IN_A_ROW = 16


def resolve_device_dtype(device: str | None = None, dtype: Any = "auto", state=None):
    """``(torch.device, torch.dtype)``: ``auto`` means accelerate's device, and bf16 on a CUDA device that supports
    it (accelerate's ``is_bf16_available``), fp32 elsewhere. ``dtype`` may also be a name or a ``torch.dtype``."""
    import torch
    from accelerate.utils import is_bf16_available

    if device in (None, "auto"):
        resolved = state.device if state is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise UserInputError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if isinstance(dtype, torch.dtype):
        resolved_dtype = dtype
    elif dtype in (None, "auto"):
        resolved_dtype = torch.bfloat16 if resolved.type == "cuda" and is_bf16_available() else torch.float32
    elif dtype in names:
        resolved_dtype = names[dtype]
    else:
        raise UserInputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return resolved, resolved_dtype


def _distributed_state(device: str | None):
    """accelerate's ``PartialState`` for this process (gloo on CPU, NCCL on GPUs)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = (device is not None and str(device).startswith("cpu")) or parse_flag_from_env("ACCELERATE_USE_CPU") \
        or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise UserInputError(
            f"launched as one of {launched} processes but accelerate sees {state.num_processes}; "
            "use `accelerate launch --num_processes N ...` (or torchrun) so that ranks can split the work"
        )
    return state


def _source_entry(source: ScoringSource, position: int) -> dict:
    record = source.records[position]
    if source.description.get("kind") == "dataset":
        return {key: source.description[key] for key in ("path", "config", "split")} | {"index": record.index}
    return {"path": record.path}


def _base_row(item: dict, source: ScoringSource, meta: dict) -> dict:
    row: dict[str, Any] = {"id": item["id"], "prompt": item["prompt"], "generator": item["generator"]}
    if item.get("elements"):
        row["elements"] = list(item["elements"])
    for key, value in (item.get("extra") or {}).items():
        if value is not None:
            row[key] = value
    if item.get("image") is not None:
        row["width"], row["height"] = item["image"].size
    row["source"] = _source_entry(source, item["position"])
    if item.get("reference") is not None:
        row["reference"] = item["reference"]
    row["meta"] = meta
    return row


def _run_scorers(scorers: list, items: list[dict]) -> tuple[list[dict], list[str | None]]:
    """Outputs and per-item errors; a failing batch is retried item by item to isolate the culprit."""
    merged = [{} for _ in items]
    errors: list[str | None] = [None] * len(items)
    for scorer in scorers:
        live = [i for i in range(len(items)) if errors[i] is None]
        if not live:
            break
        try:
            outputs = scorer([items[i] for i in live])
            for i, out in zip(live, outputs):
                merged[i].update(out)
        except Exception:
            for i in live:
                try:
                    merged[i].update(scorer([items[i]])[0])
                except Exception as err:  # noqa: BLE001
                    errors[i] = f"{scorer.kind} model failed: {type(err).__name__}: {err}"
            if len(live) > 1 and all(errors[i] is not None for i in live):
                raise  # every image fails: the model, not the data, is broken
    return merged, errors


def _check_compatible(out: Path, meta: dict) -> None:
    """Refuse to resume a results file written with other models (or other detection masks)."""
    for path in [out, *results_io.existing_shards(out)]:
        rows = results_io.read_results(path, missing_ok=True)
        if rows:
            old = rows[0].get("meta") or {}
            for key in ("align_model", "structure_model", "masks_from"):
                if old.get(key) != meta.get(key):
                    raise UserInputError(
                        f"{path} was written with {key}={old.get(key)!r}, this run uses {meta.get(key)!r}; "
                        "pass --overwrite to start over or choose another --out"
                    )
            return


def score(
    input: str | os.PathLike | ScoringSource,
    *,
    out: str | os.PathLike,
    align: Any = None,
    structure: Any = None,
    prompts_file: str | None = None,
    config: str | None = None,
    split: str = "test",
    batch_size: int = 8,
    num_workers: int | None = None,
    device: str | None = None,
    dtype: str | None = "auto",
    threshold: float | None = None,
    heatmap_size: int = 64,
    overwrite: bool = False,
    retry_errors: bool = False,
    limit: int | None = None,
    progress: bool = True,
    masks: Any = None,
) -> dict:
    """Score every image of ``input`` and write one JSON row per image to ``out`` (resumable).

    Args:
        input: an image folder with a prompts file, a prepared dataset folder (or Hub id with
            ``config``), or a :class:`ScoringSource`.
        out: the results ``.jsonl`` file. If it exists the run resumes (rows already there are
            kept and skipped) unless ``overwrite``.
        align: alignment model spec (folder, Hub id, ``mllm:...``, ``module:factory`` or an object
            with ``score``); ``None`` to skip alignment.
        structure: structure model spec (object with ``predict``); ``None`` to skip.
        batch_size / num_workers: data-loader settings (workers decode images in parallel).
            ``num_workers=None``: none on CPU (they would compete with the model for the same
            cores), ``min(4, cpus // 2)`` when the model runs on a GPU.
        device / dtype: ``auto`` = accelerate's device for this rank, bf16 on CUDA.
        threshold: heatmap threshold for the structure mask (the model's default if ``None``).
        heatmap_size: side of the small heatmap PNG stored per row (0 to store none).
        retry_errors: when resuming, score again the images whose rows are errors (a fixed
            image file, a model that failed on it).
        limit: score only the first ``limit`` images of the input.
        masks: structure masks from an instance-segmentation model, a
            :class:`~evalmuse_models.scoring.detections.DetectionMasks` (or the path of its COCO results, read
            with the default categories and score threshold): each structure row's ``mask``, ``mask_512`` and
            ``regions`` come from it, its ``score`` from ``structure`` (``None`` without a structure model).

    Returns:
        a summary dict: ``rows`` (total in ``out``), ``scored`` (this run, all ranks),
        ``errors``, ``skipped`` (resumed), ``seconds``, ``images_per_second``.
    """
    import torch
    from tqdm.auto import tqdm

    if align is None and structure is None and masks is None:
        raise UserInputError("nothing to score: pass --align MODEL and/or --structure MODEL")
    if masks is not None and not isinstance(masks, DetectionMasks):
        masks = load_detection_masks(masks)
    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out)
    if out.exists() and not out.is_file():
        # A device (/dev/full, /dev/stdout) or a folder: appends, truncation and resume need a regular file.
        raise UserInputError(f"--out {out}: not a regular file; give the path of a .jsonl results file")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserInputError(f"--out {out}: {out.parent} is not a folder")
    state = _distributed_state(device)
    torch_device, torch_dtype = resolve_device_dtype(device, dtype, state)

    source = input if isinstance(input, ScoringSource) else open_source(
        str(input), prompts_file=prompts_file, config=config, split=split, require_prompts=align is not None
    )
    if limit is not None:
        source.records = source.records[:limit]
    if masks is not None:
        masks.check_keys((structure_key(record.id) for record in source.records), "the input's images")
    meta = {
        "align_model": None if align is None else describe_spec(align),
        "structure_model": None if structure is None else describe_spec(structure),
        **({} if masks is None else {"masks_from": masks.describe()}),
        "evalmuse_models": __version__,
        "device": torch_device.type,
        "dtype": str(torch_dtype).replace("torch.", ""),
    }

    if state.is_main_process:
        if overwrite:
            out.unlink(missing_ok=True)
            for shard in results_io.existing_shards(out):
                shard.unlink()
        else:
            _check_compatible(out, meta)
            if retry_errors:
                results_io.drop_error_rows(out)
    state.wait_for_everyone()

    done = results_io.done_ids(out)
    todo = [position for position, record in enumerate(source.records) if record.id not in done]
    # Every rank must split the same to-do list: nobody appends before all ranks have read.
    state.wait_for_everyone()
    mine = todo[state.process_index :: state.num_processes]
    target = out if state.num_processes == 1 else results_io.shard_path(out, state.process_index)

    scorers = []
    if align is not None:
        scorers.append(load_align(align, torch_device, torch_dtype))
    structure_scorer = None
    if structure is not None:
        structure_scorer = StructureScorer.load(structure, torch_device, torch_dtype, threshold, heatmap_size)
    if masks is not None:
        structure_scorer = DetectionMaskScorer(masks, structure_scorer)
    if structure_scorer is not None:
        scorers.append(structure_scorer)

    if num_workers is None:
        num_workers = 0 if torch_device.type == "cpu" else min(4, (os.cpu_count() or 2) // 2)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(source, mine),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=keep_items,
        shuffle=False,
    )
    scored = errors = failed_in_a_row = 0
    start = time.perf_counter()
    with tqdm(total=len(mine), unit="img", desc=f"scoring (rank {state.process_index})" if state.num_processes > 1
               else "scoring", disable=not (progress and state.is_local_main_process), dynamic_ncols=True) as bar, \
            results_io.ResultsWriter(target) as writer:
        for batch in loader:
            readable = [item for item in batch if item["error"] is None]
            batch_start = time.perf_counter()
            outputs, model_errors = _run_scorers(scorers, readable) if readable else ([], [])
            per_image = (time.perf_counter() - batch_start) / max(1, len(readable))
            row_meta = {**meta, "seconds_per_image": round(per_image, 6)}
            by_id = {item["id"]: (o, e) for item, o, e in zip(readable, outputs, model_errors)}
            rows = []
            for item in batch:
                row = _base_row(item, source, row_meta)
                output, error = by_id.get(item["id"], ({}, item["error"]))
                if error is None:
                    row["status"] = "ok"
                    row.update(output)
                    failed_in_a_row = 0
                else:
                    row["status"] = "error"
                    row["error"] = error
                    errors += 1
                    if item["error"] is None:  # the image was fine, the model failed on it
                        failed_in_a_row += 1
                rows.append(row)
            if failed_in_a_row >= MAX_MODEL_FAILURES_IN_A_ROW:
                last = next(r["error"] for r in reversed(rows) if r["status"] == "error")
                raise RuntimeError(f"the model failed on {failed_in_a_row} images in a row (last: {last}); stopping. "
                                   "Fix the model or its inputs and rerun: finished rows are kept")
            writer.write(rows)
            scored += len(rows)
            bar.update(len(rows))
    seconds = time.perf_counter() - start

    counts = torch.tensor([scored, errors], dtype=torch.long, device=state.device)
    if state.num_processes > 1:
        from accelerate.utils import reduce

        counts = reduce(counts, reduction="sum")
    state.wait_for_everyone()
    total_rows = None
    if state.is_main_process:
        if results_io.existing_shards(out) or retry_errors:  # (retried rows were appended: restore input order)
            total_rows = results_io.merge_results(out, order=source.ids)
        else:
            total_rows = len(results_io.read_results(out, missing_ok=True))
    state.wait_for_everyone()
    scored_all, errors_all = (int(v) for v in counts.tolist())
    return {
        "out": str(out),
        "rows": total_rows,
        "scored": scored_all,
        "errors": errors_all,
        "skipped": len(done),
        "seconds": round(seconds, 3),
        "images_per_second": round(scored_all / seconds, 3) if seconds > 0 else None,
        "num_processes": state.num_processes,
        "device": meta["device"],
        "dtype": meta["dtype"],
    }
