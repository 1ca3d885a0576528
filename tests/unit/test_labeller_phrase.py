"""Mention spans are the finding's noun phrase: pre-modifiers in, cues and other words out.

The status must not move with the span: every case checks it too, and the study labels of a
text equal those read with the head phrase alone.
"""

from __future__ import annotations

import pytest

from workbench.cxr.labeller import nlp as labeller_nlp
from workbench.cxr.labeller import terms
from workbench.cxr.labeller.context import label_report, report_mentions
from workbench.cxr.labeller.nlp import mentions
from workbench.cxr.labeller.phrase import collapsed_start, is_modifier

A, N, U, H = "asserted", "negated", "uncertain", "historical"

CASES = [
    # (text, [(concept, status, phrase, head)])
    ("Bibasilar plate-like atelectasis.",
     [("atelectasis", A, "Bibasilar plate-like atelectasis", "atelectasis")]),
    ("No bibasilar atelectasis.", [("atelectasis", N, "bibasilar atelectasis", "atelectasis")]),
    ("There is no left basilar subsegmental atelectasis or right pleural effusion.",
     [("atelectasis", N, "left basilar subsegmental atelectasis", "atelectasis"),
      ("pleural_effusion", N, "right pleural effusion", "pleural effusion")]),
    ("Possible bibasilar atelectasis.",
     [("atelectasis", U, "bibasilar atelectasis", "atelectasis")]),
    ("Stable left lower lobe plate-like atelectasis.",
     [("atelectasis", H, "left lower lobe plate-like atelectasis", "atelectasis")]),
    ("Interval resolution of the bibasilar atelectasis.",
     [("atelectasis", N, "bibasilar atelectasis", "atelectasis")]),
    ("Mild to moderate cardiomegaly.",
     [("cardiomegaly", A, "Mild to moderate cardiomegaly", "cardiomegaly")]),
    ("Small left and moderate right pleural effusions.",
     [("pleural_effusion", A, "Small left and moderate right pleural effusions",
       "pleural effusions")]),
    ("There is a 1.2 cm right upper lobe nodule.",
     [("nodule", A, "1.2 cm right upper lobe nodule", "nodule")]),
    ("Displaced left lateral 5th rib fracture.",
     [("rib_fracture", A, "Displaced left lateral 5th rib fracture", "5th rib fracture")]),
    ("Left-sided dual-chamber pacemaker with leads in the right atrium.",
     [("pacemaker", A, "Left-sided dual-chamber pacemaker", "dual-chamber pacemaker")]),
    # what stops it: a change word, a determiner, the previous mention, a paragraph break
    ("New left IJ central line.", [("central_line", A, "left IJ central line", "IJ central line")]),
    ("Pleural effusion and left basilar atelectasis.",
     [("pleural_effusion", A, "Pleural effusion", "Pleural effusion"),
      ("atelectasis", A, "left basilar atelectasis", "atelectasis")]),
    ("Moderate pulmonary vascular congestion and mild edema.",
     [("edema", A, "Moderate pulmonary vascular congestion", "pulmonary vascular congestion"),
      ("edema", A, "mild edema", "edema")]),
    ("Cardiomegaly, left effusion.",
     [("cardiomegaly", A, "Cardiomegaly", "Cardiomegaly"),
      ("pleural_effusion", A, "left effusion", "effusion")]),
    ("Findings: left\n\nbasilar atelectasis.",
     [("atelectasis", A, "basilar atelectasis", "atelectasis")]),
    ("Small left\n  pleural effusion.",
     [("pleural_effusion", A, "Small left\n  pleural effusion", "pleural effusion")]),
    # a statement of normality keeps its own span
    ("Both lungs are clear.", [("consolidation", N, "lungs are clear", "lungs are clear")]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_mention_span_is_the_noun_phrase(text, expected):
    wanted = {c for c, *_ in expected}
    got = [(c, m.status, text[m.start : m.end], text[m.head : m.end])
           for m in mentions(text) for c in m.concepts if c in wanted]  # fmt: skip
    assert got == expected
    # the study-level mentions carry the same span
    spans = [(m.concept, m.text) for m in report_mentions(text) if m.concept in wanted]
    assert spans == [(c, p) for c, _, p, _ in expected]


def test_head_span_is_what_the_pattern_matched():
    text = "No bibasilar plate-like atelectasis."
    (m,) = mentions(text)
    assert text[m.start : m.end] == "bibasilar plate-like atelectasis"
    assert text[m.head : m.end] == "atelectasis" and m.status == N and m.cue == "no"


def _reading(text: str) -> tuple:
    lab = label_report(text)
    return lab.chexpert, lab.concepts, [(m.concepts, m.status, m.cue) for m in mentions(text)]


def test_extension_never_changes_statuses_or_labels(monkeypatch):
    texts = [t for t, _ in CASES] + [
        "No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or "
        "pneumothorax.",
        "Opacity at the left lung base likely reflects atelectasis. No pneumothorax.",
        "Nodular opacity in the left upper lobe may represent a small nodule.",
        "Interval removal of the right PICC line. Stable small bilateral effusions.",
    ]
    extended = [_reading(t) for t in texts]
    spans = [[m.start for m in mentions(t)] for t in texts]
    monkeypatch.setattr(labeller_nlp.phrase, "phrase_start", lambda low, index, floor, s: s)
    assert [_reading(t) for t in texts] == extended
    assert [[m.start for m in mentions(t)] for t in texts] != spans  # the patch took effect


def test_no_cue_is_a_modifier():
    """A modifier run never swallows a negation, hedge or history cue."""
    for ts in (terms.negation_termset(), terms.uncertainty_termset(), terms.historical_termset()):
        for key in ("preceding_negations", "following_negations", "pseudo_negations"):
            assert not [c for c in ts[key] if is_modifier(c)], key
    for word in ("no", "new", "stable", "the", "a", "possible", "borderline", "chronic", "acute"):
        assert not is_modifier(word)
    for word in ("left", "bibasilar", "plate-like", "right-sided", "1.2 cm", "5th", "mildly"):
        assert is_modifier(word)


def test_word_edges_and_window():
    assert collapsed_start("unilateral effusion", 0, 11) == 0
    assert collapsed_start("xlateral effusion", 0, 9) == 9  # not a word of the list
    low = "bibasilar effusion"
    assert collapsed_start(low, 3, 10) == 10  # the floor cuts "bibasilar": no half word
    long = " ".join(["left"] * 40) + " effusion"
    assert collapsed_start(long, 0, long.index("effusion")) == 0


def test_consumers_see_phrase_and_head():
    """Study-level mentions carry the head; the offline labeller ties a feature on a modifier
    to the mention, but a label naming the concept claims only its head words."""
    from workbench.label.offline import read

    text = "Bibasilar atelectasis. No left pleural effusion."
    a, e = report_mentions(text)
    assert (a.text, text[a.head : a.end]) == ("Bibasilar atelectasis", "atelectasis")
    assert (e.text, text[e.head : e.end], e.status) == (
        "left pleural effusion", "pleural effusion", N,
    )  # fmt: skip
    reading = read(text)
    assert [sorted(m.words) for m in reading.mentions] == [
        ["atelectasis", "bibasilar"], ["effusion", "left", "pleural"],
    ]  # fmt: skip
    assert reading.words["atelectasis"] == {"atelectasis"}
    assert reading.words["pleural effusion"] == {"pleural", "effusion"}
