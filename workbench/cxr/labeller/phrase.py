"""Mention spans as noun phrases: a mention reaches back over the finding's pre-modifiers.

The phrase lists of :mod:`workbench.cxr.labeller.rules` match a finding's head words
("atelectasis", "pleural effusion", "PICC line"). A mention in radiology NLP is the finding's
noun phrase, "bibasilar plate-like atelectasis", "small left pleural effusion", "left PICC
line", and a feature that reads the finding may fire on its modifiers rather than its head
word. :func:`phrase_start` extends a mention back over a run of pre-modifiers
(:data:`~workbench.cxr.labeller.rules.PRE_MODIFIERS`: laterality, location, size and
severity, morphology), joined by single spaces, or by "and" / "or" / "to" between two
modifiers ("left and right", "mild to moderate"). It stops at anything else: a determiner, a
cue ("no", "possible", "stable"), a change word ("new"), punctuation, a line break that ends
a paragraph, and the end of the previous mention. Rule-based and offline like the rest of the
labeller: ``spacy.blank("en")`` has no tagger or parser to find noun phrases.

Statuses and study labels are decided on the matched head phrase before the extension
(:func:`workbench.cxr.labeller.nlp.mentions`), so the extension moves only the span.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from workbench.cxr.labeller import rules

_MOD = "|".join(f"(?:{p})" for ps in rules.PRE_MODIFIERS.values() for p in ps)
_JOIN = "|".join(rules.MODIFIER_JOINS)
# A modifier right before ``endpos`` (then a space), and one before a joining word.
_BEFORE = re.compile(rf"(?<![\w.-])(?:{_MOD}) $")
_JOINED = re.compile(rf"(?<![\w.-])(?:{_MOD}) (?:{_JOIN}) $")
WINDOW = 80  # characters searched before the current start (a modifier run is shorter)


def is_modifier(word: str) -> bool:
    """True when ``word`` (lower case) is one whole pre-modifier."""
    return _BEFORE.fullmatch(word + " ") is not None


def collapsed_start(low: str, floor: int, start: int) -> int:
    """Start of the phrase whose head starts at ``start`` in collapsed, lower-cased text
    (see :func:`workbench.cxr.labeller.nlp.collapse`), never before ``floor``."""
    at = start
    while True:
        lo = max(floor, at - WINDOW)
        m = _BEFORE.search(low, lo, at)
        if m is None and at < start:
            m = _JOINED.search(low, lo, at)
        if m is None or m.start() < floor:
            return at
        at = m.start()


def phrase_start(low: str, index: list[int], floor: int, start: int) -> int:
    """:func:`collapsed_start` for original character offsets ``floor`` and ``start`` of the
    text that ``collapse`` turned into ``low`` with offsets ``index``."""
    lo = bisect_left(index, floor)
    at = bisect_left(index, start)
    return index[collapsed_start(low, lo, at)]
