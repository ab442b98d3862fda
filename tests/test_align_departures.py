"""Where the alignment model could depart from the official FGA-BLIP2 code (EvalMuse ``eval.py``, LAVIS
``fga_blip2.py``): the official behaviour is the default, the other one an option."""

from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from evalmuse_models.models.evalmuse_align import (
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
    EvalMuseAlignProcessor,
    clean_prompt,
    load_rgb_image,
)
from evalmuse_models.models.evalmuse_align import modeling_evalmuse_align as modeling
from evalmuse_models.testing.align import build_tiny_processor


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


def _variant(processor, **options):
    """The same tokenizer and image processor with other options."""
    return EvalMuseAlignProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                  max_text_length=processor.max_text_length, **options)


def _image(seed=0, size=(72, 56)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- 1. element keys


def _official_element_score(tokenizer, prompt_ids, token_scores, key):
    """``eval.py``'s element loop, written out: phrase = text before the last "(", ids without CLS/SEP,
    first exact occurrence in the prompt ids (index 0 = not found), mean over the span."""
    ids = tokenizer(key.rpartition("(")[0]).input_ids[1:-1]
    index = 0
    for i in range(len(prompt_ids) - len(ids) + 1):
        if prompt_ids[i : i + len(ids)] == ids:
            index = i
            break
    if not index:
        return 0.0
    return float(np.mean(token_scores[index : index + len(ids)]))


def test_element_keys_follow_eval_py_by_default_plain_phrases_on_request(model, processor):
    prompt = "A red cube on the wooden table"
    keys = ["table", "red cube (object)", "wooden table (object)", "cube (big", "red (x) cube", "(object)"]
    [result] = model.score([_image()], [prompt], elements=[keys], processor=processor)
    prompt_ids = processor.tokenizer(clean_prompt(prompt)).input_ids
    for key in keys:
        expected = _official_element_score(processor.tokenizer, prompt_ids, result.token_scores, key)
        assert result.elements[key] == pytest.approx(expected, abs=1e-6), key
    # A key without "(" has an empty phrase: scored 0 and reported missing, as eval.py does.
    assert result.elements["table"] == 0.0 and "table" in result.unmatched_elements
    assert result.elements["cube (big"] > 0  # eval.py's phrase is "cube ", which is in the prompt
    assert "(object)" in result.unmatched_elements

    plain = _variant(processor, element_key_rule="plain_phrase")
    [ours] = model.score([_image()], [prompt], elements=[keys], processor=plain)
    tokens = processor.tokenizer.convert_ids_to_tokens(prompt_ids)
    assert ours.elements["table"] == pytest.approx(ours.token_scores[tokens.index("table")], abs=1e-6)
    assert "table" not in ours.unmatched_elements
    for key in ("red cube (object)", "wooden table (object)"):  # keys with a category: the same either way
        assert ours.elements[key] == pytest.approx(result.elements[key], abs=1e-6)
    with pytest.raises(ValueError, match="element_key_rule"):
        _variant(processor, element_key_rule="whole")


def test_processor_options_are_saved_and_loaded(tmp_path, processor):
    from transformers import AutoProcessor

    import evalmuse_models  # noqa: F401 - registers the Auto classes

    custom = _variant(processor, element_key_rule="plain_phrase", image_alpha="white", exif_transpose=True)
    custom.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert (saved["element_key_rule"], saved["image_alpha"], saved["exif_transpose"]) == ("plain_phrase", "white", True)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert (loaded.element_key_rule, loaded.image_alpha, loaded.exif_transpose) == ("plain_phrase", "white", True)
    default = build_tiny_processor(EvalMuseAlignConfig.from_preset("tiny"))
    assert (default.element_key_rule, default.image_alpha, default.exif_transpose) == ("official", "drop", False)


# ----------------------------------------------------------------------------- 2. alpha


def test_rgba_drops_alpha_by_default_and_composites_over_white_on_request(tmp_path, processor):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    alpha = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    alpha[:, :20] = 0  # fully transparent, with colours stored under it
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")

    official = processor(images=rgba)["pixel_values"]
    # eval.py: ``convert("RGB")``: the stored colours, alpha ignored.
    torch.testing.assert_close(official, processor(images=Image.fromarray(rgb))["pixel_values"], rtol=0, atol=0)
    path = tmp_path / "transparent.png"
    rgba.save(path)
    torch.testing.assert_close(processor(images=str(path))["pixel_values"], official, rtol=0, atol=0)

    white = _variant(processor, image_alpha="white")(images=rgba)["pixel_values"]
    a = alpha[..., None] / 255.0
    composite = np.clip(np.round(rgb * a + 255 * (1 - a)), 0, 255).astype(np.uint8)
    reference = processor(images=Image.fromarray(composite))["pixel_values"]
    torch.testing.assert_close(white, reference, rtol=0, atol=0.05)  # PIL rounds its blend its own way
    assert (white - official).abs().max() > 1.0
    with pytest.raises(ValueError, match="image_alpha"):
        _variant(processor, image_alpha="black")


# ----------------------------------------------------------------------------- 3. EXIF orientation


def test_jpeg_exif_orientation_is_ignored_by_default_and_applied_on_request(tmp_path, processor):
    image = _image(5, size=(64, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, quality=95, exif=exif)
    with Image.open(path) as opened:
        stored = opened.convert("RGB")  # eval.py
        displayed = ImageOps.exif_transpose(opened).convert("RGB")
    assert stored.size == (64, 24) and displayed.size == (24, 64)

    plain = _variant(processor)  # no EXIF handling for PIL inputs either way: compare against pixel arrays
    by_path = processor(images=str(path))["pixel_values"]
    torch.testing.assert_close(by_path, plain(images=np.asarray(stored))["pixel_values"], rtol=0, atol=0)
    rotating = _variant(processor, exif_transpose=True)
    rotated = rotating(images=str(path))["pixel_values"]
    torch.testing.assert_close(rotated, plain(images=np.asarray(displayed))["pixel_values"], rtol=0, atol=0)
    assert (rotated - by_path).abs().max() > 1.0
    # The option applies to PIL inputs too; the default leaves them as they are.
    with Image.open(path) as opened:
        torch.testing.assert_close(rotating(images=opened)["pixel_values"], rotated, rtol=0, atol=0)
    with Image.open(path) as opened:
        torch.testing.assert_close(processor(images=opened)["pixel_values"], by_path, rtol=0, atol=0)


def test_missing_image_path_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_rgb_image(str(tmp_path / "nowhere.png"))


# ----------------------------------------------------------------------------- 4. long prompts


LONG_PROMPT = (
    "A tall green tree stands next to a small wooden house with a red door, two white cats sit on the "
    "roof, a yellow dog runs across the grass, the sky is full of clouds at night and a silver moon shines "
    "above a quiet river near the mountain"
)


def test_long_prompts_eval_keeps_every_token_forward_keeps_32(model, processor):
    image = _image(7)
    cleaned = clean_prompt(LONG_PROMPT)
    full_ids = processor.tokenizer(cleaned).input_ids
    assert len(full_ids) > 40 and len(cleaned.split()) <= 50
    keys = ["red door (object)", "silver moon (object)"]

    [default] = model.score([image], [LONG_PROMPT], elements=[keys], processor=processor)
    [eval_py] = model.score([image], [LONG_PROMPT], elements=[keys], processor=processor, text_truncation="eval")
    assert default == eval_py
    assert len(default.token_scores) == len(full_ids)  # eval.py: ``truncation=False``
    pixels = processor(images=image)["pixel_values"]
    with torch.no_grad():
        direct = model(pixel_values=pixels, input_ids=torch.tensor([full_ids])).alignment_score
    assert default.overall == pytest.approx(float(direct), abs=1e-6)
    assert default.unmatched_elements == []

    [forward] = model.score([image], [LONG_PROMPT], elements=[keys], processor=processor, text_truncation="forward")
    # forward(inference=True): ``padding="max_length", truncation=True, max_length=32`` (padding is masked).
    cut = processor.tokenizer(cleaned, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    assert int(cut.attention_mask.sum()) == 32 and cut.input_ids[0, -1] == processor.tokenizer.sep_token_id
    with torch.no_grad():
        official = model(pixel_values=pixels, input_ids=cut.input_ids, attention_mask=cut.attention_mask)
    assert len(forward.token_scores) == 32
    assert forward.overall == pytest.approx(float(official.alignment_score), abs=1e-6)
    assert abs(forward.overall - default.overall) > 1e-4  # a different function for long prompts
    assert forward.unmatched_elements == ["silver moon (object)"]  # cut off: located in the tokens it got

    short = "a red cube on the table"
    assert model.score([image], [short], processor=processor, text_truncation="forward")[0].overall == (
        pytest.approx(model.score([image], [short], processor=processor)[0].overall, abs=1e-6)
    )
    with pytest.raises(ValueError, match="text_truncation"):
        model.score([image], [short], processor=processor, text_truncation="head")


def test_prompt_longer_than_the_positions_is_a_clear_error(model):
    ids = torch.ones(1, model.config.qformer_config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="positions"):
        model(pixel_values=model.dummy_inputs["pixel_values"][:1], input_ids=ids)


# ----------------------------------------------------------------------------- 5. ITC read-out


def test_itc_head_matches_blip2_retrieval_and_the_official_formula(processor):
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    cfg = EvalMuseAlignConfig.from_preset("tiny", vision_post_layernorm_eps=1e-6)
    torch.manual_seed(2)
    ours = EvalMuseAlignModel(cfg).eval()
    reference = Blip2ForImageTextRetrieval(Blip2Config(
        vision_config=cfg.vision_config.to_dict(),
        qformer_config=cfg.qformer_config.to_dict(),
        num_query_tokens=cfg.num_query_tokens,
        image_text_hidden_size=cfg.image_text_hidden_size,
    )).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("mask_proj.") and k != "temp"}
    reference.load_state_dict(state, strict=False)
    ours.temp.fill_(0.25)

    inputs = ours.dummy_inputs
    with torch.no_grad():
        out = ours(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                   attention_mask=inputs["attention_mask"], match_head="itc")
        ref = reference(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"], use_image_text_matching_head=False)
    # transformers' ITC branch: max over queries of the cosine of the normalised projections (image x text).
    torch.testing.assert_close(out.itc_similarity, torch.diagonal(ref.logits_per_image), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.itc_score, out.itc_similarity * 5)  # FGA-BLIP2 forward(match_head="itc")
    torch.testing.assert_close(out.itc_logits, out.itc_similarity / 0.25)  # BLIP-2's contrastive logit
    assert torch.all(out.itc_similarity.abs() <= 1)
    assert out.alignment_score is None and out.token_scores is None and out.element_mask_prediction is not None
    with pytest.raises(ValueError, match="ITM head"):
        ours(**inputs, labels=torch.ones(2), match_head="itc")
    with pytest.raises(ValueError, match="element scores"):  # the ITC read-out has no alignment result
        processor.post_process_alignment(out, inputs["input_ids"], inputs["attention_mask"])
    with pytest.raises(ValueError, match="match_head"):
        ours(**inputs, match_head="itx")


def test_itc_read_out_with_the_official_forward_tokenization(model, processor):
    images = [_image(1), _image(2)]
    prompts = [LONG_PROMPT, "a red cube"]
    with torch.no_grad():
        results = model(**processor(images=images, text=prompts, text_truncation="forward"), match_head="itc")
        # the official forward(inference=True): padding="max_length", truncation=True, max_length=32
        batch = processor(images=images, text=prompts, padding="max_length", truncation=True, max_length=32)
        out = model(**batch, match_head="itc")
        full = model(**processor(images=images, text=prompts, text_truncation="eval"), match_head="itc")
    torch.testing.assert_close(results.itc_score, out.itc_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(results.itc_similarity, out.itc_similarity, rtol=0, atol=1e-6)
    torch.testing.assert_close(results.itc_logits, out.itc_similarity / model.temp, rtol=1e-5, atol=0)
    assert float(full.itc_score[1]) == pytest.approx(float(results.itc_score[1]), abs=1e-6)
    assert abs(float(full.itc_score[0]) - float(results.itc_score[0])) > 1e-5  # the long prompt is cut at 32


# ----------------------------------------------------------------------------- 6. vision autocast


def test_vision_autocast_is_plumbed_and_a_no_op_on_cpu(model, processor, monkeypatch):
    real = modeling.vision_autocast_context
    seen = []

    def spy(device, enabled):
        seen.append((torch.device(device).type, bool(enabled)))
        return real(device, enabled)

    monkeypatch.setattr(modeling, "vision_autocast_context", spy)
    images, prompts = [_image(1), _image(2)], ["a red cube", "two cats"]
    default = model.score(images, prompts, processor=processor)
    on = model.score(images, prompts, processor=processor, vision_autocast=True)
    assert seen == [("cpu", False), ("cpu", True)]
    assert on == default  # bit for bit: CPU runs in fp32, as the official code does
    model.config.vision_autocast = True
    try:
        with torch.no_grad():
            model(**processor(images=images, text=prompts), match_head="itc")
        model.score(images, prompts, processor=processor, vision_autocast=False)
    finally:
        model.config.vision_autocast = False
    assert seen[2:] == [("cpu", True), ("cpu", False)]

    # The context itself: LAVIS ``maybe_autocast`` = fp16 autocast on CUDA, nothing elsewhere.
    assert isinstance(real("cpu", True), contextlib.nullcontext)
    assert isinstance(real(torch.device("cuda"), False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # building (not entering) it on a machine without CUDA warns
        context = real(torch.device("cuda", 0), True)
    assert isinstance(context, torch.autocast) and context.device == "cuda" and context.fast_dtype == torch.float16


def test_vision_autocast_config_round_trip(tmp_path):
    from transformers import AutoConfig

    import evalmuse_models  # noqa: F401

    EvalMuseAlignConfig.from_preset("tiny", vision_autocast=True).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).vision_autocast is True
    assert EvalMuseAlignConfig.from_preset("fga-blip2").vision_autocast is False
