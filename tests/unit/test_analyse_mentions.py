"""Token <-> mention alignment and the mention-level scores of analyse."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.analyse.mentions import score_mentions, section_mentions, token_spans


def test_byte_level_tokens_keep_their_spaces():
    text, spans = token_spans([" No", " pleural", " effusion", "."], None)
    assert text == " No pleural effusion."
    assert [text[a:b] for a, b in spans] == ["No", "pleural", "effusion", "."]


def test_sentencepiece_tokens_align_to_the_reference_text():
    ref = "No pleural\n effusion. Small  pneumothorax."
    toks = ["No", "\u2581pleural", "eff", "usion", ".", "Small", "pneumothorax", ".", "</s>"]
    text, spans = token_spans(toks, ref)
    assert text == ref
    assert [text[a:b] for a, b in spans] == [
        "No", "pleural", "eff", "usion", ".", "Small", "pneumothorax", ".", ""]  # fmt: skip


def test_unaligned_tokens_fall_back_to_their_own_text():
    text, _ = token_spans([" No", " effusion"], "Completely different text.")
    assert text == " No effusion"


def test_section_mentions_map_to_store_rows():
    rows = np.arange(100, 108)
    toks = ["No", "\u2581pleural", "eff", "usion", ".", "Small", "pneumothorax", "."]
    got = section_mentions(rows, toks, "No pleural effusion. Small pneumothorax.")
    assert [(m[0], m[1], m[5], m[6], m[7]) for m in got] == [
        ("pleural_effusion", "negated", "pleural effusion", 101, 103),
        ("pneumothorax", "asserted", "Small pneumothorax", 105, 106),
    ]


def test_mention_rows_cover_the_pre_modifiers():
    """A feature on "bibasilar" or "plate-like" is read on the atelectasis mention."""
    ref = "No bibasilar plate-like atelectasis. Left basilar atelectasis."
    toks = ["No", "\u2581bib", "asilar", "\u2581plate", "-", "like", "\u2581atelect", "asis",
            ".", "\u2581Left", "\u2581bas", "ilar", "\u2581atelectasis", "."]  # fmt: skip
    got = section_mentions(np.arange(200, 214), toks, ref)
    assert [(m[0], m[1], m[5], m[6], m[7]) for m in got] == [
        ("atelectasis", "negated", "bibasilar plate-like atelectasis", 201, 207),
        ("atelectasis", "asserted", "Left basilar atelectasis", 209, 212),
    ]
    # byte-level tokens (no reference text) map the same way
    got = section_mentions(np.arange(4), [" No", " bibasilar", " atelect", "asis"], None)
    assert [(m[1], m[5], m[6], m[7]) for m in got] == [("negated", "bibasilar atelectasis", 1, 3)]


def test_scores_per_status_and_selectivity():
    # mentions: 0,1 asserted effusion; 2,3 negated effusion; 4 uncertain effusion; 5 pacer
    concept = np.array([0, 0, 0, 0, 0, 1])
    status = np.array(["asserted", "historical", "negated", "negated", "uncertain", "asserted"])
    feats = np.array([0, 0, 0, 1, 1, 1])  # feature 0: word; feature 1: present only
    mention = np.array([0, 2, 3, 0, 1, 5])
    vals = np.array([2.0, 2.0, 2.0, 1.0, 3.0, 4.0])
    s = score_mentions(feats, mention, vals, concept, status, 2, 3)
    assert s["n_fired"].tolist() == [[3, 0], [2, 1], [0, 0]]
    assert s["mean_asserted"][0, 0] == 2.0 and s["mean_negated"][0, 0] == 2.0
    assert s["mean_historical"][1, 0] == 3.0 and s["mean_negated"][1, 0] == 0.0
    assert np.isnan(s["mean_negated"][1, 1])  # no negated pacemaker mention at all
    # feature 0: present {2 (m0), 0 (m1: silent)} vs negated {2, 2}: (0.5 + 0.5 + 0 + 0) / 4
    assert s["selectivity"][0, 0] == pytest.approx(0.25)
    assert s["selectivity"][1, 0] == 1.0 and np.isnan(s["selectivity"][1, 1])
