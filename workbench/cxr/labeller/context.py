"""CheXpert-style report labeller on spaCy + negspacy (NegEx): mentions, statuses, labels.

For every concept it answers 1 (positive), 0 (negated), -1 (uncertain) or None (not
mentioned), both for the 14 CheXpert labels and for the phantom vocabulary (FINDINGS +
DEVICES of :mod:`workbench.cxr.findings`). The method follows CheXpert's labeller (Irvin et al.
2019, section 3.1) in three stages:

1. *mention extraction*: phrase patterns per concept (:mod:`workbench.cxr.labeller.rules`)
   become entities of a spaCy pipeline (:mod:`workbench.cxr.labeller.nlp`), longest match
   wins where two overlap ("nodular opacity" is a nodule, not an opacity); statements of
   normality ("heart size is normal", "lungs are clear") are negated mentions;
2. *classification* of each mention by NegEx (negspacy) instead of CheXpert's dependency
   parse: asserted, negated, uncertain or historical ("stable", "again seen"), with the
   termsets of :mod:`workbench.cxr.labeller.terms`; every mention keeps its character span;
3. *aggregation* per concept: positive if any mention is asserted or historical, else
   uncertain if any is uncertain, else negative; No Finding is 1 when no pathology is
   positive or uncertain.

A phantom concept sets the first CheXpert label of ``CHEXPERT_OF`` with its value and passes
positive/uncertain values up to the parent labels (consolidation -> Lung Opacity).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from workbench.cxr.findings import CHEXPERT_LABELS, CHEXPERT_OF, DEVICES, FINDINGS
from workbench.cxr.labeller import rules
from workbench.cxr.labeller.nlp import mentions

PHANTOM_CONCEPTS: tuple[str, ...] = FINDINGS + DEVICES
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
# Study-label value of each mention status (a historical finding is still present).
STATUS_VALUE = {"asserted": POSITIVE, "historical": POSITIVE, "negated": NEGATIVE,
                "uncertain": UNCERTAIN}  # fmt: skip


class Mention(NamedTuple):
    """One classified mention of a concept.

    ``text`` is ``report[start:end]``, the finding's noun phrase with its pre-modifiers
    ("bibasilar plate-like atelectasis"); ``report[head:end]`` is the phrase the concept's
    pattern matched ("atelectasis"), on which ``status`` was decided: asserted, negated,
    uncertain or historical. ``value`` is its CheXpert code (1 / 0 / -1) and ``cue`` the
    deciding phrase ("no", "possible", "normal", "linked", ...; None when asserted).
    """

    concept: str
    text: str
    value: int
    cue: str | None
    start: int
    end: int
    status: str
    head: int


class ReportLabels(NamedTuple):
    """Labels of one text: CheXpert (1.0/0.0/-1.0/None), phantom concepts (1/0/-1/None)."""

    chexpert: dict[str, float | None]
    concepts: dict[str, int | None]
    mentions: list[Mention]


def report_mentions(text: str | None) -> list[Mention]:
    """Every concept mention of ``text`` with its span and status, in text order."""
    return [
        Mention(
            c, text[m.start : m.end], STATUS_VALUE[m.status], m.cue, m.start, m.end, m.status,
            m.head,
        )
        for m in mentions(text or "")
        for c in m.concepts
    ]  # fmt: skip


def _aggregate(values: Sequence[int]) -> int | None:
    """CheXpert aggregation: any positive -> 1, else any uncertain -> -1, else 0."""
    if not values:
        return None
    if POSITIVE in values:
        return POSITIVE
    return UNCERTAIN if UNCERTAIN in values else NEGATIVE


def _chexpert(by_concept: dict[str, list[int]]) -> dict[str, float | None]:
    """Map concept values onto the 14 CheXpert labels (primary label + positive parents)."""
    per_label: dict[str, list[int]] = defaultdict(list)
    for concept, values in by_concept.items():
        labels = CHEXPERT_OF.get(concept) or (rules.EXTRA_CHEXPERT[concept],)
        per_label[labels[0]] += values
        for parent in labels[1:]:
            per_label[parent] += [v for v in values if v != NEGATIVE]
    out = {name: _aggregate(per_label.get(name, ())) for name in CHEXPERT_LABELS}
    pathology = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    sick = any(out[n] in (POSITIVE, UNCERTAIN) for n in pathology)
    out["No Finding"] = None if sick else POSITIVE
    return {k: (None if v is None else float(v)) for k, v in out.items()}


def label_report(text: str | None) -> ReportLabels:
    """Label one text (findings, or findings + impression); empty text -> all None."""
    if not (text or "").strip():
        return ReportLabels(dict.fromkeys(CHEXPERT_LABELS), dict.fromkeys(PHANTOM_CONCEPTS), [])
    found = report_mentions(text)
    by_concept: dict[str, list[int]] = defaultdict(list)
    for_chexpert: dict[str, list[int]] = defaultdict(list)
    for m in found:
        by_concept[m.concept].append(m.value)
        if m.cue != "normal" or m.concept in rules.CHEXPERT_NORMALS:
            for_chexpert[m.concept].append(m.value)
    concepts = {c: _aggregate(by_concept.get(c, ())) for c in PHANTOM_CONCEPTS}
    return ReportLabels(_chexpert(for_chexpert), concepts, found)


def label_reports(texts: Iterable[str | None]) -> list[ReportLabels]:
    """:func:`label_report` over many texts."""
    return [label_report(t) for t in texts]


class BinaryScores(NamedTuple):
    """Agreement of predicted and true positives for one concept (None where undefined)."""

    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def score_labels(
    predicted: Sequence[dict],
    truth: Sequence[dict],
    names: Iterable[str],
    uncertain_as_positive: bool = False,
) -> dict[str, BinaryScores]:
    """Per-concept precision/recall/F1 of predicted positives against true positives (== 1).

    ``predicted`` and ``truth`` are parallel sequences of ``{name: value}``; a prediction is
    positive when 1 (or -1 too with ``uncertain_as_positive``); None and 0 are negative.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} ground-truth rows")
    hits = (POSITIVE, UNCERTAIN) if uncertain_as_positive else (POSITIVE,)
    out = {}
    for name in names:
        pairs = [(p.get(name) in hits, t.get(name) == POSITIVE) for p, t in zip(predicted, truth)]
        tp = sum(p and t for p, t in pairs)
        fp = sum(p and not t for p, t in pairs)
        fn = sum(t and not p for p, t in pairs)
        tn = len(pairs) - tp - fp - fn
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        out[name] = BinaryScores(tp, fp, fn, tn, precision, recall, f1)
    return out
