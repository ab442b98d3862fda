"""The NTIRE 2025 alignment Main Score of any alignment scorer on a labelled split of the prepared dataset.

One function, :func:`evaluate_alignment`, for every caller: the alignment training recipe (each
evaluation of the ``Trainer``), the MLLM recipe, the demo and anyone comparing scorers. It takes a
scorer — anything with ``score(images, prompts, elements=None, batch_size=...)`` returning one result
per image — or results already computed (``evalmuse score`` rows' ``alignment`` objects, keyed by
``img_path`` or in the split's order). A result's ``overall`` and ``elements`` are read as attributes
(``AlignmentResult``) or dict keys::

    from functools import partial
    from types import SimpleNamespace

    from evalmuse_models.evaluation import evaluate_alignment

    scorer = SimpleNamespace(score=partial(model.score, processor=processor))  # EvalMuseAlignModel
    evaluate_alignment(scorer, load_dataset("data/evalmuse", "alignment", split="validation"))
    evaluate_alignment(MLLMAlignmentScorer(model, processor), split, batch_size=8)
    rows = {row["id"]: row["alignment"] for row in read_results("results.jsonl") if row["status"] == "ok"}
    evaluate_alignment(rows, test_split)  # predictions keyed by img_path
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from ..data.alignment import element_record_key
from ..utils import UserInputError

#: The scores :func:`evaluate_alignment` returns besides ``num_images`` (and ``unmatched_elements``).
SCORE_KEYS = ("srcc", "plcc", "acc", "main_score")


class _LazyImages:
    """A split's images, decoded on access (one slice at a time when a scorer reads them batch by batch)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [image.convert("RGB") for image in self.split[index]["image"]]
        return self.split[int(index)]["image"].convert("RGB")


def _field(result: Any, name: str):
    return result[name] if isinstance(result, dict) else getattr(result, name)


def _keyword_options(score, show_progress: bool, prompt_types) -> dict:
    """The optional keywords ``score`` takes: its progress flag under its own name (``show_progress`` for
    the alignment model, ``progress`` for the MLLM judge) and ``prompt_types`` when the split has them."""
    try:
        parameters = inspect.signature(score).parameters
    except (TypeError, ValueError):
        return {}
    options = {}
    for name in ("show_progress", "progress"):
        if name in parameters:
            options[name] = show_progress
            break
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if prompt_types is not None and ("prompt_types" in parameters or takes_any):
        options["prompt_types"] = prompt_types
    return options


def evaluate_alignment(scorer, split, *, batch_size: int = 16, plcc_direction: str = "official",
                       show_progress: bool = False) -> dict:
    """The official Main Score on the labelled images of ``split`` (a split of the prepared
    ``alignment`` config, or the path of an official truth file ``eval.json`` such as a release's hidden
    test labels), scored by ``scorer.score`` — or, when ``scorer`` has no ``score`` method, of the given
    predictions: a mapping ``{img_path: result}`` (extra images are ignored) or a sequence with one
    result per row of ``split``.

    Returns ``{"srcc", "plcc", "acc", "main_score", "num_images"}`` (floats, and the number of labelled
    images scored), plus ``"unmatched_elements"`` (element keys the scorer could not locate in their
    prompt) when the scorer reports them. Images without an overall label are left out; the truth of an
    image's elements is their mean vote, keyed ``"<phrase> (<category>)"``; every element of the row is
    asked for (the metric reads those with a label).
    """
    from ..metrics import alignment_main_score

    if isinstance(split, (str, os.PathLike)):
        split = truth_file_split(split)
    columns = [c for c in ("prompt", "total_score", "elements", "prompt_type") if c in split.column_names]
    missing = {"prompt", "total_score", "elements"} - set(columns)
    if missing or ("image" not in split.column_names and callable(getattr(scorer, "score", None))):
        raise UserInputError(f"the evaluation split lacks the alignment columns {sorted(missing | {'image'})}")
    rows = split.select_columns(columns)
    keep = [i for i, row in enumerate(rows) if row["total_score"] is not None]
    if len(keep) < 3:
        raise UserInputError(f"the evaluation split has {len(keep)} labelled images; at least 3 are needed")
    labelled = split.select(keep) if len(keep) < len(split) else split
    text = rows.select(keep) if len(keep) < len(rows) else rows
    element_lists = [list(elements or []) for elements in text["elements"]]
    keys = [[element_record_key(e) for e in elements] for elements in element_lists]
    truth = [{element_record_key(e): float(e["score"]) for e in elements if e.get("score") is not None}
             for elements in element_lists]
    if callable(getattr(scorer, "score", None)):
        prompt_types = text["prompt_type"] if "prompt_type" in columns else None
        options = _keyword_options(scorer.score, show_progress, prompt_types)
        results = scorer.score(_LazyImages(labelled), text["prompt"], elements=keys, batch_size=batch_size,
                               **options)
        if len(results) != len(keep):
            raise ValueError(f"the scorer returned {len(results)} results for {len(keep)} images")
    else:
        results = _given_results(scorer, split, keep)
    scores = alignment_main_score(
        [float(_field(r, "overall")) for r in results],
        [float(s) for s in text["total_score"]],
        [_field(r, "elements") for r in results],
        truth,
        plcc_direction=plcc_direction,
    )
    out: dict[str, Any] = {key: float(scores[key]) for key in SCORE_KEYS}
    out["num_images"] = len(results)
    unmatched = [_unmatched(r) for r in results]
    if all(u is not None for u in unmatched):
        out["unmatched_elements"] = sum(len(u) for u in unmatched)
    return out


def truth_file_split(path):
    """An official truth file (``eval.json``: ``{prompt, img_path, total_score, element_score}`` records, read
    by the metric's own reader) as a split with the alignment columns the evaluation reads (no images: give
    predictions, not a scorer)."""
    import datasets

    from ..metrics import read_alignment_file

    records = read_alignment_file(path)
    return datasets.Dataset.from_dict({
        "img_path": [r["img_path"] for r in records],
        "prompt": [r.get("prompt", "") for r in records],
        "total_score": [float(r["total_score"]) for r in records],
        "elements": [[{"key": k, "score": float(v)} for k, v in dict(r["element_score"]).items()] for r in records],
    })


def _given_results(predictions, split, keep: list[int]) -> list[Any]:
    """The predictions of the labelled rows ``keep``, from a mapping by ``img_path`` or a sequence in split order."""
    if isinstance(predictions, Mapping):
        if "img_path" not in split.column_names:
            raise UserInputError("predictions keyed by image need a split with an 'img_path' column; give a "
                                 "sequence in the split's order instead")
        paths = split.select_columns(["img_path"]).select(keep)["img_path"]
        missing = [path for path in paths if path not in predictions]
        if missing:
            raise UserInputError(f"no prediction for {len(missing)} of the split's {len(paths)} labelled images, "
                                 f"e.g. {missing[0]!r}")
        return [predictions[path] for path in paths]
    predictions = list(predictions)
    if len(predictions) != len(split):
        raise UserInputError(f"{len(predictions)} predictions for a split of {len(split)} images: give one per "
                             "row, in order")
    return [predictions[i] for i in keep]


def _unmatched(result: Any):
    if isinstance(result, dict):
        return result.get("unmatched_elements")
    return getattr(result, "unmatched_elements", None)


__all__ = ["SCORE_KEYS", "evaluate_alignment", "truth_file_split"]
