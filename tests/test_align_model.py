"""EvalMuse alignment model (FGA-BLIP2): config presets, the official scoring function, loss, processor and its
post-processing, batching, the ``t2i-alignment`` pipeline, weight init, save/load through the Auto classes and
as remote code."""

from __future__ import annotations

import copy
import json
import textwrap

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image

from evalmuse_models.models.evalmuse_align import (
    AlignmentResult,
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
    clean_prompt,
    element_phrase,
    find_sublist,
)
from evalmuse_models.testing.align import build_tiny_processor
from evalmuse_models.testing.mixins import run_without_package


@pytest.fixture(scope="module")
def config():
    return EvalMuseAlignConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return EvalMuseAlignModel(config).eval()


@pytest.fixture(scope="module")
def processor(config):
    return build_tiny_processor(config)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(80, 60), (64, 64), (50, 90), (120, 100), (70, 70)]
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 5][::-1], 3), dtype=np.uint8)) for i in range(n)]


# ----------------------------------------------------------------------------- config


def test_presets_and_overrides():
    official = EvalMuseAlignConfig.from_preset("fga-blip2")
    assert official.vision_config.hidden_size == 1408 and official.vision_config.num_hidden_layers == 39
    assert official.vision_config.image_size == 364 and official.num_query_tokens == 32
    assert official.qformer_config.vocab_size == 30523 and official.qformer_config.encoder_hidden_size == 1408
    assert official.qformer_config.use_qformer_text_input and official.mask_head_hidden_sizes == [256, 128, 64, 16]
    tiny = EvalMuseAlignConfig.from_preset("tiny", loss_weighting="exp_var")  # sub-config merging: test_model_families
    assert tiny.loss_weighting == "exp_var" and tiny.mask_head_hidden_sizes == [32, 16]
    with pytest.raises(ValueError, match="unknown EvalMuseAlign preset"):
        EvalMuseAlignConfig.from_preset("huge")
    with pytest.raises(StrictDataclassError, match="loss_weighting"):
        EvalMuseAlignConfig.from_preset("tiny", loss_weighting="squared")
    with pytest.raises(StrictDataclassError, match="loss_weighting"):
        tiny.loss_weighting = "squared"  # checked on assignment too
    with pytest.raises(StrictDataclassError, match="num_query_tokens"):
        EvalMuseAlignConfig.from_preset("tiny", num_query_tokens=0)


# ----------------------------------------------------------------------------- the official function


def test_joint_pass_matches_transformers_blip2_itm_and_official_formula(config):
    """Our joint query+text pass is transformers' BLIP-2 ITM pass; the score is mean P(match) x 4 + 1."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    cfg = EvalMuseAlignConfig.from_preset("tiny", vision_post_layernorm_eps=1e-6)
    torch.manual_seed(1)
    ours = EvalMuseAlignModel(cfg).eval()
    blip_config = Blip2Config(
        vision_config=cfg.vision_config.to_dict(),
        qformer_config=cfg.qformer_config.to_dict(),
        num_query_tokens=cfg.num_query_tokens,
        image_text_hidden_size=cfg.image_text_hidden_size,
    )
    reference = Blip2ForImageTextRetrieval(blip_config).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("mask_proj.") and k != "temp"}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]

    inputs = ours.dummy_inputs
    with torch.no_grad():
        out = ours(**inputs)
        ref = reference(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            use_image_text_matching_head=True,
        )
    q = cfg.num_query_tokens
    # transformers averages LOGITS over queries; same joint pass, different read-out.
    torch.testing.assert_close(out.itm_logits[:, :q].mean(dim=1), ref.logits_per_image, rtol=1e-5, atol=1e-5)
    probs = torch.softmax(out.itm_logits, dim=-1)[..., 1]
    torch.testing.assert_close(out.alignment_score, probs[:, :q].mean(dim=1) * 4 + 1)
    torch.testing.assert_close(out.token_scores, probs[:, q:])
    assert not torch.allclose(out.alignment_score, torch.softmax(ref.logits_per_image, -1)[:, 1] * 4 + 1)
    assert out.itm_logits.shape == (2, q + inputs["input_ids"].shape[1], 2)
    assert torch.all((out.alignment_score >= 1) & (out.alignment_score <= 5))


def test_element_scores_follow_the_official_matching(model, processor):
    prompt = "A red cube, and a red ball (on) the table!"
    keys = ["red (color)", "red ball (object)", "green (color)", "table (object)", "cube (big) (object)"]
    [result] = model.score(_images(1), [prompt], elements=[keys], processor=processor)
    assert isinstance(result, AlignmentResult)
    ids = processor.tokenizer(clean_prompt(prompt)).input_ids
    assert len(result.token_scores) == len(ids)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    scores = result.token_scores
    first_red = tokens.index("red")
    second_red = tokens.index("red", first_red + 1)
    assert result.elements["red (color)"] == pytest.approx(scores[first_red], abs=1e-6)  # FIRST occurrence
    assert result.elements["red ball (object)"] == pytest.approx(
        np.mean(scores[second_red : second_red + 2]), abs=1e-6
    )
    assert result.elements["table (object)"] == pytest.approx(scores[tokens.index("table")], abs=1e-6)
    assert result.elements["green (color)"] == 0.0
    assert result.elements["cube (big) (object)"] == 0.0  # phrase "cube (big)" keeps its brackets
    assert result.unmatched_elements == ["green (color)", "cube (big) (object)"]
    assert list(result.elements) == keys
    assert 1.0 <= result.overall <= 5.0
    assert result.to_dict() == {"overall": result.overall, "elements": result.elements,
                                "unmatched_elements": result.unmatched_elements, "token_scores": scores}


def test_batched_score_equals_one_image_at_a_time(model, processor):
    images = _images(5)
    prompts = ["a red cube", "two blue spheres on the left of a tall green tree at night", "a cat", "", "big dog"]
    elements = [["red cube (object)"], ["blue spheres (object)", "tree (object)"], None, [], ["dog (animal)"]]
    batched = model.score(images, prompts, elements=elements, batch_size=3, processor=processor)
    single = [model.score([i], [p], elements=[e], batch_size=1, processor=processor)[0]
              for i, p, e in zip(images, prompts, elements)]
    for b, s in zip(batched, single):
        assert b.overall == pytest.approx(s.overall, abs=1e-5)
        assert b.elements.keys() == s.elements.keys()
        for key in b.elements:
            assert b.elements[key] == pytest.approx(s.elements[key], abs=1e-5)
        np.testing.assert_allclose(b.token_scores, s.token_scores, atol=1e-5)
        assert b.unmatched_elements == s.unmatched_elements
    assert batched[2].elements == {} and batched[2].token_scores  # no elements: overall + tokens


def test_score_accepts_paths_and_rejects_bad_calls(model, processor, tmp_path):
    path = tmp_path / "img.png"
    _images(1)[0].save(path)
    by_path = model.score([str(path)], ["a red cube"], processor=processor)
    by_image = model.score([Image.open(path)], ["a red cube"], processor=processor)
    assert by_path[0].overall == pytest.approx(by_image[0].overall)
    with pytest.raises(ValueError, match="2 prompts"):
        model.score(_images(1), ["a", "b"], processor=processor)
    fresh = EvalMuseAlignModel(model.config)
    with pytest.raises(TypeError, match="processor"):  # the model never guesses its processor
        fresh.score(_images(1), ["a"])
    assert model.training is False


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("weighting", ["none", "var", "exp_var"])
def test_loss_is_the_fga_blip2_loss(config, processor, weighting):
    torch.manual_seed(0)
    # the official weights (the tiny preset raises the token weight)
    model = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny", loss_weighting=weighting, token_loss_weight=0.1))
    assert (model.config.token_loss_weight, model.config.mask_loss_weight) == (0.1, 0.1)
    batch = processor(images=_images(3), text=["a red cube", "a blue ball", "a tree"], padding="max_length",
                      max_length=12, truncation=True)
    labels = torch.tensor([4.0, 2.0, 3.5])
    variance = torch.tensor([0.5, 0.0, 1.2])
    mask = torch.zeros(3, 12)
    mask[:, 0] = 1
    mask[0, 2:4] = 1
    token_labels = torch.zeros(3, 12)
    token_labels[:, 0] = (labels - 1) / 4
    token_labels[0, 2:4] = torch.tensor([1.0, 2 / 3])
    out = model(**batch, labels=labels, token_labels=token_labels, token_mask_labels=mask, prompt_variance=variance)
    score_term = (out.alignment_score - labels).abs()
    weight = {"none": torch.ones(3), "var": variance, "exp_var": variance.exp()}[weighting]
    cfg = model.config
    expected = (
        weight * score_term
        + cfg.token_loss_weight * (out.token_scores * mask - token_labels).abs().mean(dim=1)
        + cfg.mask_loss_weight * (out.element_mask_prediction - mask).abs().mean(dim=1)
    ).mean()
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.itm_head.weight.grad.abs().sum() > 0
    assert model.mask_proj.layers[0].weight.grad.abs().sum() > 0
    assert out.element_mask_prediction.shape == (3, 12)
    assert torch.all((out.element_mask_prediction > 0) & (out.element_mask_prediction < 1))


def test_variance_weighting_needs_variance(processor):
    model = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny", loss_weighting="var"))
    batch = processor(images=_images(1), text=["a red cube"])
    with pytest.raises(ValueError, match="prompt_variance"):
        model(**batch, labels=torch.tensor([3.0]))


# ----------------------------------------------------------------------------- init, dummy inputs


def test_every_parameter_is_initialised(config):
    torch.manual_seed(123)
    a = EvalMuseAlignModel._from_config(config)
    torch.manual_seed(123)
    b = EvalMuseAlignModel._from_config(config)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.isfinite(pa).all(), name
        assert torch.equal(pa, pb), f"{name} is not deterministically initialised"
        if pa.ndim >= 2 and pa.numel() > 16:
            assert 0 < pa.std() < 0.2, name
    h = config.qformer_config.hidden_size
    for layer in a.mask_proj.layers:
        if isinstance(layer, torch.nn.Linear):
            assert torch.all(layer.bias == 0)
            assert abs(layer.weight.std().item() - 1 / (h + 1)) < 0.5 / (h + 1)
    std = config.initializer_range
    assert 0.5 * std < a.query_tokens.std().item() < 1.5 * std
    assert 0.5 * std < a.itm_head.weight.std().item() < 1.5 * std
    assert torch.equal(a.embeddings.position_ids[0, :5], torch.arange(5))
    assert a.vision_model.post_layernorm.eps == 1e-5


def test_dummy_inputs_run(model):
    inputs = model.dummy_inputs
    with torch.no_grad():
        out = model(**inputs)
    assert out.alignment_score.shape == (2,) and out.token_scores.shape == inputs["input_ids"].shape


# ----------------------------------------------------------------------------- processor


def test_clean_prompt_is_the_official_rule():
    assert clean_prompt('A "Red"   cube: (on) the table!!') == "a red cube on the table"
    assert clean_prompt("x~y#z*w;v") == "x y z w v"
    assert clean_prompt("it's a dog's-life, ok?") == "it's a dog's-life, ok?"
    assert clean_prompt(" ".join(f"w{i}" for i in range(60))).split() == [f"w{i}" for i in range(50)]
    assert element_phrase("pig giants (animal)") == "pig giants "
    assert element_phrase("cube (big) (object)") == "cube (big) "
    assert element_phrase("plain phrase") == ""  # official: no "(" -> empty phrase -> never found
    assert element_phrase("plain phrase", rule="plain_phrase") == "plain phrase"
    assert element_phrase("cube (big", rule="plain_phrase") == "cube (big"
    assert element_phrase("cube (big") == "cube "
    assert find_sublist([5, 6], [101, 5, 6, 9, 5, 6, 102]) == 1
    assert find_sublist([7], [101, 5, 102]) == 0 and find_sublist([], [101, 102]) == 0


def test_processor_images_match_pil_bicubic_and_clip_normalisation(processor, config):
    image = _images(1)[0]
    pixels = processor(images=image)["pixel_values"]
    size = config.vision_config.image_size
    assert pixels.shape == (1, 3, size, size)
    manual = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    manual = ((manual - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(pixels[0].numpy(), manual, atol=1e-5)


def test_post_processing_and_truncation(processor):
    texts = ["a red cube", "two blue balls and a red cube"]
    elements = [["cube (shape)"], ["red cube (object)", "x (other)"]]
    batch = processor(text=texts)
    length = batch["input_ids"].shape[1]
    token_scores = torch.arange(2 * length, dtype=torch.float32).reshape(2, length) / (2 * length)
    outputs = {"alignment_score": torch.tensor([2.0, 4.5]), "token_scores": token_scores}
    results = processor.post_process_alignment(outputs, batch["input_ids"], batch["attention_mask"], elements)
    assert [r.unmatched_elements for r in results] == [[], ["x (other)"]]
    assert [list(r.elements) for r in results] == elements and [r.overall for r in results] == [2.0, 4.5]
    for row, (result, keys) in enumerate(zip(results, elements)):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert result.token_scores == pytest.approx(token_scores[row, : len(ids)].tolist())
        for key, span in zip(keys, processor.match_elements(ids, keys)):
            expected = 0.0 if span is None else float(token_scores[row, span[0] : span[1]].mean())
            assert result.elements[key] == pytest.approx(expected)
    # Left padding (the model itself wants right padding: its text positions count from the first column):
    # the spans are found in the tokens the attention mask keeps.
    left = copy.deepcopy(processor)
    left.tokenizer.padding_side = "left"
    shifted = left(text=texts)
    pad = (shifted["attention_mask"] == 0).sum(dim=1).tolist()
    shifted_scores = torch.stack([torch.roll(token_scores[row], pad[row]) for row in range(2)])
    again = left.post_process_alignment({**outputs, "token_scores": shifted_scores}, shifted["input_ids"],
                                        shifted["attention_mask"], elements)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in results]
    train = processor(text=["a red cube"], padding="max_length")
    assert train["input_ids"].shape == (1, processor.max_text_length)
    long = processor(text=[" ".join(["cube"] * 40)], padding="max_length", truncation=True, max_length=32)
    assert long["input_ids"].shape == (1, 32)
    with pytest.raises(ValueError, match="element lists"):
        processor.post_process_alignment(outputs, batch["input_ids"], batch["attention_mask"], [[], [], []])
    with pytest.raises(TypeError, match="elements"):  # elements are scored after the model, not tokenized
        processor(text=texts, elements=elements)
    with pytest.raises(ValueError, match="ITC head"):
        processor.post_process_alignment({"itc_score": torch.ones(2)}, batch["input_ids"])


# ----------------------------------------------------------------------------- the t2i-alignment pipeline


def test_pipeline_batches_like_one_by_one_and_like_processor_model_post_process(model, processor, tmp_path):
    from transformers import pipeline

    images = _images(4)
    images[1].save(tmp_path / "one.png")
    sources = [images[0], str(tmp_path / "one.png"), images[2], images[3]]
    prompts = ["a red cube", "two blue spheres on the left of a tall green tree at night", "a cat", "big dog"]
    elements = [["red cube (object)", "x (y)"], ["tree (object)", "blue spheres (object)"], None, ["dog (animal)"]]
    scorer = pipeline("t2i-alignment", model=model, processor=processor)
    batched = scorer(sources, prompt=prompts, elements=elements, batch_size=3)
    one_by_one = [scorer(s, prompt=p, elements=e) for s, p, e in zip(sources, prompts, elements)]
    records = scorer([{"image": s, "prompt": p, "elements": e} for s, p, e in zip(sources, prompts, elements)],
                     batch_size=2)
    inputs = processor(images=images, text=prompts)
    with torch.no_grad():
        outputs = model(**inputs)
    direct = processor.post_process_alignment(outputs, inputs["input_ids"], inputs["attention_mask"], elements)
    for b, o, r, d in zip(batched, one_by_one, records, direct):
        assert b.keys() == {"overall", "elements", "unmatched_elements", "token_scores"}
        for other in (o, r, d.to_dict()):
            assert b["overall"] == pytest.approx(other["overall"], abs=1e-5)
            assert b["elements"] == pytest.approx(other["elements"], abs=1e-5)
            assert list(b["elements"]) == list(other["elements"])
            assert b["unmatched_elements"] == other["unmatched_elements"]
            np.testing.assert_allclose(b["token_scores"], other["token_scores"], atol=1e-5)
    assert batched[0]["unmatched_elements"] == ["x (y)"] and batched[2]["elements"] == {}
    long_prompt = " ".join(["cube"] * 40)
    assert len(scorer(images[1], prompt=long_prompt)["token_scores"]) == 42  # eval.py: every token
    assert len(scorer(images[1], prompt=long_prompt, text_truncation="forward")["token_scores"]) == 32
    with pytest.raises(ValueError, match="prompt"):
        scorer({"image": images[0]})
    with pytest.raises(ValueError, match="elements"):
        scorer(images[0], elements=["x (y)"])


# ----------------------------------------------------------------------------- save / load
# Auto classes and remote-code loading of the model and processor: tests/test_model_families.py.


@pytest.mark.slow
def test_pipeline_ships_with_the_model_and_loads_without_the_package(tmp_path, model, processor):
    """``save_pretrained`` ships the ``t2i-alignment`` pipeline; loaded as remote code it finds the processor saved
    next to the weights (asking nothing more) and reads an image path like the official code."""
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["t2i-alignment"] == {
        "impl": "pipeline_evalmuse_align.EvalMuseAlignPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    assert (folder / "pipeline_evalmuse_align.py").is_file()
    image = _images(1)[0]
    image.save(tmp_path / "image.png")
    expected = model.score([image], ["a red cube"], elements=[["red cube (object)"]], processor=processor)[0]
    code = textwrap.dedent(
        f"""
        import json, sys
        from transformers import pipeline
        scorer = pipeline("t2i-alignment", model={str(folder)!r}, trust_remote_code=True)
        result = scorer({str(tmp_path / "image.png")!r}, prompt="a red cube", elements=["red cube (object)"])
        print(json.dumps({{"modules": [type(o).__module__ for o in (scorer, scorer.model, scorer.processor)],
                          "result": result, "loaded": "evalmuse_models" in sys.modules}}))
        """
    )
    report, output = run_without_package(code, cwd=tmp_path)
    assert "custom code" not in output and "to instantiate a model of type" not in output, output[-3000:]
    assert all(module.startswith("transformers_modules.") for module in report["modules"]) and not report["loaded"]
    result = report["result"]
    assert result.keys() == expected.to_dict().keys() and result["unmatched_elements"] == []
    assert result["overall"] == pytest.approx(expected.overall, abs=1e-5)
    assert result["elements"]["red cube (object)"] == pytest.approx(expected.elements["red cube (object)"], abs=1e-5)
    assert result["token_scores"] == pytest.approx(expected.token_scores, abs=1e-5)
