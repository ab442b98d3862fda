"""EM-RAHF (the official EvalMuse-Structure baseline): presets, the official state-dict layout and its
conversion (every tensor equal; the real size checked on the meta device), the forward pass against a
re-computation of the official equations, losses, freezing, the official pre-processing, post-processing
through the structure family, the ``t2i-structure`` pipeline, and the shared family tests (Auto classes,
remote code)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evalmuse_models.cli import main as cli_main
from evalmuse_models.convert.em_rahf import convert_em_rahf, official_to_hf_state_dict
from evalmuse_models.models.em_rahf import (
    EmRahfConfig,
    EmRahfModel,
    EmRahfOutput,
    EmRahfProcessor,
    interpolate_position_embeddings,
)
from evalmuse_models.models.evalmuse_structure import EvalMuseStructureProcessor
from evalmuse_models.testing.mixins import ModelFamilySpec, ModelFamilyTesterMixin
from evalmuse_models.utils import UserInputError

torch.set_num_threads(1)  # small ops: one thread is faster on a shared 2-core machine

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


# ------------------------------------------------------------------------------------ the official layout


def official_shapes(config: EmRahfConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official ``RAHF.state_dict()`` (DYEvaLab/EvalMuse-Structure ``model/model_final.py``,
    transformers >= 4.31: no id buffers) for ``config``'s sizes, written out from the official modules:
    ``VisionTransformer.ViT`` (AltCLIP's vision model), ``TextEmbedding.text_embedding`` (RoBERTa embeddings),
    ``SelfAttention`` (``LayerPair``s of ``Residual(Attention)`` / ``Residual(FeedForward)``),
    ``HeatmapPredictor`` and ``ScorePredictor`` (``nn.Sequential``s; ReLUs and Sigmoids hold nothing)."""
    vision, text = config.vision_config, config.text_config
    d, grid, p = vision.hidden_size, config.grid_size, vision.patch_size
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, *shape: int) -> None:
        shapes[f"{prefix}.weight"] = shape or (d,)
        shapes[f"{prefix}.bias"] = shape or (d,)

    vit = "image_encoder.ViT"
    shapes[f"{vit}.embeddings.class_embedding"] = (d,)
    shapes[f"{vit}.embeddings.patch_embedding.weight"] = (d, 3, p, p)
    shapes[f"{vit}.embeddings.position_embedding.weight"] = (grid * grid + 1, d)
    norm(f"{vit}.pre_layrnorm")
    for i in range(vision.num_hidden_layers):
        layer = f"{vit}.encoder.layers.{i}"
        for proj in ("k", "v", "q", "out"):
            shapes[f"{layer}.self_attn.{proj}_proj.weight"] = (d, d)
            shapes[f"{layer}.self_attn.{proj}_proj.bias"] = (d,)
        norm(f"{layer}.layer_norm1")
        shapes[f"{layer}.mlp.fc1.weight"] = (vision.intermediate_size, d)
        shapes[f"{layer}.mlp.fc1.bias"] = (vision.intermediate_size,)
        shapes[f"{layer}.mlp.fc2.weight"] = (d, vision.intermediate_size)
        shapes[f"{layer}.mlp.fc2.bias"] = (d,)
        norm(f"{layer}.layer_norm2")
    norm(f"{vit}.post_layernorm")

    emb = "text_encoder.text_embedding"
    shapes[f"{emb}.word_embeddings.weight"] = (text.vocab_size, d)
    shapes[f"{emb}.position_embeddings.weight"] = (text.max_position_embeddings, d)
    shapes[f"{emb}.token_type_embeddings.weight"] = (text.type_vocab_size, d)
    norm(f"{emb}.LayerNorm")

    hidden = config.fusion_intermediate_size
    for i in range(config.num_fusion_layers):
        layer = f"self_attention.layers.{i}"
        norm(f"{layer}.norm1")
        for proj in ("q", "k", "v", "out"):
            shapes[f"{layer}.attention.module.to_{proj}.weight"] = (d, d)
        norm(f"{layer}.norm2")
        shapes[f"{layer}.feed_forward.module.ff.0.weight"] = (hidden, d)
        shapes[f"{layer}.feed_forward.module.ff.0.bias"] = (hidden,)
        shapes[f"{layer}.feed_forward.module.ff.2.weight"] = (d, hidden)
        shapes[f"{layer}.feed_forward.module.ff.2.bias"] = (d,)
    norm("self_attention.norm")

    # HeatmapPredictor(conv_info=[d, c1, c2], deconv_info=[c2, *deconv])
    c1, c2 = config.heatmap_conv_channels
    shapes["heatmap_predictor.conv_layers.0.weight"] = (c1, d, 3, 3)
    shapes["heatmap_predictor.conv_layers.0.bias"] = (c1,)
    norm("heatmap_predictor.conv_layers.1", c1, grid, grid)
    shapes["heatmap_predictor.conv_layers.3.weight"] = (c2, c1, 3, 3)
    shapes["heatmap_predictor.conv_layers.3.bias"] = (c2,)
    norm("heatmap_predictor.conv_layers.4", c2, grid, grid)
    filters = [c2, *config.heatmap_deconv_channels]
    for i in range(len(filters) - 1):
        stage, c_in, c_out, size = f"heatmap_predictor.deconv_layers.{i}", filters[i], filters[i + 1], grid * 2 ** (i + 1)
        shapes[f"{stage}.0.weight"] = (c_in, c_out, 3, 3)  # ConvTranspose2d: (in, out, k, k)
        shapes[f"{stage}.0.bias"] = (c_out,)
        for conv, ln in ((None, 1), (3, 4), (6, 7)):
            if conv is not None:
                shapes[f"{stage}.{conv}.weight"] = (c_out, c_out, 3, 3)
                shapes[f"{stage}.{conv}.bias"] = (c_out,)
            norm(f"{stage}.{ln}", c_out, size, size)
    shapes["heatmap_predictor.final_layers.0.weight"] = (1, filters[-1], 3, 3)
    shapes["heatmap_predictor.final_layers.0.bias"] = (1,)

    # ScorePredictor(filter_info=[d, *score_conv]); fc 2048 -> 1024 -> 1 in the official code
    filters = [d, *config.score_conv_channels]
    for i in range(len(filters) - 1):
        shapes[f"score_predictor.conv_layers.{i}.0.weight"] = (filters[i + 1], filters[i], 2, 2)
        shapes[f"score_predictor.conv_layers.{i}.0.bias"] = (filters[i + 1],)
        norm(f"score_predictor.conv_layers.{i}.1", filters[i + 1], grid - i - 1, grid - i - 1)
    flat = filters[-1] * (grid - len(filters) + 1) ** 2
    h1, h2 = config.score_hidden_sizes
    for index, (out, inp) in zip((0, 2, 4), ((h1, flat), (h2, h1), (1, h2)), strict=True):
        shapes[f"score_predictor.fc_layers.{index}.weight"] = (out, inp)
        shapes[f"score_predictor.fc_layers.{index}.bias"] = (out,)
    return shapes


def official_state_dict(config: EmRahfConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout: LayerNorm weights near 1 (a LayerNorm's weight has its bias's
    shape, unlike a convolution's or a linear layer's), everything else small."""
    generator = torch.Generator().manual_seed(seed)
    shapes = official_shapes(config)
    state = {}
    for key, shape in shapes.items():
        values = torch.randn(shape, generator=generator)
        is_norm_weight = key.endswith(".weight") and shapes.get(key[: -len("weight")] + "bias") == shape
        state[key] = 1 + 0.1 * values if is_norm_weight else 0.05 * values
    return state


# ------------------------------------------------------------------------------------ a tiny XLM-R tokenizer


def tiny_tokenizer():
    """An offline ``XLMRobertaTokenizer`` (AltCLIP's tokenizer class, same special ids: ``<s>`` 0, ``<pad>`` 1,
    ``</s>`` 2, ``<unk>`` 3) over a few words and every lowercase letter, within the tiny preset's vocabulary."""
    from transformers import XLMRobertaTokenizer

    words = ["human", "artifact", "a", "hand", "holding", "cup", "face", "two", "people"]
    pieces = [(f"\u2581{w}", -1.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces.append(("\u2581", -3.0))
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=specials + pieces)
    assert len(tokenizer) <= EmRahfConfig.from_preset("tiny").text_config.vocab_size
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_config():
    return EmRahfConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def official(tiny_config):
    return official_state_dict(tiny_config)


@pytest.fixture(scope="module")
def tiny_model(tiny_config, official):
    model = EmRahfModel(tiny_config)
    converted, _, dropped, unknown = official_to_hf_state_dict(official)
    assert not dropped and not unknown
    model.load_state_dict(converted, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def processor(tiny_config, tokenizer):
    return EmRahfProcessor.from_model_config(tiny_config, tokenizer=tokenizer)


def save_checkpoint(path, state_dict, wrap: bool = True):
    """As the official ``utils.save_in_training`` saves it (an AdamW and a CosineAnnealingLR state)."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    payload = {"model": state_dict, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(payload if wrap else state_dict, path)
    return path


# ------------------------------------------------------------------------------------ config and sizes


def test_em_rahf_preset_is_the_official_architecture():
    config = EmRahfConfig.from_preset("em-rahf")
    vision, text = config.vision_config, config.text_config
    assert (vision.model_type, text.model_type) == ("altclip_vision_model", "altclip_text_model")
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size) == (1024, 24, 16, 14)
    assert vision.image_size == 448 and config.grid_size == 32 and config.num_image_tokens == 1025
    assert (text.vocab_size, text.hidden_size, text.max_position_embeddings, text.pad_token_id) == (250002, 1024, 514, 1)
    assert (config.num_fusion_layers, config.fusion_intermediate_size) == (6, 2048)
    assert config.heatmap_conv_channels == [512, 512] and config.heatmap_deconv_channels == [1024, 512, 512, 256]
    assert config.score_conv_channels == [1024, 512, 128, 64] and config.score_hidden_sizes == [2048, 1024]
    assert config.heatmap_size == 512 and config.max_text_length == 512 and config.text_prefix == "human artifact "
    assert config.threshold == 40 / 255 and config.min_region_area == 0 and config.freeze_schedule_fraction == 0.5
    assert np.allclose(config.image_mean, CLIP_MEAN) and np.allclose(config.image_std, CLIP_STD)
    assert EmRahfConfig.available_presets() == ["em-rahf", "tiny"]
    # a sub-config override is merged into the official one
    assert EmRahfConfig(vision_config={"num_hidden_layers": 2}).vision_config.hidden_size == 1024


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"text_config": {"hidden_size": 16}}, "vision tower's width"),
        ({"score_conv_channels": [4] * 8}, "fewer stages than the patch grid"),
        ({"max_text_length": 33}, "max_position_embeddings"),
        ({"vision_config": {"image_size": 60}}, "multiple of patch_size"),
        ({"threshold": 2.0}, "heatmap level"),
        ({"heatmap_deconv_channels": []}, "non-empty list"),
    ],
)
def test_invalid_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        EmRahfConfig.from_preset("tiny", **overrides)


def test_real_size_layout_and_parameter_count_on_the_meta_device():
    config = EmRahfConfig.from_preset("em-rahf")
    shapes = official_shapes(config)
    with torch.device("meta"):
        model = EmRahfModel(config)
        official = {key: torch.empty(shape) for key, shape in shapes.items()}
    converted, sources, dropped, unknown = official_to_hf_state_dict(official)
    assert not dropped and not unknown
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in converted.items()} == ours  # every tensor, same shape
    assert len(set(sources.values())) == len(shapes)  # one official tensor each

    def count(prefix: str) -> int:
        return sum(math.prod(shape) for key, shape in shapes.items() if key.startswith(prefix))

    heatmap = sum(p.numel() for p in model.heatmap_head.parameters())
    assert heatmap == count("heatmap_predictor.") and 730e6 < heatmap < 732e6  # SPEC: ~731 M with the LayerNorms
    assert sum(p.numel() for p in model.score_head.parameters()) == count("score_predictor.")
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for s in shapes.values())
    assert model.vision_model.embeddings.position_embedding.weight.shape == (1025, 1024)


# ------------------------------------------------------------------------------------ the equations


def reference_forward(state, config, pixel_values, input_ids):
    """The official forward written out from the equations, on the official tensors."""

    def ln(x, prefix, dims=1, eps=1e-5):
        return F.layer_norm(x, x.shape[-dims:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)

    def linear(x, prefix, bias=True):
        return F.linear(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias") if bias else None)

    vision, text = config.vision_config, config.text_config
    batch, d, heads = pixel_values.shape[0], vision.hidden_size, vision.num_attention_heads
    vit = "image_encoder.ViT"
    x = F.conv2d(pixel_values, state[f"{vit}.embeddings.patch_embedding.weight"], stride=vision.patch_size)
    x = torch.cat([state[f"{vit}.embeddings.class_embedding"].expand(batch, 1, d), x.flatten(2).transpose(1, 2)], 1)
    x = ln(x + state[f"{vit}.embeddings.position_embedding.weight"], f"{vit}.pre_layrnorm")
    for i in range(vision.num_hidden_layers):
        layer = f"{vit}.encoder.layers.{i}"
        h = ln(x, f"{layer}.layer_norm1")
        q, k, v = (linear(h, f"{layer}.self_attn.{n}_proj").view(batch, -1, heads, d // heads).transpose(1, 2) for n in "qkv")
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        x = x + linear(a.transpose(1, 2).reshape(batch, -1, d), f"{layer}.self_attn.out_proj")
        h = linear(ln(x, f"{layer}.layer_norm2"), f"{layer}.mlp.fc1")
        x = x + linear(h * torch.sigmoid(1.702 * h), f"{layer}.mlp.fc2")  # quick_gelu
    image_tokens = x  # before the post-LayerNorm

    emb = "text_encoder.text_embedding"
    pad = text.pad_token_id
    real = (input_ids != pad).long()
    positions = torch.cumsum(real, 1) * real + pad  # RoBERTa: positions after the padding index
    t = (
        state[f"{emb}.word_embeddings.weight"][input_ids]
        + state[f"{emb}.token_type_embeddings.weight"][0]
        + state[f"{emb}.position_embeddings.weight"][positions]
    )
    x = torch.cat([image_tokens, ln(t, f"{emb}.LayerNorm")], 1)
    for i in range(config.num_fusion_layers):
        layer = f"self_attention.layers.{i}"
        x = ln(x, f"{layer}.norm1")
        q, k, v = (linear(x, f"{layer}.attention.module.to_{n}", bias=False) for n in "qkv")
        x = x + linear(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v, f"{layer}.attention.module.to_out")
        x = ln(x, f"{layer}.norm2")
        x = x + linear(F.gelu(linear(x, f"{layer}.feed_forward.module.ff.0")), f"{layer}.feed_forward.module.ff.2")
    x = ln(x, "self_attention.norm")
    grid = config.grid_size
    feature_map = x[:, 1 : grid * grid + 1].reshape(batch, grid, grid, d).permute(0, 3, 1, 2)

    def block(h, conv, norm, transposed=False, padding=1):
        if transposed:
            h = F.conv_transpose2d(h, state[f"{conv}.weight"], state[f"{conv}.bias"], stride=2, padding=1, output_padding=1)
        else:
            h = F.conv2d(h, state[f"{conv}.weight"], state[f"{conv}.bias"], padding=padding)
        return F.relu(ln(h, norm, dims=3))

    h = block(feature_map, "heatmap_predictor.conv_layers.0", "heatmap_predictor.conv_layers.1")
    h = block(h, "heatmap_predictor.conv_layers.3", "heatmap_predictor.conv_layers.4")
    for s in range(len(config.heatmap_deconv_channels)):
        stage = f"heatmap_predictor.deconv_layers.{s}"
        h = block(h, f"{stage}.0", f"{stage}.1", transposed=True)
        h = block(block(h, f"{stage}.3", f"{stage}.4"), f"{stage}.6", f"{stage}.7")
    final = "heatmap_predictor.final_layers.0"
    heatmap = torch.sigmoid(F.conv2d(h, state[f"{final}.weight"], state[f"{final}.bias"], padding=1))

    h = feature_map
    for i in range(len(config.score_conv_channels)):
        h = block(h, f"score_predictor.conv_layers.{i}.0", f"score_predictor.conv_layers.{i}.1", padding=0)
    h = F.relu(linear(h.flatten(1), "score_predictor.fc_layers.0"))
    h = F.relu(linear(h, "score_predictor.fc_layers.2"))
    score = torch.sigmoid(linear(h, "score_predictor.fc_layers.4"))
    return heatmap, score  # (batch, 1, H, W) and (batch, 1), as the official model returns them


def test_forward_equals_the_official_equations(tiny_model, tiny_config, official):
    inputs = tiny_model.dummy_inputs
    assert (inputs["input_ids"] == tiny_config.text_config.pad_token_id).any()  # the padding is attended to
    with torch.no_grad():
        out = tiny_model(**inputs)
        heatmap, score = reference_forward(official, tiny_config, inputs["pixel_values"], inputs["input_ids"])
    assert isinstance(out, EmRahfOutput) and out.heatmap.shape == (2, 128, 128)
    assert torch.allclose(out.heatmap, heatmap[:, 0], atol=2e-5)
    assert torch.allclose(out.score, score[:, 0], atol=2e-5)
    assert torch.allclose(out.structure_score, 1 + 4 * score[:, 0], atol=1e-4)
    assert out.heatmap.std() > 1e-3 and (out.score[0] - out.score[1]).abs() > 1e-6  # not a constant
    assert out.last_hidden_state.shape == (2, tiny_config.num_image_tokens + tiny_config.max_text_length, 32)


def test_losses_are_the_official_mse_sums(tiny_model):
    inputs = tiny_model.dummy_inputs
    generator = torch.Generator().manual_seed(1)
    levels = torch.tensor([0, 64, 127, 180, 255], dtype=torch.float32) / 255
    target = levels[torch.randint(0, 5, (2, 128, 128), generator=generator)]
    mos = torch.tensor([1.5, 4.25])
    with torch.no_grad():
        out = tiny_model(**inputs, heatmap_labels=target, score_labels=mos)
        assert torch.isclose(out.heatmap_loss, ((out.heatmap - target) ** 2).mean())
        assert torch.isclose(out.score_loss, ((out.score - (mos - 1) / 4) ** 2).mean())
        assert torch.isclose(out.loss, out.heatmap_loss + out.score_loss)
        # (batch, 1, H, W) targets as the official dataset gives them; NaN: no score
        again = tiny_model(**inputs, heatmap_labels=target[:, None], score_labels=torch.tensor([float("nan"), 4.25]))
        assert torch.isclose(again.heatmap_loss, out.heatmap_loss)
        assert torch.isclose(again.score_loss, (out.score[1] - 3.25 / 4) ** 2)
        with pytest.raises(ValueError, match="heatmap_labels must be"):
            tiny_model(**inputs, heatmap_labels=target[:, :64])
    tiny_model.config.weighted_heatmap_loss = True  # the official --weighted_loss
    try:
        with torch.no_grad():
            weighted = tiny_model(**inputs, heatmap_labels=target).heatmap_loss
        w = target + 1 / 255
        expected = (((out.heatmap - target) ** 2 * w).sum((-2, -1)) / w.sum((-2, -1))).mean()
        assert torch.isclose(weighted, expected)
    finally:
        tiny_model.config.weighted_heatmap_loss = False


def test_freezing_follows_the_official_schedule(tiny_config):
    model = EmRahfModel(tiny_config)  # built frozen, as the official run (--warmup)

    def trainable(module):
        return {p.requires_grad for p in module.parameters()}

    assert trainable(model.vision_model) == {False} and trainable(model.text_embeddings) == {False}
    assert trainable(model.fusion) == trainable(model.heatmap_head) == trainable(model.score_head) == {True}
    model.train()
    inputs = model.dummy_inputs
    out = model(**inputs, heatmap_labels=torch.rand(2, 128, 128), score_labels=torch.tensor([2.0, 3.0]))
    out.loss.backward()
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert all(p.grad is not None for p in model.score_head.parameters())
    model.freeze_backbones(vit=False, text=False)  # the official unfreeze(): all but the unused post-LayerNorm
    assert trainable(model.text_embeddings) == {True}
    frozen = {n for n, p in model.vision_model.named_parameters() if not p.requires_grad}
    assert frozen == {"post_layernorm.weight", "post_layernorm.bias"}


def test_position_embeddings_interpolate_as_the_official_code(tmp_path, tiny_config):
    from transformers import AltCLIPConfig, AltCLIPModel

    table = torch.randn(17, 32)  # a 224-px-like source: CLS + 4 x 4
    resized = interpolate_position_embeddings(table, 65)
    grid = table[1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(resized[0], table[0])
    assert torch.allclose(resized[1:], expected.permute(0, 2, 3, 1).reshape(64, 32))
    with pytest.raises(ValueError, match="square"):
        interpolate_position_embeddings(table, 51)

    # a full (tiny) AltCLIP checkpoint gives the vision tower and the text embeddings
    altclip = AltCLIPModel(AltCLIPConfig(
        vision_config={**tiny_config.vision_config.to_dict(), "image_size": 32},
        text_config=tiny_config.text_config.to_dict(), projection_dim=16,
    ))
    altclip.save_pretrained(tmp_path / "altclip")
    model = EmRahfModel(tiny_config)
    model.load_pretrained_encoders(tmp_path / "altclip")
    source = altclip.vision_model.state_dict()
    for name, tensor in model.vision_model.state_dict().items():
        if name == "embeddings.position_embedding.weight":
            assert torch.equal(tensor, interpolate_position_embeddings(source[name], 65))
        else:
            assert torch.equal(tensor, source[name]), name
    for name, tensor in altclip.text_model.roberta.embeddings.state_dict().items():
        assert torch.equal(model.text_embeddings.state_dict()[name], tensor), name
    # or the official repository's stored 448-px table
    stored = torch.randn(65, 32)
    torch.save(stored, tmp_path / "table.pt")
    model.load_pretrained_encoders(tmp_path / "altclip", position_embeddings=tmp_path / "table.pt")
    assert torch.equal(model.vision_model.embeddings.position_embedding.weight, stored)
    torch.save(torch.randn(17, 32), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"expected a \(65, 32\) position table"):
        model.load_pretrained_encoders(tmp_path / "altclip", position_embeddings=tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------ the processor


def test_processor_prepares_inputs_as_the_official_code(processor, tiny_config, tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (70, 40), dtype=np.uint8))  # mode "L"
    gray.save(tmp_path / "gray.png")
    long_prompt = " ".join(["a hand holding a cup"] * 20)
    batch = processor(images=[image, str(tmp_path / "gray.png")], text=["a hand holding a cup", long_prompt])
    assert sorted(batch) == ["input_ids", "pixel_values"]  # no attention mask: the official model has none

    def official_pixels(img):  # img.resize((448, 448), LANCZOS), then CLIP's rescale + normalise
        array = np.asarray(img.resize((64, 64), Image.LANCZOS).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))

    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert torch.allclose(batch["pixel_values"][0], official_pixels(image), atol=1e-5)
    assert torch.allclose(batch["pixel_values"][1], official_pixels(gray), atol=1e-5)

    ids = batch["input_ids"]
    tok = processor.tokenizer
    assert ids.shape == (2, tiny_config.max_text_length)  # padded to max_length, long prompts truncated
    expected = tok("human artifact a hand holding a cup")["input_ids"]
    assert ids[0, : len(expected)].tolist() == expected and expected[:3] == [0, tok.convert_tokens_to_ids("\u2581human"),
                                                                            tok.convert_tokens_to_ids("\u2581artifact")]
    assert (ids[0, len(expected) :] == 1).all() and ids[1, -1] == 2 and (ids[1] != 1).all()
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        processor(images=[image, image], text=["one prompt"])


def test_post_processing_is_the_structure_familys(processor):
    heatmap = torch.zeros(2, 128, 128)
    heatmap[0, 10:30, 20:60] = 40.6 / 255  # round(h * 255) = 41 > 40: in the mask
    heatmap[0, 70:90, 70:90] = 40.4 / 255  # round(h * 255) = 40: not
    heatmap[1, 0:3, 0:3] = 1.0  # a 9-pixel region: kept (the official mask removes nothing)
    outputs = EmRahfOutput(heatmap=heatmap, structure_score=torch.tensor([2.0, 4.5]))
    results = processor.post_process_distortion(outputs, target_sizes=[(256, 256), None])
    reference = EvalMuseStructureProcessor.post_process_distortion(
        processor, outputs, threshold=40 / 255, target_sizes=[(256, 256), None], min_area=0
    )
    assert [r.to_dict().keys() for r in results] == [r.to_dict().keys() for r in reference]
    for got, want in zip(results, reference, strict=True):
        assert got.score == want.score and np.array_equal(got.mask, want.mask) and got.regions == want.regions
    official = (torch.round(heatmap * 255) > 40).numpy().astype(np.uint8)
    assert np.array_equal(results[0].mask_512, official[0]) and np.array_equal(results[1].mask_512, official[1])
    assert results[0].regions == [{"bbox": [40, 20, 120, 60], "area": 3200}] and results[1].mask.sum() == 9


def test_the_structure_pipeline_runs_em_rahf(tiny_model, processor, tmp_path):
    from transformers import pipeline

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    with torch.no_grad():
        direct = tiny_model(**processor(images=[image], text=["a hand holding a cup"]))
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for model in (tiny_model, str(tmp_path)):  # a model and its processor, or a saved folder (the model card's usage)
        pipe = pipeline("t2i-structure", model=model, processor=processor if model is tiny_model else None, device="cpu")
        result = pipe(image, prompts="a hand holding a cup")
        assert result["mask"].shape == (40, 60) and result["threshold"] == 40 / 255
        assert result["score"] == pytest.approx(float(direct.structure_score[0]), abs=1e-5)
        assert np.allclose(result["heatmap"], direct.heatmap[0].numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize("layout", ["training", "bare", "ddp", "legacy-buffers"])
def test_official_checkpoint_converts_every_tensor_unchanged(tmp_path, tiny_config, official, tokenizer, layout):
    from transformers import AutoModel, AutoProcessor

    state = dict(official)
    if layout == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    if layout == "legacy-buffers":  # transformers < 4.31 stored the id buffers
        state["image_encoder.ViT.embeddings.position_ids"] = torch.arange(65)[None]
        state["text_encoder.text_embedding.position_ids"] = torch.arange(34)[None]
        state["text_encoder.text_embedding.token_type_ids"] = torch.zeros(1, 34, dtype=torch.long)
    ckpt = save_checkpoint(tmp_path / "last.pth", state, wrap=layout != "bare")
    report = convert_em_rahf(ckpt, tmp_path / "out", preset="tiny", tokenizer=tokenizer)
    assert len(report.converted) == len(official) and len(report.dropped) == (3 if layout == "legacy-buffers" else 0)
    assert ("module." in report.checkpoint_layout) == (layout == "ddp")

    model = AutoModel.from_pretrained(tmp_path / "out")
    assert isinstance(model, EmRahfModel)
    loaded = model.state_dict()
    for name, key in report.sources.items():
        assert torch.equal(loaded[name], official[key]), key
    assert torch.equal(model.text_embeddings.position_ids, torch.arange(34)[None])
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, EmRahfProcessor) and processor.max_text_length == 32
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_em_rahf.py", "processing_em_rahf.py", "README.md"} <= files
    card = (tmp_path / "out" / "README.md").read_text()
    assert "No official EM-RAHF weights were ever published" in card and "last.pth" in card
    assert json.loads((tmp_path / "out" / "conversion_report.json").read_text())["sources"] == report.sources


def test_mismatched_checkpoints_are_refused_and_nothing_written(tmp_path, tiny_config, official, tokenizer):
    cases = {
        "missing": {k: v for k, v in official.items() if k != "score_predictor.fc_layers.2.bias"},
        "unexpected": {**official, "misalignment_predictor.fc.weight": torch.zeros(1)},
        "shape": {**official, "image_encoder.ViT.embeddings.position_embedding.weight": torch.zeros(17, 32)},
    }
    messages = {
        "missing": r"1 tensors missing.*score_head\.fc\.1\.bias",
        "unexpected": r"1 unexpected tensors: misalignment_predictor\.fc\.weight",
        "shape": r"position_embedding\.weight: checkpoint \(17, 32\) vs model \(65, 32\)",
    }
    for case, state in cases.items():
        ckpt = save_checkpoint(tmp_path / f"{case}.pth", state)
        with pytest.raises(UserInputError, match=messages[case]):
            convert_em_rahf(ckpt, tmp_path / case, preset="tiny", tokenizer=tokenizer)
        assert not (tmp_path / case).exists()

    import argparse

    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "unsafe.pth")  # weights_only loading refuses it
    with pytest.raises(UserInputError, match="weights_only=True"):
        convert_em_rahf(tmp_path / "unsafe.pth", tmp_path / "unsafe", preset="tiny", tokenizer=tokenizer)
    torch.save({"model": {"a": 1}}, tmp_path / "not_tensors.pth")
    with pytest.raises(UserInputError, match=r"\['model'\]: expected a state dict of tensors"):
        convert_em_rahf(tmp_path / "not_tensors.pth", tmp_path / "x", preset="tiny", tokenizer=tokenizer)
    with pytest.raises(UserInputError, match="does not exist"):
        convert_em_rahf(tmp_path / "nope.pth", tmp_path / "y", preset="tiny", tokenizer=tokenizer)


def test_cli_convert_em_rahf(tmp_path, official, tokenizer, capsys):
    ckpt = save_checkpoint(tmp_path / "100.pth", official)
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "converted"
    args = ["convert", "em-rahf", str(ckpt), str(out), "--preset", "tiny", "--tokenizer", str(tmp_path / "tok")]
    assert cli_main(args) == 0
    assert "converted" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    assert cli_main(args) == 2 and "already exists" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0
    assert cli_main(["convert", "em-rahf", str(tmp_path / "nope.pth"), str(tmp_path / "z"), "--preset", "tiny"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the shared family tests


def _family_inputs():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    return {"images": [image, image.resize((70, 40))], "text": ["a hand holding a cup", "two people"]}


class TestEmRahfFamily(ModelFamilyTesterMixin):
    """Config round trip, preset merging, Auto-class save / load and remote-code loading without the package."""

    family = ModelFamilySpec(
        config_class=EmRahfConfig,
        make_processor=lambda config: EmRahfProcessor.from_model_config(config, tokenizer=tiny_tokenizer()),
        processor_inputs=_family_inputs,
        sub_config_override=("vision_config", {"num_hidden_layers": 3}),
    )


def test_post_processing_without_the_package_says_what_to_do(processor, monkeypatch):
    import sys

    # as in remote code without evalmuse-models: the structure family cannot be imported
    monkeypatch.setitem(sys.modules, "evalmuse_models.models.evalmuse_structure.processing_evalmuse_structure", None)
    outputs = EmRahfOutput(heatmap=torch.zeros(1, 8, 8), structure_score=torch.tensor([3.0]))
    with pytest.raises(ImportError, match=r"pip install evalmuse-models.*\(outputs.heatmap \* 255\).round\(\) > threshold"):
        processor.post_process_distortion(outputs)


def test_docstring_examples_run():
    import doctest

    from evalmuse_models.models.em_rahf import configuration_em_rahf, modeling_em_rahf

    for module in (configuration_em_rahf, modeling_em_rahf):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__
