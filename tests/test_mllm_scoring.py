"""The MLLM scorer: level / yes-no reading on controlled logits, shared-prefix equivalence, ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from evalmuse_models.mllm import (
    EnsembleScorer,
    MLLMAlignmentScorer,
    ensemble_outputs,
    load_scorer,
)
from evalmuse_models.mllm.prompts import LEVEL_WORDS, LevelScale
from evalmuse_models.models.evalmuse_align import AlignmentResult
from evalmuse_models.testing.mllm import build_tiny_qwen2_5_vl
from evalmuse_models.utils import UserInputError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_qwen2_5_vl(seed=0)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (40, 90), (56, 56), (30, 70)]
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 4], 3), dtype=np.uint8)) for i in range(n)]


PROMPTS = ["a red cat", "two dogs on a big green field at night", "x"]
ELEMENTS = [["red cat (animal)", "red (color)"], ["two dogs (counting)", "field (location)", "on (spatial)"], []]


def _controlled(model, tok, level_logits, yes_logit, no_logit, distractor=None):
    """Overwrite the model's output logits: -50 everywhere, chosen values on the level / yes / no tokens."""
    level_ids = [tok.encode(w, add_special_tokens=False)[0] for w in LEVEL_WORDS]
    yes_id, no_id = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]

    def hook(module, args, output):
        logits = torch.full_like(output.logits, -50.0)
        logits[..., level_ids] = torch.tensor(level_logits, dtype=logits.dtype)
        logits[..., yes_id] = yes_logit
        logits[..., no_id] = no_logit
        if distractor is not None:
            logits[..., distractor] = 20.0  # a non-level token with a huge logit must not matter
        output.logits = logits
        return output

    return model.register_forward_hook(hook)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_level_and_yes_no_reading_on_controlled_logits(tiny, share_prefix):
    model, processor = tiny
    tok = processor.tokenizer
    a = [0.0, 1.0, 2.0, 0.5, -1.0]
    handle = _controlled(model, tok, a, 2.0, 0.5, distractor=tok.encode("image", add_special_tokens=False)[0])
    try:
        scorer = MLLMAlignmentScorer(model, processor, share_prefix=share_prefix)
        out = scorer.score(_images(), PROMPTS, ELEMENTS, batch_size=2)
    finally:
        handle.remove()
    z = sum(math.exp(x) for x in a)
    probs = [math.exp(x) / z for x in a]
    expected = sum(p * v for p, v in zip(probs, (1, 2, 3, 4, 5)))
    p_yes = math.exp(2.0) / (math.exp(2.0) + math.exp(0.5))
    for rec, keys in zip(out, ELEMENTS):
        assert isinstance(rec, AlignmentResult) and rec.unmatched_elements == []
        assert rec.overall == pytest.approx(expected, abs=1e-5)
        assert rec.level_probs == pytest.approx(probs, abs=1e-6)
        assert list(rec.elements) == keys
        for v in rec.elements.values():
            assert v == pytest.approx(p_yes, abs=1e-6)


@pytest.mark.parametrize("mode", ["direct", "cot"])
def test_shared_prefix_matches_full_sequences(tiny, mode):
    model, processor = tiny
    shared = MLLMAlignmentScorer(model, processor, share_prefix=True, overall_mode=mode, question_batch_size=2)
    full = MLLMAlignmentScorer(model, processor, share_prefix=False, overall_mode=mode, question_batch_size=3)
    a = shared.score(_images(), PROMPTS, ELEMENTS, batch_size=3, prompt_types=["real", "synthetic", None])
    b = full.score(_images(), PROMPTS, ELEMENTS, batch_size=2, prompt_types=["real", "synthetic", None])
    for x, y in zip(a, b):
        assert x.overall == pytest.approx(y.overall, abs=1e-4)
        assert x.level_probs == pytest.approx(y.level_probs, abs=1e-4)
        assert x.elements.keys() == y.elements.keys()
        for k in x.elements:
            assert x.elements[k] == pytest.approx(y.elements[k], abs=1e-4)
    # the scores do depend on the image and the question
    assert len({round(r.overall, 6) for r in a}) > 1
    assert len({round(v, 6) for v in a[1].elements.values()}) > 1


def test_output_shape_and_element_inputs(tiny, tmp_path):
    model, processor = tiny
    scorer = MLLMAlignmentScorer(model, processor)
    path = tmp_path / "img.png"
    _images(1)[0].save(path)
    records = [{"phrase": "red cat", "category": "animal"}, {"phrase": "mat", "category": None}]
    out = scorer.score([str(path), _images(1)[0]], ["a red cat", "a red cat"],
                       elements=[records, {"red cat (animal)": 1.0, "odd (key) (object)": 0}])
    assert set(out[0].to_dict()) == {"overall", "elements", "unmatched_elements", "level_probs"}
    assert list(out[0].elements) == ["red cat (animal)", "mat"]
    assert list(out[1].elements) == ["red cat (animal)", "odd (key) (object)"]
    assert 1.0 <= out[0].overall <= 5.0
    assert all(0.0 <= v <= 1.0 for v in out[1].elements.values())
    assert sum(out[0].level_probs) == pytest.approx(1.0, abs=1e-5)
    assert out[0].elements["red cat (animal)"] == pytest.approx(out[1].elements["red cat (animal)"], abs=1e-5)


def test_input_errors(tiny):
    model, processor = tiny
    scorer = MLLMAlignmentScorer(model, processor)
    with pytest.raises(UserInputError, match="prompts"):
        scorer.score(_images(2), ["one prompt"])
    with pytest.raises(UserInputError, match="elements"):
        scorer.score(_images(2), ["a", "b"], elements=[["x (object)"]])
    with pytest.raises(UserInputError, match="image #0"):
        scorer.score([42], ["a"])
    with pytest.raises(UserInputError, match="cannot be read"):
        scorer.score(["/nonexistent/image.png"], ["a"])


def test_multi_token_level_word_fails_clearly(tiny):
    model, processor = tiny
    scale = LevelScale(("bad", "supercalifragilistic"), (1.0, 5.0))
    with pytest.raises(UserInputError, match="supercalifragilistic.*single tokens"):
        MLLMAlignmentScorer(model, processor, levels=scale)
    with pytest.raises(UserInputError, match="yes/no word"):
        MLLMAlignmentScorer(model, processor, yes_word="Absolutely-yes")


def test_fifteen_levels(tiny):
    model, processor = tiny
    out = MLLMAlignmentScorer(model, processor, levels=15).score(_images(1), ["a cat"])
    assert len(out[0].level_probs) == 15
    assert 1.0 <= out[0].overall <= 5.0


def test_ensemble_outputs_weighted_average():
    a = [AlignmentResult(2.0, {"x (object)": 0.2, "y (color)": 1.0}, level_probs=[1, 0, 0, 0, 0])]
    b = [AlignmentResult(4.0, {"x (object)": 0.8, "z (object)": 0.0}, ["z (object)"], level_probs=[0, 0, 0, 0, 1])]
    out = ensemble_outputs([a, b], weights=[3, 1])
    assert out[0].overall == pytest.approx(2.5)
    assert out[0].elements["x (object)"] == pytest.approx(0.35)
    assert out[0].elements["y (color)"] == pytest.approx(1.0)  # only member a has it
    assert out[0].unmatched_elements == ["z (object)"]  # a member could not locate it
    assert out[0].level_probs == pytest.approx([0.75, 0, 0, 0, 0.25])
    assert ensemble_outputs([a, b])[0].overall == pytest.approx(3.0)
    assert ensemble_outputs([a, [AlignmentResult(4.0)]])[0].level_probs is None  # not every member has them
    with pytest.raises(UserInputError, match="weights"):
        ensemble_outputs([a, b], weights=[1])
    with pytest.raises(UserInputError, match="scored"):
        ensemble_outputs([a, a + a])


def test_ensemble_of_checkpoints(tiny):
    model, processor = tiny
    other, _ = build_tiny_qwen2_5_vl(seed=1)
    s1, s2 = MLLMAlignmentScorer(model, processor), MLLMAlignmentScorer(other, processor)
    imgs = _images(2)
    o1, o2 = s1.score(imgs, PROMPTS[:2], ELEMENTS[:2]), s2.score(imgs, PROMPTS[:2], ELEMENTS[:2])
    ens = EnsembleScorer([s1, s2], weights=[1, 3]).score(imgs, PROMPTS[:2], ELEMENTS[:2])
    for e, x, y in zip(ens, o1, o2):
        assert e.overall == pytest.approx(0.25 * x.overall + 0.75 * y.overall, abs=1e-6)
        for k in x.elements:
            assert e.elements[k] == pytest.approx(0.25 * x.elements[k] + 0.75 * y.elements[k], abs=1e-6)


def test_load_from_saved_folder(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    loaded = load_scorer(str(tmp_path / "m"), device="cpu", max_pixels=56 * 56)
    ref = MLLMAlignmentScorer(model, processor).score(_images(1), ["a cat"], [["cat (animal)"]])
    got = loaded.score(_images(1), ["a cat"], [["cat (animal)"]])
    assert got[0].overall == pytest.approx(ref[0].overall, abs=1e-5)
    assert got[0].elements["cat (animal)"] == pytest.approx(ref[0].elements["cat (animal)"], abs=1e-5)
    ens = load_scorer(f"{tmp_path / 'm'},{tmp_path / 'm'}", device="cpu")
    assert isinstance(ens, EnsembleScorer) and len(ens.scorers) == 2
    with pytest.raises(UserInputError, match="does not exist locally"):
        load_scorer("no-such-model-folder")


def test_pixel_budget_changes_the_number_of_image_tokens(tiny, tmp_path):
    from evalmuse_models.mllm.scoring import set_pixel_budget
    from evalmuse_models.testing.mllm import build_tiny_processor

    proc = build_tiny_processor(max_pixels=56 * 56)
    img = _images(1)[0].resize((200, 200))
    small = proc.image_processor(images=[img], return_tensors="pt")["image_grid_thw"].prod()
    set_pixel_budget(proc, max_pixels=112 * 112)
    large = proc.image_processor(images=[img], return_tensors="pt")["image_grid_thw"].prod()
    assert large > small


def test_pseudo_labels_become_training_records(tiny, prepared_dataset, tmp_path):
    import datasets

    from evalmuse_models.mllm.data import (
        ConversationOptions,
        build_sft_dataset,
        pseudo_label_dataset,
        save_pseudo_labels,
    )
    from evalmuse_models.mllm.train import MLLMRecipeArguments, _load_splits

    model, processor = tiny
    test = datasets.load_dataset(str(prepared_dataset), "alignment", split="test").select(range(3))
    assert test[0]["total_score"] is None
    scorer = MLLMAlignmentScorer(model, processor)
    labelled = pseudo_label_dataset(scorer, test, batch_size=2, progress=False)
    keys = [[f"{e['phrase']} ({e['category']})" for e in els] for els in test["elements"]]
    preds = scorer.score(test["image"], test["prompt"], keys, prompt_types=test["prompt_type"])
    assert labelled["total_score"] == pytest.approx([p.overall for p in preds], abs=1e-6)
    first = labelled[0]["elements"]
    assert [e["score"] for e in first] == pytest.approx(list(preds[0].elements.values()), abs=1e-6)
    assert all(labelled["pseudo_label"])
    path = save_pseudo_labels(labelled, tmp_path / "pseudo" / "test.parquet")
    reloaded = datasets.load_dataset("parquet", data_files=path, split="train")
    sft = build_sft_dataset(reloaded, ConversationOptions())
    assert len(sft) == 3 and sft[0]["messages"][1]["content"] in {"bad", "poor", "fair", "good", "excellent"}
    train, _ = _load_splits(MLLMRecipeArguments(dataset_dir=str(prepared_dataset), extra_train_files=[path]))
    base = datasets.load_dataset(str(prepared_dataset), "alignment", split="train")
    assert len(train) == len(base) + 3
    assert train[len(base)]["total_score"] == pytest.approx(preds[0].overall, abs=1e-6)


def test_tiny_builder_dtype_and_presets():
    model, processor = build_tiny_qwen2_5_vl("tiny", seed=3, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32
    cfg = model.config
    assert cfg.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.text_config.vocab_size == len(processor.tokenizer)
    with pytest.raises(ValueError, match="unknown preset"):
        build_tiny_qwen2_5_vl("huge")
    from evalmuse_models.testing.mllm import tiny_qwen2_5_vl_config

    big = tiny_qwen2_5_vl_config("7b", tokenizer=processor.tokenizer)
    assert (big.text_config.hidden_size, big.text_config.num_hidden_layers, big.vision_config.depth) == (3584, 28, 32)
    assert big.text_config.vocab_size == 152064
