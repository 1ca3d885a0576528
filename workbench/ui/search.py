"""How the Features tab finds features: text search ranked by meaning, concepts by name.

A text search matches every label of every feature, but a match is worth more or less by
*where* it is (:func:`match_reason`), from best to worst:

0. the feature's number;
1. the label the feature is known by (:mod:`workbench.ui.labels`), outside quoted phrases;
2. another of its labels, outside quoted phrases;
3. only inside quoted report phrases of a label (analyse's n-grams, an LLM's quotes);
4. only inside quoted phrases that are stock negations ("No pneumothorax", "or effusion"):
   such a feature fires on the *word* in "no X" sentences, the opposite of a finding.

Matches are ranked by that tier and then by the table's sort; each row says why it matched.

Concepts come from two or three sources whose names differ in case and spelling
("Cardiomegaly" from CheXpert, "cardiomegaly" from the phantom's ground truth): they are
shown normalised (lower case, spaces) with their source, so each concept appears once per
source and says which it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

SOURCES = {"phantom": "ground truth", "chexpert": "CheXpert", "user": "your labels"}
# words that make a phrase a negation (or a list under one: "no effusion or pneumothorax")
NEGATION_CUES = ("no", "not", "without", "nor", "or", "negative for", "free of", "absent")
_QUOTED = re.compile(r'"([^"]*)"')


class Match(NamedTuple):
    """Why a feature matched a search: its tier (0 best) and a sentence for the table."""

    tier: int
    why: str


def norm_concept(name: str) -> str:
    """'pleural_effusion' and 'Pleural Effusion' -> 'pleural effusion'."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def concept_display(concept: str, source: str | None) -> str:
    """A concept as shown everywhere: normalised name and its source."""
    where = SOURCES.get(source or "", source or "")
    return f"{norm_concept(concept)} · {where}" if where else norm_concept(concept)


def concept_value(source: str, concept: str) -> str:
    """The filter's value of a concept: 'source:name' (names may contain spaces)."""
    return f"{source}:{concept}"


def parse_concept(value: str | None, known: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """(source, concept) from a filter value 'source:name' or a bare name; None if unknown.

    A bare name matches exactly first, then by normalised name, preferring ground truth.
    """
    if not value:
        return None
    pairs = [(r["source"], r["concept"]) for r in known]
    src, _, name = value.partition(":")
    if name and (src, name) in pairs:
        return src, name
    exact = [p for p in pairs if p[1] == value]
    loose = [p for p in pairs if norm_concept(p[1]) == norm_concept(value)]
    order = list(SOURCES)
    for cands in (exact, loose):
        if cands:
            return min(cands, key=lambda p: order.index(p[0]) if p[0] in order else len(order))
    return None


def is_negated(phrase: str, text: str) -> bool:
    """Whether ``text`` stands under a negation cue in ``phrase`` ("No pleural effusion",
    "or pneumothorax", "without effusion")."""
    low, target = phrase.lower(), text.lower()
    at = low.find(target)
    if at < 0:
        return False
    before = re.findall(r"[a-z]+", low[:at])
    joined = " ".join(before)
    return any(
        joined == cue or joined.startswith(cue + " ") or f" {cue} " in f" {joined} "
        for cue in NEGATION_CUES
    )


def _outside_quotes(label: str) -> str:
    return _QUOTED.sub(" ", label)


def match_reason(
    text: str, feature: int, known: dict[str, Any], matched: Sequence[dict[str, Any]]
) -> Match:
    """Where ``text`` matched: ``known`` is the feature's known-by label row (label, method),
    ``matched`` the labels containing the text (method, label)."""
    q = text.strip().lower()
    if q.isdigit() and int(q) == feature:
        return Match(0, f"feature number {feature}")
    known_label = (known.get("label") or "") if known else ""
    if q in _outside_quotes(known_label).lower():
        return Match(1, f"its label ({known.get('method')}) names “{text.strip()}”")
    for lab in matched:
        if lab["label"] != known_label and q in _outside_quotes(lab["label"]).lower():
            return Match(2, f"another label ({lab['method']}) names “{text.strip()}”")
    phrases = [p for lab in matched for p in _QUOTED.findall(lab["label"]) if q in p.lower()]
    plain = [p for p in phrases if not is_negated(p, q)]
    if plain:
        return Match(3, f"only in report phrase “{plain[0]}”")
    if phrases:
        return Match(4, f"only in negated phrase “{phrases[0]}” (fires on the word, not a finding)")
    return Match(3, "label text")


def rank(rows: list[dict[str, Any]], text: str, sort_key: str, descending: bool) -> list[dict]:
    """Search hits ordered by match tier, then by ``sort_key`` (missing values last), then
    feature; each row gains ``why``."""
    for r in rows:
        m = match_reason(text, r["feature"], r, r.get("matched") or [])
        r["tier"], r["why"] = m.tier, m.why

    def key(r: dict) -> tuple:
        v = r.get(sort_key)
        missing = v is None
        num = 0.0 if missing else float(v)
        return (r["tier"], missing, -num if descending else num, r["feature"])

    return sorted(rows, key=key)
