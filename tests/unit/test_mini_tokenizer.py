"""maira2-mini tokenizer: id layout, MAIRA-2 tokens, round trip, prompt-prefix stability."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from workbench.models.mini.tokenizer import (
    BASE_SPECIALS,
    check_layout,
    maira2_added_tokens,
    save_tokenizer,
    train_tokenizer,
)

CORPUS = [
    "There is a small left pleural effusion. The heart size is normal. No pneumothorax.",
    "You are an expert radiology assistant. USER: Given the current frontal image ASSISTANT: ",
    "A pacemaker is present. Moderate cardiomegaly. Lungs are clear.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=400)


def test_layout_matches_maira2(tok):
    added = maira2_added_tokens()
    assert len(added) == 207  # MAIRA-2: 32207 - 32000
    assert added[0] == "<obj>" and added[-3:] == ("<image>", "<prev_im>", "<lat_image>")
    assert len(tok) == 400 + 207
    check_layout(tok)
    assert [tok.convert_tokens_to_ids(t) for t in BASE_SPECIALS] == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids("<image>") == 400 + 204  # offset 204 as 32204 - 32000


def test_bos_prepended_and_special_tokens_atomic(tok):
    ids = tok("frontal image<image><image> effusion</s>").input_ids
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids[0] == tok.bos_token_id
    assert ids.count(image_id) == 2
    assert ids[-1] == tok.eos_token_id
    grounded = "<obj>effusion <box><x1><y20><x30><y99></box></obj>"
    gids = tok(grounded, add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids("<x30>") in gids
    # Grounding tokens survive a skip_special_tokens decode (MAIRA-2 parses them after it).
    assert tok.decode(gids, skip_special_tokens=True) == grounded


def test_lossless_on_unseen_text(tok):
    text = "Ünïcode ✓ and words never seen: zygomatic 12.5 mm"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_prompt_ending_in_space_is_a_token_prefix(tok):
    prompt = "USER: Given the current frontal image<image> ASSISTANT: "
    full = prompt + "There is a small left pleural effusion.</s>"
    p_ids, f_ids = tok(prompt).input_ids, tok(full).input_ids
    assert f_ids[: len(p_ids)] == p_ids


def test_save_and_reload(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    check_layout(again)
    text = "A pacemaker is present.<image>"
    assert again(text).input_ids == tok(text).input_ids
    assert again.pad_token_id == 3 and again.eos_token_id == 2


def test_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=100)
