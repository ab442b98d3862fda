"""Convert the official FGA-BLIP2 checkpoint (LAVIS ``fga_blip2.pth``), or the imscore safetensors port of it,
to an ``EvalMuseAlignModel`` folder.

The official checkpoint is a torch pickle ``{"model": state_dict, ...}`` with LAVIS names. Every tensor is
renamed to this model's names (the same renames as transformers' BLIP-2 conversion):

======================================================  ====================================================
LAVIS                                                   EvalMuseAlignModel
======================================================  ====================================================
``visual_encoder.cls_token`` / ``pos_embed``            ``vision_model.embeddings.class_embedding`` / ``position_embedding``
``visual_encoder.patch_embed.proj.*``                   ``vision_model.embeddings.patch_embedding.*``
``visual_encoder.blocks.N.norm1`` / ``norm2``           ``vision_model.encoder.layers.N.layer_norm1`` / ``layer_norm2``
``visual_encoder.blocks.N.attn.qkv.weight``             ``...layers.N.self_attn.qkv.weight``
``visual_encoder.blocks.N.attn.q_bias`` + ``v_bias``    ``...layers.N.self_attn.qkv.bias`` = concat(q_bias, 0, v_bias)
``visual_encoder.blocks.N.attn.proj``                   ``...layers.N.self_attn.projection``
``visual_encoder.blocks.N.mlp.fc1`` / ``fc2``           ``...layers.N.mlp.fc1`` / ``fc2``
``ln_vision``                                           ``vision_model.post_layernorm``
``query_tokens``                                        ``query_tokens``
``Qformer.bert.embeddings.word_embeddings``             ``embeddings.word_embeddings``
``Qformer.bert.embeddings.position_embeddings``         ``embeddings.position_embeddings``
``Qformer.bert.embeddings.LayerNorm``                   ``qformer.layernorm``
``Qformer.bert.encoder.layer.N.*.self.*``               ``qformer.encoder.layer.N.*.attention.*`` (rest unchanged)
``vision_proj`` / ``text_proj`` / ``itm_head``          ``vision_projection`` / ``text_projection`` / ``itm_head``
``mask_proj.layers.{0,2,4,6,8}``                        ``mask_proj.layers.{0,2,4,6,8}``
``temp``                                                ``temp`` (contrastive temperature, for ``itc_logits``)
======================================================  ====================================================

Not carried over, by design (listed in the report): ``Qformer.cls.*`` (the BERT LM head, unused by image-text
matching) and ``Qformer.bert.embeddings.position_ids`` (a buffer). The Q-Former word embeddings have 30,523
rows (BERT's 30,522 + ``[DEC]``), like the ``fga-blip2`` preset.

The imscore port (Hub ``RE-N-Y/evalmuse``: ``imscore.evalmuse.model.EvalMuse`` saved by
``PyTorchModelHubMixin`` as ``model.safetensors``) keeps the LAVIS module names and shapes, so the same
table applies (``source="imscore"``). It differs in three ways: it has no ``temp`` (filled with NaN and
listed in the report's ``filled``: ``itc_logits`` are then NaN, while ``itc_similarity``, ``itc_score``
and every ITM score are complete), its ``position_ids`` buffer is stored (dropped as above), and the LM
head's ``decoder.bias``, tied to ``Qformer.cls.predictions.bias``, is stored once (either name is
accepted and dropped). Its ``mask_proj`` is FGA-BLIP2's (imscore applies no sigmoid in its own forward;
the weights are the same), and ``itm_head`` scores every token, so element scores are as complete as
with the official checkpoint, although imscore itself only computes the overall score.

LAVIS drops frozen parameters when it saves a checkpoint, so a checkpoint trained with a frozen ViT may lack
``visual_encoder.*``: ``blip2_base`` (a transformers BLIP-2 folder such as ``blip2-itm-vit-g-coco``, or a
LAVIS ``.pth``) supplies whatever the checkpoint does not hold. Anything still missing, or any tensor the
model does not know, is an error: nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils import UserInputError, atomic_write_text, claim_output_directory, owned_directory
from ..utils.jsonio import read_json_file
from ._checkpoints import format_keys, read_torch_checkpoint

#: LAVIS tensors that have no counterpart in the alignment model (and why).
DROPPED_PREFIXES = {
    "Qformer.cls.": "BERT language-model head (not used for image-text matching)",
    "Qformer.bert.embeddings.position_ids": "position-id buffer (rebuilt by the model)",
}

#: Where the weights come from: the official LAVIS pickle or the imscore safetensors port.
SOURCES = ("lavis", "imscore")

#: Model tensors the imscore port does not hold, and what the conversion puts there instead.
IMSCORE_ABSENT = {
    "temp": "not in the imscore port: set to NaN, so itc_logits (similarity / temp) are NaN; itc_similarity, "
    "itc_score and the ITM scores do not use it",
}

_VIT_BLOCK = re.compile(r"^visual_encoder\.blocks\.(\d+)\.(.+)$")
_VIT_BLOCK_RENAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_DIRECT_RENAMES = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
    "query_tokens": "query_tokens",
    "temp": "temp",
    "Qformer.bert.embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "Qformer.bert.embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "Qformer.bert.embeddings.LayerNorm.weight": "qformer.layernorm.weight",
    "Qformer.bert.embeddings.LayerNorm.bias": "qformer.layernorm.bias",
}
_PREFIX_RENAMES = {
    "vision_proj.": "vision_projection.",
    "text_proj.": "text_projection.",
    "itm_head.": "itm_head.",
    "mask_proj.": "mask_proj.",
}


@dataclass
class ConversionReport:
    """What a conversion did: tensors converted, taken from the base model, dropped, interpolated."""

    converted: list[str] = field(default_factory=list)
    from_base: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    interpolated: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)
    filled: dict[str, str] = field(default_factory=dict)
    source_format: str = "lavis"
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"converted {len(self.converted)} tensors from the checkpoint, {len(self.from_base)} from the BLIP-2 base",
            f"dropped {len(self.dropped)} LAVIS tensors not used by the alignment model",
        ]
        for name, reason in self.filled.items():
            lines.append(f"filled {name}: {reason}")
        if self.interpolated:
            lines.append(f"interpolated position embeddings: {', '.join(self.interpolated)}")
        if self.output_dir:
            lines.append(f"wrote {self.output_dir}")
        return "\n".join(lines)


def _dropped_reason(key: str) -> str | None:
    for prefix, reason in DROPPED_PREFIXES.items():
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return reason
    return None


def lavis_to_hf_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, str], list[str]]:
    """Rename a LAVIS FGA-BLIP2 / BLIP-2 state dict to ``EvalMuseAlignModel`` names.

    Returns ``(converted, sources, dropped, unknown)``: the renamed tensors, the LAVIS key(s) each came
    from, the LAVIS keys intentionally dropped (with the reason) and the LAVIS keys with no known rename.
    """
    import torch

    converted: dict[str, Any] = {}
    sources: dict[str, list[str]] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    biases: dict[int, dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        reason = _dropped_reason(key)
        if reason is not None:
            dropped[key] = reason
            continue
        if key in _DIRECT_RENAMES:
            converted[_DIRECT_RENAMES[key]] = tensor
            sources[_DIRECT_RENAMES[key]] = [key]
            continue
        match = _VIT_BLOCK.match(key)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            if rest in ("attn.q_bias", "attn.v_bias"):
                biases.setdefault(index, {})[rest.split(".")[1]] = (key, tensor)
                continue
            if rest in _VIT_BLOCK_RENAMES:
                name = f"vision_model.encoder.layers.{index}.{_VIT_BLOCK_RENAMES[rest]}"
                converted[name] = tensor
                sources[name] = [key]
                continue
            unknown.append(key)
            continue
        if key.startswith("Qformer.bert.encoder.layer."):
            name = "qformer." + key[len("Qformer.bert.") :]
            name = name.replace(".attention.self.", ".attention.attention.")
            name = name.replace(".crossattention.self.", ".crossattention.attention.")
            converted[name] = tensor
            sources[name] = [key]
            continue
        for old, new in _PREFIX_RENAMES.items():
            if key.startswith(old):
                name = new + key[len(old) :]
                converted[name] = tensor
                sources[name] = [key]
                break
        else:
            unknown.append(key)
    for index, parts in sorted(biases.items()):
        if set(parts) != {"q_bias", "v_bias"}:
            unknown.extend(key for key, _ in parts.values())
            continue
        (q_key, q_bias), (v_key, v_bias) = parts["q_bias"], parts["v_bias"]
        name = f"vision_model.encoder.layers.{index}.self_attn.qkv.bias"
        converted[name] = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
        sources[name] = [q_key, v_key]
    return converted, sources, dropped, unknown


def _load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors" and path.is_file():
        raise UserInputError(
            f"{path} is a safetensors file, not the official LAVIS pickle; for the imscore port pass --from imscore "
            "(source='imscore')"
        )
    payload = read_torch_checkpoint(path, what="the path of the official fga_blip2.pth",
                                    layout="the official LAVIS checkpoint (a pickle of {'model': state_dict})")
    state_dict = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserInputError(f"{path}: expected {{'model': state_dict}} (a dict of tensors) in the checkpoint")
    return state_dict


def _read_safetensors(files: list[Path]) -> dict[str, Any]:
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                    if key in tensors:
                        raise UserInputError(f"{file}: tensor {key!r} is also in another *.safetensors file")
                    tensors[key] = handle.get_tensor(key)
        except UserInputError:
            raise
        except Exception as error:
            raise UserInputError(f"could not read {file} as safetensors ({error})") from error
    return tensors


def _load_imscore(path: Path) -> dict[str, Any]:
    """The imscore port: a folder holding ``model.safetensors`` (as ``PyTorchModelHubMixin`` saves it; a
    ``config.json`` beside it is optional, imscore's ``EvalMuse`` takes no arguments) or the file itself."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserInputError(f"{path}: --from imscore needs the port's model.safetensors (or its folder)")
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise UserInputError(f"{path} holds no *.safetensors; pass the folder of the imscore port (RE-N-Y/evalmuse)")
        config_file = path / "config.json"
        if config_file.is_file():
            config = read_json_file(config_file)
            if not isinstance(config, dict):
                raise UserInputError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    else:
        raise UserInputError(f"{path} does not exist; pass the imscore port's folder or its model.safetensors")
    return _read_safetensors(files)


def _load_base(path: Path) -> dict[str, Any]:
    """Vision tensors of a BLIP-2 base: a transformers folder (``vision_model.*``) or a LAVIS ``.pth``."""
    if path.is_file():
        converted, _, _, _ = lavis_to_hf_state_dict(_load_checkpoint(path))
        return {k: v for k, v in converted.items() if k.startswith("vision_model.")}
    if not path.is_dir():
        raise UserInputError(f"--blip2-base {path} is neither a folder nor a file")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserInputError(
            f"--blip2-base {path} holds no *.safetensors; pass a transformers BLIP-2 folder (e.g. blip2-itm-vit-g-coco)"
        )
    tensors = {key: t for key, t in _read_safetensors(files).items() if key.startswith("vision_model.")}
    if not tensors:
        raise UserInputError(f"--blip2-base {path}: no vision_model.* tensors found")
    return tensors


def _interpolate_position_embedding(tensor, target_shape):
    """LAVIS ``interpolate_pos_embed``: bicubic resize of the patch grid, CLS position kept."""
    import torch

    cls_pos, grid = tensor[:, :1], tensor[:, 1:]
    old = round(grid.shape[1] ** 0.5)
    new = round((target_shape[1] - 1) ** 0.5)
    if old * old != grid.shape[1] or new * new != target_shape[1] - 1:
        raise UserInputError(f"cannot interpolate position embeddings of shape {tuple(tensor.shape)} to {tuple(target_shape)}")
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(tensor.dtype)
    return torch.cat([cls_pos, grid], dim=1)


def convert_fga_blip2(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    blip2_base: str | os.PathLike | None = None,
    preset: str = "fga-blip2",
    config_overrides: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    tokenizer_name_or_path: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    source: str = "lavis",
) -> ConversionReport:
    """Convert ``fga_blip2.pth`` (or the imscore port) to a safetensors folder that ``AutoModel.from_pretrained`` loads.

    Args:
        checkpoint: the official LAVIS checkpoint (``{"model": state_dict}``), read with ``weights_only=True``;
            with ``source="imscore"``, the imscore port's folder (``model.safetensors``) or that file.
        output_dir: the folder to write (config, weights, remote code, processor, model card, report).
        blip2_base: optional BLIP-2 base (transformers folder or LAVIS ``.pth``) for vision tensors the
            checkpoint lacks (LAVIS omits frozen parameters).
        preset: the architecture (``"fga-blip2"``; ``"tiny"`` for tests); ``config_overrides`` adjust it.
        tokenizer / tokenizer_name_or_path: the processor's tokenizer (default ``bert-base-uncased`` + ``[DEC]``).
        dtype: dtype of the written weights (``float32``, ``float16``, ``bfloat16``).
        overwrite: replace an existing ``output_dir`` that an earlier conversion wrote (it holds the
            package's output marker); any other existing folder or file is refused.
        source: ``"lavis"`` (the official checkpoint) or ``"imscore"`` (its safetensors port, Hub
            ``RE-N-Y/evalmuse``; it has no ``temp``: see the module docstring).

    Raises:
        UserInputError: unreadable checkpoint, tensors missing or unexpected, shape mismatch, existing output.

    Example::

        report = convert_fga_blip2("fga_blip2.pth", "evalmuse-align", blip2_base="blip2-itm-vit-g-coco")
        print(report.summary())
        convert_fga_blip2("evalmuse-imscore/", "evalmuse-align-imscore", source="imscore")
    """
    import torch

    from ..cards import render_model_card
    from ..models.evalmuse_align import (
        DEFAULT_TOKENIZER,
        EvalMuseAlignConfig,
        EvalMuseAlignModel,
        EvalMuseAlignProcessor,
    )

    output_dir = Path(output_dir)
    inputs = [p for p in (checkpoint, blip2_base) if p is not None and Path(p).exists()]
    # Only a model folder this package wrote is ever replaced (--overwrite), never a folder of other files.
    claim_output_directory(output_dir, "model", inputs=inputs, overwrite=overwrite, option="output folder")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise UserInputError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if source not in SOURCES:
        raise UserInputError(f"source must be one of {SOURCES}, got {source!r}")
    checkpoint = Path(checkpoint)
    config = EvalMuseAlignConfig.from_preset(preset, **dict(config_overrides or {}))

    report = ConversionReport(source_format=source)
    state_dict = _load_checkpoint(checkpoint) if source == "lavis" else _load_imscore(checkpoint)
    converted, sources, dropped, unknown = lavis_to_hf_state_dict(state_dict)
    report.dropped = dropped
    report.sources = sources
    report.converted = sorted(converted)
    if source == "imscore":
        for name, reason in IMSCORE_ABSENT.items():
            if name not in converted:
                converted[name] = torch.tensor(float("nan"))
                report.filled[name] = reason

    with torch.device("meta"):
        model = EvalMuseAlignModel(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}

    if blip2_base is not None:
        base = _load_base(Path(blip2_base))
        for name, tensor in base.items():
            if name in expected and name not in converted:
                converted[name] = tensor
                sources[name] = [f"{blip2_base}:{name}"]
                report.from_base.append(name)
    unexpected = sorted(set(converted) - set(expected)) + sorted(unknown)
    missing = sorted(set(expected) - set(converted))
    problems = []
    if missing:
        hint = "" if blip2_base is not None else " (a frozen-ViT checkpoint needs --blip2-base for visual_encoder.*)"
        problems.append(f"{len(missing)} tensors missing{hint}: {format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {format_keys(unexpected)}")
    mismatched = []
    for name in set(converted) & set(expected):
        shape = tuple(converted[name].shape)
        if shape == expected[name]:
            continue
        if name.endswith("embeddings.position_embedding") and len(shape) == 3 and shape[-1] == expected[name][-1]:
            converted[name] = _interpolate_position_embedding(converted[name], expected[name])
            report.interpolated.append(f"{name} {shape} -> {expected[name]}")
            continue
        hint = ""
        if name == "embeddings.word_embeddings.weight":
            hint = (
                f" (the Q-Former vocabulary: FGA-BLIP2's has {expected[name][0]:,} rows, BERT's 30,522 + [DEC]; "
                "set qformer_config.vocab_size to the checkpoint's rows if it really has another tokenizer)"
            )
        mismatched.append(f"{name}: checkpoint {shape} vs model {expected[name]}{hint}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {'; '.join(sorted(mismatched)[:20])}")
    if problems:
        raise UserInputError(
            f"{checkpoint} ({source}) does not match the {preset!r} architecture, nothing written:\n- "
            + "\n- ".join(problems)
        )

    target_dtype = getattr(torch, dtype)
    state = {name: tensor.detach().to(target_dtype).contiguous() for name, tensor in converted.items()}
    model.load_state_dict(state, strict=True, assign=True)
    for module_name, module in model.named_modules():
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                if buffer_name != "position_ids":
                    raise RuntimeError(f"buffer {module_name}.{buffer_name} was not materialised")
                module.register_buffer(
                    buffer_name, torch.arange(buffer.shape[-1]).expand((1, -1)).clone(), persistent=False
                )
    model.config.dtype = target_dtype

    if tokenizer is None:
        name = tokenizer_name_or_path or DEFAULT_TOKENIZER
        try:
            processor = EvalMuseAlignProcessor.from_config(config, tokenizer_name_or_path=name)
        except (OSError, ValueError) as error:
            raise UserInputError(
                f"could not load the tokenizer {name!r} ({error}); pass --tokenizer with a local bert-base-uncased folder"
            ) from error
    else:
        processor = EvalMuseAlignProcessor.from_config(config, tokenizer=tokenizer)

    with owned_directory(output_dir, "model", inputs=inputs, overwrite=overwrite, option="output folder") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        from huggingface_hub import ModelCardData

        card = render_model_card(
            "evalmuse-align",
            ModelCardData(
                library_name="transformers",
                tags=["evalmuse", "text-to-image-evaluation", "image-text-matching", "fga-blip2"],
            ),
            preset=preset,
            source=(
                f"converted from the official FGA-BLIP2 checkpoint `{checkpoint.name}`"
                if source == "lavis"
                else f"converted from the imscore safetensors port of FGA-BLIP2 (`{checkpoint.name}`); that port has "
                "no contrastive temperature `temp`, so `itc_logits` are NaN (every other score is complete)"
            ),
            num_parameters=sum(int(t.numel()) for t in state.values()),
            metrics=None,
        )
        card.save(str(tmp / "README.md"))
        report.output_dir = str(output_dir)
        atomic_write_text(tmp / "conversion_report.json", json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return report


__all__ = [
    "DROPPED_PREFIXES",
    "IMSCORE_ABSENT",
    "SOURCES",
    "ConversionReport",
    "convert_fga_blip2",
    "lavis_to_hf_state_dict",
]
