"""EvalMuse structure model: presets, forward / losses, composition with the backbones, the
``t2i-structure`` pipeline's contract, post-processing (torch and OpenCV), the pipeline of a saved
folder (in-process and as remote code), pretrained backbones from local folders. The config round
trip, Auto-class save / load and remote-code loading of model and processor are the shared family
tests (tests/test_model_families.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from evalmuse_models.models.evalmuse_structure import (
    EvalMuseStructureConfig,
    EvalMuseStructureModel,
    EvalMuseStructureOutput,
    EvalMuseStructurePipeline,
    EvalMuseStructureProcessor,
    StructureResult,
)
from evalmuse_models.models.evalmuse_structure import postprocess as pp
from evalmuse_models.models.evalmuse_structure.post_processing_evalmuse_structure import (
    binarize_heatmap,
    label_regions,
    mask_to_regions,
    remove_small_regions,
    resize_mask,
)
from evalmuse_models.testing.mixins import run_without_package
from evalmuse_models.utils import UserInputError

torch.set_num_threads(1)  # small ops: one thread is faster on a shared 2-core machine

TINY_ALTCLIP_VISION = {
    "model_type": "altclip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "patch_size": 8, "image_size": 32,
}
TINY_ALTCLIP_TEXT = {
    "model_type": "altclip_text_model", "vocab_size": 256, "hidden_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 80, "pad_token_id": 0,
    "bos_token_id": 2, "eos_token_id": 3, "project_dim": 32, "type_vocab_size": 1,
}


def tiny_em_rahf(**overrides) -> EvalMuseStructureConfig:
    """The EM-RAHF design (AltCLIP vision + text embeddings, self-attention, transposed-conv decoder,
    conv score head) at test size."""
    kwargs = {
        "vit_config": TINY_ALTCLIP_VISION, "text_config": TINY_ALTCLIP_TEXT, "vit_pretrained_id": None,
        "text_pretrained_id": None, "image_size": 64, "num_self_attention_blocks": 2, "fusion_hidden_size": 32,
        "fusion_num_heads": 2, "decoder_channels": [32, 16, 8], "score_hidden_size": 16, "max_text_length": 16,
    }
    kwargs.update(overrides)
    return EvalMuseStructureConfig.from_preset("altclip-fuser", **kwargs)


def tiny_tokenizer():
    from evalmuse_models.testing.align import build_tiny_tokenizer

    return build_tiny_tokenizer(["human", "artifact", "hand", "face"])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny")).eval()


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model):
    processor = EvalMuseStructureProcessor.from_model_config(tiny_model.config)
    return pipeline("t2i-structure", model=tiny_model, processor=processor, device="cpu")


# ------------------------------------------------------------------------------------------ config


def test_presets_hold_the_published_designs():
    assert EvalMuseStructureConfig.available_presets() == ["altclip-fuser", "dinov2-resnet-fuser", "tiny"]
    hnu = EvalMuseStructureConfig.from_preset("dinov2-resnet-fuser")
    assert hnu.vit_config.model_type == "dinov2" and hnu.vit_config.hidden_size == 1024
    assert hnu.vit_config.num_hidden_layers == 24 and hnu.vit_config.patch_size == 14
    assert hnu.image_size == 518 and hnu.patch_grid == 37
    assert hnu.cnn_name == "resnet50" and hnu.cnn_out_indices == [1, 2, 3, 4]
    assert (hnu.fusion_latent_dim, hnu.fusion_num_heads) == (64, 4)
    assert hnu.freeze_vit and hnu.freeze_cnn and hnu.vit_pretrained_id == "facebook/dinov2-large"
    rahf = EvalMuseStructureConfig.from_preset("altclip-fuser")
    assert rahf.vit_config.model_type == "altclip_vision_model" and rahf.image_size == 448
    assert rahf.patch_grid == 32 and rahf.text_config.model_type == "altclip_text_model"
    assert rahf.cnn_name is None and rahf.num_self_attention_blocks == 6
    assert rahf.text_prefix == "human artifact " and rahf.freeze_schedule_fraction == 0.5
    # 32 x 32 grid, 4 transposed x2 stages -> 512
    assert rahf.patch_grid * 2 ** (len(rahf.decoder_channels) - 1) == 512
    assert rahf.decoder_upsample == "transposed" and not rahf.decoder_use_skips
    assert abs(EvalMuseStructureConfig.from_preset("tiny").threshold - 40 / 255) < 1e-12


def test_preset_sub_config_overrides_are_merged():
    # A dict for a sub-config used to replace the preset's whole sub-config (a hidden-768, patch-14 DINOv2).
    tiny = EvalMuseStructureConfig.from_preset("tiny")
    deeper = EvalMuseStructureConfig.from_preset("tiny", vit_config={"num_hidden_layers": 4})
    assert deeper.vit_config.num_hidden_layers == 4
    for key in ("hidden_size", "patch_size", "num_attention_heads", "image_size", "model_type"):
        assert getattr(deeper.vit_config, key) == getattr(tiny.vit_config, key), key
    assert EvalMuseStructureConfig.from_preset("tiny", threshold=0.5).threshold == 0.5


def test_config_rejects_bad_values():
    # (the round trip through JSON and save_pretrained: tests/test_model_families.py)
    with pytest.raises(ValueError, match="unknown EvalMuse structure preset 'huge'"):
        EvalMuseStructureConfig.from_preset("huge")
    with pytest.raises(ValueError, match="heatmap_loss='l1' is invalid: expected 'bce' or 'mse'"):
        EvalMuseStructureConfig.from_preset("tiny", heatmap_loss="l1")
    with pytest.raises(ValueError, match="decoder_upsample='nearest' is invalid: expected 'bilinear' or 'transposed'"):
        EvalMuseStructureConfig.from_preset("tiny", decoder_upsample="nearest")
    with pytest.raises(ValueError, match="fusion_layers"):
        EvalMuseStructureConfig.from_preset("tiny", fusion_layers=[9])
    with pytest.raises(ValueError, match="threshold"):
        EvalMuseStructureConfig.from_preset("tiny", threshold=2.0)


# ------------------------------------------------------------------------------------------ forward


def test_forward_shapes_ranges_and_losses(tiny_model):
    inputs = tiny_model.dummy_inputs
    out = tiny_model(**inputs)
    assert out.heatmap.shape == (2, 512, 512) and out.structure_score.shape == (2,)
    assert out.loss is None
    assert float(out.heatmap.detach().min()) >= 0 and float(out.heatmap.detach().max()) <= 1
    assert torch.all((out.structure_score > 1) & (out.structure_score < 5))
    target = torch.zeros(2, 512, 512)
    target[0, 100:200, 100:300] = 1.0
    out = tiny_model(**inputs, heatmap_labels=target, score_labels=torch.tensor([2.0, float("nan")]))
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, out.heatmap_loss + out.score_loss)
    # the unlabelled image adds nothing to the score loss
    only_first = tiny_model(pixel_values=inputs["pixel_values"][:1], score_labels=torch.tensor([2.0]))
    expected = torch.nn.functional.mse_loss(torch.sigmoid(only_first.score_logits), torch.tensor([0.25]))
    assert torch.allclose(out.score_loss, expected, atol=1e-5)
    assert tiny_model(**inputs, return_dict=False)[0].shape == (2, 512, 512)


def test_loss_terms_follow_the_config():
    torch.manual_seed(0)
    base = EvalMuseStructureConfig.from_preset("tiny", dice_loss_weight=0.0, plcc_loss_weight=0.0)
    model = EvalMuseStructureModel(base).eval()
    inputs = model.dummy_inputs
    heat = torch.rand(2, 512, 512)
    out = model(**inputs, heatmap_labels=heat)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.heatmap_logits, heat)
    assert torch.allclose(out.heatmap_loss, expected, atol=1e-6)
    model.config.heatmap_loss = "mse"
    out = model(**inputs, heatmap_labels=heat)
    assert torch.allclose(out.heatmap_loss, torch.nn.functional.mse_loss(out.heatmap, heat), atol=1e-6)
    model.config.dice_loss_weight = 1.0
    with_dice = model(**inputs, heatmap_labels=heat)
    assert with_dice.heatmap_loss > out.heatmap_loss
    scores = torch.tensor([1.0, 5.0])
    plain = model(**inputs, score_labels=scores).score_loss
    model.config.rank_loss_weight = 1.0
    model.config.rank_loss_margin = 10.0  # every pair violates the margin
    ranked = model(**inputs, score_labels=scores).score_loss
    assert ranked > plain


def test_loss_helpers():
    from evalmuse_models.models.evalmuse_structure.modeling_evalmuse_structure import (
        dice_loss,
        plcc_loss,
        rank_loss,
    )

    t = torch.tensor([0.1, 0.5, 0.9])
    assert float(plcc_loss(t * 2 + 1, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(plcc_loss(-t, t)) == pytest.approx(1.0, abs=1e-6)
    assert float(plcc_loss(t, torch.ones(3))) == 0.0
    assert float(rank_loss(t, t, margin=0.0)) == 0.0 and float(rank_loss(-t, t)) > 0
    mask = torch.zeros(1, 4, 4)
    assert float(dice_loss(mask, mask)) == 0.0
    mask[0, :2] = 1
    assert float(dice_loss(mask, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(1 - mask, mask)) > 0.9


def test_untrained_fusion_keeps_the_backbone_features(tiny_model):
    """Zero-initialised injections: the layer-by-layer ViT run equals Dinov2Model's own forward."""
    pixel_values = tiny_model.dummy_inputs["pixel_values"]
    with torch.no_grad():
        hidden, features = tiny_model._encode(pixel_values)
        reference = tiny_model.vit(pixel_values).last_hidden_state
    assert torch.allclose(hidden, reference, atol=1e-5)
    assert [f.shape[1] for f in features] == [16, 32, 64, 128]
    # once a fusion block has weights, the CNN changes the ViT tokens
    model = EvalMuseStructureModel(tiny_model.config).eval()
    model.load_state_dict(tiny_model.state_dict())
    torch.nn.init.normal_(model.fusion_blocks[0].out_proj.weight, std=0.5)
    with torch.no_grad():
        changed, _ = model._encode(pixel_values)
    assert not torch.allclose(changed, reference, atol=1e-3)


def test_clip_vision_backbone_option():
    clip = {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "patch_size": 8, "image_size": 32,
    }
    torch.manual_seed(0)
    model = EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny", vit_config=clip, fusion_layers=[0, 1]))
    model.eval()
    pixel_values = model.dummy_inputs["pixel_values"]  # 64 px on a 32-px CLIP: interpolated positions
    with torch.no_grad():
        hidden, _ = model._encode(pixel_values)
        vit_out = model.vit(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        reference = model.vit.post_layernorm(vit_out)
        out = model(pixel_values=pixel_values)
    assert torch.allclose(hidden, reference, atol=1e-5)
    assert out.heatmap.shape == (2, 512, 512)


def test_frozen_backbones_get_no_gradient_and_stay_in_eval_mode():
    config = EvalMuseStructureConfig.from_preset("tiny", freeze_vit=True, freeze_cnn=True)
    model = EvalMuseStructureModel(config).train()
    assert not model.vit.training and not model.cnn.training and model.decoder.training
    out = model(**model.dummy_inputs, heatmap_labels=torch.zeros(2, 512, 512), score_labels=torch.tensor([1.0, 4.0]))
    out.loss.backward()
    assert all(p.grad is None for p in model.vit.parameters())
    assert all(p.grad is None for p in model.cnn.parameters())
    assert all(p.grad is not None for p in model.fusion_blocks.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    model.freeze_backbones(False, False, False)
    assert model.vit.training and model.cnn.training
    model.zero_grad()
    model(**model.dummy_inputs, heatmap_labels=torch.zeros(2, 512, 512)).loss.backward()
    assert all(p.grad is not None for p in model.vit.encoder.layer[0].parameters())


def test_em_rahf_design_with_text():
    torch.manual_seed(0)
    model = EvalMuseStructureModel(tiny_em_rahf()).eval()
    assert model.cnn is None and len(model.self_attention_blocks) == 2
    assert isinstance(model.decoder.upsamplers[0], torch.nn.ConvTranspose2d)
    inputs = model.dummy_inputs
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask"}
    out = model(**inputs, heatmap_labels=torch.zeros(2, 512, 512), score_labels=torch.tensor([3.0, 1.0]))
    assert out.heatmap.shape == (2, 512, 512) and torch.isfinite(out.loss)
    # the prompt matters
    other = dict(inputs, input_ids=inputs["input_ids"].flip(1) * inputs["attention_mask"])
    assert (model(**other).fused_tokens - out.fused_tokens).abs().max() > 1e-3
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=inputs["pixel_values"])


def test_processor_sizes_normalises_and_tokenises(tmp_path):
    config = tiny_em_rahf()
    processor = EvalMuseStructureProcessor.from_model_config(config, tokenizer=tiny_tokenizer())
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    batch = processor(images=[image, image], text=["a hand", "a face with many fingers"], return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    red = (1.0 - config.image_mean[0]) / config.image_std[0]
    assert torch.allclose(batch["pixel_values"][0, 0], torch.full((64, 64), red), atol=1e-2)
    assert batch["input_ids"].shape[0] == 2 and "token_type_ids" not in batch
    decoded = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert decoded.startswith("human artifact")
    processor.save_pretrained(tmp_path / "with_text")
    again = EvalMuseStructureProcessor.from_pretrained(tmp_path / "with_text")
    assert again.tokenizer is not None and again.text_prefix == "human artifact "
    assert torch.equal(again(images=[image], text=["a hand"])["input_ids"], processor(images=[image], text=["a hand"])["input_ids"])

    image_only = EvalMuseStructureProcessor.from_model_config(EvalMuseStructureConfig.from_preset("tiny"))
    image_only.save_pretrained(tmp_path / "image_only")
    loaded = EvalMuseStructureProcessor.from_pretrained(tmp_path / "image_only")
    assert loaded.tokenizer is None
    assert torch.equal(loaded(images=[image])["pixel_values"], image_only(images=[image])["pixel_values"])
    with pytest.raises(ValueError, match="no tokenizer"):
        loaded(images=[image], text=["x"])
    with pytest.raises(ValueError, match="text_pretrained_id"):
        EvalMuseStructureProcessor.from_model_config(config)


# ------------------------------------------------------------------------------------------ pipeline


def test_pipeline_contract(tiny_pipe, tmp_path):
    path = tmp_path / "img.jpg"
    Image.new("RGB", (120, 90), (10, 200, 30)).save(path)
    images = [Image.new("RGB", (300, 200)), str(path), Image.new("L", (64, 64))]
    results = tiny_pipe(images, batch_size=2)
    assert len(results) == 3
    for result, size in zip(results, [(300, 200), (120, 90), (64, 64)], strict=True):
        assert set(result) == {"score", "heatmap", "mask", "mask_512", "regions", "threshold"}
        assert isinstance(result["score"], float) and 1 <= result["score"] <= 5
        assert result["heatmap"].dtype == np.float32 and result["heatmap"].shape == (512, 512)
        assert 0 <= result["heatmap"].min() and result["heatmap"].max() <= 1
        assert result["mask_512"].dtype == np.uint8 and result["mask_512"].shape == (512, 512)
        assert result["mask"].dtype == np.uint8 and result["mask"].shape == (size[1], size[0])
        assert set(np.unique(result["mask"])) <= {0, 1}
        assert result["threshold"] == tiny_pipe.model.config.threshold
    one = tiny_pipe(images[0])  # one image: one dict
    assert one["score"] == pytest.approx(results[0]["score"], abs=1e-5) and one["regions"] == results[0]["regions"]
    # threshold 0 keeps every pixel, threshold 1 none
    full = tiny_pipe(images[0], threshold=0.0)
    assert full["mask"].all() and full["regions"] == [{"bbox": [0, 0, 300, 200], "area": 60000}]
    assert tiny_pipe(images[:1], threshold=1.0)[0]["regions"] == []
    # the mask follows the heatmap and the threshold
    r = results[0]
    expected = (np.round(r["heatmap"] * 255) > 40).astype(np.uint8)
    labels, _ = label_regions(torch.from_numpy(expected), min_area=tiny_pipe.model.config.min_region_area)
    assert np.array_equal(r["mask_512"], (labels.numpy() > 0).astype(np.uint8))


def test_pipeline_is_processor_model_and_post_processing(tiny_model, tiny_pipe):
    """Batched, one by one, or by hand (processor -> model -> post_process_distortion): the same results."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(90, 70), (64, 64), (40, 120)]]
    processor = tiny_pipe.processor
    with torch.no_grad():
        outputs = tiny_model(**processor(images=images, return_tensors="pt"))
    # an untrained heatmap sits near 0.5: threshold at its median level so the masks hold regions
    threshold = float(np.median(np.round(outputs.heatmap[0].numpy() * 255))) / 255
    by_hand = processor.post_process_distortion(
        outputs, threshold=threshold, target_sizes=[image.size[::-1] for image in images], min_area=20
    )
    assert all(isinstance(r, StructureResult) for r in by_hand) and any(r.regions for r in by_hand)
    batched = tiny_pipe(images, batch_size=3, threshold=threshold, min_area=20)
    single = [tiny_pipe(image, threshold=threshold, min_area=20) for image in images]
    for want, got_batched, got_single in zip(by_hand, batched, single, strict=True):
        for got in (got_batched, got_single):
            assert got["score"] == pytest.approx(want.score, abs=1e-5)
            assert np.allclose(got["heatmap"], want.heatmap, atol=1e-5)
            assert np.array_equal(got["mask_512"], want.mask_512) and np.array_equal(got["mask"], want.mask)
            assert got["regions"] == want.regions and got["threshold"] == threshold
    assert by_hand[0].to_dict().keys() == batched[0].keys()


def test_predict_is_the_pipeline_with_typed_results(tiny_model, tiny_pipe):
    images = [Image.new("RGB", (50, 40), (90, 20, 200)), Image.new("RGB", (20, 60))]
    results = tiny_model.predict(images, processor=tiny_pipe.processor, batch_size=2, threshold=0.5, min_area=1)
    expected = tiny_pipe(images, batch_size=2, threshold=0.5, min_area=1)
    assert all(isinstance(r, StructureResult) for r in results) and not tiny_model.training
    for result, want in zip(results, expected, strict=True):
        assert result.score == want["score"] and result.regions == want["regions"] and result.threshold == 0.5
        assert np.array_equal(result.mask, want["mask"]) and np.array_equal(result.heatmap, want["heatmap"])
    with pytest.raises(TypeError, match="processor"):
        tiny_model.predict(images)  # models do not build their own processor


def test_pipeline_errors(tiny_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        tiny_pipe([str(tmp_path / "missing.jpg")])
    with pytest.raises(TypeError, match="PIL images, paths or URLs"):
        tiny_pipe([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="one prompt per image"):
        tiny_pipe([Image.new("RGB", (8, 8))], prompts=["a", "b"])
    with pytest.raises(ValueError, match="threshold"):
        tiny_pipe([Image.new("RGB", (8, 8))], threshold=3)
    with pytest.raises(ValueError, match="needs the model's processor"):
        EvalMuseStructurePipeline(model=tiny_pipe.model)
    with pytest.raises(ValueError, match="threshold"):
        tiny_pipe.processor.post_process_distortion(
            EvalMuseStructureOutput(heatmap=torch.zeros(1, 8, 8), structure_score=torch.ones(1)), threshold=-0.5
        )


def test_pipeline_reads_images_by_the_official_rule(tiny_pipe, tmp_path):
    """RGB with the alpha channel dropped (the colours under it kept), the EXIF orientation only when asked."""
    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    assert tiny_pipe(rgba)["score"] == pytest.approx(tiny_pipe(Image.new("RGB", (40, 30), (200, 10, 10)))["score"])
    rotated = Image.new("RGB", (40, 30), (10, 200, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rotated.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert tiny_pipe(str(tmp_path / "rotated.jpg"))["mask"].shape == (30, 40)
    assert tiny_pipe(str(tmp_path / "rotated.jpg"), exif_transpose=True)["mask"].shape == (40, 30)


def test_pipeline_with_prompts_for_text_presets(tmp_path):
    model = EvalMuseStructureModel(tiny_em_rahf()).eval()
    processor = EvalMuseStructureProcessor.from_model_config(model.config, tokenizer=tiny_tokenizer())
    pipe = pipeline("t2i-structure", model=model, processor=processor, device="cpu")
    images = [Image.new("RGB", (100, 80)), Image.new("RGB", (50, 70), (200, 10, 10))]
    prompts = ["a hand", "a face with many fingers"]
    results = pipe(images, prompts=prompts, batch_size=2)  # prompts of different lengths: padded
    assert [r["mask"].shape for r in results] == [(80, 100), (70, 50)]
    singles = [pipe({"image": image, "prompt": prompt}) for image, prompt in zip(images, prompts, strict=True)]
    assert [r["score"] for r in singles] == pytest.approx([r["score"] for r in results], abs=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        pipe(images)
    # a saved checkpoint brings its processor (tokenizer included) and the pipeline: no network
    pipe.save_pretrained(tmp_path)
    again = pipeline("t2i-structure", model=str(tmp_path), trust_remote_code=True, device="cpu")
    assert [r["score"] for r in again(images, prompts=prompts)] == pytest.approx([r["score"] for r in results], abs=1e-5)


# ------------------------------------------------------------------------------------------ post-processing


def test_baseline_threshold_rule():
    heat = np.array([[40 / 255, 41 / 255], [40.4 / 255, 40.6 / 255]], np.float32)
    assert pp.heatmap_to_mask(heat).tolist() == [[0, 1], [0, 1]]
    assert binarize_heatmap(torch.from_numpy(heat), 40 / 255).tolist() == [[0, 1], [0, 1]]
    assert pp.heatmap_to_mask(heat, 0.0).all()
    with pytest.raises(UserInputError, match="threshold"):
        pp.heatmap_to_mask(heat, -0.1)
    with pytest.raises(UserInputError, match="2-D"):
        pp.heatmap_to_mask(np.zeros(3))


def test_torch_components_match_opencv():
    import cv2

    rng = np.random.default_rng(0)
    for trial in range(6):
        mask = (rng.random((96, 128)) < (0.3 if trial % 2 else 0.55)).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        labels, areas = label_regions(torch.from_numpy(mask), min_area=5, backend="torch")
        _n, _cv_labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        cv_areas = sorted(int(a) for a in stats[1:, cv2.CC_STAT_AREA] if a >= 5)
        assert sorted(areas.tolist()) == cv_areas
        assert np.array_equal(labels.numpy() > 0, pp.remove_small_regions(mask, 5) > 0)
        torch_regions = mask_to_regions((labels.numpy() > 0).astype(np.uint8), backend="torch")
        cv_regions = mask_to_regions(remove_small_regions(mask, 5, backend="cv2"), backend="cv2")
        assert torch_regions == cv_regions
    # a batch gives the same labels as one by one
    batch = torch.from_numpy(np.stack([mask, 1 - mask]))
    batch_labels, _ = label_regions(batch, backend="torch")
    assert torch.equal(batch_labels[1], label_regions(batch[1], backend="torch")[0])
    assert torch.equal(batch_labels, label_regions(batch)[0])  # the default backend numbers them alike
    empty, empty_areas = label_regions(torch.zeros(5, 5, dtype=torch.uint8), backend="torch")
    assert not empty.any() and len(empty_areas) == 0


def test_post_process_distortion_regions_and_resize(tiny_pipe):
    heat = torch.zeros(1, 512, 512)
    heat[0, 100:200, 50:150] = 0.9
    heat[0, 300:305, 300:305] = 0.9  # 25 px: below the minimum area
    outputs = EvalMuseStructureOutput(heatmap=heat, structure_score=torch.tensor([3.5]))
    out = tiny_pipe.processor.post_process_distortion(outputs, min_area=158, target_sizes=[(256, 1024)])[0]
    assert out.mask_512.sum() == 100 * 100 and out.score == 3.5 and out.threshold == pytest.approx(40 / 255)
    assert out.mask.shape == (256, 1024)
    assert out.regions == [{"bbox": [100, 50, 300, 100], "area": 200 * 50}]
    assert mask_to_regions(np.zeros((4, 4))) == []
    assert resize_mask(np.eye(2), (4, 4)).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


# ------------------------------------------------------------------------------------------ save / load


def test_saved_folder_ships_the_pipeline(tiny_model, tmp_path):
    """Besides the model, config and processor files (tests/test_model_families.py), a saved folder holds
    the post-processing and the pipeline code, and its config.json declares the pipeline."""
    from transformers import AutoConfig

    tiny_model.config.threshold = 0.3
    try:
        tiny_model.save_pretrained(tmp_path)
        EvalMuseStructureProcessor.from_model_config(tiny_model.config).save_pretrained(tmp_path)
    finally:
        tiny_model.config.threshold = 40 / 255
    for role in ("modeling", "configuration", "processing", "post_processing", "pipeline"):
        assert (tmp_path / f"{role}_evalmuse_structure.py").is_file(), role
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, EvalMuseStructureConfig) and config.threshold == 0.3
    assert config.custom_pipelines == {"t2i-structure": {
        "impl": "pipeline_evalmuse_structure.EvalMuseStructurePipeline", "pt": ["AutoModel"], "type": "multimodal"}}
    pipe = pipeline("t2i-structure", model=str(tmp_path), pipeline_class=EvalMuseStructurePipeline, device="cpu")
    assert isinstance(pipe.model, EvalMuseStructureModel) and pipe(Image.new("RGB", (40, 30)))["threshold"] == 0.3


REMOTE_SCRIPT = r"""
import json, sys

from PIL import Image
from transformers import pipeline

folder = sys.argv[1]
pipe = pipeline("t2i-structure", model=folder, trust_remote_code=True, device="cpu")
assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
assert type(pipe.model).__module__.startswith("transformers_modules"), type(pipe.model).__module__
result = pipe(Image.new("RGB", (40, 30)))
# without OpenCV and SciPy the regions are labelled in torch: same masks and regions
threshold = float(sys.argv[2])
images = [folder + "/image.png", Image.open(folder + "/image.png").resize((700, 600))]
regions = pipe(images, threshold=threshold, batch_size=2)
assert sys.modules["cv2"] is None and sys.modules["scipy"] is None and "evalmuse_models" not in sys.modules
print(json.dumps({"scores": [r["score"] for r in regions], "mask_shape": list(result["mask"].shape),
                  "processor": type(pipe.processor).__name__,
                  "regions": [r["regions"] for r in regions], "mask_sums": [int(r["mask"].sum()) for r in regions]}))
"""


@pytest.mark.slow
def test_pipeline_loads_as_remote_code_without_the_package(tiny_pipe, tmp_path):
    """The t2i-structure pipeline from a saved folder, with the package, OpenCV and SciPy blocked (the
    model and processor alone: tests/test_model_families.py)."""

    tiny_pipe.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    images = [image, image.resize((700, 600))]
    heat = tiny_pipe(images[0])["heatmap"]
    threshold = float(np.median(np.round(heat * 255))) / 255  # masks with regions (see the postprocess tests)
    regions = tiny_pipe(images, threshold=threshold, batch_size=2)  # labelled by OpenCV here
    got, _ = run_without_package(REMOTE_SCRIPT, tmp_path, repr(threshold), cwd=tmp_path,
                                 blocked=("cv2", "scipy", "scipy.ndimage"))
    assert got["processor"] == "EvalMuseStructureProcessor" and got["mask_shape"] == [30, 40]
    assert got["scores"] == pytest.approx([r["score"] for r in regions], abs=1e-5)
    assert got["regions"] == [r["regions"] for r in regions] and any(got["regions"])
    assert got["mask_sums"] == [int(r["mask"].sum()) for r in regions]


def test_pretrained_backbones_load_from_local_folders(tmp_path):
    import timm
    from safetensors.torch import save_file
    from transformers import AltCLIPConfig, AltCLIPModel, Dinov2Config, Dinov2Model

    tiny = EvalMuseStructureConfig.from_preset("tiny")
    dinov2 = Dinov2Model(Dinov2Config(**tiny.vit_config.to_dict()))
    dinov2.save_pretrained(tmp_path / "dinov2")
    cnn = timm.create_model("resnet10t", **tiny.cnn_kwargs)
    save_file(cnn.state_dict(), str(tmp_path / "cnn.safetensors"))
    config = EvalMuseStructureConfig.from_preset(
        "tiny", vit_pretrained_id=str(tmp_path / "dinov2"), cnn_pretrained=True,
        cnn_checkpoint_path=str(tmp_path / "cnn.safetensors"),
    )
    model = EvalMuseStructureModel(config, load_pretrained_backbones=True)
    for name, value in dinov2.state_dict().items():
        assert torch.equal(model.vit.state_dict()[name], value), name
    assert torch.equal(model.cnn.conv1[0].weight, cnn.conv1[0].weight)
    # without the flag the ids are only recorded: random backbones, no loading
    random_model = EvalMuseStructureModel(config)
    assert not torch.equal(random_model.cnn.conv1[0].weight, cnn.conv1[0].weight)

    # EM-RAHF: vision tower and text embeddings taken from one full AltCLIP checkpoint
    alt = AltCLIPModel(AltCLIPConfig(
        vision_config={k: v for k, v in TINY_ALTCLIP_VISION.items() if k != "model_type"},
        text_config={k: v for k, v in TINY_ALTCLIP_TEXT.items() if k != "model_type"}, projection_dim=16,
    ))
    alt.save_pretrained(tmp_path / "altclip")
    rahf = tiny_em_rahf(vit_pretrained_id=str(tmp_path / "altclip"), text_pretrained_id=str(tmp_path / "altclip"))
    model = EvalMuseStructureModel(rahf, load_pretrained_backbones=True)
    assert torch.equal(
        model.vit.embeddings.patch_embedding.weight, alt.vision_model.embeddings.patch_embedding.weight
    )
    assert torch.equal(
        model.text_embeddings.word_embeddings.weight, alt.text_model.roberta.embeddings.word_embeddings.weight
    )


def test_model_card_renders(tiny_model, tmp_path):
    from evalmuse_models.training.structure import write_model_card

    path = write_model_card(tmp_path, tiny_model)
    text = path.read_text()
    assert text.startswith("---") and "license: apache-2.0" in text and "library_name: transformers" in text
    assert "EvalMuse structure model (`tiny` preset)" in text and "timm resnet10t" in text
    assert "Final 0.6098" in text  # no run metrics: the published baseline is quoted
    assert "{{" not in text and "{%" not in text


def test_docstring_examples_run():
    import doctest

    from evalmuse_models.models.evalmuse_structure import (
        configuration_evalmuse_structure,
        modeling_evalmuse_structure,
        pipeline_evalmuse_structure,
        processing_evalmuse_structure,
    )

    for module in (
        configuration_evalmuse_structure, modeling_evalmuse_structure, pipeline_evalmuse_structure,
        processing_evalmuse_structure,
    ):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__
