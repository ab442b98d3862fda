"""EM-RAHF, the official EvalMuse-Structure baseline (DYEvaLab/EvalMuse-Structure, ``model/model_final.py``),
exactly as its training code builds and runs it:

- the AltCLIP vision tower (transformers' [`AltCLIPVisionModel`]) at 448 px: its last hidden state, 1025
  tokens (CLS + 32 x 32 patches) BEFORE the post-LayerNorm;
- AltCLIP's RoBERTa embeddings (transformers' ``AltRobertaEmbeddings``: word + position + token-type,
  LayerNorm, dropout) of ``"human artifact " + prompt`` padded to 512 tokens, with no attention mask (the
  padding is attended to, as in the official model);
- both token sequences concatenated (1537 tokens) through ``num_fusion_layers`` blocks, each
  ``x = norm1(x); x = x + attention(x); x = norm2(x); x = x + mlp(x)`` (note: the residual adds the
  NORMALISED input), single-head attention without biases scaled by ``1 / sqrt(width)``, a GELU MLP, and a
  final LayerNorm;
- the patch tokens (1..1024) as a 32 x 32 map into two heads whose every convolution is followed by a
  LayerNorm over ``[C, H, W]`` (learned per position, hence the heatmap head's ~731 M parameters) and a
  ReLU: the heatmap head (two 3 x 3 convolutions, four x2 stages of a transposed convolution and two
  convolutions, a last 3 x 3 convolution and a sigmoid: 512 x 512) and the score head (2 x 2
  convolutions shrinking the grid to 28 x 28, then an MLP 50,176 -> 2048 -> 1024 -> 1 and a sigmoid).

The score head predicts ``(mos - 1) / 4``; the output also gives it on the MOS scale (``1 + 4 s``) as the
rest of this package reports structure scores. Losses: MSE on the heatmap and on the score, summed (the
official training). The official inference mask is ``round(heatmap * 255) > 40``: the processor's
``post_process_distortion`` (``config.threshold = 40/255``).

This file imports only torch, transformers and its sibling configuration, so it ships as remote code:
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works without this package installed.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AltCLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.models.altclip.modeling_altclip import AltRobertaEmbeddings
from transformers.utils import ModelOutput

from .configuration_em_rahf import EmRahfConfig


@dataclass
class EmRahfOutput(ModelOutput):
    """Output of [`EmRahfModel`].

    Args:
        loss: ``heatmap_loss + score_loss`` (when labels are given).
        heatmap: ``(batch, 512, 512)`` distortion heatmap in [0, 1] (the official model's first output).
        structure_score: ``(batch,)`` structure score on the MOS scale, ``1 + 4 * score``.
        score: ``(batch,)`` the official score output in [0, 1], a prediction of ``(mos - 1) / 4``.
        heatmap_loss: MSE between ``heatmap`` and ``heatmap_labels`` (weighted per pixel with
            ``config.weighted_heatmap_loss``).
        score_loss: MSE between ``score`` and ``(score_labels - 1) / 4``.
        last_hidden_state: ``(batch, image tokens + text tokens, width)`` after the fusion blocks.
    """

    loss: torch.FloatTensor | None = None
    heatmap: torch.FloatTensor | None = None
    structure_score: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    heatmap_loss: torch.FloatTensor | None = None
    score_loss: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------
# fusion blocks


class EmRahfAttention(nn.Module):
    """Single-head self-attention without biases: ``softmax(q k^T / sqrt(width)) v``, then ``o_proj``."""

    def __init__(self, dim: int):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch, tokens, width) is one head; SDPA's default scale is 1 / sqrt(width)
        attended = F.scaled_dot_product_attention(
            self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        )
        return self.o_proj(attended)


class EmRahfMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden_states)))


class EmRahfFusionLayer(nn.Module):
    """``x = norm1(x); x = x + attention(x); x = norm2(x); x = x + mlp(x)``: the official block, whose
    residual branches start from the normalised tokens."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = EmRahfAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = EmRahfMLP(dim, hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.norm1(hidden_states)
        hidden_states = hidden_states + self.attention(hidden_states)
        hidden_states = self.norm2(hidden_states)
        return hidden_states + self.mlp(hidden_states)


class EmRahfFusion(nn.Module):
    def __init__(self, dim: int, hidden: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EmRahfFusionLayer(dim, hidden) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.norm(hidden_states)


# --------------------------------------------------------------------------------------------
# heads


class EmRahfConvBlock(nn.Module):
    """A convolution (or a stride-2 transposed one) followed by a LayerNorm over ``[C, H, W]`` and a ReLU."""

    def __init__(self, conv: nn.Module, channels: int, size: int):
        super().__init__()
        self.conv = conv
        self.norm = nn.LayerNorm([channels, size, size])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(hidden_states)))


class EmRahfHeatmapHead(nn.Module):
    """Patch map -> ``(batch, 1, H, W)`` heatmap in [0, 1]: a stem of 3 x 3 convolutions, x2 stages of a
    transposed 3 x 3 convolution (stride 2) and two 3 x 3 convolutions, a last 3 x 3 convolution, a sigmoid."""

    def __init__(self, dim: int, grid: int, conv_channels: list[int], deconv_channels: list[int]):
        super().__init__()
        self.stem = nn.ModuleList()
        channels = dim
        for out in conv_channels:
            self.stem.append(EmRahfConvBlock(nn.Conv2d(channels, out, 3, padding=1), out, grid))
            channels = out
        self.stages = nn.ModuleList()
        size = grid
        for out in deconv_channels:
            size *= 2
            up = nn.ConvTranspose2d(channels, out, 3, stride=2, padding=1, output_padding=1)
            self.stages.append(
                nn.ModuleList(
                    [
                        EmRahfConvBlock(up, out, size),
                        EmRahfConvBlock(nn.Conv2d(out, out, 3, padding=1), out, size),
                        EmRahfConvBlock(nn.Conv2d(out, out, 3, padding=1), out, size),
                    ]
                )
            )
            channels = out
        self.out_conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        hidden_states = grid
        for block in self.stem:
            hidden_states = block(hidden_states)
        for stage in self.stages:
            for block in stage:
                hidden_states = block(hidden_states)
        return torch.sigmoid(self.out_conv(hidden_states))


class EmRahfScoreHead(nn.Module):
    """Patch map -> ``(batch, 1)`` score in [0, 1]: 2 x 2 convolutions (no padding, each shrinking the grid
    by one), flatten, an MLP with ReLUs, a sigmoid."""

    def __init__(self, dim: int, grid: int, conv_channels: list[int], hidden_sizes: list[int]):
        super().__init__()
        self.convs = nn.ModuleList()
        channels, size = dim, grid
        for out in conv_channels:
            size -= 1
            self.convs.append(EmRahfConvBlock(nn.Conv2d(channels, out, 2), out, size))
            channels = out
        widths = [channels * size * size, *hidden_sizes]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.out_proj = nn.Linear(widths[-1], 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        hidden_states = grid
        for block in self.convs:
            hidden_states = block(hidden_states)
        hidden_states = hidden_states.flatten(1)
        for layer in self.fc:
            hidden_states = F.relu(layer(hidden_states))
        return torch.sigmoid(self.out_proj(hidden_states))


# --------------------------------------------------------------------------------------------
# the model


def interpolate_position_embeddings(weight: torch.Tensor, num_positions: int) -> torch.Tensor:
    """A CLIP position table (CLS row + a square grid) resized to ``num_positions`` rows the way the
    official code's ``interpolate_embeddings`` does it: the grid bilinearly (``align_corners=False``), the
    CLS row kept (``BAAI/AltCLIP``'s 257 rows -> 1025 at 448 px)."""
    old, new = math.isqrt(weight.shape[0] - 1), math.isqrt(num_positions - 1)
    if old * old != weight.shape[0] - 1 or new * new != num_positions - 1:
        raise ValueError(
            f"position embeddings of {weight.shape[0]} rows cannot be resized to {num_positions}: both must be "
            "1 + a square number"
        )
    grid = weight[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bilinear")
    grid = grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(weight.dtype)
    return torch.cat([weight[:1], grid], dim=0)


class EmRahfPreTrainedModel(PreTrainedModel):
    config_class = EmRahfConfig
    config: EmRahfConfig
    base_model_prefix = "em_rahf"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["EmRahfFusionLayer", "AltCLIPEncoderLayer"]  # noqa: RUF012 (transformers class attribute)

    def _init_weights(self, module: nn.Module) -> None:
        # The official heads and blocks keep torch's default initialisation (they are not pretrained).
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # the text embeddings (replaced by AltCLIP's when pretrained)
            init.normal_(module.weight, mean=0.0, std=self.config.text_config.initializer_range)
            # the check is explicit: the slice below loses the weight's "initialised" flag
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, AltRobertaEmbeddings):
            # non-persistent buffers: not in checkpoints, so they must be rebuilt on every load
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)


class EmRahfModel(EmRahfPreTrainedModel):
    r"""EM-RAHF: AltCLIP vision tower and text embeddings, self-attention fusion, a 512 x 512 distortion
    heatmap and a structure score (the official EvalMuse-Structure baseline, see the module docstring).

    Module names: ``vision_model`` ([`AltCLIPVisionModel`]), ``text_embeddings`` (``AltRobertaEmbeddings``),
    ``fusion``, ``heatmap_head``, ``score_head``; ``evalmuse convert em-rahf`` maps a checkpoint of the
    official training code onto them.

    Example:

    ```python
    >>> from evalmuse_models.models.em_rahf import EmRahfConfig, EmRahfModel
    >>> model = EmRahfModel(EmRahfConfig.from_preset("tiny")).eval()
    >>> out = model(**model.dummy_inputs)
    >>> out.heatmap.shape, out.structure_score.shape
    (torch.Size([2, 128, 128]), torch.Size([2]))

    ```
    """

    def __init__(self, config: EmRahfConfig):
        super().__init__(config)
        dim = config.vision_config.hidden_size
        grid = config.grid_size
        self.vision_model = AltCLIPVisionModel(config.vision_config)
        self.text_embeddings = AltRobertaEmbeddings(config.text_config)
        self.fusion = EmRahfFusion(dim, config.fusion_intermediate_size, config.num_fusion_layers)
        self.heatmap_head = EmRahfHeatmapHead(dim, grid, config.heatmap_conv_channels, config.heatmap_deconv_channels)
        self.score_head = EmRahfScoreHead(dim, grid, config.score_conv_channels, config.score_hidden_sizes)
        self.post_init()
        self.apply_config_freezing()

    def apply_config_freezing(self) -> None:
        """Freeze the backbones the config freezes (at construction, and again after ``from_pretrained``)."""
        self.freeze_backbones(vit=self.config.freeze_vit, text=self.config.freeze_text)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then the config's freezing: transformers re-creates every loaded
        parameter as trainable, which would silently train frozen backbones when fine-tuning a loaded model."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_config_freezing()
        return loaded

    # ---------------------------------------------------------------- encoders

    def freeze_backbones(self, vit: bool = True, text: bool = True) -> None:
        """Freeze (``True``) or unfreeze the vision tower and the text embeddings, as the official
        ``freeze`` / ``unfreeze``: the vision tower's ``post_layernorm`` is never trained (the model does
        not use its output). Frozen modules keep following ``model.train()`` (the text embeddings'
        dropout stays active in training, as in the official run)."""
        self.vision_model.requires_grad_(not vit)
        self.vision_model.post_layernorm.requires_grad_(False)
        self.text_embeddings.requires_grad_(not text)

    def load_pretrained_encoders(
        self, model_id: str | os.PathLike | None = None, position_embeddings: str | os.PathLike | None = None
    ) -> None:
        """Copy a pretrained AltCLIP's vision tower and text embeddings into the model (what the official
        training starts from): ``model_id`` is a full AltCLIP checkpoint (default
        ``config.pretrained_encoders_id``, ``BAAI/AltCLIP``; a Hub id or a local folder).

        Its position table (257 rows at 224 px) is resized to ``config.num_image_tokens`` rows by
        :func:`interpolate_position_embeddings`, or read from ``position_embeddings``: a torch file holding
        the ``(num_image_tokens, width)`` table, such as the official repository's
        ``altclip_model/new_position_embedding_weight_448.pt`` (read with ``weights_only=True``).
        """
        from transformers import AltCLIPModel

        source = os.fspath(model_id or self.config.pretrained_encoders_id)
        altclip = AltCLIPModel.from_pretrained(source, dtype=torch.float32)
        vision = altclip.vision_model.state_dict()
        key = "embeddings.position_embedding.weight"
        rows = self.config.num_image_tokens
        if position_embeddings is not None:
            table = torch.load(position_embeddings, map_location="cpu", weights_only=True)
            if not isinstance(table, torch.Tensor) or tuple(table.shape) != (rows, self.config.vision_config.hidden_size):
                shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
                raise ValueError(
                    f"{position_embeddings}: expected a ({rows}, {self.config.vision_config.hidden_size}) position "
                    f"table, got {shape}"
                )
            vision[key] = table
        elif vision[key].shape[0] != rows:
            vision[key] = interpolate_position_embeddings(vision[key], rows)
        pairs = ((self.vision_model, vision), (self.text_embeddings, altclip.text_model.roberta.embeddings.state_dict()))
        problems = []
        for module, weights in pairs:  # everything is checked before anything is copied
            shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
            problems += [f"missing {k}" for k in sorted(set(shapes) - set(weights))]
            problems += [f"unexpected {k}" for k in sorted(set(weights) - set(shapes))]
            problems += [
                f"{k}: {tuple(v.shape)} vs {shapes[k]}" for k, v in weights.items() if k in shapes and tuple(v.shape) != shapes[k]
            ]
        if problems:
            raise ValueError(f"{source} does not fit this config (vision_config / text_config): {problems[:5]}")
        for module, weights in pairs:
            module.load_state_dict(weights)

    # ---------------------------------------------------------------- inputs

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A valid batch of 2 for this config: random pixels and padded token ids."""
        config = self.config
        generator = torch.Generator().manual_seed(0)
        size = config.image_size
        text = config.text_config
        length = config.max_text_length
        ids = torch.full((2, length), text.pad_token_id, dtype=torch.long)
        ids[:, 1:6] = torch.randint(5, text.vocab_size, (2, 5), generator=generator)
        ids[:, 0] = text.bos_token_id
        ids[:, 6] = text.eos_token_id
        return {"pixel_values": torch.randn(2, 3, size, size, generator=generator), "input_ids": ids}

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        heatmap_labels: torch.Tensor | None = None,
        score_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> EmRahfOutput | tuple:
        r"""
        Args:
            pixel_values: ``(batch, 3, 448, 448)`` from [`EmRahfProcessor`].
            input_ids: ``(batch, 512)`` token ids of ``"human artifact " + prompt`` padded to 512 (no
                attention mask: the official model attends to the padding too).
            heatmap_labels: ``(batch, 512, 512)`` (or ``(batch, 1, 512, 512)``) target heatmap in [0, 1]
                (the annotation levels 0/64/127/180/255 divided by 255).
            score_labels: ``(batch,)`` target MOS on 1-5 (the loss compares ``(mos - 1) / 4``); NaN marks an
                image without a score.
        """
        config = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (batch, 3, H, W), got {tuple(pixel_values.shape)}")
        if input_ids.dim() != 2 or input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"input_ids must be (batch, tokens) with the batch of pixel_values ({pixel_values.shape[0]}), "
                f"got {tuple(input_ids.shape)}"
            )
        image_tokens = self.vision_model(pixel_values=pixel_values).last_hidden_state  # before post_layernorm
        text_tokens = self.text_embeddings(input_ids=input_ids).to(image_tokens.dtype)
        hidden_states = self.fusion(torch.cat([image_tokens, text_tokens], dim=1))

        grid = config.grid_size
        patches = hidden_states[:, 1 : config.num_image_tokens]
        patch_map = patches.reshape(-1, grid, grid, patches.shape[-1]).permute(0, 3, 1, 2)
        heatmap = self.heatmap_head(patch_map)[:, 0]
        score = self.score_head(patch_map)[:, 0]

        loss = heatmap_loss = score_loss = None
        if heatmap_labels is not None or score_labels is not None:
            heatmap_loss = score_loss = heatmap.float().sum() * 0.0
            if heatmap_labels is not None:
                heatmap_loss = self._heatmap_loss(heatmap.float(), heatmap_labels)
            if score_labels is not None:
                target = score_labels.to(score.device, torch.float32).reshape(-1)
                if target.shape[0] != score.shape[0]:
                    raise ValueError(f"score_labels must be (batch,) = ({score.shape[0]},), got {tuple(score_labels.shape)}")
                valid = torch.isfinite(target)
                if torch.any(valid):
                    score_loss = F.mse_loss(score.float()[valid], (target[valid] - 1) / 4)
            loss = heatmap_loss + score_loss

        output = EmRahfOutput(
            loss=loss,
            heatmap=heatmap,
            structure_score=1 + 4 * score,
            score=score,
            heatmap_loss=heatmap_loss,
            score_loss=score_loss,
            last_hidden_state=hidden_states,
        )
        return_dict = return_dict if return_dict is not None else config.return_dict
        return output if return_dict else output.to_tuple()

    def _heatmap_loss(self, heatmap: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels.to(heatmap.device, torch.float32)
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != heatmap.shape:
            size = self.config.heatmap_size
            raise ValueError(f"heatmap_labels must be (batch, {size}, {size}), got {tuple(labels.shape)}")
        if not self.config.weighted_heatmap_loss:
            return F.mse_loss(heatmap, target)
        # the official --weighted_loss: per image, squared errors weighted by target + 1/255, then the mean
        weights = target + 1.0 / 255.0
        per_image = ((heatmap - target) ** 2 * weights).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1))
        return per_image.mean()


__all__ = [
    "EmRahfAttention",
    "EmRahfConvBlock",
    "EmRahfFusion",
    "EmRahfFusionLayer",
    "EmRahfHeatmapHead",
    "EmRahfMLP",
    "EmRahfModel",
    "EmRahfOutput",
    "EmRahfPreTrainedModel",
    "EmRahfScoreHead",
    "interpolate_position_embeddings",
]
