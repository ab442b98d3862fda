"""Conversation building, soft labels and augmentations of the MLLM SFT data (no model needed)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image

from evalmuse_models.mllm import split_element_key
from evalmuse_models.mllm.data import (
    ConversationOptions,
    build_conversations,
    build_sft_dataset,
    lighting_augment,
    perturb_score,
    records_from_rows,
    soft_level_distribution,
)
from evalmuse_models.mllm.prompts import (
    COT_RATING_LEAD,
    FIFTEEN_LEVELS,
    FIVE_LEVELS,
    element_question,
)
from evalmuse_models.utils import UserInputError


def _record(total=3.7, votes=(3, 4, 4), prompt_type="real", image=None):
    return {
        "image": image,
        "img_path": "SDXL-Turbo/00001.png",
        "generator": "SDXL-Turbo",
        "prompt_id": "1",
        "prompt": "two  red cats on a \"wooden\" table",
        "prompt_type": prompt_type,
        "total_score": total,
        "total_score_votes": list(votes),
        "prompt_variance": 0.2,
        "elements": [
            {"phrase": "red cats", "category": "animal", "score": 2 / 3, "votes": [1, 1, 0]},
            {"phrase": "two", "category": "counting", "score": 1 / 3, "votes": [0, 1, 0]},
            {"phrase": "on", "category": "spatial", "score": 0.5, "votes": [1, 0]},
            {"phrase": "wooden", "category": "material", "score": None, "votes": None},
        ],
        "prompt_meaningless": 0.0,
        "split_confidence": 0.0,
        "attribute_confidence": 1.0,
    }


def test_element_keys_and_questions():
    assert split_element_key("pig giants (animal)") == ("pig giants", "animal")
    assert split_element_key("man (in a suit) (human)") == ("man (in a suit)", "human")
    assert split_element_key("no category") == ("no category", "other")
    assert element_question("two cats", "counting") == "Is the quantity 'two cats' correct in the image?"
    assert element_question("on the left", "spatial").startswith("Is the spatial relationship 'on the left'")
    assert element_question("cat", "animal") == "Is the animal 'cat' present in the image?"
    assert element_question("thing", "other") == "Is 'thing' present in the image?"
    assert element_question("thing", None) == "Is 'thing' present in the image?"
    assert element_question("cat", "animal", {"animal": "Any {x}?"}) == "Any cat?"


def test_element_questions_use_the_normalised_category():
    # the release's spellings get the question of their normalised category
    assert element_question("Pale", "Color") == element_question("Pale", "color") == "Is the color 'Pale' present in the image?"
    assert element_question("car", "object-vehicle") == "Is the object 'car' present in the image?"
    assert element_question("two", " Counting ") == "Is the quantity 'two' correct in the image?"
    assert element_question("car", "object-vehicle", {"object": "Any {x}?"}) == "Any car?"
    # the scorer's questions come from raw keys through the same rule
    assert split_element_key("car (object-vehicle)") == ("car", "object")
    assert split_element_key("Pale (Color) ") == ("Pale", "color")


def test_chain_of_thought_lists_the_raw_keys_the_scorer_is_given():
    record = _record(total=4.0)
    record["elements"] = [
        {"phrase": "Pale", "category": "color", "subcategory": "", "score": 1.0, "votes": [1, 1, 1], "key": "Pale (Color) "},
        {"phrase": "car", "category": "object", "subcategory": "vehicle", "score": 0.0, "votes": [0, 0, 0],
         "key": "car (object-vehicle)"},
    ]
    convs = build_conversations(record, ConversationOptions(chain_of_thought=True, element_turns="separate"))
    assert convs[0]["messages"][1]["content"] == (
        "- Pale (Color) : Yes\n- car (object-vehicle): No\n" + COT_RATING_LEAD + "good")
    questions = [c["messages"][0]["content"].split("\n", 1)[1] for c in convs[1:]]
    assert questions == ["Is the color 'Pale' present in the image?", "Is the object 'car' present in the image?"]


def test_level_bins_follow_the_mos_thresholds():
    words = [FIVE_LEVELS.word_for_score(s) for s in (1.0, 1.49, 1.5, 2.5, 3.49, 3.5, 4.5, 5.0)]
    assert words == ["bad", "bad", "poor", "fair", "fair", "good", "excellent", "excellent"]
    assert FIFTEEN_LEVELS.word_for_score(1.0) == FIFTEEN_LEVELS.words[0]
    assert FIFTEEN_LEVELS.word_for_score(5.0) == FIFTEEN_LEVELS.words[-1]
    assert FIFTEEN_LEVELS.word_for_score(3.0) == FIFTEEN_LEVELS.words[7]


def test_overall_and_element_turns_multi_turn():
    convs = build_conversations(_record(), ConversationOptions())
    assert len(convs) == 1
    msgs = convs[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 4
    assert msgs[0]["content"].startswith('This image was generated from the prompt: "two red cats on a \'wooden\' table"\n')
    assert msgs[0]["content"].endswith("bad, poor, fair, good or excellent.")
    assert msgs[1]["content"] == "good"  # 3.7 is in [3.5, 4.5)
    # elements without a label are skipped; answers use mean vote >= 0.5
    assert msgs[2]["content"] == "Is the animal 'red cats' present in the image?"
    assert [msgs[i]["content"] for i in (3, 5, 7)] == ["Yes", "No", "Yes"]
    assert "wooden" not in " ".join(m["content"] for m in msgs[2:])
    assert convs[0]["level_target"] is None


def test_separate_turns_match_the_scorer_questions():
    convs = build_conversations(_record(), ConversationOptions(element_turns="separate"))
    assert len(convs) == 4
    for conv in convs:
        assert len(conv["messages"]) == 2
        assert conv["messages"][0]["content"].startswith("This image was generated")
    assert convs[2]["messages"][0]["content"].endswith("Is the quantity 'two' correct in the image?")


def test_chain_of_thought_answer():
    convs = build_conversations(_record(total=1.2), ConversationOptions(chain_of_thought=True, include_elements=False))
    answer = convs[0]["messages"][1]["content"]
    assert answer == (
        "- red cats (animal): Yes\n- two (counting): No\n- on (spatial): Yes\n" + COT_RATING_LEAD + "bad"
    )
    assert len(convs[0]["messages"]) == 2


def test_prompt_type_hint():
    real = build_conversations(_record(prompt_type="real"), ConversationOptions(prompt_type_hint=True))
    synth = build_conversations(_record(prompt_type="synthetic"), ConversationOptions(prompt_type_hint=True))
    assert real[0]["messages"][0]["content"].startswith("The prompt was written by a real user. ")
    assert synth[0]["messages"][0]["content"].startswith("The prompt is synthetic. ")
    plain = build_conversations(_record(), ConversationOptions(prompt_type_hint=False))
    assert plain[0]["messages"][0]["content"].startswith("This image")


def test_score_perturbation_changes_bins_and_stays_in_range():
    rng = random.Random(0)
    values = [perturb_score(3.5, rng, 0.5) for _ in range(500)]
    assert min(values) >= 1.0 and max(values) <= 5.0
    assert np.std(values) == pytest.approx(0.5, rel=0.15)
    assert perturb_score(3.5, rng, 0.0) == 3.5
    words = {
        build_conversations(_record(total=3.5), ConversationOptions(score_noise=0.6, include_elements=False),
                            random.Random(s))[0]["messages"][1]["content"]
        for s in range(30)
    }
    assert {"fair", "good"} <= words


def test_lighting_augmentation_changes_pixels_deterministically():
    img = Image.fromarray(np.full((16, 16, 3), 120, np.uint8))
    a = np.asarray(lighting_augment(img, random.Random(1), 0.3), dtype=float)
    b = np.asarray(lighting_augment(img, random.Random(1), 0.3), dtype=float)
    assert np.array_equal(a, b)
    assert abs(a.mean() - 120) > 1
    assert lighting_augment(img, random.Random(1), 0.0) is img
    convs = build_conversations(_record(image=img), ConversationOptions(lighting=0.3))
    assert convs[0]["image"].size == img.size


@pytest.mark.parametrize("mean,std", [(3.7, 0.47), (1.3, 0.47), (4.9, 0.0), (2.0, 0.0), (3.0, 1.2)])
def test_soft_labels_have_the_mean_as_expectation(mean, std):
    for scale in (FIVE_LEVELS, FIFTEEN_LEVELS):
        p = soft_level_distribution(mean, std, scale)
        assert len(p) == scale.num_levels
        assert sum(p) == pytest.approx(1.0, abs=1e-9)
        assert min(p) >= 0
        assert sum(pi * v for pi, v in zip(p, scale.values)) == pytest.approx(mean, abs=1e-7)


def test_soft_labels_shape():
    sym = soft_level_distribution(3.0, 0.8)
    assert sym == pytest.approx(sym[::-1], abs=1e-9)
    narrow, wide = soft_level_distribution(3.0, 0.5), soft_level_distribution(3.0, 1.5)
    assert narrow[2] > wide[2]
    assert soft_level_distribution(1.0, 0.9) == [1.0, 0, 0, 0, 0]
    assert soft_level_distribution(5.0, 0.9) == [0, 0, 0, 0, 1.0]
    # hand check at mean 3, sigma 0.5: gaussian weights exp(-2 d^2), no tilt needed by symmetry
    w = [math.exp(-2 * d * d) for d in (2, 1, 0, 1, 2)]
    assert sym != narrow
    assert narrow == pytest.approx([x / sum(w) for x in w], abs=1e-9)


def test_soft_label_conversation_target():
    conv = build_conversations(_record(total=11 / 3, votes=(3, 4, 4)), ConversationOptions(soft_labels=True))[0]
    target = conv["level_target"]
    assert sum(t * v for t, v in zip(target, FIVE_LEVELS.values)) == pytest.approx(11 / 3, abs=1e-7)


def test_unlabelled_record_is_a_clear_error():
    with pytest.raises(UserInputError, match="total_score"):
        build_conversations(_record(total=None), ConversationOptions(), where="test row 3")
    with pytest.raises(UserInputError, match="element_turns"):
        ConversationOptions(element_turns="bogus")


def test_build_sft_dataset_from_records():
    rng = np.random.default_rng(0)
    rows = [_record(total=1 + i, image=Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8))) for i in range(3)]
    ds = records_from_rows(rows)
    sft = build_sft_dataset(ds, ConversationOptions(element_turns="separate", soft_labels=True))
    assert sft.column_names == ["image", "messages", "level_target"]
    assert len(sft) == 3 * 4
    assert sft[0]["image"].size == (24, 20)
    assert sft[1]["level_target"] == [0.0] * 5  # element conversations carry no soft target
    assert sum(sft[0]["level_target"]) == pytest.approx(1.0, abs=1e-5)


def test_build_sft_dataset_from_prepared_dataset(prepared_dataset):
    import datasets

    train = datasets.load_dataset(str(prepared_dataset), "alignment", split="train")
    sft = build_sft_dataset(train.select(range(4)), ConversationOptions(chain_of_thought=True, prompt_type_hint=True))
    assert len(sft) == 4
    first = sft[0]["messages"]
    assert first[0]["role"] == "user" and first[1]["content"].split("\n")[-1] in FIVE_LEVELS.words
    with pytest.raises(UserInputError, match="lacks the column"):
        build_sft_dataset(train.remove_columns("image"))


class _CountingScorer:
    """Scores overall = index in the prompt text; records how many images it was asked to score."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def score(self, images, prompts, elements=None, batch_size=8, prompt_types=None, progress=False):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += len(images)
        return [{"overall": float(p.split()[-1]), "elements": {k: 0.25 for k in els}, "level_probs": [1.0]}
                for p, els in zip(prompts, elements)]


def test_score_dataset_resumes_from_its_cache(tmp_path):
    from evalmuse_models.mllm.data import pseudo_label_dataset, score_dataset

    rows = [{**_record(image=Image.new("RGB", (8, 8))), "prompt": f"prompt {i}"} for i in range(5)]
    ds = records_from_rows(rows)
    cache = tmp_path / "scores.jsonl"
    with pytest.raises(RuntimeError, match="interrupted"):
        score_dataset(_CountingScorer(fail_after=2), ds, chunk_size=2, cache_path=cache, progress=False)
    with open(cache, "a", encoding="utf-8") as handle:
        handle.write('{"index": 4, "outp')  # a torn line from the interruption
    again = _CountingScorer()
    out = score_dataset(again, ds, chunk_size=2, cache_path=cache, progress=False)
    assert again.calls == 3  # rows 0-1 came from the cache
    assert [o["overall"] for o in out] == [0, 1, 2, 3, 4]
    assert list(out[0]["elements"]) == ["red cats (animal)", "two (counting)", "on (spatial)", "wooden (material)"]
    labelled = pseudo_label_dataset(_CountingScorer(), ds, chunk_size=3, progress=False)
    assert labelled["total_score"] == [0, 1, 2, 3, 4]
    assert [e["score"] for e in labelled[2]["elements"]] == [0.25] * 4
    assert labelled[2]["total_score_votes"] == [] and labelled[2]["pseudo_label"] is True
