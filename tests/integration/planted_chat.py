"""A planted chat model: a real Llama checkpoint whose greedy answer is known in advance.

``transformers serve`` needs a model directory (weights, config, tokenizer with a chat
template). A random tiny Llama would answer noise, which no parser can read, so the end-to-end
test would only exercise failures. This builder plants the weights instead, as the planted
SAE of the label tests does:

- the tokenizer is a word-level vocabulary (every prompt word it does not know is ``<unk>``)
  with a chat template that ends the prompt with ``<|assistant|>``;
- every decoder block writes nothing (zero output projections), so the final hidden state is
  the embedding of the last token, a one-hot vector;
- ``lm_head`` is then a bigram table: each token of :data:`ANSWER` is followed by the next.

Greedy decoding from ``<|assistant|>`` therefore writes :data:`ANSWER` and stops. It reads
as an explanation ("pacemaker"), a one-example detection or fuzzing list ("[1]") and a
simulation ("pacemaker: 10"), so every request of ``label`` gets a parseable answer through
the real server, tokenizer, chat template and generation loop. Built from config in well under
a second; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ANSWER = ("pacemaker", ":", " 10", "\n", "[EXPLANATION]:", " pacemaker", "\n\n", "[1]")
"""The planted answer, token by token (every token distinct, so a bigram table holds it)."""
SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def planted_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the special tokens and the answer's tokens."""
    vocab = {t: i for i, t in enumerate(SPECIAL + ANSWER)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(SPECIAL[4:]),
    )
    fast.chat_template = TEMPLATE
    return fast


def planted_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A one-block Llama whose greedy continuation of ``<|assistant|>`` is :data:`ANSWER`."""
    vocab = tokenizer.get_vocab()
    n = len(vocab)
    cfg = LlamaConfig(
        vocab_size=n,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    chain = ("<|assistant|>", *ANSWER, "</s>")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.model.norm, *model.model.layers[0].children()):
            if hasattr(norm, "variance_epsilon"):
                norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, :n] = torch.eye(n)
        for a, b in zip(chain, chain[1:]):
            model.lm_head.weight[vocab[b], vocab[a]] = 10.0
    return model


def build(path: str | Path) -> Path:
    """Save the planted model and its tokenizer under ``path``; returns ``path``."""
    path = Path(path)
    tokenizer = planted_tokenizer()
    planted_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
