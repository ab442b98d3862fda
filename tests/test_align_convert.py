"""Official FGA-BLIP2 checkpoint conversion: a state dict in the exact LAVIS layout -> HF folder."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from evalmuse_models.cli import main as cli_main
from evalmuse_models.convert import convert_fga_blip2
from evalmuse_models.models.evalmuse_align import (
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
    build_tiny_tokenizer,
)
from evalmuse_models.utils import UserInputError


def _lavis_state_dict(config: EvalMuseAlignConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped like LAVIS's FGA_Blip2 state dict for ``config``."""
    g = torch.Generator().manual_seed(seed)
    v, q = config.vision_config, config.qformer_config
    d, h = v.hidden_size, q.hidden_size
    grid = (v.image_size // v.patch_size) ** 2

    def t(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "visual_encoder.cls_token": t(1, 1, d),
        "visual_encoder.pos_embed": t(1, grid + 1, d),
        "visual_encoder.patch_embed.proj.weight": t(d, 3, v.patch_size, v.patch_size),
        "visual_encoder.patch_embed.proj.bias": t(d),
        "ln_vision.weight": t(d),
        "ln_vision.bias": t(d),
        "query_tokens": t(1, config.num_query_tokens, h),
        "Qformer.bert.embeddings.word_embeddings.weight": t(q.vocab_size, h),
        "Qformer.bert.embeddings.position_embeddings.weight": t(q.max_position_embeddings, h),
        "Qformer.bert.embeddings.position_ids": torch.arange(q.max_position_embeddings)[None],
        "Qformer.bert.embeddings.LayerNorm.weight": t(h),
        "Qformer.bert.embeddings.LayerNorm.bias": t(h),
        "Qformer.cls.predictions.bias": t(q.vocab_size),
        "Qformer.cls.predictions.transform.dense.weight": t(h, h),
        "Qformer.cls.predictions.transform.dense.bias": t(h),
        "Qformer.cls.predictions.transform.LayerNorm.weight": t(h),
        "Qformer.cls.predictions.transform.LayerNorm.bias": t(h),
        "Qformer.cls.predictions.decoder.weight": t(q.vocab_size, h),
        "Qformer.cls.predictions.decoder.bias": t(q.vocab_size),
        "vision_proj.weight": t(config.image_text_hidden_size, h),
        "vision_proj.bias": t(config.image_text_hidden_size),
        "text_proj.weight": t(config.image_text_hidden_size, h),
        "text_proj.bias": t(config.image_text_hidden_size),
        "itm_head.weight": t(2, h),
        "itm_head.bias": t(2),
        "temp": torch.tensor(0.07),
    }
    for i in range(v.num_hidden_layers):
        p = f"visual_encoder.blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": t(d), p + "norm1.bias": t(d),
                p + "attn.q_bias": t(d), p + "attn.v_bias": t(d),
                p + "attn.qkv.weight": t(3 * d, d),
                p + "attn.proj.weight": t(d, d), p + "attn.proj.bias": t(d),
                p + "norm2.weight": t(d), p + "norm2.bias": t(d),
                p + "mlp.fc1.weight": t(v.intermediate_size, d), p + "mlp.fc1.bias": t(v.intermediate_size),
                p + "mlp.fc2.weight": t(d, v.intermediate_size), p + "mlp.fc2.bias": t(d),
            }
        )
    for i in range(q.num_hidden_layers):
        p = f"Qformer.bert.encoder.layer.{i}."
        blocks = ["attention"] + (["crossattention"] if i % q.cross_attention_frequency == 0 else [])
        for block in blocks:
            width = d if block == "crossattention" else h
            sd[p + f"{block}.self.query.weight"] = t(h, h)
            sd[p + f"{block}.self.query.bias"] = t(h)
            for kv in ("key", "value"):
                sd[p + f"{block}.self.{kv}.weight"] = t(h, width)
                sd[p + f"{block}.self.{kv}.bias"] = t(h)
            sd[p + f"{block}.output.dense.weight"] = t(h, h)
            sd[p + f"{block}.output.dense.bias"] = t(h)
            sd[p + f"{block}.output.LayerNorm.weight"] = t(h)
            sd[p + f"{block}.output.LayerNorm.bias"] = t(h)
        for suffix in ("", "_query"):
            sd[p + f"intermediate{suffix}.dense.weight"] = t(q.intermediate_size, h)
            sd[p + f"intermediate{suffix}.dense.bias"] = t(q.intermediate_size)
            sd[p + f"output{suffix}.dense.weight"] = t(h, q.intermediate_size)
            sd[p + f"output{suffix}.dense.bias"] = t(h)
            sd[p + f"output{suffix}.LayerNorm.weight"] = t(h)
            sd[p + f"output{suffix}.LayerNorm.bias"] = t(h)
    sizes = [h, *config.mask_head_hidden_sizes, 1]
    for j, (a, b) in enumerate(itertools.pairwise(sizes)):
        sd[f"mask_proj.layers.{2 * j}.weight"] = t(b, a)
        sd[f"mask_proj.layers.{2 * j}.bias"] = t(b)
    return sd


def _expected_target(config, lavis: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The few renames that are not a plain prefix change, written out independently of the converter."""
    out = {
        "vision_model.embeddings.class_embedding": lavis["visual_encoder.cls_token"],
        "vision_model.embeddings.position_embedding": lavis["visual_encoder.pos_embed"],
        "vision_model.post_layernorm.weight": lavis["ln_vision.weight"],
        "embeddings.word_embeddings.weight": lavis["Qformer.bert.embeddings.word_embeddings.weight"],
        "qformer.layernorm.bias": lavis["Qformer.bert.embeddings.LayerNorm.bias"],
        "vision_projection.weight": lavis["vision_proj.weight"],
        "text_projection.bias": lavis["text_proj.bias"],
        "itm_head.weight": lavis["itm_head.weight"],
        "mask_proj.layers.0.weight": lavis["mask_proj.layers.0.weight"],
        "qformer.encoder.layer.0.crossattention.attention.key.weight": lavis[
            "Qformer.bert.encoder.layer.0.crossattention.self.key.weight"
        ],
        "qformer.encoder.layer.1.attention.attention.value.bias": lavis[
            "Qformer.bert.encoder.layer.1.attention.self.value.bias"
        ],
        "qformer.encoder.layer.1.output_query.LayerNorm.weight": lavis[
            "Qformer.bert.encoder.layer.1.output_query.LayerNorm.weight"
        ],
        "vision_model.encoder.layers.1.self_attn.projection.weight": lavis["visual_encoder.blocks.1.attn.proj.weight"],
    }
    for i in range(config.vision_config.num_hidden_layers):
        q_bias = lavis[f"visual_encoder.blocks.{i}.attn.q_bias"]
        v_bias = lavis[f"visual_encoder.blocks.{i}.attn.v_bias"]
        out[f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return out


@pytest.fixture(scope="module")
def tiny_config():
    return EvalMuseAlignConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_lavis_checkpoint_converts_losslessly(tmp_path, tiny_config, tokenizer):
    from transformers import AutoModel, AutoProcessor

    lavis = _lavis_state_dict(tiny_config)
    ckpt = tmp_path / "fga_blip2.pth"
    torch.save({"model": lavis, "epoch": 4}, ckpt)
    out = tmp_path / "converted"
    report = convert_fga_blip2(ckpt, out, preset="tiny", tokenizer=tokenizer)

    assert sorted(report.dropped) == sorted(
        ["temp", "Qformer.bert.embeddings.position_ids"] + [k for k in lavis if k.startswith("Qformer.cls.")]
    )
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert (out / "configuration_evalmuse_align.py").is_file()

    model, loading_info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert isinstance(model, EvalMuseAlignModel)
    assert loading_info["missing_keys"] == set() or not loading_info["missing_keys"]
    assert not loading_info["unexpected_keys"]
    assert not loading_info["mismatched_keys"]

    state = model.state_dict()
    # Every converted tensor equals its source (the qkv bias: concat(q_bias, 0, v_bias)).
    for name, sources in report.sources.items():
        if len(sources) == 1:
            assert torch.equal(state[name], lavis[sources[0]].float()), name
    for name, tensor in _expected_target(tiny_config, lavis).items():
        assert torch.equal(state[name], tensor.float()), name
    used = {s for sources in report.sources.values() for s in sources}
    assert used | set(report.dropped) == set(lavis)
    assert set(report.sources) == set(state)

    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.bos_token == "[DEC]"
    saved = json.loads((out / "conversion_report.json").read_text())
    assert saved["output_dir"] == str(out)


def test_partial_checkpoint_is_refused_and_nothing_written(tmp_path, tiny_config, tokenizer):
    lavis = _lavis_state_dict(tiny_config)
    del lavis["itm_head.weight"]
    lavis["some_new_head.weight"] = torch.zeros(2)
    ckpt = tmp_path / "partial.pth"
    torch.save({"model": lavis}, ckpt)
    with pytest.raises(UserInputError, match=r"itm_head\.weight(.|\n)*some_new_head\.weight"):
        convert_fga_blip2(ckpt, tmp_path / "out", preset="tiny", tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()


def test_frozen_vit_checkpoint_needs_and_uses_blip2_base(tmp_path, tiny_config, tokenizer):
    lavis = _lavis_state_dict(tiny_config, seed=1)
    trained = {k: v for k, v in lavis.items() if not k.startswith("visual_encoder.")}
    ckpt = tmp_path / "frozen_vit.pth"
    torch.save({"model": trained}, ckpt)
    with pytest.raises(UserInputError, match="--blip2-base"):
        convert_fga_blip2(ckpt, tmp_path / "out", preset="tiny", tokenizer=tokenizer)

    # A transformers-format base folder supplies the vision tensors (LAVIS's interpolated pos_embed included).
    base_model = EvalMuseAlignModel(tiny_config)
    base_dir = tmp_path / "blip2-base"
    base_model.save_pretrained(base_dir)
    report = convert_fga_blip2(ckpt, tmp_path / "out", blip2_base=base_dir, preset="tiny", tokenizer=tokenizer)
    assert report.from_base and all(name.startswith("vision_model.") for name in report.from_base)
    converted = EvalMuseAlignModel.from_pretrained(tmp_path / "out")
    base_state, state = base_model.state_dict(), converted.state_dict()
    for name in report.from_base:
        assert torch.equal(state[name], base_state[name]), name
    # ln_vision comes from the fine-tuned checkpoint, not from the base.
    assert torch.equal(state["vision_model.post_layernorm.weight"], lavis["ln_vision.weight"])


def test_cli_convert(tmp_path, tiny_config, tokenizer, capsys):
    ckpt = tmp_path / "fga_blip2.pth"
    torch.save({"model": _lavis_state_dict(tiny_config)}, ckpt)
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    out = tmp_path / "cli_out"
    rc = cli_main(["convert", "fga-blip2", str(ckpt), str(out), "--preset", "tiny", "--tokenizer", str(tok_dir)])
    assert rc == 0, capsys.readouterr().err
    assert "converted" in capsys.readouterr().out
    assert EvalMuseAlignModel.from_pretrained(out).config.num_query_tokens == tiny_config.num_query_tokens
    # Existing output is refused with a clear message.
    rc = cli_main(["convert", "fga-blip2", str(ckpt), str(out), "--preset", "tiny", "--tokenizer", str(tok_dir)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    # Not a checkpoint.
    bad = tmp_path / "bad.pth"
    bad.write_text("not a pickle")
    rc = cli_main(["convert", "fga-blip2", str(bad), str(tmp_path / "x"), "--preset", "tiny", "--tokenizer", str(tok_dir)])
    assert rc == 2 and "weights_only" in capsys.readouterr().err


def test_official_sizes_match_the_lavis_layout():
    """The fga-blip2 preset has exactly the tensors (and shapes) of the LAVIS FGA_Blip2 layout."""
    from evalmuse_models.convert import lavis_to_hf_state_dict

    config = EvalMuseAlignConfig.from_preset("fga-blip2")
    with torch.device("meta"):
        model = EvalMuseAlignModel(config)
        lavis = _lavis_state_dict(config)
    converted, _, _, unknown = lavis_to_hf_state_dict(lavis)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert not unknown
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert expected["embeddings.word_embeddings.weight"] == (30523, 768)
    assert expected["vision_model.embeddings.position_embedding"] == (1, 677, 1408)
    assert len([k for k in expected if k.endswith("crossattention.attention.key.weight")]) == 6
    assert sum(int(torch.tensor(s).prod()) for s in expected.values()) > 1_000_000_000
