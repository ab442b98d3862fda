"""Offline tiny Qwen2.5-VL / Qwen2-VL models and processors (random weights, nothing downloaded).

Tests, the demo and the benchmarks need a real ``Qwen2_5_VLForConditionalGeneration`` with a real
``Qwen2_5_VLProcessor`` (chat template, image placeholder expansion, ``pixel_values`` /
``image_grid_thw``) without network access. This module builds both from scratch:

* a byte-level BPE tokenizer trained on the fly on the scorer's own vocabulary (question
  templates, level words, Yes/No), with the Qwen special tokens ``<|im_start|>``, ``<|im_end|>``,
  ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>``, ``<|endoftext|>``;
* a ``Qwen2VLImageProcessor`` with small ``min_pixels`` / ``max_pixels``;
* the Qwen2-VL chat template with ``{% generation %}`` markers (:data:`QWEN2_VL_CHAT_TEMPLATE`);
* a model config sized by a preset (``"tiny"`` for unit tests, ``"small"`` for CPU benchmarks,
  ``"7b"`` for the real Qwen2.5-VL-7B-Instruct architecture with random initialisation).

Example::

    from evalmuse_models.testing.mllm import build_tiny_qwen2_5_vl

    model, processor = build_tiny_qwen2_5_vl(seed=0)
    model.save_pretrained("tiny-qwen"); processor.save_pretrained("tiny-qwen")
"""

from __future__ import annotations

from typing import Any

from ..mllm.prompts import (
    FIFTEEN_LEVEL_WORDS,
    LEVEL_WORDS,
    NO_WORD,
    YES_WORD,
    default_training_corpus,
)

#: Qwen2-VL / Qwen2.5-VL chat template (ChatML with vision placeholders). Renders exactly like the
#: template shipped with Qwen2.5-VL-Instruct for text and image turns, and marks every assistant
#: turn (content and its ``<|im_end|>``) with ``{% generation %}`` so that
#: ``return_assistant_tokens_mask`` / TRL's ``assistant_only_loss`` can mask everything else.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% macro render_content(content, image_count) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% endmacro %}"
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ render_content(message['content'], image_count) }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ render_content(message['content'], image_count) }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Presets of the language / vision towers. ``"7b"`` is the Qwen2.5-VL-7B-Instruct architecture.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                            "mrope_section": [2, 3, 3]}},
        "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "window_size": 56,
                       "fullatt_block_indexes": [1]},
        "max_pixels": 56 * 56,
    },
    "small": {
        "text": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                                            "mrope_section": [8, 12, 12]}},
        "vision": {"depth": 4, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4, "window_size": 112,
                       "fullatt_block_indexes": [1, 3]},
        "max_pixels": 224 * 224,
    },
    "7b": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                     "num_key_value_heads": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                                            "mrope_section": [16, 24, 24]}},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "window_size": 112,
                       "fullatt_block_indexes": [7, 15, 23, 31]},
        "max_pixels": 448 * 448,
        "vocab_size": 152064,
    },
}


def build_tiny_tokenizer(vocab_size: int = 1024, extra_corpus: list[str] | None = None):
    """A byte-level BPE tokenizer (Qwen-style pre-tokenisation) trained on the scorer's vocabulary.

    Every level word (5 and 15 levels), ``Yes`` and ``No`` become single tokens, as they are for
    the real Qwen2 tokenizer. Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # The Qwen2 split pattern (contractions, letters with one leading non-letter, digits one by one,
    # punctuation runs, newlines, spaces), then byte-level mapping without its own regex.
    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    corpus = default_training_corpus() + list(extra_corpus or [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
    )
    return fast


def build_tiny_processor(max_pixels: int = 56 * 56, min_pixels: int = 28 * 28, tokenizer=None):
    """A ``Qwen2_5_VLProcessor`` over :func:`build_tiny_tokenizer` and a small ``Qwen2VLImageProcessor``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
        Qwen2VLVideoProcessor,
    )

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def tiny_qwen2_5_vl_config(preset: str = "tiny", tokenizer=None, **overrides):
    """A ``Qwen2_5_VLConfig`` of the named preset whose special-token ids match ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    text = dict(spec["text"])
    vision = dict(spec["vision"])
    vision["out_hidden_size"] = text["hidden_size"]
    ids = {}
    if tokenizer is not None:
        text["vocab_size"] = spec.get("vocab_size", len(tokenizer))
        ids = {
            "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        }
        text.update(
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    text.setdefault("max_position_embeddings", 4096)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids, **overrides)
    return config


def build_tiny_qwen2_5_vl(preset: str = "tiny", seed: int = 0, dtype=None, device=None, **config_overrides):
    """Build ``(model, processor)``: a random-weight Qwen2.5-VL of ``preset`` and its offline processor.

    ``preset="7b"`` gives the real Qwen2.5-VL-7B architecture (random init) with a tiny tokenizer
    whose ids fit in its 152k vocabulary; build it directly on the accelerator in bf16
    (``device="cuda", dtype=torch.bfloat16``) rather than in float32 on the CPU.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = PRESETS.get(preset)
    if spec is None:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    processor = build_tiny_processor(max_pixels=spec["max_pixels"])
    config = tiny_qwen2_5_vl_config(preset, tokenizer=processor.tokenizer, **config_overrides)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return model, processor


__all__ = [
    "FIFTEEN_LEVEL_WORDS",
    "LEVEL_WORDS",
    "NO_WORD",
    "PRESETS",
    "QWEN2_VL_CHAT_TEMPLATE",
    "YES_WORD",
    "build_tiny_processor",
    "build_tiny_qwen2_5_vl",
    "build_tiny_tokenizer",
    "tiny_qwen2_5_vl_config",
]
