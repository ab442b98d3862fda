"""Convert a checkpoint saved by the official EM-RAHF training code (DYEvaLab/EvalMuse-Structure) to an
``EmRahfModel`` folder.

No trained EM-RAHF weights were ever published; this is for checkpoints a user trains with the official
code, whose ``utils.py`` saves ``{"model": model.module.state_dict(), "optimizer": ..., "scheduler": ...}``
(read here with ``torch.load(weights_only=True)``; the optimizer and scheduler are ignored). A bare state
dict is accepted too, and so is a ``module.`` prefix on every key (a DDP model's own ``state_dict()``).

Every tensor is renamed; shapes are unchanged:

=======================================================================  ============================================
official (``model/model_final.py``)                                      ``EmRahfModel``
=======================================================================  ============================================
``image_encoder.ViT.*``                                                  ``vision_model.*`` (same names below it)
``text_encoder.text_embedding.*``                                        ``text_embeddings.*``
``self_attention.layers.N.norm1`` / ``norm2``                            ``fusion.layers.N.norm1`` / ``norm2``
``self_attention.layers.N.attention.module.to_{q,k,v,out}``              ``fusion.layers.N.attention.{q,k,v,o}_proj``
``self_attention.layers.N.feed_forward.module.ff.{0,2}``                 ``fusion.layers.N.mlp.fc1`` / ``fc2``
``self_attention.norm``                                                  ``fusion.norm``
``heatmap_predictor.conv_layers.{0,1}`` / ``{3,4}``                      ``heatmap_head.stem.{0,1}.conv`` / ``.norm``
``heatmap_predictor.deconv_layers.S.{0,1}`` / ``{3,4}`` / ``{6,7}``      ``heatmap_head.stages.S.{0,1,2}.conv`` / ``.norm``
``heatmap_predictor.final_layers.0``                                     ``heatmap_head.out_conv``
``score_predictor.conv_layers.S.{0,1}``                                  ``score_head.convs.S.conv`` / ``.norm``
``score_predictor.fc_layers.{0,2}`` / ``4``                              ``score_head.fc.{0,1}`` / ``score_head.out_proj``
=======================================================================  ============================================

(In each official ``nn.Sequential`` the odd indices after a convolution are its LayerNorm and the ReLUs
hold no tensors: ``conv_layers = [conv, norm, relu, conv, norm, relu]``, ``deconv_layers[S] = [deconv,
norm, relu, conv, norm, relu, conv, norm, relu]``, ``fc_layers = [linear, relu, linear, relu, linear,
sigmoid]``.) Dropped, with a reason in the report: the ``position_ids`` / ``token_type_ids`` buffers that
transformers versions before 4.31 stored (the model rebuilds them). Anything missing, unexpected or of
another shape is an error and nothing is written.
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
from ._checkpoints import format_keys, read_torch_checkpoint

#: Official key patterns -> ``EmRahfModel`` names (the first that matches is used).
RENAMES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^image_encoder\.ViT\.(.+)$", r"vision_model.\1"),
        (r"^text_encoder\.text_embedding\.(.+)$", r"text_embeddings.\1"),
        (r"^self_attention\.layers\.(\d+)\.(norm[12])\.(weight|bias)$", r"fusion.layers.\1.\2.\3"),
        (r"^self_attention\.layers\.(\d+)\.attention\.module\.to_([qkv])\.weight$", r"fusion.layers.\1.attention.\2_proj.weight"),
        (r"^self_attention\.layers\.(\d+)\.attention\.module\.to_out\.weight$", r"fusion.layers.\1.attention.o_proj.weight"),
        (r"^self_attention\.layers\.(\d+)\.feed_forward\.module\.ff\.0\.(weight|bias)$", r"fusion.layers.\1.mlp.fc1.\2"),
        (r"^self_attention\.layers\.(\d+)\.feed_forward\.module\.ff\.2\.(weight|bias)$", r"fusion.layers.\1.mlp.fc2.\2"),
        (r"^self_attention\.norm\.(weight|bias)$", r"fusion.norm.\1"),
        (r"^heatmap_predictor\.conv_layers\.0\.(weight|bias)$", r"heatmap_head.stem.0.conv.\1"),
        (r"^heatmap_predictor\.conv_layers\.1\.(weight|bias)$", r"heatmap_head.stem.0.norm.\1"),
        (r"^heatmap_predictor\.conv_layers\.3\.(weight|bias)$", r"heatmap_head.stem.1.conv.\1"),
        (r"^heatmap_predictor\.conv_layers\.4\.(weight|bias)$", r"heatmap_head.stem.1.norm.\1"),
        (r"^heatmap_predictor\.deconv_layers\.(\d+)\.0\.(weight|bias)$", r"heatmap_head.stages.\1.0.conv.\2"),
        (r"^heatmap_predictor\.deconv_layers\.(\d+)\.1\.(weight|bias)$", r"heatmap_head.stages.\1.0.norm.\2"),
        (r"^heatmap_predictor\.deconv_layers\.(\d+)\.3\.(weight|bias)$", r"heatmap_head.stages.\1.1.conv.\2"),
        (r"^heatmap_predictor\.deconv_layers\.(\d+)\.4\.(weight|bias)$", r"heatmap_head.stages.\1.1.norm.\2"),
        (r"^heatmap_predictor\.deconv_layers\.(\d+)\.6\.(weight|bias)$", r"heatmap_head.stages.\1.2.conv.\2"),
        (r"^heatmap_predictor\.deconv_layers\.(\d+)\.7\.(weight|bias)$", r"heatmap_head.stages.\1.2.norm.\2"),
        (r"^heatmap_predictor\.final_layers\.0\.(weight|bias)$", r"heatmap_head.out_conv.\1"),
        (r"^score_predictor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"score_head.convs.\1.conv.\2"),
        (r"^score_predictor\.conv_layers\.(\d+)\.1\.(weight|bias)$", r"score_head.convs.\1.norm.\2"),
        (r"^score_predictor\.fc_layers\.0\.(weight|bias)$", r"score_head.fc.0.\1"),
        (r"^score_predictor\.fc_layers\.2\.(weight|bias)$", r"score_head.fc.1.\1"),
        (r"^score_predictor\.fc_layers\.4\.(weight|bias)$", r"score_head.out_proj.\1"),
    )
)

#: Official tensors with no counterpart in the converted model (and why).
DROPPED = {
    re.compile(r"^image_encoder\.ViT\.embeddings\.position_ids$"): "position-id buffer (rebuilt by the model)",
    re.compile(r"^text_encoder\.text_embedding\.(position_ids|token_type_ids)$"): "id buffer (rebuilt by the model)",
}


@dataclass
class EmRahfConversionReport:
    """What a conversion did: the checkpoint's layout, the tensors converted (and from which official
    key), the tensors dropped (with the reason) and where the folder was written."""

    checkpoint_layout: str = ""
    converted: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    num_parameters: int = 0
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"read {self.checkpoint_layout}",
            (
                f"converted {len(self.converted)} tensors ({self.num_parameters:,} parameters), dropped "
                f"{len(self.dropped)} buffers the model rebuilds"
            ),
        ]
        if self.output_dir:
            lines.append(f"wrote {self.output_dir}")
        return "\n".join(lines)


def official_to_hf_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, str], list[str]]:
    """Rename an official EM-RAHF state dict (``RAHF.state_dict()``) to ``EmRahfModel`` names.

    Returns ``(converted, sources, dropped, unknown)``: the renamed tensors, the official key of each, the
    official keys intentionally dropped (with the reason) and the official keys with no known rename.
    """
    converted: dict[str, Any] = {}
    sources: dict[str, str] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        reason = next((why for pattern, why in DROPPED.items() if pattern.match(key)), None)
        if reason is not None:
            dropped[key] = reason
            continue
        for pattern, replacement in RENAMES:
            if pattern.match(key):
                name = pattern.sub(replacement, key)
                converted[name] = tensor
                sources[name] = key
                break
        else:
            unknown.append(key)
    return converted, sources, dropped, unknown


def load_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The model state dict of an official training checkpoint, read with ``weights_only=True``, and a
    description of its layout: ``{"model": state_dict, "optimizer", "scheduler"}`` (what the official code
    saves) or a bare state dict, keys with or without a ``module.`` (DDP) prefix."""
    import torch

    path = Path(path)
    payload = read_torch_checkpoint(  # memory-mapped: a real-size checkpoint is ~6 GB
        path, what="a .pth saved by the official EM-RAHF training", mmap=True,
        layout="a checkpoint saved by the official EM-RAHF training ({'model': state_dict, 'optimizer', 'scheduler'})")
    if not isinstance(payload, dict):
        raise UserInputError(f"{path}: expected a dict ({{'model': state_dict, ...}} or a state dict), got {type(payload).__name__}")
    if "model" in payload:
        state_dict, layout = payload["model"], "a training checkpoint {'model': state_dict, ...}"
        where = f"{path} ['model']"
    else:
        state_dict, layout, where = payload, "a bare state dict", str(path)
    if not isinstance(state_dict, dict) or not state_dict:
        raise UserInputError(f"{where}: expected a state dict (a non-empty dict of tensors)")
    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if not_tensors:
        raise UserInputError(f"{where}: expected a state dict of tensors, but {format_keys(not_tensors, limit=12)} are not tensors")
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
        layout += ", 'module.' prefixes removed"
    return state_dict, f"{path.name}: {layout}"


def convert_em_rahf(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str = "em-rahf",
    config_overrides: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    tokenizer_name_or_path: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> EmRahfConversionReport:
    """Convert a checkpoint of the official EM-RAHF training to a folder that
    ``AutoModel.from_pretrained`` loads (with this package, or as remote code with ``trust_remote_code=True``).

    Args:
        checkpoint: the ``.pth`` the official training saved (see the module docstring).
        output_dir: the folder to write: config, safetensors weights, model code, processor (tokenizer
            included), model card and ``conversion_report.json``.
        preset: the architecture (``"em-rahf"``; ``"tiny"`` for tests); ``config_overrides`` adjust it.
        tokenizer / tokenizer_name_or_path: the processor's tokenizer (default: AltCLIP's, ``BAAI/AltCLIP``).
        dtype: dtype of the written weights (``float32``, ``float16``, ``bfloat16``).
        overwrite: replace an ``output_dir`` an earlier conversion wrote; any other existing folder is refused.

    Raises:
        UserInputError: unreadable checkpoint, a tensor missing, unexpected or of another shape, an
            unavailable tokenizer, an existing output folder.

    Example::

        report = convert_em_rahf("experiments/my_run/last.pth", "em-rahf-my-run")
        print(report.summary())
    """
    import torch

    from ..cards import render_model_card
    from ..models.em_rahf import EmRahfConfig, EmRahfModel, EmRahfProcessor

    output_dir = Path(output_dir)
    checkpoint = Path(checkpoint)
    inputs = [checkpoint] if checkpoint.exists() else []
    claim_output_directory(output_dir, "model", inputs=inputs, overwrite=overwrite, option="output folder")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise UserInputError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    config = EmRahfConfig.from_preset(preset, **dict(config_overrides or {}))

    state_dict, layout = load_official_checkpoint(checkpoint)
    converted, sources, dropped, unknown = official_to_hf_state_dict(state_dict)
    with torch.device("meta"):
        model = EmRahfModel(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted([sources[name] for name in set(converted) - set(expected)] + unknown)
    mismatched = sorted(
        f"{sources[name]}: checkpoint {tuple(converted[name].shape)} vs model {expected[name]}"
        for name in set(converted) & set(expected)
        if tuple(converted[name].shape) != expected[name]
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (model names): {format_keys(missing, limit=12)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {format_keys(unexpected, limit=12)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {'; '.join(mismatched[:12])}")
    if problems:
        raise UserInputError(
            f"{checkpoint} does not match the {preset!r} EM-RAHF architecture, nothing written:\n- " + "\n- ".join(problems)
        )

    target = getattr(torch, dtype)
    weights = {name: tensor.detach().to(target).contiguous() for name, tensor in converted.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    # the non-persistent id buffers are still on the meta device: rebuild them as the model does
    for module_name, module in model.named_modules():
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if buffer_name == "position_ids":
                value = torch.arange(buffer.shape[-1]).expand(buffer.shape).clone()
            elif buffer_name == "token_type_ids":
                value = torch.zeros(buffer.shape, dtype=torch.long)
            else:
                raise RuntimeError(f"buffer {module_name}.{buffer_name} was not materialised")
            module.register_buffer(buffer_name, value, persistent=False)
    model.config.dtype = target

    if tokenizer is None:
        name = tokenizer_name_or_path or config.tokenizer_name_or_path
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise UserInputError(
                f"could not load the tokenizer {name!r} ({' '.join(str(error).split())[:300]}); pass --tokenizer with a "
                "local copy of BAAI/AltCLIP's tokenizer"
            ) from error
    processor = EmRahfProcessor.from_model_config(config, tokenizer=tokenizer)

    report = EmRahfConversionReport(
        checkpoint_layout=layout,
        converted=sorted(converted),
        sources=sources,
        dropped=dropped,
        num_parameters=sum(int(t.numel()) for t in weights.values()),
        output_dir=str(output_dir),
    )
    with owned_directory(output_dir, "model", inputs=inputs, overwrite=overwrite, option="output folder") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        from huggingface_hub import ModelCardData

        card = render_model_card(
            "em-rahf",
            ModelCardData(library_name="transformers", tags=["evalmuse", "text-to-image-evaluation", "em-rahf"]),
            preset=preset,
            source=f"converted from `{checkpoint.name}`, a checkpoint of the official EM-RAHF training code",
            num_parameters=report.num_parameters,
        )
        card.save(str(tmp / "README.md"))
        atomic_write_text(tmp / "conversion_report.json", json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return report


__all__ = [
    "DROPPED",
    "RENAMES",
    "EmRahfConversionReport",
    "convert_em_rahf",
    "load_official_checkpoint",
    "official_to_hf_state_dict",
]
