"""HNU-VPAI's LoDa structure-score model: the published checkpoint layout (written here from the published
description, independently of the model code) converts tensor for tensor; the forward pass equals the
equations re-computed here by hand; the processor equals torchvision's transforms; Auto and remote-code
loading; the published size checked on the meta device (nothing allocated)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evalmuse_models.cli import main as cli_main
from evalmuse_models.convert.hnu_vpai import check_hnu_vpai_state, convert_hnu_vpai
from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel, LodaProcessor
from evalmuse_models.testing.mixins import run_without_package
from evalmuse_models.utils import UserInputError

torch.set_num_threads(1)  # small ops: one thread is faster on a shared 2-core machine

PUBLISHED_TRAINABLE = 29_275_904  # "~29.3 M parameters train"


# ------------------------------------------------------------------ the published layout, from its description


def learner_layout(embed: int, channels: list[int], blocks: int, latent: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's ``learner`` state dict: per CNN level conv 1x1 (bias) and conv 3x3
    (no bias); per ViT block timm Mlp down (embed -> latent -> latent), cross-attention (q, kv without bias,
    proj with bias), timm Mlp up (latent -> embed -> embed); ``scale_factor`` and the cosine head."""
    shapes: dict[str, tuple[int, ...]] = {}
    for level, c in enumerate(channels):
        shapes[f"conv.{level}.0.weight"] = (latent, c, 1, 1)
        shapes[f"conv.{level}.0.bias"] = (latent,)
        shapes[f"conv.{level}.2.weight"] = (latent, latent, 3, 3)
    for i in range(blocks):
        shapes |= {
            f"down_proj.{i}.fc1.weight": (latent, embed), f"down_proj.{i}.fc1.bias": (latent,),
            f"down_proj.{i}.fc2.weight": (latent, latent), f"down_proj.{i}.fc2.bias": (latent,),
            f"cross_attn.{i}.q.weight": (latent, latent), f"cross_attn.{i}.kv.weight": (2 * latent, latent),
            f"cross_attn.{i}.proj.weight": (latent, latent), f"cross_attn.{i}.proj.bias": (latent,),
            f"up_proj.{i}.fc1.weight": (embed, latent), f"up_proj.{i}.fc1.bias": (embed,),
            f"up_proj.{i}.fc2.weight": (embed, embed), f"up_proj.{i}.fc2.bias": (embed,),
        }
    shapes["scale_factor"] = (blocks, embed)
    shapes["head.weight"] = (embed, 1)
    return shapes


def bn_buffer_layout(layers: list[int], planes: list[int], stem: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's ``bn_buffer``: the running statistics of every batch norm of a
    timm bottleneck ResNet (``features_only``): the stem's ``bn1``, three per block, one per stage's downsample."""
    norms = {"bn1": stem}
    for stage, (count, width) in enumerate(zip(layers, planes, strict=True), start=1):
        for block in range(count):
            p = f"layer{stage}.{block}."
            norms |= {p + "bn1": width, p + "bn2": width, p + "bn3": 4 * width}
        norms[f"layer{stage}.0.downsample.1"] = 4 * width
    shapes: dict[str, tuple[int, ...]] = {}
    for name, c in norms.items():
        shapes |= {f"{name}.running_mean": (c,), f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}
    return shapes


TINY_LEARNER = learner_layout(embed=32, channels=[32, 64, 128, 256], blocks=2, latent=16)
TINY_BN = bn_buffer_layout(layers=[1, 1, 1, 1], planes=[8, 16, 32, 64], stem=64)  # the 7x7 stem is 64 wide
REAL_LEARNER = learner_layout(embed=1024, channels=[256, 512, 1024, 2048], blocks=24, latent=64)
REAL_BN = bn_buffer_layout(layers=[3, 4, 6, 3], planes=[64, 128, 256, 512], stem=64)


def published_checkpoint(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random tensors in the published layout at the ``tiny`` sizes."""
    g = torch.Generator().manual_seed(seed)
    learner = {name: torch.randn(*shape, generator=g) * 0.5 for name, shape in TINY_LEARNER.items()}
    bn = {}
    for name, shape in TINY_BN.items():
        if name.endswith("num_batches_tracked"):
            bn[name] = torch.tensor(1120 + int(torch.randint(0, 9, (1,), generator=g)), dtype=torch.long)
        elif name.endswith("running_var"):
            bn[name] = torch.rand(*shape, generator=g) + 0.5
        else:
            bn[name] = torch.randn(*shape, generator=g) * 0.1
    return {"learner": learner, "bn_buffer": bn}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny published-layout checkpoint converted through the CLI (random backbones)."""
    root = tmp_path_factory.mktemp("loda")
    checkpoint = published_checkpoint()
    torch.save(checkpoint, root / "loda.pt")
    torch.manual_seed(0)
    code = cli_main(["convert", "hnu-vpai", str(root / "loda.pt"), str(root / "out"), "--random-backbones",
                     "--preset", "tiny"])
    assert code == 0
    return root / "out", checkpoint


# ------------------------------------------------------------------ layout and size


def test_published_size_matches_the_layout_without_allocating():
    with torch.device("meta"):
        model = LodaModel(LodaConfig.from_preset("hnu-vpai"))
    learner = {k: tuple(v.shape) for k, v in model.learner.state_dict().items()}
    assert learner == REAL_LEARNER
    bn = {k: tuple(v.shape) for k, v in model.feature_model.state_dict().items() if "running" in k or "batches" in k}
    assert bn == REAL_BN
    assert sum(p.numel() for p in model.learner.parameters()) == PUBLISHED_TRAINABLE
    assert round(PUBLISHED_TRAINABLE / 1e6, 2) == 29.28
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("learner."))
    vit = model.vit  # DINOv2 ViT-L/14, 4 registers, 518 px: 1 + 4 + 37 * 37 tokens
    assert (vit.embed_dim, len(vit.blocks), vit.num_prefix_tokens, tuple(vit.pos_embed.shape)) == (1024, 24, 5, (1, 1369, 1024))
    assert model.feature_model.feature_info.channels() == [256, 512, 1024, 2048]
    # the converter's check accepts the published layout at the real size (meta tensors, nothing allocated)
    meta = {
        "learner": {k: torch.empty(s, device="meta") for k, s in REAL_LEARNER.items()},
        "bn_buffer": {k: torch.empty(s, device="meta") for k, s in REAL_BN.items()},
    }
    check_hnu_vpai_state(meta, {k: tuple(v.shape) for k, v in model.state_dict().items()})


def test_conversion_keeps_every_tensor(converted):
    from transformers import AutoModel

    folder, checkpoint = converted
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, LodaModel)
    state = model.state_dict()
    for name, tensor in checkpoint["learner"].items():
        assert torch.equal(state[f"learner.{name}"], tensor), name
    for name, tensor in checkpoint["bn_buffer"].items():
        assert torch.equal(state[f"feature_model.{name}"], tensor), name
    assert {k[len("learner."):] for k in state if k.startswith("learner.")} == set(TINY_LEARNER)
    for file in ("model.safetensors", "config.json", "processor_config.json", "modeling_hnu_vpai_loda.py",
                 "configuration_hnu_vpai_loda.py", "processing_hnu_vpai_loda.py", "README.md"):
        assert (folder / file).is_file(), file
    report = json.loads((folder / "conversion_report.json").read_text())
    assert sorted(report["learner"]) == sorted(TINY_LEARNER) and sorted(report["bn_buffer"]) == sorted(TINY_BN)
    card = (folder / "README.md").read_text()
    assert "loda.pt" in card and "wangzhiyu918/results" in card and "random backbones" in card
    assert "{{" not in card and "{%" not in card and str(folder.parent) not in card


# ------------------------------------------------------------------ the equations, by hand


def reference_scores(model: LodaModel, pixels: torch.Tensor) -> torch.Tensor:
    """LoDa's score written out from its equations with the model's tensors (the timm backbone blocks and the
    ResNet are used as they are)."""
    sd = model.state_dict()
    cfg = model.config
    b = pixels.shape[0]
    latent, heads, grid = cfg.latent_dim, cfg.cross_attn_num_heads, cfg.grid_size

    def linear(x, name, bias=True):
        out = x @ sd[f"{name}.weight"].T
        return out + sd[f"{name}.bias"] if bias else out

    def mlp(x, name):
        return linear(F.gelu(linear(x, f"{name}.fc1")), f"{name}.fc2")

    cnn = []
    for level, feature in enumerate(model.feature_model(pixels)):
        y = F.conv2d(feature, sd[f"learner.conv.{level}.0.weight"], sd[f"learner.conv.{level}.0.bias"])
        y = F.conv2d(F.gelu(y), sd[f"learner.conv.{level}.2.weight"], padding=1)
        y = F.adaptive_avg_pool2d(y, grid)
        cnn.append(y.permute(0, 2, 3, 1).reshape(b, grid * grid, latent))
    cnn = torch.cat(cnn, dim=1)

    patch = sd["vit.patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, sd["vit.patch_embed.proj.weight"], sd["vit.patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2) + sd["vit.pos_embed"]  # DINOv2-reg: no position for the prefix tokens
    x = torch.cat([sd["vit.cls_token"].expand(b, -1, -1), sd["vit.reg_token"].expand(b, -1, -1), x], dim=1)
    n, dh = x.shape[1], latent // heads
    for i, block in enumerate(model.vit.blocks):
        d = mlp(x, f"learner.down_proj.{i}")
        q = linear(d, f"learner.cross_attn.{i}.q", bias=False).view(b, n, heads, dh).transpose(1, 2)
        kv = linear(cnn, f"learner.cross_attn.{i}.kv", bias=False)
        k = kv[..., :latent].view(b, -1, heads, dh).transpose(1, 2)
        v = kv[..., latent:].view(b, -1, heads, dh).transpose(1, 2)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        d = d + linear((attention @ v).transpose(1, 2).reshape(b, n, latent), f"learner.cross_attn.{i}.proj")
        x = x + mlp(d, f"learner.up_proj.{i}") * sd["learner.scale_factor"][i]
        x = block(x)
    x = F.layer_norm(x, (x.shape[-1],), sd["vit.norm.weight"], sd["vit.norm.bias"], eps=1e-6)
    cls, w = x[:, 0], sd["learner.head.weight"][:, 0]
    return (cls @ w) / (cls.norm(dim=-1) * w.norm())


def test_forward_equals_the_equations(converted):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(converted[0]).eval().double()
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([1.5, 4.0, 3.0], dtype=torch.float64)
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels)
        expected = reference_scores(model, pixels)
    assert out.score.shape == (3,) and torch.allclose(out.score, expected, atol=1e-10, rtol=0)
    assert out.score.std() > 1e-4  # the images are told apart: a constant score would pass too easily
    # the published PLCC loss: both sides standardised, (mse(p, t) + mse(rho p, t)) / 8
    p = (out.score - out.score.mean()) / (out.score.std(unbiased=False) + 1e-8)
    t = (labels - labels.mean()) / (labels.std(unbiased=False) + 1e-8)
    rho = (p * t).mean()
    loss = (((p - t) ** 2).mean() + ((rho * p - t) ** 2).mean()) / 8
    assert float(out.loss) == pytest.approx(float(loss), abs=1e-6)
    # a perfectly correlated prediction costs nothing
    from evalmuse_models.models.hnu_vpai_loda import loda_plcc_loss

    assert float(loda_plcc_loss(2 * labels + 1, labels)) == pytest.approx(0.0, abs=1e-12)


def test_only_the_learner_trains_and_batch_norm_follows_train_mode():
    torch.manual_seed(0)
    model = LodaModel(LodaConfig.from_preset("tiny"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("learner.")}
    before = model.feature_model.bn1.running_mean.clone()
    model.train()
    out = model(**model.dummy_inputs, labels=torch.tensor([1.0, 5.0]))
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("learner."))
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("learner."))
    assert not torch.equal(model.feature_model.bn1.running_mean, before)  # as in the published training
    model.eval()
    frozen = model.feature_model.bn1.running_mean.clone()
    model(**model.dummy_inputs)
    assert torch.equal(model.feature_model.bn1.running_mean, frozen)
    # the published initialisation: unit head column, small scale factors
    fresh = LodaModel(LodaConfig.from_preset("tiny")).learner
    assert float(fresh.head.weight.detach().norm()) == pytest.approx(1.0, abs=1e-6)
    assert 0.01 < float(fresh.scale_factor.detach().std()) < 0.03  # truncated normal, std 0.02


# ------------------------------------------------------------------ refusals


def test_converter_refuses_bad_checkpoints(tmp_path):
    good = published_checkpoint()

    def convert(payload, name):
        torch.save(payload, tmp_path / f"{name}.pt")
        with pytest.raises(UserInputError) as info:
            convert_hnu_vpai(tmp_path / f"{name}.pt", tmp_path / f"out-{name}", random_backbones=True, preset="tiny")
        assert not (tmp_path / f"out-{name}").exists()
        return str(info.value)

    learner = dict(good["learner"])
    del learner["cross_attn.1.kv.weight"]
    learner["cross_attn.1.kv.bias"] = torch.zeros(32)
    message = convert({"learner": learner, "bn_buffer": good["bn_buffer"]}, "renamed")
    assert "1 learner tensors missing: cross_attn.1.kv.weight" in message
    assert "1 unexpected learner tensors: cross_attn.1.kv.bias" in message

    learner = dict(good["learner"], scale_factor=torch.zeros(24, 32))
    message = convert({"learner": learner, "bn_buffer": good["bn_buffer"]}, "shape")
    assert "learner['scale_factor']: checkpoint (24, 32) vs model (2, 32)" in message

    bn = {k: v for k, v in good["bn_buffer"].items() if not k.startswith("layer4.0.downsample")}
    message = convert({"learner": good["learner"], "bn_buffer": bn}, "bn")
    assert "3 bn_buffer tensors missing: layer4.0.downsample.1.num_batches_tracked" in message

    message = convert({"learner": good["learner"]}, "part")
    assert "expected exactly the keys ['bn_buffer', 'learner']" in message and "found ['learner']" in message

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="weights_only=True"):
        convert_hnu_vpai(tmp_path / "junk.pt", tmp_path / "out-junk", random_backbones=True, preset="tiny")
    with pytest.raises(UserInputError, match="does not exist"):
        convert_hnu_vpai(tmp_path / "absent.pt", tmp_path / "out-absent", random_backbones=True, preset="tiny")

    # a training-state file holds the same two parts under "model"
    torch.save({"model": good, "step": 1120, "epoch": 7}, tmp_path / "run.state")
    convert_hnu_vpai(tmp_path / "run.state", tmp_path / "out-state", random_backbones=True, preset="tiny")
    assert (tmp_path / "out-state" / "model.safetensors").is_file()


def test_backbones_from_local_timm_folders(tmp_path, capsys):
    import timm
    from transformers import AutoModel

    config = LodaConfig.from_preset("tiny")
    torch.manual_seed(3)
    vit = timm.create_model(config.vit_name, num_classes=0, img_size=config.image_size, **config.vit_kwargs)
    cnn = timm.create_model(config.cnn_name, **config.cnn_kwargs)
    timm.models.save_for_hf(vit, tmp_path / "backbones" / config.vit_name, safe_serialization=True)
    timm.models.save_for_hf(cnn, tmp_path / "backbones" / config.cnn_name, safe_serialization=True)
    checkpoint = published_checkpoint(seed=5)
    torch.save(checkpoint, tmp_path / "loda.pt")
    code = cli_main(["convert", "hnu-vpai", str(tmp_path / "loda.pt"), str(tmp_path / "out"), "--preset", "tiny",
                     "--backbones-from", str(tmp_path / "backbones"), "--crop", "random"])
    assert code == 0, capsys.readouterr().err
    assert "converted 38 learner tensors" in capsys.readouterr().out
    model = AutoModel.from_pretrained(tmp_path / "out")
    for name, value in vit.state_dict().items():
        assert torch.equal(model.vit.state_dict()[name], value), name
    assert torch.equal(model.feature_model.conv1.weight, cnn.conv1.weight)
    assert torch.equal(model.feature_model.layer4[0].conv3.weight, cnn.layer4[0].conv3.weight)
    # the statistics are the checkpoint's, not timm's
    assert torch.equal(model.feature_model.layer2[0].bn3.running_var, checkpoint["bn_buffer"]["layer2.0.bn3.running_var"])
    assert LodaProcessor.from_pretrained(tmp_path / "out").crop == "random"

    (tmp_path / "partial").mkdir()
    code = cli_main(["convert", "hnu-vpai", str(tmp_path / "loda.pt"), str(tmp_path / "out2"), "--preset", "tiny",
                     "--backbones-from", str(tmp_path / "partial")])
    err = capsys.readouterr().err
    assert code == 2 and f"lacks {config.vit_name}, {config.cnn_name}" in err
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------ processor


def test_processor_is_torchvisions_pipeline():
    from torchvision import transforms

    config = LodaConfig.from_preset("tiny")
    size = config.image_size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(90, 61), (61, 90), (56, 56), (200, 57), (75, 300)]]
    tail = [transforms.ToTensor(), transforms.Normalize(config.image_mean, config.image_std)]
    center = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), *tail])
    random_crop = transforms.Compose([transforms.Resize(size), transforms.RandomCrop(size), *tail])

    processor = LodaProcessor.from_model_config(config)
    got = processor(images=images)["pixel_values"]
    assert got.shape == (5, 3, size, size)
    assert torch.allclose(got, torch.stack([center(im) for im in images]), atol=1e-6)

    torch.manual_seed(7)
    expected = torch.stack([random_crop(im) for im in images])
    torch.manual_seed(7)
    got = LodaProcessor.from_model_config(config, crop="random")(images=images)["pixel_values"]
    assert torch.allclose(got, expected, atol=1e-6)  # the same draws as torchvision's RandomCrop
    seeded = [LodaProcessor.from_model_config(config, crop="random", seed=3)(images=images)["pixel_values"]
              for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])

    with pytest.raises(ValueError, match="crop must be one of"):
        LodaProcessor.from_model_config(config, crop="top-left")
    with pytest.raises(TypeError, match="PIL images or paths"):
        processor(images=[np.zeros((56, 56, 3), dtype=np.uint8)])


def test_config_checks_and_presets(tmp_path):
    assert LodaConfig.available_presets() == ["hnu-vpai", "tiny"]
    with pytest.raises(ValueError, match="unknown LoDa preset 'large'"):
        LodaConfig.from_preset("large")
    with pytest.raises(ValueError, match="cross_attn_num_heads=5 is invalid: expected a divisor of latent_dim"):
        LodaConfig.from_preset("tiny", cross_attn_num_heads=5)
    with pytest.raises(ValueError, match="vit_kwargs.*no \\['img_size'\\]"):
        LodaConfig.from_preset("tiny", vit_kwargs={"img_size": 64})
    config = LodaConfig.from_preset("tiny", vit_kwargs={"depth": 3})
    assert config.vit_kwargs == {"embed_dim": 32, "depth": 3, "num_heads": 2}
    config.save_pretrained(tmp_path)
    assert LodaConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    model = LodaModel(LodaConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, 56, 56\)"):
        model(pixel_values=torch.zeros(1, 3, 64, 64))


# ------------------------------------------------------------------ loading


def test_predict_is_the_forward_pass_on_the_processor_output(converted, tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(converted[0]).eval()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)) for _ in range(3)]
    images[2].save(tmp_path / "image.png")
    scores = model.predict([images[0], images[1], tmp_path / "image.png"], batch_size=2)
    with torch.no_grad():
        expected = model(**LodaProcessor.from_pretrained(converted[0])(images=images)).score
    assert np.allclose(scores, expected.tolist(), atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.predict(images, batch_size=0)


REMOTE_SCRIPT = r"""
import json, sys

import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert "evalmuse_models" not in sys.modules
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    score = model(pixel_values=torch.load(folder + "/pixels.pt")).score
print(json.dumps({"score": score.tolist(), "predict": model.predict([Image.open(folder + "/image.png")]),
                  "processor": type(processor).__name__}))
"""


@pytest.mark.slow
def test_remote_code_loads_without_the_package(converted, tmp_path):
    import shutil

    from transformers import AutoModel

    folder = tmp_path / "model"
    shutil.copytree(converted[0], folder)
    model = AutoModel.from_pretrained(folder).eval()
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    torch.save(pixels, folder / "pixels.pt")
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    image.save(folder / "image.png")
    with torch.no_grad():
        expected = model(pixel_values=pixels).score.tolist()
    got, _ = run_without_package(REMOTE_SCRIPT, folder, cwd=tmp_path)
    assert got["processor"] == "LodaProcessor"
    assert np.allclose(got["score"], expected, atol=1e-6)
    assert np.allclose(got["predict"], model.predict([image]), atol=1e-6)


def test_docstring_examples_run():
    import doctest

    from evalmuse_models.models.hnu_vpai_loda import (
        configuration_hnu_vpai_loda,
        modeling_hnu_vpai_loda,
        processing_hnu_vpai_loda,
    )

    for module in (configuration_hnu_vpai_loda, modeling_hnu_vpai_loda, processing_hnu_vpai_loda):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__
