"""Convert HNU-VPAI's published LoDa structure-score checkpoint to a ``LodaModel`` folder.

The published file (Hub dataset repo ``wangzhiyu918/results``: ``loda_evalmuse10k_train_split0_1120.pt``) is
a torch pickle ``{"learner": state_dict, "bn_buffer": state_dict}``: the trainable adapters, and the
running statistics (``running_mean`` / ``running_var`` / ``num_batches_tracked``) of the ResNet-50's
batch norms, which moved during training because the frozen ResNet ran in training mode. The backbones'
weights are NOT in it: they are timm's pretrained ``vit_large_patch14_reg4_dinov2.lvd142m`` and
``resnet50`` (``resnet50.a1_in1k``).

==========================  =====================================================
checkpoint                  LodaModel
==========================  =====================================================
``learner[k]``              ``learner.k`` (same names: ``conv.*``, ``down_proj.*``, ``cross_attn.*``,
                            ``up_proj.*``, ``scale_factor``, ``head.weight``)
``bn_buffer[k]``            ``feature_model.k`` (replacing timm's statistics)
timm pretrained weights     ``vit.*`` and the rest of ``feature_model.*``
==========================  =====================================================

Every tensor must have its place and every place its tensor: anything missing, unexpected or of another
shape is an error naming it, and nothing is written. Their training-state files (``*.state``:
``{"model": {"learner", "bn_buffer"}, "optimizer", ...}``) are accepted too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils import UserInputError, atomic_write_text, claim_output_directory, owned_directory
from ._checkpoints import format_keys, read_torch_checkpoint

#: The checkpoint's two parts and what they hold.
PARTS = {
    "learner": "the trainable adapters (LodaModel.learner)",
    "bn_buffer": "the ResNet's batch-norm running statistics (LodaModel.feature_model)",
}
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class LodaConversionReport:
    """What a conversion did: the tensors taken from the checkpoint and where the backbones came from."""

    learner: list[str] = field(default_factory=list)
    bn_buffer: list[str] = field(default_factory=list)
    backbones: dict[str, str] = field(default_factory=dict)
    num_parameters: int = 0
    num_trainable_parameters: int = 0
    seconds: float = 0.0
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            (
                f"converted {len(self.learner)} learner tensors ({self.num_trainable_parameters:,} parameters) and "
                f"{len(self.bn_buffer)} ResNet batch-norm buffers"
            ),
        ]
        lines += [f"{name}: {source}" for name, source in self.backbones.items()]
        if self.output_dir:
            lines.append(f"wrote {self.output_dir} ({self.num_parameters:,} parameters) in {self.seconds:.1f} s")
        return "\n".join(lines)


def load_hnu_vpai_checkpoint(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{"learner": {...}, "bn_buffer": {...}}`` of a published checkpoint, read with ``weights_only=True``."""
    import torch

    path = Path(path)
    payload = read_torch_checkpoint(
        path, what="HNU-VPAI's loda_evalmuse10k_train_split0_1120.pt (Hub dataset repo wangzhiyu918/results)",
        layout="the published LoDa checkpoint (a pickle of {'learner': state_dict, 'bn_buffer': state_dict})")
    if isinstance(payload, Mapping) and "learner" not in payload and isinstance(payload.get("model"), Mapping):
        payload = payload["model"]  # a training-state file: {"model": {...}, "optimizer": ..., ...}
    if not isinstance(payload, Mapping) or set(payload) != set(PARTS):
        found = sorted(map(str, payload)) if isinstance(payload, Mapping) else type(payload).__name__
        raise UserInputError(f"{path}: expected exactly the keys {sorted(PARTS)} (LoDa's checkpoint), found {found}")
    parts: dict[str, dict[str, Any]] = {}
    for part, holds in PARTS.items():
        state = payload[part]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserInputError(f"{path}: {part!r} must be a state dict (names -> tensors): {holds}")
        parts[part] = dict(state)
    return parts


def check_hnu_vpai_state(parts: Mapping[str, Mapping[str, Any]], expected: Mapping[str, tuple[int, ...]],
                         source: str = "the checkpoint") -> None:
    """Raise :class:`UserInputError` naming every tensor of ``parts`` without a place in ``expected`` (the
    ``LodaModel`` state-dict shapes), every ``learner.*`` / batch-norm buffer place without a tensor, and
    every shape mismatch."""
    given = {f"learner.{k}": tuple(v.shape) for k, v in parts["learner"].items()}
    bn = {f"feature_model.{k}": tuple(v.shape) for k, v in parts["bn_buffer"].items()}
    wanted = {
        name: shape for name, shape in expected.items()
        if name.startswith("learner.") or (name.startswith("feature_model.") and name.endswith(_BN_BUFFERS))
    }
    problems = []
    for part, names in (("learner", given), ("bn_buffer", bn)):
        prefix = "learner." if part == "learner" else "feature_model."
        part_wanted = {n for n in wanted if n.startswith(prefix)}
        missing = sorted(n[len(prefix):] for n in part_wanted - set(names))
        unexpected = sorted(n[len(prefix):] for n in set(names) - part_wanted)
        if missing:
            problems.append(f"{len(missing)} {part} tensors missing: {format_keys(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected {part} tensors: {format_keys(unexpected)}")
        mismatched = [
            f"{part}[{n[len(prefix):]!r}]: checkpoint {names[n]} vs model {wanted[n]}"
            for n in sorted(set(names) & part_wanted) if names[n] != wanted[n]
        ]
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {'; '.join(mismatched[:20])}")
    if problems:
        raise UserInputError(f"{source} does not match the LoDa architecture, nothing written:\n- " + "\n- ".join(problems))


def _backbone_sources(config, backbones_from: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    if backbones_from is None:
        return None, None
    root = Path(backbones_from)
    if not root.is_dir():
        raise UserInputError(f"--backbones-from {root} is not a folder")
    vit, cnn = root / config.vit_name, root / config.cnn_name
    absent = [p.name for p in (vit, cnn) if not p.exists()]
    if absent:
        raise UserInputError(
            f"--backbones-from {root} lacks {', '.join(absent)}: it must hold one timm folder per backbone, named "
            f"{config.vit_name} and {config.cnn_name} (e.g. `huggingface-cli download timm/{config.cnn_name} "
            f"--local-dir {root / config.cnn_name}`)"
        )
    return vit, cnn


def convert_hnu_vpai(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    backbones_from: str | os.PathLike | None = None,
    random_backbones: bool = False,
    preset: str = "hnu-vpai",
    config_overrides: Mapping[str, Any] | None = None,
    crop: str = "center",
    overwrite: bool = False,
) -> LodaConversionReport:
    """Convert HNU-VPAI's LoDa checkpoint to a safetensors folder that ``AutoModel.from_pretrained`` loads.

    Args:
        checkpoint: the published ``{"learner": ..., "bn_buffer": ...}`` file (read with ``weights_only=True``).
        output_dir: the folder to write (config, weights, remote code, processor, model card, report).
        backbones_from: a folder holding timm's two pretrained backbones as local folders named after them
            (``vit_large_patch14_reg4_dinov2.lvd142m/`` and ``resnet50.a1_in1k/``, each a copy of the Hub repo
            ``timm/<name>``). Default: timm downloads them (or finds them in the Hugging Face cache).
        random_backbones: keep random backbones (tests and benchmarks only: the scores mean nothing).
        preset: the architecture (``"hnu-vpai"``; ``"tiny"`` for tests); ``config_overrides`` adjust it.
        crop: the saved processor's crop, ``"center"`` or HNU-VPAI's ``"random"``.
        overwrite: replace an ``output_dir`` that an earlier conversion wrote (never a folder of other files).

    Raises:
        UserInputError: unreadable checkpoint, tensors missing, unexpected or misshapen, backbones not found,
            existing output.

    Example::

        report = convert_hnu_vpai("loda_evalmuse10k_train_split0_1120.pt", "hnu-vpai-loda")
        print(report.summary())
    """
    import torch

    from ..cards import render_model_card
    from ..models.hnu_vpai_loda import LodaConfig, LodaModel, LodaProcessor

    started = time.perf_counter()
    if backbones_from is not None and random_backbones:
        raise UserInputError("give either backbones_from (--backbones-from) or random_backbones (--random-backbones)")
    output_dir = Path(output_dir)
    inputs = [p for p in (checkpoint, backbones_from) if p is not None and Path(p).exists()]
    claim_output_directory(output_dir, "model", inputs=inputs, overwrite=overwrite, option="output folder")
    try:
        config = LodaConfig.from_preset(preset, **dict(config_overrides or {}))
        processor = LodaProcessor.from_model_config(config, crop=crop)
    except ValueError as error:
        raise UserInputError(str(error)) from error
    vit_from, cnn_from = _backbone_sources(config, backbones_from)

    parts = load_hnu_vpai_checkpoint(checkpoint)
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in LodaModel(config).state_dict().items()}
    check_hnu_vpai_state(parts, expected, source=str(checkpoint))

    model = LodaModel(config)
    report = LodaConversionReport(learner=sorted(parts["learner"]), bn_buffer=sorted(parts["bn_buffer"]))
    if random_backbones:
        report.backbones = {config.vit_name: "random weights", config.cnn_name: "random weights"}
    else:
        try:
            model.load_pretrained_backbones(vit_from=vit_from, cnn_from=cnn_from)
        except Exception as error:
            raise UserInputError(
                f"could not load timm's pretrained backbones {config.vit_name} and {config.cnn_name} ({error}); "
                "without network access, pass --backbones-from DIR with one local timm folder per backbone"
            ) from error
        where = "timm pretrained weights"
        report.backbones = {
            config.vit_name: f"{where} from {vit_from}" if vit_from else where,
            config.cnn_name: f"{where} from {cnn_from}" if cnn_from else where,
        }
    model.learner.load_state_dict(parts["learner"], strict=True)
    missing, unexpected = model.feature_model.load_state_dict(parts["bn_buffer"], strict=False)
    if unexpected or any(name.endswith(_BN_BUFFERS) for name in missing):  # excluded by check_hnu_vpai_state
        raise RuntimeError(f"batch-norm buffers did not load: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()

    report.num_parameters = sum(p.numel() for p in model.parameters())
    report.num_trainable_parameters = sum(p.numel() for p in model.learner.parameters())
    with owned_directory(output_dir, "model", inputs=inputs, overwrite=overwrite, option="output folder") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        from huggingface_hub import ModelCardData

        card = render_model_card(
            "hnu-vpai-loda",
            ModelCardData(
                library_name="transformers",
                tags=["evalmuse", "text-to-image-evaluation", "image-quality-assessment", "loda", "timm"],
            ),
            preset=preset,
            checkpoint=Path(checkpoint).name,
            # the card names the weights, never a local path
            backbones={name: "random weights" if random_backbones else "timm's pretrained weights"
                       for name in (config.vit_name, config.cnn_name)},
            random_backbones=random_backbones,
            crop=crop,
            num_parameters=report.num_parameters,
            num_trainable=report.num_trainable_parameters,
        )
        card.save(str(tmp / "README.md"))
        report.output_dir = str(output_dir)
        report.seconds = time.perf_counter() - started
        atomic_write_text(tmp / "conversion_report.json", json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return report


__all__ = [
    "PARTS",
    "LodaConversionReport",
    "check_hnu_vpai_state",
    "convert_hnu_vpai",
    "load_hnu_vpai_checkpoint",
]
