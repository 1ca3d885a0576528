"""Tiny models of the analysed architectures, built from config with random weights.

Tests, examples and benchmarks need MAIRA-2-, LLaVA- and Llama-shaped models that load in
milliseconds without any download. These builders keep every architectural feature of the
real thing (Dinov2 backbone with CLS, deep projector, Llama decoder, MAIRA-2's added tokens)
and shrink only the widths and depths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from transformers import (
    Dinov2Config,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from workbench.io import torch_threads
from workbench.models.maira2 import Maira2Config, Maira2ForConditionalGeneration

# Enough radiology text for the BPE to learn a few hundred merges in well under a second.
_CORPUS = (
    "You are an expert radiology assistant tasked with interpreting a chest X-ray study. "
    "USER: Given the current frontal image only Provide a structured description of the "
    "findings in the radiology study in comparison to the prior frontal image. INDICATION: "
    "Dyspnea. TECHNIQUE: PA and lateral views of the chest. COMPARISON: None. ASSISTANT: "
    "The heart size is normal. There is a small left pleural effusion. No pneumothorax. "
    "Lungs are clear. A pacemaker is present with leads in the right ventricle. "
    "PRIOR_REPORT: N/A Repeat the following finding as a grounded phrase with bounding boxes."
)


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """maira2-mini's tokenizer layout (byte-level BPE + MAIRA-2's 207 tokens), trained tiny."""
    from workbench.models.mini.tokenizer import train_tokenizer

    return train_tokenizer([_CORPUS] * 4, vocab_size=vocab_size)


def tiny_vision_config(image_size: int = 56, patch_size: int = 14) -> Dinov2Config:
    """A 2-layer Dinov2 (RAD-DINO shape, 32 wide): (56/14)^2 = 16 patches per image."""
    return Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=patch_size,
        image_size=image_size,
        layer_norm_eps=1e-6,
        out_features=["stage2"],
        reshape_hidden_states=False,
    )


def tiny_text_config(vocab_size: int, n_layers: int = 3, hidden_size: int = 48) -> LlamaConfig:
    """A Llama decoder ``hidden_size`` wide (48 by default) with ``n_layers`` blocks and
    Llama's special-token ids."""
    heads = 4 if hidden_size % 16 == 0 else 2
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def tiny_maira2(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int = 56,
    n_layers: int = 3,
    hidden_size: int = 48,
) -> Maira2ForConditionalGeneration:
    """A random-weight MAIRA-2 with MAIRA-2's config keys, sized to ``tokenizer``."""
    vision = tiny_vision_config(image_size)
    grid = image_size // vision.patch_size
    config = Maira2Config(
        vision_config=vision.to_dict(),
        text_config=tiny_text_config(len(tokenizer), n_layers, hidden_size).to_dict(),
        projector_n_layers=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        pad_token_id=3,
        architectures=["Maira2ForConditionalGeneration"],
    )
    return Maira2ForConditionalGeneration(config).eval()


def tiny_llava(
    tokenizer: PreTrainedTokenizerFast, image_size: int = 56, n_layers: int = 3
) -> LlavaForConditionalGeneration:
    """A random-weight LLaVA (Dinov2 + Llama), the "any HF LLaVA-family checkpoint" case."""
    vision = tiny_vision_config(image_size)
    grid = image_size // vision.patch_size
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=tiny_text_config(len(tokenizer), n_layers).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        architectures=["LlavaForConditionalGeneration"],
    )
    return LlavaForConditionalGeneration(config).eval()


def tiny_llama(tokenizer: PreTrainedTokenizerFast, n_layers: int = 3) -> LlamaForCausalLM:
    """A random-weight Llama causal LM, the text-only case."""
    config = tiny_text_config(len(tokenizer), n_layers)
    config.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(config).eval()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny models on one intra-op thread, then restore the previous count.

    Matrices this small gain nothing from threads, and on a shared 2-core machine
    oversubscribed threads make a tiny forward ~20x slower (measured 1.9 s vs 0.1 s).
    """
    with torch_threads(1):
        yield
