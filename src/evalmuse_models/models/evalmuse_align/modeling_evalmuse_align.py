"""The EvalMuse alignment model (FGA-BLIP2) as a transformers ``PreTrainedModel``.

The model composes transformers' BLIP-2 building blocks (``Blip2VisionModel``, ``Blip2TextEmbeddings``,
``Blip2QFormerModel``) and adds the two FGA-BLIP2 heads:

* the image-text matching head (``itm_head``, 2 classes) applied to EVERY output token of the joint
  query+text Q-Former pass. ``P(match)`` is the softmax probability of class 1. The overall alignment
  score is ``mean(P(match) over the query tokens) * 4 + 1`` (range 1-5); the per-token scores are
  ``P(match)`` of the text tokens, and an element's score is their mean over the element's token span
  (``EvalMuseAlignProcessor.post_process_alignment``).
  (transformers' ``Blip2ForImageTextRetrieval`` averages the *logits* over queries: a different function.)
* ``mask_proj``: an MLP with sigmoid output run on the text-only Q-Former pass, predicting which
  prompt tokens belong to elements (a training signal).

``match_head="itc"`` gives the official contrastive read-out instead (FGA-BLIP2 ``forward(match_head="itc")``):
the query-only pass (queries cross-attending to the image) and the text-only pass are projected
(``vision_projection`` / ``text_projection``) and L2-normalised; the similarity is the MAX over the query
tokens of the cosine with the text's CLS feature, the official ITC score is ``5 * similarity`` and
``similarity / temp`` is BLIP-2's contrastive logit.

This module imports only torch, transformers and its sibling files, so it ships as remote code (with the
``t2i-alignment`` pipeline, see :meth:`EvalMuseAlignPreTrainedModel.save_pretrained`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2PreTrainedModel,
    Blip2QFormerModel,
    Blip2TextEmbeddings,
    Blip2VisionModel,
)
from transformers.utils import ModelOutput, logging

from .configuration_evalmuse_align import EvalMuseAlignConfig
from .pipeline_evalmuse_align import EvalMuseAlignPipeline, custom_pipelines
from .processing_evalmuse_align import AlignmentResult, TextTruncation, check_choice

logger = logging.get_logger(__name__)


@dataclass
class EvalMuseAlignOutput(ModelOutput):
    r"""
    Output of [`EvalMuseAlignModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            the FGA-BLIP2 loss: mean over the batch of ``w * |overall - labels|`` + ``token_loss_weight *
            mean|P(match)_text * token_mask_labels - token_labels|`` + ``mask_loss_weight *
            mean|mask_prediction - token_mask_labels|`` (``w`` = 1, var or exp(var), see
            ``config.loss_weighting``).
        alignment_score (`torch.FloatTensor` of shape `(batch_size,)`):
            mean ``P(match)`` over the query tokens, ``* 4 + 1`` (1-5).
        token_scores (`torch.FloatTensor` of shape `(batch_size, text_length)`):
            ``P(match)`` of every text position (aligned with `input_ids`, CLS and SEP included).
        query_scores (`torch.FloatTensor` of shape `(batch_size, num_query_tokens)`):
            ``P(match)`` of every query token.
        element_mask_prediction (`torch.FloatTensor` of shape `(batch_size, text_length)`, *optional*):
            ``mask_proj`` output: probability that each text token belongs to an element.
        itm_logits (`torch.FloatTensor` of shape `(batch_size, num_query_tokens + text_length, 2)`):
            ITM logits of every token of the joint pass.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches + 1, vision_hidden_size)`):
            the vision features the Q-Former attends to (after the post-encoder LayerNorm).
        itc_similarity (`torch.FloatTensor` of shape `(batch_size,)`, *optional*, with ``match_head="itc"``):
            max over the query tokens of the cosine between the projected query feature and the projected
            CLS feature of the text-only pass.
        itc_score (`torch.FloatTensor` of shape `(batch_size,)`, *optional*, with ``match_head="itc"``):
            ``5 * itc_similarity``: what the official ``forward(match_head="itc", inference=True)`` returns.
        itc_logits (`torch.FloatTensor` of shape `(batch_size,)`, *optional*, with ``match_head="itc"``):
            ``itc_similarity / temp``: BLIP-2's image-text contrastive logit (NaN when ``temp`` is unknown,
            e.g. a model converted from a port that did not keep it).
    """

    loss: torch.FloatTensor | None = None
    alignment_score: torch.FloatTensor | None = None
    token_scores: torch.FloatTensor | None = None
    query_scores: torch.FloatTensor | None = None
    element_mask_prediction: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    itc_similarity: torch.FloatTensor | None = None
    itc_score: torch.FloatTensor | None = None
    itc_logits: torch.FloatTensor | None = None


#: ``match_head`` of ``forward``: the image-text matching head (FGA-BLIP2's scores) or the contrastive read-out.
MatchHead = Literal["itm", "itc"]
MATCH_HEADS: tuple[str, ...] = get_args(MatchHead)
#: BLIP-2's initial contrastive temperature (LAVIS ``Blip2Qformer``: ``0.07 * torch.ones([])``).
DEFAULT_ITC_TEMPERATURE = 0.07


def vision_autocast_context(device: torch.device | str, enabled: bool):
    """The official ``maybe_autocast`` for the image encoder: fp16 autocast on CUDA when ``enabled``, no
    context elsewhere (on CPU the official code runs in fp32, and so do we)."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class EvalMuseAlignMaskLinear(nn.Linear):
    """A linear layer of ``mask_proj``; knows the head's input width for FGA-BLIP2's init (``_init_weights``
    visits modules that hold parameters, so the rule lives on the layers, not on the head)."""

    def __init__(self, in_features: int, out_features: int, head_input_size: int):
        super().__init__(in_features, out_features)
        self.head_input_size = head_input_size


class EvalMuseAlignMaskHead(nn.Module):
    """``mask_proj``: Linear/ReLU stack down to one logit, sigmoid output (FGA-BLIP2's ``MLP``).

    Parameters live under ``layers`` (an ``nn.Sequential``) so that the official names
    ``mask_proj.layers.{0,2,4,...}`` map one to one.
    """

    def __init__(self, input_size: int, hidden_sizes: Sequence[int]):
        super().__init__()
        self.input_size = input_size
        sizes = [input_size, *hidden_sizes]
        modules: list[nn.Module] = []
        for in_size, out_size in itertools.pairwise(sizes):
            modules += [EvalMuseAlignMaskLinear(in_size, out_size, input_size), nn.ReLU()]
        modules.append(EvalMuseAlignMaskLinear(sizes[-1], 1, input_size))
        self.layers = nn.Sequential(*modules)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(hidden_states)).squeeze(-1)


class EvalMuseAlignPreTrainedModel(Blip2PreTrainedModel):
    config: EvalMuseAlignConfig
    config_class = EvalMuseAlignConfig
    base_model_prefix = "evalmuse_align"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # Folders saved before ``temp`` was kept load with BLIP-2's initial value (only ``itc_logits`` uses it).
    _keys_to_ignore_on_load_missing = (r"^temp$",)
    _supports_attention_backend = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False  # the Q-Former is kept in fp32 (as in BLIP-2)
    _keep_in_fp32_modules: ClassVar[list[str]] = ["query_tokens", "qformer"]
    _no_split_modules: ClassVar[list[str]] = [
        "Blip2EncoderLayer",
        "Blip2QFormerLayer",
        "Blip2TextEmbeddings",
        "Blip2VisionEmbeddings",
    ]

    def _init_weights(self, module):
        """The one place weights are initialised: FGA-BLIP2's own rules, else BLIP-2's (linear/embedding
        N(0, initializer_range), norms, the text position ids; the vision and Q-Former sub-models init themselves
        with their own configs)."""
        if isinstance(module, EvalMuseAlignMaskLinear):
            # FGA-BLIP2 initialises every layer of the mask MLP with N(0, 1/(input+1)) and zero bias,
            # "input" being the head's input width (the Q-Former hidden size) for all layers.
            init.normal_(module.weight, mean=0.0, std=1.0 / (module.head_input_size + 1))
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if isinstance(module, EvalMuseAlignModel):
            # LAVIS draws the query tokens from N(0, initializer_range).
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)
            init.constant_(module.temp, DEFAULT_ITC_TEMPERATURE)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """``PreTrainedModel.save_pretrained``. When the code ships with the weights (the family is registered
        for the Auto classes, so ``trust_remote_code=True`` loads the folder), the ``t2i-alignment`` pipeline
        ships too: its file is copied and ``config.json`` records it under ``custom_pipelines``, so that
        ``pipeline("t2i-alignment", model=folder, trust_remote_code=True)`` works without this package."""
        if self._auto_class is not None and is_main_process:
            self.config.custom_pipelines = custom_pipelines()
            os.makedirs(save_directory, exist_ok=True)
            custom_object_save(EvalMuseAlignPipeline, save_directory)
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)


class EvalMuseAlignModel(EvalMuseAlignPreTrainedModel):
    r"""
    FGA-BLIP2: fine-grained image-text alignment (EvalMuse-40K).

    Example:

    ```python
    >>> from PIL import Image
    >>> from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    >>> from evalmuse_models.testing.align import build_tiny_processor
    >>> model = EvalMuseAlignModel(EvalMuseAlignConfig.from_preset("tiny")).eval()
    >>> processor = build_tiny_processor(model.config)
    >>> [result] = model.score([Image.new("RGB", (80, 80), "red")], ["a red cube"],
    ...                        elements=[["red cube (object)"]], processor=processor)
    >>> list(result.elements), result.unmatched_elements
    (['red cube (object)'], [])
    ```
    """

    def __init__(self, config: EvalMuseAlignConfig):
        super().__init__(config)
        self.vision_model = Blip2VisionModel._from_config(config.vision_config)
        # LAVIS's ``ln_vision`` is a default nn.LayerNorm (eps 1e-5), unlike the encoder blocks (1e-6).
        self.vision_model.post_layernorm.eps = config.vision_post_layernorm_eps
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.embeddings = Blip2TextEmbeddings(config.qformer_config)
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        self.vision_projection = nn.Linear(config.qformer_config.hidden_size, config.image_text_hidden_size)
        self.text_projection = nn.Linear(config.qformer_config.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(config.qformer_config.hidden_size, 2)
        self.mask_proj = EvalMuseAlignMaskHead(config.qformer_config.hidden_size, config.mask_head_hidden_sizes)
        # BLIP-2's contrastive temperature (LAVIS ``temp``), kept with the weights for ``itc_logits``. A buffer:
        # FGA-BLIP2's loss does not train it.
        self.register_buffer("temp", torch.full((), DEFAULT_ITC_TEMPERATURE))
        self.post_init()

    # ------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A valid batch of two random images and two token sequences (the second padded) for this config."""
        vision = self.config.vision_config
        size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        generator = torch.Generator().manual_seed(0)
        length = min(8, self.config.qformer_config.max_position_embeddings)
        vocab = self.config.qformer_config.vocab_size
        input_ids = torch.randint(1, vocab, (2, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, -2:] = 0
        return {
            "pixel_values": torch.randn(2, 3, size, size, generator=generator),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }

    # ------------------------------------------------------------------ features
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> BaseModelOutputWithPooling:
        """Run the image encoder; ``last_hidden_state`` is what the Q-Former cross-attends to."""
        return self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text-only Q-Former pass (no queries, no image): `(batch, length, hidden)`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeds = self.embeddings(input_ids=input_ids)
        return self.qformer(query_embeds=text_embeds, query_length=0, attention_mask=attention_mask).last_hidden_state

    def predict_element_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        text_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask_proj`` on the text-only Q-Former pass: P(token belongs to an element), `(batch, length)`."""
        if text_hidden is None:
            text_hidden = self.get_text_features(input_ids, attention_mask)
        return self.mask_proj(text_hidden.to(self.mask_proj.layers[0].weight.dtype))

    def image_text_contrastive(self, image_embeds: torch.Tensor, text_hidden: torch.Tensor) -> torch.Tensor:
        """The official ITC similarity: max over the query tokens of the cosine between the projected,
        normalised query features (query-only pass over ``image_embeds``) and the projected, normalised CLS
        feature of the text-only pass (``text_hidden``). Returns `(batch,)`."""
        batch_size = image_embeds.shape[0]
        query_tokens = self.query_tokens.expand(batch_size, -1, -1)
        image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_output = self.qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
        ).last_hidden_state
        dtype = self.vision_projection.weight.dtype
        image_feats = nn.functional.normalize(self.vision_projection(query_output.to(dtype)), dim=-1)
        text_feat = nn.functional.normalize(self.text_projection(text_hidden[:, 0, :].to(dtype)), dim=-1)
        similarities = torch.bmm(image_feats, text_feat.unsqueeze(-1)).squeeze(-1)
        return similarities.float().max(dim=1).values

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        token_labels: torch.FloatTensor | None = None,
        token_mask_labels: torch.FloatTensor | None = None,
        prompt_variance: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        predict_element_mask: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        match_head: MatchHead = "itm",
        vision_autocast: bool | None = None,
        **kwargs: Any,
    ) -> EvalMuseAlignOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): images from
                [`EvalMuseAlignProcessor`].
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): the cleaned prompt's
                token ids (CLS ... SEP, padded).
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*).
            labels (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): overall 1-5 targets.
            token_labels (`torch.FloatTensor` of shape `(batch_size, text_length)`, *optional*):
                per-token element targets (element score on its span, ``(labels - 1) / 4`` at CLS).
            token_mask_labels (`torch.FloatTensor` of shape `(batch_size, text_length)`, *optional*):
                1 on element tokens and on CLS, 0 elsewhere.
            prompt_variance (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): per-prompt variance
                of the overall scores, used when ``config.loss_weighting`` is ``"var"``/``"exp_var"``.
            image_embeds (`torch.FloatTensor`, *optional*): precomputed vision features (skips the encoder).
            predict_element_mask (`bool`, *optional*, defaults to `True`): run ``mask_proj`` on the text-only
                Q-Former pass (``score`` turns it off: it is a training signal).
            match_head (`str`, defaults to `"itm"`): ``"itm"``: the FGA-BLIP2 scores (overall, tokens,
                loss; the processor's ``post_process_alignment`` turns them into element scores); ``"itc"``: the contrastive read-out only (``itc_similarity``, ``itc_score``,
                ``itc_logits``), like the official ``forward(match_head="itc")``.
            vision_autocast (`bool`, *optional*, defaults to ``config.vision_autocast``): run the image encoder
                under fp16 autocast on CUDA, as the official code does; a no-op on other devices.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None:
            raise ValueError("input_ids are required: tokenize the prompt with EvalMuseAlignProcessor")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if predict_element_mask is None:
            predict_element_mask = True
        check_choice("match_head", match_head, MATCH_HEADS)
        max_positions = self.config.qformer_config.max_position_embeddings
        if input_ids.shape[1] > max_positions:
            raise ValueError(
                f"the prompt has {input_ids.shape[1]} tokens but the Q-Former has {max_positions} positions; "
                "shorten it or tokenize with text_truncation='forward'"
            )

        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (or precomputed image_embeds)")
            if vision_autocast is None:
                vision_autocast = self.config.vision_autocast
            with vision_autocast_context(pixel_values.device, vision_autocast):
                image_embeds = self.get_image_features(
                    pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
                ).last_hidden_state
            if vision_autocast and image_embeds.dtype == torch.float16:
                image_embeds = image_embeds.float()  # official: ``image_embeds.float()`` after the autocast
        if match_head == "itc":
            return self._forward_itc(
                image_embeds, input_ids, attention_mask, labels, predict_element_mask, return_dict
            )
        image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)

        batch_size = input_ids.shape[0]
        num_queries = self.query_tokens.shape[1]
        query_tokens = self.query_tokens.expand(batch_size, -1, -1)
        query_attention_mask = torch.ones(query_tokens.shape[:-1], dtype=attention_mask.dtype, device=attention_mask.device)
        joint_attention_mask = torch.cat([query_attention_mask, attention_mask], dim=1)

        joint_embeds = self.embeddings(input_ids=input_ids, query_embeds=query_tokens)
        joint_output = self.qformer(
            query_embeds=joint_embeds,
            query_length=num_queries,
            attention_mask=joint_attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
        )
        hidden = joint_output.last_hidden_state.to(self.itm_head.weight.dtype)
        itm_logits = self.itm_head(hidden)
        match_probs = itm_logits.float().softmax(dim=-1)[..., 1]
        query_scores = match_probs[:, :num_queries]
        token_scores = match_probs[:, num_queries:]
        alignment_score = query_scores.mean(dim=1) * 4 + 1

        mask_prediction = None
        if predict_element_mask:
            mask_prediction = self.predict_element_mask(input_ids, attention_mask).float()

        loss = None
        if labels is not None:
            loss = self.compute_loss(
                alignment_score,
                token_scores,
                mask_prediction,
                labels=labels,
                token_labels=token_labels,
                token_mask_labels=token_mask_labels,
                prompt_variance=prompt_variance,
            )

        output = EvalMuseAlignOutput(
            loss=loss,
            alignment_score=alignment_score,
            token_scores=token_scores,
            query_scores=query_scores,
            element_mask_prediction=mask_prediction,
            itm_logits=itm_logits,
            image_embeds=image_embeds,
        )
        return output if return_dict else output.to_tuple()

    def _forward_itc(self, image_embeds, input_ids, attention_mask, labels, predict_element_mask, return_dict):
        if labels is not None:
            raise ValueError("the FGA-BLIP2 loss is defined on the ITM head: use match_head='itm' to train")
        text_hidden = self.get_text_features(input_ids, attention_mask)
        similarity = self.image_text_contrastive(image_embeds, text_hidden)
        mask_prediction = None
        if predict_element_mask:
            mask_prediction = self.predict_element_mask(input_ids, text_hidden=text_hidden).float()
        output = EvalMuseAlignOutput(
            element_mask_prediction=mask_prediction,
            image_embeds=image_embeds,
            itc_similarity=similarity,
            itc_score=similarity * 5,
            itc_logits=similarity / self.temp.float(),
        )
        return output if return_dict else output.to_tuple()

    def compute_loss(
        self,
        alignment_score: torch.Tensor,
        token_scores: torch.Tensor,
        mask_prediction: torch.Tensor | None,
        labels: torch.Tensor,
        token_labels: torch.Tensor | None = None,
        token_mask_labels: torch.Tensor | None = None,
        prompt_variance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The FGA-BLIP2 loss (see :class:`EvalMuseAlignOutput`); the token and mask terms are added
        when their targets are given."""
        labels = labels.to(alignment_score.device, torch.float32)
        per_sample = (alignment_score - labels).abs()
        weighting = self.config.loss_weighting
        if weighting != "none":
            if prompt_variance is None:
                raise ValueError(f"loss_weighting={weighting!r} needs prompt_variance")
            variance = torch.nan_to_num(prompt_variance.to(per_sample.device, torch.float32), nan=0.0)
            per_sample = per_sample * (variance if weighting == "var" else variance.exp())
        if token_mask_labels is not None:
            token_mask_labels = token_mask_labels.to(token_scores.device, torch.float32)
            if token_labels is not None:
                token_labels = token_labels.to(token_scores.device, torch.float32)
                token_term = (token_scores * token_mask_labels - token_labels).abs().mean(dim=1)
                per_sample = per_sample + self.config.token_loss_weight * token_term
            if mask_prediction is not None:
                mask_term = (mask_prediction - token_mask_labels).abs().mean(dim=1)
                per_sample = per_sample + self.config.mask_loss_weight * mask_term
        return per_sample.mean()

    # ------------------------------------------------------------------ convenience
    @torch.no_grad()
    def score(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        elements: Sequence[Sequence[str] | None] | None = None,
        *,
        processor: Any,
        batch_size: int = 16,
        show_progress: bool | None = None,
        text_truncation: TextTruncation = "eval",
        vision_autocast: bool | None = None,
    ) -> list[AlignmentResult]:
        """Score images against their prompts in batches: ``processor`` -> the model (ITM head) ->
        ``processor.post_process_alignment``. The ``t2i-alignment`` pipeline does the same per image.

        Args:
            images: PIL images, image paths or URLs, one per prompt (read like the official code; see the
                processor's ``image_alpha`` and ``exif_transpose``).
            prompts: the T2I prompts (cleaned by the processor exactly like the official code).
            elements: per image, element keys in the official ``"<phrase> (<category>)"`` form, or `None`
                (a key without ``(category)`` scores 0 as official unless the processor's
                ``element_key_rule="plain_phrase"``).
            processor: the model's [`EvalMuseAlignProcessor`] (``AutoProcessor.from_pretrained(folder)``).
            batch_size: images per forward pass.
            show_progress: tqdm bar (default: when there is more than one batch).
            text_truncation: ``"eval"`` (the whole prompt, as the official ``eval.py``) or ``"forward"`` (the
                first ``max_text_length`` = 32 tokens, as the official ``forward``).
            vision_autocast: fp16 autocast of the image encoder on CUDA as in the official code (default:
                ``config.vision_autocast``); a no-op on CPU.

        Returns:
            one :class:`AlignmentResult` per image: ``overall`` (1-5), ``elements`` (key -> 0-1),
            ``unmatched_elements`` (keys whose phrase is not a token sub-sequence of the prompt; scored 0 as
            official) and ``token_scores`` (P(match) per prompt token, CLS and SEP included). The ITC read-out
            is ``forward(match_head="itc")``.
        """
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if elements is not None and len(elements) != len(prompts):
            raise ValueError(f"got {len(elements)} element lists for {len(prompts)} prompts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, len(prompts), batch_size)
        if show_progress is None:
            show_progress = len(starts) > 1
        was_training = self.training
        self.eval()
        results: list[AlignmentResult] = []
        try:
            for start in logging.tqdm(starts, desc="scoring", unit="batch", disable=not show_progress):
                stop = start + batch_size
                inputs = processor(images=list(images[start:stop]), text=list(prompts[start:stop]),
                                   text_truncation=text_truncation, return_tensors="pt")
                outputs = self(
                    pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                    predict_element_mask=False,
                    vision_autocast=vision_autocast,
                )
                results += processor.post_process_alignment(
                    outputs, inputs["input_ids"], inputs["attention_mask"],
                    None if elements is None else list(elements[start:stop]),
                )
        finally:
            self.train(was_training)
        return results


__all__ = [
    "DEFAULT_ITC_TEMPERATURE",
    "MATCH_HEADS",
    "EvalMuseAlignMaskHead",
    "EvalMuseAlignModel",
    "EvalMuseAlignOutput",
    "EvalMuseAlignPreTrainedModel",
    "MatchHead",
    "vision_autocast_context",
]
