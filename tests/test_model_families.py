"""The shared model-family tests (evalmuse_models.testing.mixins) for the alignment and structure families."""

from __future__ import annotations

import numpy as np
from PIL import Image

from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig
from evalmuse_models.models.evalmuse_structure import EvalMuseStructureConfig, EvalMuseStructureProcessor
from evalmuse_models.testing.align import build_tiny_processor
from evalmuse_models.testing.mixins import ModelFamilySpec, ModelFamilyTesterMixin


def _images(sizes):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _align_inputs():
    return {"images": _images([(80, 60), (50, 90)]), "text": ["a red cube on a table", "two blue balls"]}


class TestAlignFamily(ModelFamilyTesterMixin):
    family = ModelFamilySpec(
        config_class=EvalMuseAlignConfig,
        make_processor=build_tiny_processor,
        processor_inputs=_align_inputs,
        sub_config_override=("vision_config", {"num_hidden_layers": 1}),
    )


class TestStructureFamily(ModelFamilyTesterMixin):
    family = ModelFamilySpec(
        config_class=EvalMuseStructureConfig,
        make_processor=EvalMuseStructureProcessor.from_model_config,
        processor_inputs=lambda: {"images": _images([(40, 30), (64, 64)])},
        sub_config_override=("vit_config", {"mlp_ratio": 4}),
        blocked_modules=("cv2", "scipy", "scipy.ndimage"),
    )


def _frozen(model) -> list[str]:
    return sorted(name for name, parameter in model.named_parameters() if not parameter.requires_grad)


def test_frozen_backbones_stay_frozen_after_from_pretrained(tmp_path):
    """transformers re-creates loaded parameters as trainable; each family freezes its config's backbones again."""
    from transformers import AutoModel

    from evalmuse_models.models.evalmuse_structure import EvalMuseStructureModel
    from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel

    for name, model in (
        ("structure", EvalMuseStructureModel(EvalMuseStructureConfig.from_preset("tiny", freeze_vit=True,
                                                                                 freeze_cnn=True))),
        ("loda", LodaModel(LodaConfig.from_preset("tiny"))),
    ):
        frozen = _frozen(model)
        assert frozen, f"{name}: the tiny preset should freeze its backbones here"
        model.save_pretrained(tmp_path / name)
        loaded, _ = AutoModel.from_pretrained(tmp_path / name, output_loading_info=True)  # the tuple form too
        assert _frozen(loaded) == frozen, name
