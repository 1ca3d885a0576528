"""The offline explainer and judge of ``label``: rules instead of an LLM, no network.

Explain: when the analysis found a strong concept association for the feature (its best
``feature_concepts`` AUROC >= ``strong_auroc``), the label leads with it, e.g.
``cardiomegaly (AUROC 0.99, asserted mentions); report words "enlarged", "heart"``. Whether the
feature fires on asserted or negated mentions is read from its text examples with the
rule-based report labeller (:mod:`workbench.cxr.labeller`). The words are whole words
(subword tokens joined, :func:`workbench.label.text.words`). Without a strong association the
label names the words it fires on and the concepts most of its examples share.

Judge (detection, hard negatives, fuzzing, simulation): a label that names concepts outside
its quotes is read *semantically*: an example counts when the labeller finds the concept in it
with the polarity the label claims (asserted by default, negated, or any mention). A label
that only quotes words is read *lexically*: an example counts when it contains a quoted word.
So a lexical label is fooled by "No pleural effusion." and a semantic one is not, which is
what hard-negative scoring measures.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import NamedTuple

from workbench.cxr.labeller.context import label_report
from workbench.label.backends import Explanation, Judgement
from workbench.label.prompts import Example
from workbench.label.text import (
    aliases,
    canonical,
    clean_label,
    display_name,
    joined_text,
    named_concepts,
    words,
)

_QUOTED = re.compile(r'"([^"]+)"')
_WORD = re.compile(r"[\w'-]+")
ASSERTED, NEGATED, ANY = "asserted", "negated", "any"


class Mention(NamedTuple):
    """One concept mention the report labeller found: names, value and words."""

    concept: str
    """The labeller's concept, canonical ('pleural effusion')."""
    names: frozenset[str]
    """Canonical concept and the CheXpert labels it implies."""
    value: int
    """1 asserted, 0 negated, -1 uncertain."""
    words: frozenset[str]
    """Lower-cased words of the mention's noun phrase ("small", "left", "pleural", "effusion")."""


class Reading(NamedTuple):
    """What the report labeller reads in a text."""

    values: dict[str, int]
    """Per concept name: 1 asserted, -1 uncertain, 0 negated (any positive wins, CheXpert)."""
    words: dict[str, frozenset[str]]
    """Per concept name: lower-cased words of its mentions' head phrases ("pleural effusion"),
    what a label naming the concept says the feature fires on (modifiers left out)."""
    mentions: tuple[Mention, ...] = ()


@lru_cache(maxsize=65536)
def read(text: str) -> Reading:
    """Concept values and mention words of ``text`` (cached: windows repeat across features)."""
    values: dict[str, list[int]] = {}
    found: dict[str, set[str]] = {}
    mentions = []
    for m in label_report(text).mentions:
        names, ws = aliases(m.concept), frozenset(_WORD.findall(m.text.lower()))
        mentions.append(Mention(canonical(m.concept), names, m.value, ws))
        head = _WORD.findall(text[m.head : m.end].lower())
        for name in names:
            values.setdefault(name, []).append(m.value)
            found.setdefault(name, set()).update(head)
    agg = {c: 1 if 1 in v else (-1 if -1 in v else 0) for c, v in values.items()}
    return Reading(agg, {c: frozenset(w) for c, w in found.items()}, tuple(mentions))


def reading_of(ex: Example) -> Reading:
    """A text example's own words, or an image study's FINDINGS (else its positive labels)."""
    if ex.kind == "text":
        return read(joined_text(ex.tokens))
    if ex.findings:
        return read(ex.findings)
    return Reading({canonical(c): 1 for c in ex.labels}, {})


def active_mentions(ex: Example) -> list[Mention]:
    """The mentions of a text example that hold a word the feature fires on."""
    if ex.kind != "text":
        return []
    hot = {w.text.lower() for w in words(ex.tokens, ex.acts) if w.act > 0}
    return [m for m in read(joined_text(ex.tokens)).mentions if m.words & hot]


class LabelClaim(NamedTuple):
    """What a label says, as the offline judge reads it."""

    concepts: frozenset[str]
    polarity: str
    quoted: frozenset[str]
    words: frozenset[str]
    """Words of the named concepts and the quoted phrases (for fuzzing and simulation)."""


@lru_cache(maxsize=4096)
def claim(label: str) -> LabelClaim:
    """Concepts named outside quotes, the claimed polarity, and the quoted words."""
    quoted = [q.strip().lower() for q in _QUOTED.findall(label) if q.strip()]
    bare = _QUOTED.sub(" ", label).lower()
    concepts = named_concepts(bare)
    if "asserted and negated" in bare or "any mention" in bare:
        polarity = ANY
    elif "negated" in bare:
        polarity = NEGATED
    else:
        polarity = ASSERTED
    words_ = {w for c in concepts for w in c.split()}
    words_ |= {w for q in quoted for w in _WORD.findall(q)}
    return LabelClaim(frozenset(concepts), polarity, frozenset(quoted), frozenset(words_))


def _fits(value: int | None, polarity: str) -> bool:
    """Does a mention's value (1 asserted, 0 negated, -1 uncertain) fit the claimed polarity?"""
    if value is None:
        return False
    return polarity == ANY or value == (0 if polarity == NEGATED else 1)


def semantic_hit(c: LabelClaim, reading: Reading) -> bool:
    """Does a text with this reading hold a named concept with the claimed polarity?"""
    return any(_fits(reading.values.get(name), c.polarity) for name in c.concepts)


def example_hit(c: LabelClaim, ex: Example) -> bool:
    """Would the feature, as the label claims it, be active somewhere in ``ex``?"""
    if c.concepts:
        return semantic_hit(c, reading_of(ex))
    if ex.kind != "text":
        return False
    text = " ".join(w.text.lower() for w in words(ex.tokens, ex.acts))
    return any(re.search(rf"(?<!\w){re.escape(q)}(?!\w)", text) for q in c.quoted)


def hit_words(c: LabelClaim, ex: Example) -> frozenset[str]:
    """The words of ``ex`` the label says the feature fires on."""
    if c.concepts:
        reading = reading_of(ex)
        if not semantic_hit(c, reading):
            return frozenset()
        mentioned = {w for name in c.concepts for w in reading.words.get(name, ())}
        return frozenset(mentioned | c.words)
    return c.words


def _polarity_words(counts: Counter[int]) -> str | None:
    """'asserted mentions' / 'negated mentions' (>= 80 %), else the statuses present."""
    total = sum(counts.values())
    if not total:
        return None
    if counts[1] >= 0.8 * total:
        return "asserted mentions"
    if counts[0] >= 0.8 * total:
        return "negated mentions"
    present = [n for v, n in ((1, "asserted"), (0, "negated"), (-1, "uncertain")) if counts[v]]
    return " and ".join(present) + " mentions"


def polarity_of(examples: list[Example], concept: str) -> str | None:
    """Whether the feature fires on asserted or negated mentions of ``concept``: the mentions
    at its activating words, else the concept's value in the whole window; None when no
    text example mentions it."""
    name = canonical(concept)
    at_words: Counter[int] = Counter()
    in_window: Counter[int] = Counter()
    for ex in examples:
        if ex.kind == "text":
            at_words.update(m.value for m in active_mentions(ex) if name in m.names)
            value = read(joined_text(ex.tokens)).values.get(name)
            in_window.update([] if value is None else [value])
    return _polarity_words(at_words) or _polarity_words(in_window)


def mentioned_concept(examples: list[Example]) -> str | None:
    """The concept whose mentions hold the activating words in at least half of the text
    examples (the labeller's own concept name), or None."""
    texts = [ex for ex in examples if ex.kind == "text"]
    counts: Counter[str] = Counter()
    for ex in texts:
        counts.update({m.concept for m in active_mentions(ex)})
    top = counts.most_common(1)
    return top[0][0] if top and top[0][1] >= max(1, len(texts) / 2) else None


class OfflineBackend:
    """Rule-based explainer and judge (see module docstring); deterministic, no network."""

    method = "offline"
    model = "rules"

    def __init__(self, strong_auroc: float = 0.9):
        self.strong_auroc = strong_auroc
        self.stats: Counter[str] = Counter()

    def explain(self, feature: int, examples: list[Example], max_act: float, hint=None):
        """A label led by a strong concept association, then the words the feature fires on."""
        counts: Counter[str] = Counter()
        for ex in examples:
            if ex.kind == "text":
                counts.update({w.text.lower() for w in words(ex.tokens, ex.acts) if w.act > 0})
        top = ", ".join(f'"{w}"' for w, _ in counts.most_common(3))
        image = ["image patches"] if any(ex.kind == "image" for ex in examples) else []
        if hint is not None and hint.auroc is not None and hint.auroc >= self.strong_auroc:
            about = [f"AUROC {hint.auroc:.2f}", polarity_of(examples, hint.concept)]
            parts = [f"{display_name(hint.concept)} ({', '.join(a for a in about if a)})"]
            parts += [f"words {top}"] if top else []
            return Explanation(clean_label("; ".join(parts + image)), None)
        concept = mentioned_concept(examples)
        if concept is not None:
            pol = polarity_of(examples, concept)
            text = f"words {top} ({pol} of {display_name(concept)})"
            return Explanation(clean_label("; ".join([text, *image])), None)
        return Explanation(clean_label(self._by_studies(examples, top, image)), None)

    @staticmethod
    def _by_studies(examples: list[Example], top: str, image: list[str]) -> str:
        """A weak feature's label: its words and the concepts most of its studies share."""
        concepts: Counter[str] = Counter()
        for ex in examples:
            concepts.update(c for c, v in reading_of(ex).values.items() if v == 1)
        common = [c for c, k in concepts.most_common(2) if k >= max(1, len(examples) / 2)]
        text = " and ".join(([f"words {top}"] if top else []) + image) or "no readable examples"
        return text + (f" in studies with {' and '.join(common)}" if common else "")

    def detect(self, feature: int, explanation: str, examples: list[Example]) -> Judgement:
        c = claim(explanation)
        return Judgement([int(example_hit(c, ex)) for ex in examples], None)

    def fuzz(self, feature: int, explanation: str, examples: list[Example]) -> Judgement:
        """1 where a marked word is one the label says the feature fires on in that example."""
        c = claim(explanation)
        predicted = []
        for ex in examples:
            marked = {w.text.lower() for w in words(ex.tokens, ex.acts) if w.act > 0}
            predicted.append(int(bool(marked & hit_words(c, ex))))
        return Judgement(predicted, None)

    def simulate(self, feature: int, explanation: str, example: Example) -> list[int]:
        """Predicted activation (0-10) per token: 10 on the words the label points at."""
        hits = hit_words(claim(explanation), example)
        levels = [0] * len(example.tokens)
        for w in words(example.tokens, example.acts):
            if w.text.lower() in hits:
                levels[w.start : w.end] = [10] * (w.end - w.start)
        return levels
