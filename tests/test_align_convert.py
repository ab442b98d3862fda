"""FGA-BLIP2 checkpoint conversion: state dicts in the exact LAVIS and imscore layouts -> HF folder."""

from __future__ import annotations

import itertools
import json
import math
import os
import stat

import pytest
import torch

from evalmuse_models.cli import main as cli_main
from evalmuse_models.convert import convert_fga_blip2
from evalmuse_models.models.evalmuse_align import (
    EvalMuseAlignConfig,
    EvalMuseAlignModel,
    EvalMuseAlignProcessor,
)
from evalmuse_models.testing.align import build_tiny_tokenizer
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
        ["Qformer.bert.embeddings.position_ids"] + [k for k in lavis if k.startswith("Qformer.cls.")]
    )
    assert report.filled == {} and report.source_format == "lavis"
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
    # The contrastive parts are kept: temperature and both projections.
    assert torch.equal(state["temp"], lavis["temp"]) and state["temp"].shape == ()
    assert torch.equal(state["text_projection.weight"], lavis["text_proj.weight"])
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
    # Existing output is refused with a clear message; --overwrite replaces a converted folder...
    args = ["convert", "fga-blip2", str(ckpt), str(out), "--preset", "tiny", "--tokenizer", str(tok_dir)]
    rc = cli_main(args)
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    # ...but never a folder of the user's files, nor the folder holding the checkpoint (it used to delete them).
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    rc = cli_main([*args[:3], str(mine), *args[4:], "--overwrite"])
    assert rc == 2 and "not a model folder written by evalmuse-models" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"
    rc = cli_main([*args[:3], str(tmp_path), *args[4:], "--overwrite"])
    assert rc == 2 and "holds" in capsys.readouterr().err and ckpt.exists()
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


def test_converted_folder_has_the_usual_permissions(tmp_path, tiny_config, tokenizer):
    ckpt = tmp_path / "fga_blip2.pth"
    torch.save({"model": _lavis_state_dict(tiny_config)}, ckpt)
    old = os.umask(0o022)
    try:
        convert_fga_blip2(ckpt, tmp_path / "out", preset="tiny", tokenizer=tokenizer)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"model.safetensors", "config.json", "conversion_report.json", "README.md"} <= {p.name for p in files}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o644 for p in files}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in out.rglob("*") if p.is_dir())


def test_bert_sized_vocabulary_is_refused_with_the_dec_token_hint(tmp_path, tiny_config, tokenizer):
    """SPEC: FGA-BLIP2's Q-Former has BERT's 30,522 word embeddings + [DEC]; one row short is refused."""
    lavis = _lavis_state_dict(tiny_config)
    rows = tiny_config.qformer_config.vocab_size
    lavis["Qformer.bert.embeddings.word_embeddings.weight"] = lavis["Qformer.bert.embeddings.word_embeddings.weight"][:-1]
    ckpt = tmp_path / "short_vocab.pth"
    torch.save({"model": lavis}, ckpt)
    with pytest.raises(UserInputError, match=rf"word_embeddings.weight: checkpoint \({rows - 1}, .*\[DEC\]"):
        convert_fga_blip2(ckpt, tmp_path / "out", preset="tiny", tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the imscore port

#: Names and shapes read off imscore's ``EvalMuse`` (``src/imscore/evalmuse/{model,vit,bert}.py``): EVA ViT
#: 1408 wide, 39 blocks, 16 heads, mlp_ratio 4.364 (6144), 364 px / 14 px patches (26 x 26 + CLS = 677),
#: q/v biases beside a bias-free qkv; BERT Q-Former 768 wide, 30,523 words, 512 positions (a persistent
#: ``position_ids`` buffer), cross-attention on even layers from 1408-wide keys; LM head; 32 queries; 256-wide
#: projections; ``mask_proj`` 768-256-128-64-16-1. No ``temp``; ``decoder.bias`` is tied to ``predictions.bias``.
IMSCORE_REAL_SHAPES = {
    "visual_encoder.cls_token": (1, 1, 1408),
    "visual_encoder.pos_embed": (1, 677, 1408),
    "visual_encoder.patch_embed.proj.weight": (1408, 3, 14, 14),
    "visual_encoder.blocks.38.attn.qkv.weight": (4224, 1408),
    "visual_encoder.blocks.38.attn.q_bias": (1408,),
    "visual_encoder.blocks.0.attn.v_bias": (1408,),
    "visual_encoder.blocks.0.mlp.fc1.weight": (6144, 1408),
    "visual_encoder.blocks.12.norm2.bias": (1408,),
    "ln_vision.weight": (1408,),
    "query_tokens": (1, 32, 768),
    "Qformer.bert.embeddings.word_embeddings.weight": (30523, 768),
    "Qformer.bert.embeddings.position_embeddings.weight": (512, 768),
    "Qformer.bert.embeddings.position_ids": (1, 512),
    "Qformer.bert.encoder.layer.10.crossattention.self.key.weight": (768, 1408),
    "Qformer.bert.encoder.layer.3.attention.self.query.bias": (768,),
    "Qformer.bert.encoder.layer.11.output_query.dense.weight": (768, 3072),
    "Qformer.bert.encoder.layer.11.intermediate.dense.weight": (3072, 768),
    "Qformer.cls.predictions.bias": (30523,),
    "Qformer.cls.predictions.decoder.weight": (30523, 768),
    "vision_proj.weight": (256, 768),
    "text_proj.bias": (256,),
    "itm_head.weight": (2, 768),
    "mask_proj.layers.0.weight": (256, 768),
    "mask_proj.layers.8.weight": (1, 16),
}
IMSCORE_REAL_ABSENT = (
    "temp",
    "Qformer.cls.predictions.decoder.bias",  # stored once, as Qformer.cls.predictions.bias
    "Qformer.bert.encoder.layer.1.crossattention.self.key.weight",  # odd layers have no cross-attention
    "visual_encoder.blocks.0.attn.qkv.bias",
)


def _imscore_state_dict(config: EvalMuseAlignConfig, seed: int = 0, tied_bias_twice: bool = False):
    """Tensors named and shaped like imscore's saved ``EvalMuse``: LAVIS's module tree without ``temp``,
    saved by safetensors' ``save_model`` (the tied LM-head bias once, the ``position_ids`` buffer kept)."""
    state = _lavis_state_dict(config, seed)
    del state["temp"]
    if not tied_bias_twice:
        del state["Qformer.cls.predictions.decoder.bias"]
    else:
        state["Qformer.cls.predictions.decoder.bias"] = state["Qformer.cls.predictions.bias"].clone()
    return state


def test_imscore_layout_has_the_real_names_and_shapes():
    from evalmuse_models.convert import lavis_to_hf_state_dict

    config = EvalMuseAlignConfig.from_preset("fga-blip2")
    with torch.device("meta"):
        imscore = _imscore_state_dict(config)
        model = EvalMuseAlignModel(config)
    for name, shape in IMSCORE_REAL_SHAPES.items():
        assert tuple(imscore[name].shape) == shape, name
    assert not set(IMSCORE_REAL_ABSENT) & set(imscore)
    # imscore 0.0.11's EvalMuse state dict has 866 entries; safetensors stores the tied bias once: 865.
    assert len(imscore) == 865
    converted, _, dropped, unknown = lavis_to_hf_state_dict(imscore)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert not unknown and set(dropped) == {k for k in imscore if k.startswith("Qformer.cls.")} | {
        "Qformer.bert.embeddings.position_ids"
    }
    assert set(expected) - set(converted) == {"temp"}  # the only tensor the port lacks
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: s for k, s in expected.items() if k != "temp"}


@pytest.mark.parametrize("layout", ["folder", "file", "tied_bias_twice"])
def test_imscore_port_converts_every_tensor_unchanged(tmp_path, tiny_config, tokenizer, processor_images, layout):
    from safetensors.torch import save_file

    imscore = _imscore_state_dict(tiny_config, seed=3, tied_bias_twice=layout == "tied_bias_twice")
    src = tmp_path / "evalmuse"
    src.mkdir()
    save_file(imscore, src / "model.safetensors")
    (src / "README.md").write_text("imscore port")
    target = src / "model.safetensors" if layout == "file" else src
    out = tmp_path / "converted"
    report = convert_fga_blip2(target, out, preset="tiny", tokenizer=tokenizer, source="imscore")

    assert report.source_format == "imscore" and set(report.filled) == {"temp"}
    model = EvalMuseAlignModel.from_pretrained(out).eval()
    state = model.state_dict()
    used = set()
    for name, sources in report.sources.items():
        used.update(sources)
        if len(sources) == 1:
            assert torch.equal(state[name], imscore[sources[0]]), name
    for name, tensor in _expected_target(tiny_config, imscore).items():
        assert torch.equal(state[name], tensor), name
    assert used | set(report.dropped) == set(imscore)
    assert set(report.sources) | set(report.filled) == set(state)
    assert math.isnan(float(state["temp"]))
    assert json.loads((out / "conversion_report.json").read_text())["filled"]["temp"].startswith("not in the imscore")
    assert "imscore" in (out / "README.md").read_text()

    # Every score but the temperature-scaled ITC logit is complete: the mask head and ITM head are the port's.
    images, prompts = processor_images
    processor = EvalMuseAlignProcessor.from_pretrained(out)
    [itm] = model.score(images[:1], prompts[:1], elements=[["red cube (object)"]], processor=processor)
    assert math.isfinite(itm.overall) and math.isfinite(itm.elements["red cube (object)"])
    with torch.no_grad():
        itc = model(**processor(images=images[:1], text=prompts[:1], text_truncation="forward"), match_head="itc")
    assert math.isfinite(float(itc.itc_score)) and math.isnan(float(itc.itc_logits))


@pytest.fixture(scope="module")
def processor_images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))], ["a red cube on the table"]


def test_imscore_port_problems_are_refused(tmp_path, tiny_config, tokenizer):
    from safetensors.torch import save_file

    def convert(src):
        return convert_fga_blip2(src, tmp_path / "out", preset="tiny", tokenizer=tokenizer, source="imscore")

    partial = _imscore_state_dict(tiny_config)
    last = 2 * len(tiny_config.mask_head_hidden_sizes)
    del partial[f"mask_proj.layers.{last}.weight"]
    partial["extra_head.weight"] = torch.zeros(3)
    (tmp_path / "partial").mkdir()
    save_file(partial, tmp_path / "partial" / "model.safetensors")
    with pytest.raises(UserInputError, match=rf"(?s)mask_proj\.layers\.{last}\.weight.*extra_head\.weight"):
        convert(tmp_path / "partial")

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no \\*.safetensors"):
        convert(tmp_path / "empty")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="broken.safetensors"):
        convert(tmp_path / "broken.safetensors")
    torch.save({"model": {}}, tmp_path / "fga_blip2.pth")
    with pytest.raises(UserInputError, match="model.safetensors"):
        convert(tmp_path / "fga_blip2.pth")
    (tmp_path / "badconfig").mkdir()
    save_file(_imscore_state_dict(tiny_config), tmp_path / "badconfig" / "model.safetensors")
    (tmp_path / "badconfig" / "config.json").write_text("{not json")
    with pytest.raises(UserInputError, match="config.json"):
        convert(tmp_path / "badconfig")
    with pytest.raises(UserInputError, match="does not exist"):
        convert(tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


def test_cli_convert_from_imscore(tmp_path, tiny_config, tokenizer, capsys):
    from safetensors.torch import save_file

    src = tmp_path / "evalmuse"
    src.mkdir()
    save_file(_imscore_state_dict(tiny_config), src / "model.safetensors")
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    rc = cli_main(["convert", "fga-blip2", "--from", "imscore", str(src), str(out), "--preset", "tiny",
                   "--tokenizer", str(tmp_path / "tok")])
    assert rc == 0, capsys.readouterr().err
    assert "filled temp" in capsys.readouterr().out
    assert math.isnan(float(EvalMuseAlignModel.from_pretrained(out).temp))
    # Without --from imscore the safetensors file is refused, pointing at the option.
    rc = cli_main(["convert", "fga-blip2", str(src / "model.safetensors"), str(tmp_path / "x"), "--preset", "tiny",
                   "--tokenizer", str(tmp_path / "tok")])
    assert rc == 2 and "--from imscore" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
