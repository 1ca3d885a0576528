"""Words, label hygiene and concept names for ``label``.

- :func:`words` joins subword tokens into the words they belong to, so a label quotes
  "cardiomegaly" instead of the pieces "cardi", "omeg", "aly";
- :func:`clean_label` is the gate every label passes before it is stored: control and
  bidirectional-override characters are removed, whitespace collapsed, and an empty or
  over-long label is rejected (:class:`RejectedLabelError`, retried and counted by the client);
- :func:`display_name` and :func:`names_concept` turn concept ids (``pleural_effusion``,
  ``change_new``, ``Pleural Effusion``) into words and decide whether a label names a concept,
  synonyms included (the phrase lists of the report labeller, :mod:`workbench.cxr.labeller`).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

from workbench.cxr.findings import CHEXPERT_OF
from workbench.cxr.labeller.context import label_report
from workbench.cxr.labeller.rules import EXTRA_CHEXPERT

# Characters that continue a word when they touch letters on the left ("X-ray", "patient's").
_JOINERS = frozenset("-'")
_SPECIAL = re.compile(r"^<[^<>\s]+>$")  # "<image>", "<s>": a word of its own


MAX_EXPLANATION_CHARS = 400
"""Longest label stored (longer answers are rejected and asked for again)."""


class MalformedAnswerError(ValueError):
    """An LLM answer that the parser cannot read (retried, then reported)."""


class RejectedLabelError(MalformedAnswerError):
    """A label that is empty or too long after cleaning (retried and counted by the client)."""


class Word(NamedTuple):
    """One word of an example: its text, token span ``[start, end)`` and max activation."""

    text: str
    start: int
    end: int
    act: float


def _piece(token: str) -> str:
    """A token's text with SentencePiece's word marker read as the space it stands for."""
    return " " + token[1:] if token.startswith("\u2581") else token


def _starts_word(prev: str, tok: str) -> bool:
    """Does ``tok`` (after ``prev``) begin a new word?"""
    if not prev or not tok or tok[0].isspace() or prev[-1].isspace():
        return True
    if _SPECIAL.match(prev.strip()) or _SPECIAL.match(tok.strip()):
        return True
    left, right = prev[-1], tok[0]
    if left.isalnum() and right.isalnum():
        return False
    # a hyphen or apostrophe glued to a word continues it: "X" "-" "ray"
    return not ((left.isalnum() and right in _JOINERS) or (left in _JOINERS and right.isalnum()))


def words(tokens: tuple[str, ...] | list[str], acts: tuple[float, ...] | list[float]) -> list[Word]:
    """The words of a token sequence, each with its token span and strongest activation.

    Byte-level BPE and SentencePiece tokens carry the space before a word, so a token starts
    a word when it starts with whitespace (or ``▁``), follows whitespace or sits at a
    letter/punctuation edge; pieces glued to letters ("omeg", "aly") continue the word.
    """
    out: list[Word] = []
    prev = ""
    for i, (raw, act) in enumerate(zip(tokens, acts, strict=True)):
        tok = _piece(raw)
        if out and not _starts_word(prev, tok):
            w = out[-1]
            out[-1] = Word(w.text + tok.strip(), w.start, i + 1, max(w.act, float(act)))
        else:
            out.append(Word(tok.strip(), i, i + 1, float(act)))
        prev = tok if tok else prev
    return [w for w in out if w.text]


def joined_text(tokens) -> str:
    """The text of a token sequence (SentencePiece markers read as spaces)."""
    return "".join(_piece(t) for t in tokens)


def active_words(tokens, acts, threshold: float = 0.0) -> list[str]:
    """Lower-cased words holding a token with activation above ``threshold``, in order."""
    return [w.text.lower() for w in words(tokens, acts) if w.act > threshold]


def clean_label(text: str | None, max_chars: int = MAX_EXPLANATION_CHARS) -> str:
    """``text`` fit to store as a label: printable, one line, non-empty, at most ``max_chars``.

    Control characters, Unicode format characters (bidi overrides U+202A-U+202E and
    U+2066-U+2069, zero-width joiners, BOM), private-use and unassigned code points are
    removed; line breaks and other spaces become one space.
    """
    out = []
    for ch in unicodedata.normalize("NFC", text or ""):
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zl", "Zp", "Zs"):
            out.append(" ")
        elif not cat.startswith("C"):
            out.append(ch)
    cleaned = " ".join("".join(out).split())
    if not cleaned:
        raise RejectedLabelError(f"empty label (answer {(text or '')[:80]!r})")
    if len(cleaned) > max_chars:
        raise RejectedLabelError(f"label of {len(cleaned)} characters (limit {max_chars})")
    return cleaned


def canonical(concept: str) -> str:
    """One spelling per concept: lower case, spaces for underscores ('Pleural Effusion',
    'pleural_effusion' -> 'pleural effusion')."""
    return concept.replace("_", " ").lower().strip()


# Longitudinal change concepts of the phantom: how a label says them.
_CHANGE_WORDS = {
    "change new": ("new since the prior study", r"new(?:ly)?|interval development|appeared"),
    "change resolved": ("resolved since the prior study", r"resolv\w*|resolution|no longer"),
    "change increased": (
        "increased since the prior study",
        r"increas\w*|larger|enlarg\w*|worse\w*|worsen\w*|progress\w*",
    ),
    "change decreased": (
        "decreased since the prior study",
        r"decreas\w*|smaller|improv\w*|less",
    ),
    "change unchanged": ("unchanged since the prior study", r"unchanged|stable|no change"),
}


def display_name(concept: str) -> str:
    """How a label writes ``concept``: 'pleural effusion', 'new since the prior study'."""
    name = canonical(concept)
    return _CHANGE_WORDS[name][0] if name in _CHANGE_WORDS else name


def aliases(concept: str) -> frozenset[str]:
    """A labeller concept's canonical name and those of the CheXpert labels it implies."""
    parents = CHEXPERT_OF.get(concept) or (
        (EXTRA_CHEXPERT[concept],) if concept in EXTRA_CHEXPERT else ()
    )
    return frozenset(canonical(c) for c in (concept, *parents))


def _renamed(concept: str) -> tuple[str, ...]:
    """The CheXpert label a labeller-only concept stands for ('support_device' -> 'support
    devices'); empty for phantom concepts, whose CheXpert labels are parents, not names."""
    return (canonical(EXTRA_CHEXPERT[concept]),) if concept in EXTRA_CHEXPERT else ()


@lru_cache(maxsize=4096)
def named_concepts(label: str, parents: bool = False) -> frozenset[str]:
    """Canonical concepts a label names: report-labeller mentions (any status, so synonyms
    such as 'enlarged heart' or 'ICD' count), change words, and with ``parents`` also the
    CheXpert labels those concepts imply ('pacemaker' -> 'support devices')."""
    text = canonical(label)
    found: set[str] = set()
    for m in label_report(text).mentions:
        found |= aliases(m.concept) if parents else {canonical(m.concept), *_renamed(m.concept)}
    for name, (_, pattern) in _CHANGE_WORDS.items():
        if re.search(rf"\b(?:{pattern})\b", text):
            found.add(name)
    return frozenset(found)


def names_concept(label: str, concept: str) -> bool:
    """True when ``label`` names ``concept`` (synonyms allowed; see :func:`named_concepts`).

    The matcher of the phantom ground-truth metric: the concept's own words, any phrase the
    report labeller maps to it, or a change word. A label naming a finding also names its
    CheXpert labels ('pacemaker' names Support Devices), not the other way round ('support
    devices' does not name a pacemaker).
    """
    name = canonical(concept)
    text = canonical(label)
    if re.search(rf"\b{re.escape(name)}\b", text):
        return True
    return name in named_concepts(label, parents=True)
