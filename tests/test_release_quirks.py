"""The quirks of the real EvalMuse-40K files, end to end: hand-written records carrying each one go
through ``evalmuse prepare-data`` -> ``datasets.load_dataset`` -> scoring -> the official
``eval.json`` / ``output.json`` files and their score -> the MLLM questions.

Quirks (SPEC §1): flat ``img_path`` (generator unknown unless a generator map names it),
``prompt_id`` as ``"val_0001"`` or an int, averaged-float flags, ``fidelity_label`` empty or
non-ASCII, ``element_score`` as a literal string or an already parsed dict, element keys with
trailing spaces, capitalised and sub-typed categories, and keys without a category.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from evalmuse_models.cli import main
from evalmuse_models.data import load_alignment_records
from evalmuse_models.metrics import score_alignment_files, write_alignment_truth
from evalmuse_models.mllm import split_element_key
from evalmuse_models.mllm.data import ConversationOptions, build_conversations
from evalmuse_models.mllm.prompts import element_question
from evalmuse_models.mllm.scoring import MLLMAlignmentScorer
from evalmuse_models.scoring import score
from evalmuse_models.scoring.submission import write_submission

TAG = "非真实场景"

RECORDS = [
    {   # the validation release: flat path, "val_" id, averaged flags, empty fidelity_label, messy keys
        "prompt_id": "val_0001", "prompt": "a pale car at sunset", "type": "real", "img_path": "img_0001.png",
        "total_score": [4, 4, 5],
        "element_score": "{'Pale (Color) ': [1, 1, 0], 'car (object-vehicle)': [1, 1, 1], 'sunset glow': [0, 0, 1]}",
        "promt_meaningless": 0.333333, "split_confidence": 0, "attribute_confidence": 0.666667,
        "fidelity_label": [],
    },
    {   # an integer prompt_id, element_score already parsed (as the organisers' preprocessing reads it)
        "prompt_id": 17, "prompt": "a cup, a blue hat", "type": "synthetic", "img_path": "img_0002.png",
        "total_score": [2, 1, 2],
        "element_score": {"cup (object-household goods)": [0, 0, 0], "blue (color )": [1, 0, 1],
                          "hat (object-cloth&accessories)": [1, 1, 1]},
        "promt_meaningless": [0, 0, 0], "split_confidence": [0, 1, 0], "attribute_confidence": [1, 1, 1],
        "fidelity_label": [TAG],
    },
    {   # two keys that differ only by a trailing space stay two elements
        "prompt_id": "val_0002", "prompt": "pale wood", "type": "real", "img_path": "img_0003.png",
        "total_score": [3, 3, 3],
        "element_score": "{'Pale (Color)': [1, 1, 1], 'Pale (Color) ': [0, 0, 0], 'wood (Material)': [0, 1, 1]}",
        "promt_meaningless": 0.0, "split_confidence": 0.333333, "attribute_confidence": 1.0,
        "fidelity_label": [TAG, TAG, ""],
    },
    {   # the training release's layout, for contrast
        "prompt_id": "00805", "prompt": "pig giants attack", "type": "synthetic", "img_path": "SDXL-Turbo/00805.png",
        "total_score": [3, 4, 4], "element_score": "{'pig giants (animal)': [1, 0, 1], 'attack (activity)': [0, 0, 0]}",
        "promt_meaningless": [0, 0, 1], "split_confidence": [0, 0, 0], "attribute_confidence": [1, 1, 0],
        "fidelity_label": ["none", "hand", "none"],
    },
    {   # flat and not in the generator map: unknown generator; the total already averaged
        "prompt_id": "val_0003", "prompt": "two dogs", "type": "real", "img_path": "img_0004.png",
        "total_score": 2.333333, "element_score": "{'dog (animal)': [1, 1, 1], 'two (counting)': [0, 1, 0]}",
        "promt_meaningless": 0.0, "split_confidence": 0.0, "attribute_confidence": 0.333333,
        "fidelity_label": [],
    },
    {
        "prompt_id": "val_0003", "prompt": "two dogs", "type": "real", "img_path": "img_0005.png",
        "total_score": [5, 5, 4], "element_score": "{'red (color)': [1, 1, 1], 'car (object-vehicle) ': [0, 0, 0]}",
        "promt_meaningless": 0.0, "split_confidence": 0.0, "attribute_confidence": 1.0,
        "fidelity_label": [],
    },
]
GENERATOR_MAP = {"img_0001.png": "DALLE3", "img_0002.png": "Midjourney", "img_0003.png": "DALLE3",
                 "img_0005.png": "SDXL-Turbo"}
EXPECTED_GENERATORS = ["DALLE3", "Midjourney", "DALLE3", "SDXL-Turbo", "", "SDXL-Turbo"]
#: every key of RECORDS, written out by hand with the category it must be grouped under
EXPECTED_CATEGORY = {
    "Pale (Color) ": ("Pale", "color", ""), "car (object-vehicle)": ("car", "object", "vehicle"),
    "sunset glow": ("sunset glow", "other", ""), "cup (object-household goods)": ("cup", "object", "household goods"),
    "blue (color )": ("blue", "color", ""), "hat (object-cloth&accessories)": ("hat", "object", "cloth&accessories"),
    "Pale (Color)": ("Pale", "color", ""), "wood (Material)": ("wood", "material", ""),
    "pig giants (animal)": ("pig giants", "animal", ""), "attack (activity)": ("attack", "activity", ""),
    "dog (animal)": ("dog", "animal", ""), "two (counting)": ("two", "counting", ""),
    "red (color)": ("red", "color", ""), "car (object-vehicle) ": ("car", "object", "vehicle"),
}


def _votes(value):
    return np.mean(value) if isinstance(value, list) else value


def _raw_elements(record) -> dict:
    import ast

    raw = record["element_score"]
    return ast.literal_eval(raw) if isinstance(raw, str) else raw


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The raw release (val_list.json + images), the generator map, and the prepared dataset."""
    tmp = tmp_path_factory.mktemp("quirks")
    raw = tmp / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for record in RECORDS:
        path = raw / record["img_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    (raw / "val_list.json").write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    mapping = tmp / "generators.json"
    mapping.write_text(json.dumps(GENERATOR_MAP), encoding="utf-8")
    out = tmp / "evalmuse"
    assert main(["prepare-data", "--alignment", str(raw), "--generator-map", str(mapping), "--no-progress",
                 str(out)]) == 0
    return SimpleNamespace(tmp=tmp, raw=raw, mapping=mapping, out=out)


@pytest.fixture(scope="module")
def validation(prepared):
    from datasets import load_dataset

    return load_dataset(str(prepared.out), "alignment", split="validation",
                        cache_dir=str(prepared.tmp / "hf_cache"))


def test_each_quirk_survives_prepare_data_and_load_dataset(validation):
    assert len(validation) == len(RECORDS)
    rows = list(validation.remove_columns("image"))
    assert [r["img_path"] for r in rows] == [r["img_path"] for r in RECORDS]
    assert [r["generator"] for r in rows] == EXPECTED_GENERATORS  # the map, the folder, or unknown
    assert [r["prompt_id"] for r in rows] == ["val_0001", "17", "val_0002", "00805", "val_0003", "val_0003"]
    for row, raw in zip(rows, RECORDS):
        assert row["fidelity_label"] == raw["fidelity_label"]  # [] and non-ASCII tags, as released
        for column, name in (("prompt_meaningless", "promt_meaningless"), ("split_confidence", "split_confidence"),
                             ("attribute_confidence", "attribute_confidence")):
            assert row[column] == pytest.approx(_votes(raw[name]), abs=1e-6)
        elements = _raw_elements(raw)
        assert [e["key"] for e in row["elements"]] == list(elements)  # byte for byte, in release order
        assert [(e["phrase"], e["category"], e["subcategory"]) for e in row["elements"]] == [
            EXPECTED_CATEGORY[k] for k in elements]
        assert [e["score"] for e in row["elements"]] == [round(float(np.mean(v)), 6) for v in elements.values()]
    assert rows[4]["total_score"] == 2.333333 and rows[4]["total_score_votes"] is None
    assert rows[4]["prompt_variance"] == rows[5]["prompt_variance"] == pytest.approx(
        np.var([2.333333, 4.666667], ddof=1))
    assert "generator" in validation.features and validation.features["fidelity_label"].feature.dtype == "string"


def test_without_a_generator_map_flat_paths_have_an_unknown_generator(prepared):
    records = load_alignment_records(prepared.raw / "val_list.json")
    assert [r.generator for r in records] == ["", "", "", "SDXL-Turbo", "", ""]


class KeyEchoScorer:
    """An alignment scorer that answers every element key it is given (keys must come back unchanged)."""

    def __init__(self):
        self.seen_keys: list[list[str]] = []

    def score(self, images, prompts, elements=None, batch_size=8, processor=None):
        out = []
        for i, image in enumerate(images):
            keys = list((elements or [None] * len(images))[i] or [])
            self.seen_keys.append(keys)
            level = float(np.asarray(image, dtype=np.float32).mean()) / 255.0
            out.append({"overall": 1.0 + 4.0 * level + len(prompts[i]) / 10,
                        "elements": {k: (len(k) % 5) / 4 for k in keys}, "unmatched_elements": []})
        return out


def test_keys_round_trip_byte_exact_into_the_official_files_and_group_by_category(prepared, validation):
    results = prepared.tmp / "results.jsonl"
    scorer = KeyEchoScorer()
    score(prepared.out, out=results, align=scorer, config="alignment", split="validation", progress=False,
          overwrite=True)
    raw_keys = [list(_raw_elements(r)) for r in RECORDS]
    assert scorer.seen_keys == raw_keys  # the dataset's keys reach the scorer unchanged

    written = write_submission(results, prepared.tmp / "submission", runtime_per_image=0.1, gpu=False)
    output = written["alignment"]["output"]
    submitted = json.loads(output.read_text(encoding="utf-8"))
    assert [list(r["element_score"]) for r in submitted] == raw_keys
    assert '"Pale (Color) "' in output.read_text(encoding="utf-8")

    truth = prepared.tmp / "eval.json"
    write_alignment_truth(
        [{"prompt": row["prompt"], "img_path": row["img_path"], "total_score": row["total_score"],
          "element_score": {e["key"]: e["score"] for e in row["elements"]}}
         for row in validation.remove_columns("image")],
        truth,
    )
    assert [list(r["element_score"]) for r in json.loads(truth.read_text(encoding="utf-8"))] == raw_keys

    result = score_alignment_files(truth, output, breakdown=True)
    # per-category ACC by hand: both sides binarised at 0.5, grouped by the category written above
    hits: dict[str, list[bool]] = {}
    for raw, sub in zip(RECORDS, submitted):
        for key, votes in _raw_elements(raw).items():
            correct = (round(float(np.mean(votes)), 6) >= 0.5) == (sub["element_score"][key] >= 0.5)
            hits.setdefault(EXPECTED_CATEGORY[key][1], []).append(correct)
    assert result["per_category_count"] == {c: len(v) for c, v in hits.items()}
    assert result["per_category_count"]["color"] == 5  # "Color", "Color ", "color ", "color" in one group
    assert result["per_category_count"]["object"] == 4  # object-vehicle, -household goods, -cloth&accessories
    assert result["per_category_acc"] == pytest.approx({c: float(np.mean(v)) for c, v in hits.items()})
    assert result["acc"] == pytest.approx(np.mean([h for v in hits.values() for h in v]))


def test_mllm_questions_follow_the_normalised_category(validation):
    row = validation.remove_columns("image")[0]
    keys = [e["key"] for e in row["elements"]]
    # what the scorer asks for the raw keys ...
    asked = MLLMAlignmentScorer._questions(SimpleNamespace(question_templates=None), keys)
    assert asked == ["Is the color 'Pale' present in the image?", "Is the object 'car' present in the image?",
                     "Is 'sunset glow' present in the image?"]
    assert [split_element_key(k)[1] for k in keys] == ["color", "object", "other"]
    # ... is what the SFT data trains on, and the chain of thought lists the same raw keys
    convs = build_conversations(row, ConversationOptions(element_turns="separate", chain_of_thought=True))
    assert [c["messages"][0]["content"].split("\n", 1)[1] for c in convs[1:]] == asked
    assert convs[0]["messages"][1]["content"].startswith("- Pale (Color) : Yes\n- car (object-vehicle): Yes\n")
    assert element_question("hat", "object-cloth&accessories") == "Is the object 'hat' present in the image?"


def test_synthetic_release_can_write_the_quirks(tmp_path):
    from evalmuse_models.data import read_generator_map
    from evalmuse_models.data.synthetic import write_alignment_release

    write_alignment_release(tmp_path, num_prompts=6, seed=0, quirks=True)
    val = json.loads((tmp_path / "val_list.json").read_text(encoding="utf-8"))
    train = json.loads((tmp_path / "train_list.json").read_text(encoding="utf-8"))
    assert all("/" not in r["img_path"] and r["prompt_id"].startswith("val_") for r in val)
    assert all(isinstance(r["split_confidence"], float) for r in val)
    assert {tuple(r["fidelity_label"]) for r in val} <= {(), (TAG,)}
    assert all(isinstance(r["prompt_id"], int) for r in train)
    assert {type(r["element_score"]) for r in train} == {str, dict}
    keys = [k for r in train for k in _raw_elements(r)]
    assert any(k.endswith(" ") for k in keys) and any("(Color)" in k for k in keys)
    mapping = read_generator_map(tmp_path / "val_generators.csv")
    assert sorted(mapping) == sorted(r["img_path"] for r in val)
    records = load_alignment_records(tmp_path / "val_list.json")
    assert {r.generator for r in records} == {""}
    assert {e.category for r in records for e in r.elements} <= {
        "object", "attribute", "activity", "location", "color", "counting", "material", "spatial", "shape",
        "food", "animal", "human"}
