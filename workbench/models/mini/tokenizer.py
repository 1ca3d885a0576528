"""The maira2-mini tokenizer: a small byte-level BPE trained on report text, MAIRA-2's tokens added.

MAIRA-2 inherits Vicuna's 32,000-token SentencePiece vocabulary and appends 207 tokens
(``<obj>``, ``</obj>``, 200 box-coordinate bins, ``<box>``, ``</box>``, ``<image>``,
``<prev_im>``, ``<lat_image>``; see shared/reference/maira2.md section 3). maira2-mini keeps
that layout at a scale a CPU can train: a byte-level BPE of a few hundred to a couple of
thousand merges learned from the phantom reports and the rendered prompt text, Llama's
``<unk>``/``<s>``/``</s>`` at ids 0-2, a BOS prepended by the post-processor (as Llama's
tokenizer does), and the 207 MAIRA-2 tokens appended in MAIRA-2's order. Byte-level means no
input is ever out of vocabulary, so a MIMIC report still tokenizes (badly, but losslessly).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
BASE_SPECIALS: tuple[str, ...] = (UNK, BOS, EOS, PAD)
IMAGE_TOKEN = "<image>"
# Words keep their TRAILING whitespace ("effusion. "), unlike GPT-2/Llama which attach it in
# front. A prompt that ends in a space ("... ASSISTANT: ") then tokenizes the same alone as
# with the findings appended, so teacher-forced training, recording and generation all see
# one token sequence (a leading-space scheme splits "ASSISTANT: There" differently from
# "ASSISTANT: " + generated "There").
WORD_PATTERN = r"\s+|\S+\s*"


def maira2_added_tokens() -> tuple[str, ...]:
    """MAIRA-2's 207 added tokens in its id order (reference maira2.md section 3)."""
    coords = tuple(f"<x{i}>" for i in range(100)) + tuple(f"<y{i}>" for i in range(100))
    return ("<obj>", "</obj>", *coords, "<box>", "</box>", IMAGE_TOKEN, "<prev_im>", "<lat_image>")


# Tokens that are markup for the model, not text: decode(skip_special_tokens=True) drops them.
# The grounding tokens (<obj>, <box>, coordinates) stay ordinary added tokens, as MAIRA-2's
# grounded output is parsed after a skip_special_tokens decode.
_SKIPPED_ON_DECODE = frozenset({IMAGE_TOKEN, "<prev_im>", "<lat_image>"})


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Learn a byte-level BPE of ``vocab_size`` base tokens from ``texts`` and add MAIRA-2's tokens.

    The returned tokenizer has ``vocab_size + 207`` entries; ids 0..3 are ``<unk> <s> </s> <pad>``
    and the MAIRA-2 tokens take the last 207 ids, in MAIRA-2's order.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size}: byte-level BPE needs >= 256 + 4 base tokens")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BASE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        # A small corpus runs out of merges before the target size; pad so ids stay stable.
        missing = vocab_size - tok.get_vocab_size()
        tok.add_tokens([f"<unused{i}>" for i in range(missing)])
    added = [
        AddedToken(t, special=t in _SKIPPED_ON_DECODE, normalized=False)
        for t in maira2_added_tokens()
    ]
    tok.add_tokens(added)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a raw ``tokenizers.Tokenizer`` with the Llama specials."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=sorted(_SKIPPED_ON_DECODE),
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def check_layout(tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise if ``tokenizer`` does not have the id layout maira2-mini's config assumes."""
    for i, name in enumerate(BASE_SPECIALS):
        got = tokenizer.convert_tokens_to_ids(name)
        if got != i:
            raise ValueError(f"tokenizer: {name} has id {got}, expected {i}")
    added = maira2_added_tokens()
    first = len(tokenizer) - len(added)
    for offset, name in enumerate(added):
        got = tokenizer.convert_tokens_to_ids(name)
        if got != first + offset:
            raise ValueError(f"tokenizer: {name} has id {got}, expected {first + offset}")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """``save_pretrained`` into ``path`` (AutoTokenizer can load it back offline)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return path
