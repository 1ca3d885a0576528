"""Rule-based CheXpert-style labeller for (generated) chest X-ray report text.

For every concept it answers 1 (positive), 0 (negated), -1 (uncertain) or None (not
mentioned), both for the 14 CheXpert labels and for the phantom vocabulary (FINDINGS +
DEVICES of :mod:`workbench.cxr.findings`). The method follows CheXpert's labeller (Irvin et al.
2019, section 3.1) in three stages:

1. *mention extraction*: phrase patterns per concept (:mod:`workbench.cxr.labeller.rules`),
   longest match wins where two overlap ("nodular opacity" is a nodule, not an opacity);
   statements of normality ("heart size is normal", "lungs are clear") are negative mentions;
2. *classification* of each mention, NegEx-style instead of CheXpert's dependency parse: the
   nearest negation/uncertainty cue before it in its clause (a cue reaches across a list,
   "no effusion or pneumothorax", but not across "but", "there is", ...), else a cue just after
   it ("pneumothorax is not seen", "cannot be excluded"); "no change in" is not a negation;
3. *aggregation* per concept: positive if any mention is positive, else uncertain if any is
   uncertain, else negative; No Finding is 1 when no pathology is positive or uncertain.

A phantom concept sets the first CheXpert label of ``CHEXPERT_OF`` with its value and passes
positive/uncertain values up to the parent labels (consolidation -> Lung Opacity).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from workbench.cxr.findings import CHEXPERT_LABELS, CHEXPERT_OF, DEVICES, FINDINGS
from workbench.cxr.labeller import rules

PHANTOM_CONCEPTS: tuple[str, ...] = FINDINGS + DEVICES
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


def _alternation(patterns: Iterable[str]) -> re.Pattern:
    """One regex for a phrase list, anchored on word edges (also for patterns ending in '.')."""
    # "not inside a word" on both sides; a pattern may itself start or end with punctuation
    body = "|".join(f"(?:{p})" for p in patterns)
    return re.compile(r"(?:(?<!\w)|(?!\w))(?:" + body + r")(?:(?!\w)|(?<!\w))")


_MENTIONS = {c: _alternation(ps) for c, ps in rules.MENTIONS.items()}
_NORMALS = tuple((_alternation([p]), concepts) for p, concepts in rules.NORMALS)
_PSEUDO = _alternation(rules.PSEUDO_NEGATIONS)
_PRE = (
    (UNCERTAIN, _alternation(rules.PRE_UNCERTAIN)),
    (NEGATIVE, _alternation(rules.PRE_NEGATION)),
)
_POST = (
    (UNCERTAIN, _alternation(rules.POST_UNCERTAIN)),
    (NEGATIVE, _alternation(rules.POST_NEGATION)),
)
_TERMINATORS = _alternation(rules.TERMINATORS)
_GLUE = re.compile(rules.LIST_GLUE)
_INFERENCE = re.compile(
    r"\s*(?:to suggest|to indicate|to represent|concerning for|suspicious for|suggestive of|"
    r"worrisome for|consistent with|compatible with|that would suggest)\s+(?:\w+\s+){0,2}"
)
_LINK = re.compile(rules.INFERENCE_LINK)
_SENTENCE_END = re.compile(r"[.;!](?=\s|$)|\n[ \t]*\n")


class Mention(NamedTuple):
    """One classified mention: the concept, the matched text, its value and the deciding cue."""

    concept: str
    text: str
    value: int
    cue: str | None


class ReportLabels(NamedTuple):
    """Labels of one text: CheXpert (1.0/0.0/-1.0/None), phantom concepts (1/0/-1/None)."""

    chexpert: dict[str, float | None]
    concepts: dict[str, int | None]
    mentions: list[Mention]


class _Span(NamedTuple):
    start: int
    end: int
    concepts: tuple[str, ...]
    normal: bool


def sentences(text: str) -> list[str]:
    """Lower-cased sentences, whitespace collapsed; a blank line ends one, a wrapped line or a
    decimal ("2.5 cm") or "vs." does not."""
    text = re.sub(r"\bvs\.", "vs", text.lower())
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s.strip()]


def _mask(sentence: str) -> str:
    """Blank out pseudo-negations ("no change in") keeping every other offset in place."""
    return _PSEUDO.sub(lambda m: " " * len(m.group()), sentence)


def find_spans(sentence: str) -> list[_Span]:
    """Mention and normal-statement spans, longest first where they overlap, in text order."""
    found = [
        _Span(m.start(), m.end(), (c,), False)
        for c, rx in _MENTIONS.items()
        for m in rx.finditer(sentence)
    ]
    found += [
        _Span(m.start(), m.end(), cs, True) for rx, cs in _NORMALS for m in rx.finditer(sentence)
    ]
    found.sort(key=lambda s: (s.start - s.end, not s.normal, s.start))
    kept: list[_Span] = []
    for span in found:
        same = [k for k in kept if (k.start, k.end) == (span.start, span.end)]
        clash = [k for k in kept if k.start < span.end and span.start < k.end]
        if not clash or (same and same == clash and not same[0].normal):
            kept.append(span)
    return sorted(kept, key=lambda s: (s.start, s.end))


def _clause(sentence: str, start: int, end: int) -> tuple[int, int]:
    """Bounds of the clause holding ``[start, end)``: between the nearest terminators."""
    lo, hi = 0, len(sentence)
    for m in _TERMINATORS.finditer(sentence):
        if m.end() <= start:
            lo = m.end()
        elif m.start() >= end:
            hi = min(hi, m.start())
    return lo, hi


def _nearest_cue(region: str, table) -> tuple[int, str] | None:
    """The cue ending last in ``region`` (uncertainty wins a tie: it is the longer phrase)."""
    best = None
    for value, rx in table:
        for m in rx.finditer(region):
            if best is None or m.end() > best[0]:
                best = (m.end(), value, m.group())
    return (best[1], best[2]) if best else None


def _first_cue(region: str, table) -> tuple[int, str] | None:
    """The earliest post-mention cue within ``POST_WINDOW`` words (uncertainty checked first)."""
    region = " ".join(region.split()[: rules.POST_WINDOW])
    for value, rx in table:
        m = rx.search(region)
        if m:
            return value, m.group()
    return None


def _classify(sentence: str, spans: list[_Span], i: int) -> tuple[int, str | None]:
    """Value of mention ``i``: nearest cue before it in its list/clause, else a cue after it."""
    span = spans[i]
    lo, hi = _clause(sentence, span.start, span.end)
    start = lo
    for j in range(i - 1, -1, -1):  # a cue reaches back across a list of mentions only
        if spans[j].end <= lo:
            break
        if not _GLUE.fullmatch(sentence[spans[j].end : spans[j + 1].start]):
            start = max(start, spans[j].end)
            break
    pre = _nearest_cue(sentence[start : span.end], _PRE)
    if pre:
        return pre
    chain_end, post_end = span.end, hi
    for nxt in spans[i + 1 :]:
        if nxt.start >= hi:
            break
        if not _GLUE.fullmatch(sentence[chain_end : nxt.start]):
            post_end = nxt.start
            break
        chain_end = nxt.end
    post = _first_cue(sentence[chain_end:post_end], _POST)
    return post if post else (POSITIVE, None)


def sentence_mentions(sentence: str) -> list[Mention]:
    """Classified mentions of one lower-cased sentence."""
    masked = _mask(sentence)
    spans = find_spans(masked)
    decided: list[tuple[int, str | None]] = []
    for i, span in enumerate(spans):
        gap = masked[spans[i - 1].end : span.start] if i else ""
        if span.normal:
            decided.append((NEGATIVE, "normal"))
        elif i and decided[-1][0] == NEGATIVE and _INFERENCE.fullmatch(gap):
            decided.append((NEGATIVE, "inference"))  # "no consolidation to suggest pneumonia"
        else:
            decided.append(_classify(masked, spans, i))
    for i in range(len(spans) - 2, -1, -1):  # "nodular opacity may represent a nodule"
        a, b = spans[i], spans[i + 1]
        if set(a.concepts) & set(b.concepts) and _LINK.fullmatch(masked[a.end : b.start]):
            decided[i] = (decided[i + 1][0], "linked")
    return [
        Mention(c, sentence[span.start : span.end], value, cue)
        for span, (value, cue) in zip(spans, decided)
        for c in span.concepts
    ]


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
    mentions = [m for s in sentences(text or "") for m in sentence_mentions(s)]
    if not (text or "").strip():
        return ReportLabels(dict.fromkeys(CHEXPERT_LABELS), dict.fromkeys(PHANTOM_CONCEPTS), [])
    by_concept: dict[str, list[int]] = defaultdict(list)
    for_chexpert: dict[str, list[int]] = defaultdict(list)
    for m in mentions:
        by_concept[m.concept].append(m.value)
        if m.cue != "normal" or m.concept in rules.CHEXPERT_NORMALS:
            for_chexpert[m.concept].append(m.value)
    concepts = {c: _aggregate(by_concept.get(c, ())) for c in PHANTOM_CONCEPTS}
    return ReportLabels(_chexpert(for_chexpert), concepts, mentions)


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
