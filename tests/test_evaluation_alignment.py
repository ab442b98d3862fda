"""The one alignment evaluation: any scorer (dict or attribute results), the official Main Score."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import datasets
import pytest

from evalmuse_models.data.alignment import element_record_key
from evalmuse_models.evaluation import evaluate_alignment
from evalmuse_models.utils import UserInputError


@pytest.fixture(scope="module")
def validation(prepared_dataset):
    return datasets.load_dataset(str(prepared_dataset), "alignment", split="validation")


@dataclass
class Result:  # the shape of models.evalmuse_align's AlignmentResult
    overall: float
    elements: dict = field(default_factory=dict)


class Oracle:
    """Answers the truth (dicts or attribute objects) and records what it was asked."""

    def __init__(self, split, as_objects=False):
        self.truth = {row["prompt"] + row["img_path"]: row for row in split.select_columns(
            ["prompt", "img_path", "total_score", "elements"])}
        self.paths = split["img_path"]
        self.as_objects = as_objects
        self.calls = []

    def score(self, images, prompts, elements=None, batch_size=8, prompt_types=None, progress=False):
        self.calls.append({"n": len(images), "batch_size": batch_size, "prompt_types": prompt_types,
                           "progress": progress, "first_image": images[0].mode})
        out = []
        for prompt, path, keys in zip(prompts, self.paths, elements):
            row = self.truth[prompt + path]
            scores = {element_record_key(e): e["score"] for e in row["elements"]}
            result = {"overall": row["total_score"], "elements": {k: scores[k] for k in keys}}
            out.append(Result(**result) if self.as_objects else result)
        return out


def test_a_perfect_scorer_gets_the_full_main_score(validation):
    oracle = Oracle(validation)
    scores = evaluate_alignment(oracle, validation, batch_size=4, show_progress=True)
    assert scores["srcc"] == pytest.approx(1.0) and scores["acc"] == 1.0 and scores["main_score"] > 0.99
    assert scores["num_images"] == len(validation) and "unmatched_elements" not in scores
    call = oracle.calls[0]
    assert call["n"] == len(validation) and call["batch_size"] == 4 and call["progress"] is True
    assert call["prompt_types"] == validation["prompt_type"] and call["first_image"] == "RGB"
    assert evaluate_alignment(Oracle(validation, as_objects=True), validation) == scores


def test_unlabelled_images_are_left_out_and_too_few_refused(validation):
    scores = evaluate_alignment(Oracle(validation), validation)
    unlabelled = validation.map(lambda row, i: {"total_score": None if i % 2 else row["total_score"]},
                                with_indices=True)
    labelled = unlabelled.filter(lambda row: row["total_score"] is not None)
    half = evaluate_alignment(Oracle(labelled), unlabelled)
    assert half["num_images"] == (len(validation) + 1) // 2 < scores["num_images"]
    with pytest.raises(UserInputError, match="at least 3"):
        evaluate_alignment(Oracle(validation), validation.select(range(2)))


def test_the_alignment_model_scores_through_a_wrapper(validation):
    from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    from evalmuse_models.testing.align import build_tiny_processor

    config = EvalMuseAlignConfig.from_preset("tiny")
    model = EvalMuseAlignModel(config)
    scorer = SimpleNamespace(score=partial(model.score, processor=build_tiny_processor(config)))
    scores = evaluate_alignment(scorer, validation, batch_size=16)
    assert set(scores) == {"srcc", "plcc", "acc", "main_score", "num_images", "unmatched_elements"}
    assert 0 <= scores["main_score"] <= 1 and scores["num_images"] == len(validation)


def test_given_predictions_by_image_in_order_or_against_a_truth_file(validation, tmp_path):
    """Results already computed (e.g. `evalmuse score` rows) score like the scorer that made them, keyed by
    img_path, in split order, or against an official eval.json truth file; a missing image is named."""
    import json

    oracle = Oracle(validation)
    from_scorer = evaluate_alignment(oracle, validation)
    answers = oracle.score(list(validation["image"]), validation["prompt"],
                           elements=[[element_record_key(e) for e in row] for row in validation["elements"]])
    by_path = dict(zip(validation["img_path"], answers))
    by_path["not-in-the-split.png"] = {"overall": 1.0, "elements": {}}  # ignored
    for given in (by_path, answers):
        assert evaluate_alignment(given, validation) == pytest.approx(from_scorer)

    truth = tmp_path / "eval.json"
    truth.write_text(json.dumps([
        {"prompt": row["prompt"], "img_path": row["img_path"], "total_score": row["total_score"],
         "element_score": {element_record_key(e): e["score"] for e in row["elements"] if e["score"] is not None}}
        for row in validation.select_columns(["prompt", "img_path", "total_score", "elements"])
    ]))
    assert evaluate_alignment(by_path, truth) == pytest.approx(from_scorer)
    del by_path[validation["img_path"][1]]
    with pytest.raises(UserInputError, match=validation["img_path"][1]):
        evaluate_alignment(by_path, truth)
