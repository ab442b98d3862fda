"""EvalMuse alignment model (FGA-BLIP2): config presets, the official scoring function, loss, processor,
batching, weight init, save/load through the Auto classes and as remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from evalmuse_models.models.evalmuse_align import (
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
    EvalMuseAlignProcessor,
    build_tiny_processor,
    clean_prompt,
    element_phrase,
    find_sublist,
)


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
    tiny = EvalMuseAlignConfig.from_preset("tiny", loss_weighting="exp_var", vision_config={"num_hidden_layers": 1})
    assert tiny.loss_weighting == "exp_var" and tiny.vision_config.num_hidden_layers == 1
    assert tiny.vision_config.hidden_size == 48  # the rest of the preset is kept
    with pytest.raises(ValueError, match="unknown EvalMuseAlign preset"):
        EvalMuseAlignConfig.from_preset("huge")
    with pytest.raises(ValueError, match="loss_weighting"):
        EvalMuseAlignConfig.from_preset("tiny", loss_weighting="squared")


def test_config_round_trip(tmp_path):
    from transformers import AutoConfig

    config = EvalMuseAlignConfig.from_preset("tiny", token_loss_weight=0.3)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EvalMuseAlignConfig)
    assert loaded.to_dict()["qformer_config"] == config.to_dict()["qformer_config"]
    assert loaded.token_loss_weight == 0.3 and loaded.mask_head_hidden_sizes == [32, 16]


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
    ids = processor.tokenizer(clean_prompt(prompt)).input_ids
    assert len(result["token_scores"]) == len(ids)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    scores = result["token_scores"]
    first_red = tokens.index("red")
    second_red = tokens.index("red", first_red + 1)
    assert result["elements"]["red (color)"] == pytest.approx(scores[first_red], abs=1e-6)  # FIRST occurrence
    assert result["elements"]["red ball (object)"] == pytest.approx(
        np.mean(scores[second_red : second_red + 2]), abs=1e-6
    )
    assert result["elements"]["table (object)"] == pytest.approx(scores[tokens.index("table")], abs=1e-6)
    assert result["elements"]["green (color)"] == 0.0
    assert result["elements"]["cube (big) (object)"] == 0.0  # phrase "cube (big)" keeps its brackets
    assert result["unmatched_elements"] == ["green (color)", "cube (big) (object)"]
    assert list(result["elements"]) == keys
    assert 1.0 <= result["overall"] <= 5.0


def test_batched_score_equals_one_image_at_a_time(model, processor):
    images = _images(5)
    prompts = ["a red cube", "two blue spheres on the left of a tall green tree at night", "a cat", "", "big dog"]
    elements = [["red cube (object)"], ["blue spheres (object)", "tree (object)"], None, [], ["dog (animal)"]]
    batched = model.score(images, prompts, elements=elements, batch_size=3, processor=processor)
    single = [model.score([i], [p], elements=[e], batch_size=1, processor=processor)[0]
              for i, p, e in zip(images, prompts, elements)]
    for b, s in zip(batched, single):
        assert b["overall"] == pytest.approx(s["overall"], abs=1e-5)
        assert b["elements"].keys() == s["elements"].keys()
        for key in b["elements"]:
            assert b["elements"][key] == pytest.approx(s["elements"][key], abs=1e-5)
        np.testing.assert_allclose(b["token_scores"], s["token_scores"], atol=1e-5)
    assert batched[2]["elements"] == {} and batched[2]["token_scores"]  # no elements: overall + tokens


def test_score_accepts_paths_and_rejects_bad_calls(model, processor, tmp_path):
    path = tmp_path / "img.png"
    _images(1)[0].save(path)
    by_path = model.score([str(path)], ["a red cube"], processor=processor)
    by_image = model.score([Image.open(path)], ["a red cube"], processor=processor)
    assert by_path[0]["overall"] == pytest.approx(by_image[0]["overall"])
    with pytest.raises(ValueError, match="2 prompts"):
        model.score(_images(1), ["a", "b"], processor=processor)
    fresh = EvalMuseAlignModel(model.config)
    with pytest.raises(ValueError, match="processor"):
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
    assert out.element_scores.shape == (2, 2)
    torch.testing.assert_close(out.element_scores[0, 1], out.token_scores[0, 4])


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


def test_processor_element_tensors_and_truncation(processor):
    batch = processor(text=["a red cube", "two blue balls and a red cube"], elements=[["cube (shape)"], ["red cube (object)", "x (other)"]])
    assert batch["element_mask"].shape[:2] == (2, 2)
    assert batch["element_found"].tolist() == [[True, False], [True, False]]
    assert batch["num_elements"].tolist() == [1, 2]
    train = processor(text=["a red cube"], padding="max_length")
    assert train["input_ids"].shape == (1, processor.max_text_length)
    long = processor(text=[" ".join(["cube"] * 40)], padding="max_length", truncation=True, max_length=32)
    assert long["input_ids"].shape == (1, 32)
    with pytest.raises(ValueError, match="element lists"):
        processor(text=["a"], elements=[[], []])


# ----------------------------------------------------------------------------- save / load


def test_save_and_load_with_auto_classes(tmp_path, model, processor):
    from transformers import AutoModel, AutoProcessor

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, EvalMuseAlignModel) and isinstance(loaded_processor, EvalMuseAlignProcessor)
    images, prompts = _images(2), ["a red cube", "a blue ball"]
    before = model.score(images, prompts, processor=processor)
    after = loaded.score(images, prompts)  # processor found next to the weights
    assert [r["overall"] for r in after] == pytest.approx([r["overall"] for r in before], abs=1e-6)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_evalmuse_align.EvalMuseAlignModel"
    assert json.loads((tmp_path / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]


@pytest.mark.slow
def test_loads_as_remote_code_without_the_package(tmp_path, model, processor):
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    expected = model.score(_images(1), ["a red cube"], elements=[["red cube (object)"]], processor=processor)[0]
    code = textwrap.dedent(
        f"""
        import json, sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "evalmuse_models" or name.startswith("evalmuse_models."):
                    raise ImportError("evalmuse_models is blocked in this test")
        sys.meta_path.insert(0, _Block())
        try:
            import evalmuse_models  # noqa: F401
            raise SystemExit("the import block failed")
        except ImportError:
            pass
        import numpy as np
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        folder = {str(tmp_path / "m")!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
        result = model.score([image], ["a red cube"], elements=[["red cube (object)"]], processor=processor)[0]
        print(json.dumps({{"module": type(model).__module__, "overall": result["overall"],
                          "elements": result["elements"], "loaded": "evalmuse_models" in sys.modules}}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.") and not result["loaded"]
    assert result["overall"] == pytest.approx(expected["overall"], abs=1e-5)
    assert result["elements"]["red cube (object)"] == pytest.approx(expected["elements"]["red cube (object)"], abs=1e-5)
