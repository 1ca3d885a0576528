"""The report labeller's spaCy pipeline: sentences, concept mentions, NegEx statuses.

``spacy.blank("en")`` with five components, all offline (no trained model):

1. ``sentencizer``, then ``cxr_boundaries``: a blank line and a section header ("FINDINGS:",
   "Impression:", any case) also start a sentence, so a cue never reaches across them;
2. ``cxr_mentions``: the concept phrase lists of :mod:`workbench.cxr.labeller.rules` become
   ``doc.ents`` (label = the concept names joined by ``|``; statements of normality such as
   "lungs are clear" get a ``normal:`` prefix). The phrases are regular expressions spanning
   several words ("enlargement of the cardiac silhouette", "blunting of the costophrenic
   angle"), which spaCy's ``EntityRuler`` cannot express (its REGEX acts on one token), so
   they are matched on the text and turned into spans; longest match wins where two overlap;
3. three negspacy ``Negex`` components over those entities, with the termsets of
   :mod:`workbench.cxr.labeller.terms`: ``negex`` (negated), ``uncertainty`` (extension
   ``uncertain``) and ``history`` (extension ``historical``).

:func:`mentions` decides each entity's status from the same Negex cue matches (pseudo
negations removed) and scopes (sentence and termination boundaries) that set those flags,
with three refinements: a cue inside a multi-word mention counts ("heart is no longer
enlarged"); a following cue reaches back over a list of mentions ("effusion or pneumothorax
is not seen") but not over a clause ("effusion has increased and pneumothorax has
resolved"); when a negation and an uncertainty cue both reach a mention the nearest decides
("possible atelectasis, no effusion"). *Historical* ("stable", "again seen", "no change in")
applies only when neither does; a normal statement is negated. An observation linked to a
diagnosis of the same concept ("nodular opacity ... may represent a nodule") takes the
diagnosis' status. The Negex flags stay on the entities for inspection. Last, each mention's
span is extended back over its pre-modifiers ("bibasilar plate-like atelectasis",
:mod:`workbench.cxr.labeller.phrase`); the status stays the one decided on the head phrase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from workbench.cxr.labeller import phrase, rules, terms
from workbench.cxr.sections import SYNONYMS

if TYPE_CHECKING:  # spaCy is imported when the pipeline is first built (it takes a second)
    from spacy.language import Language
    from spacy.tokens import Doc

STATUSES: tuple[str, ...] = ("asserted", "negated", "uncertain", "historical")
# Negex component name -> (status it gives, span extension it sets)
_NEGEX = {"negex": ("negated", "negex"), "uncertainty": ("uncertain", "uncertain"),
          "history": ("historical", "historical")}  # fmt: skip
_HEADER_NAMES = sorted({*SYNONYMS, *SYNONYMS.values(), "indication", "technique"}, key=len)
_HEADER = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(h) for h in reversed(_HEADER_NAMES)) + r")"
    r"[ \t]*:",
    re.IGNORECASE,
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


class RawMention(NamedTuple):
    """One concept mention: character span in the text, concepts, status and deciding cue.

    ``start``/``end`` span the finding's noun phrase, pre-modifiers included ("bibasilar
    plate-like atelectasis"); ``head`` is the start of the phrase the concept's pattern
    matched ("atelectasis"), on which the status was decided.
    """

    start: int
    end: int
    concepts: tuple[str, ...]
    status: str
    cue: str | None
    head: int


def _alternation(patterns: Iterable[str]) -> re.Pattern:
    """One regex for a phrase list, anchored on word edges (also for patterns ending in '.')."""
    body = "|".join(f"(?:{p})" for p in patterns)
    return re.compile(r"(?:(?<!\w)|(?!\w))(?:" + body + r")(?:(?!\w)|(?<!\w))")


_MENTIONS = {c: _alternation(ps) for c, ps in rules.MENTIONS.items()}
_NORMALS = tuple((_alternation([p]), concepts) for p, concepts in rules.NORMALS)
_LINK = re.compile(rules.INFERENCE_LINK)


def collapse(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with each whitespace run as one space (a blank line as one newline),
    and the original offset of every character of it (plus the text's length at the end)."""
    out, index, i = [], [], 0
    for m in re.finditer(r"\s+", text):
        for j in range(i, m.start()):
            low = text[j].lower()
            out.append(low if len(low) == 1 else text[j])
            index.append(j)
        out.append("\n" if _BLANK_LINE.search(m.group()) else " ")
        index.append(m.start())
        i = m.end()
    for j in range(i, len(text)):
        low = text[j].lower()
        out.append(low if len(low) == 1 else text[j])
        index.append(j)
    return "".join(out), [*index, len(text)]


def find_spans(low: str) -> list[tuple[int, int, tuple[str, ...], bool]]:
    """(start, end, concepts, normal) of mentions and normal statements in collapsed text;
    the longest wins where two overlap, a mention and a same-span mention both stay."""
    found = [(m.start(), m.end(), (c,), False) for c, rx in _MENTIONS.items()
             for m in rx.finditer(low)]  # fmt: skip
    found += [(m.start(), m.end(), cs, True) for rx, cs in _NORMALS for m in rx.finditer(low)]
    found.sort(key=lambda s: (s[0] - s[1], not s[3], s[0]))
    kept: list[tuple[int, int, tuple[str, ...], bool]] = []
    for span in found:
        same = [k for k in kept if k[:2] == span[:2]]
        clash = [k for k in kept if k[0] < span[1] and span[0] < k[1]]
        if not clash or (same and same == clash and not same[0][3] and not span[3]):
            kept.append(span)
    merged: dict[tuple[int, int], tuple[tuple[str, ...], bool]] = {}
    for s, e, cs, normal in sorted(kept):
        old = merged.get((s, e), ((), normal))
        merged[(s, e)] = (old[0] + tuple(c for c in cs if c not in old[0]), normal)
    return [(s, e, cs, normal) for (s, e), (cs, normal) in sorted(merged.items())]


def cxr_boundaries(doc: Doc) -> Doc:
    """Start a sentence after a blank line and at (and after) a section header."""
    starts: set[int] = set()
    for tok in doc[:-1]:
        if tok.is_space and tok.text.count("\n") >= 2:
            starts.add(tok.i + 1)
    for m in _HEADER.finditer(doc.text):
        head = doc.char_span(m.start(1), m.end(), alignment_mode="expand")
        if head is not None:
            starts.update(i for i in (head.start, head.end) if 0 < i < len(doc))
    for i in starts:
        doc[i].is_sent_start = True
    return doc


def cxr_mentions(doc: Doc) -> Doc:
    """Concept mentions and normal statements as ``doc.ents`` (non-overlapping)."""
    low, index = collapse(doc.text)
    ents = []
    for s, e, concepts, normal in find_spans(low):
        span = doc.char_span(index[s], index[e - 1] + 1, alignment_mode="expand")
        if span is None or any(span.start < x.end and x.start < span.end for x in ents):
            continue
        label = ("normal:" if normal else "") + "|".join(concepts)
        ents.append(doc.char_span(span.start_char, span.end_char, label=label))
    doc.ents = ents
    return doc


@lru_cache(maxsize=1)
def pipeline() -> Language:
    """The labeller's pipeline (built once per process; needs no download)."""
    import negspacy.negation  # noqa: F401  (registers the "negex" factory)
    import spacy
    from spacy.language import Language

    for name, fn in (("cxr_boundaries", cxr_boundaries), ("cxr_mentions", cxr_mentions)):
        if name not in Language.factories:
            Language.component(name, func=fn)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("cxr_boundaries")
    nlp.add_pipe("cxr_mentions")
    sets = {"negex": terms.negation_termset(), "uncertainty": terms.uncertainty_termset(),
            "history": terms.historical_termset()}  # fmt: skip
    for name, (_, ext) in _NEGEX.items():
        nlp.add_pipe("negex", name=name, config={"neg_termset": sets[name], "extension_name": ext})
    return nlp


def _cues(nlp: Language, doc: Doc) -> tuple[dict[str, list], list[int]]:
    """Per status: its cues as (start, end, 'pre' | 'post') token ranges; all scope starts."""
    found, starts = {}, {s.start for s in doc.sents}
    for name, (status, _) in _NEGEX.items():
        pipe = nlp.get_pipe(name)
        pre, post, term = pipe.process_negations(doc)
        found[status] = [(s, e, "pre") for _, s, e in pre] + [(s, e, "post") for _, s, e in post]
        starts |= {s for _, s, _ in term}
    return found, sorted(starts)


def _distance(cue: tuple, start: int, end: int, scope: list[int]) -> int | None:
    """Tokens between a cue and the span [start, end) if the cue reaches it, else None.

    A preceding cue reaches forward to the next scope start, a following cue back to the
    last one (``scope`` also holds the ends of mention lists, see :func:`_list_ends`); a
    preceding cue inside a multi-word span (before its last token) counts too.
    """
    cs, ce, kind = cue
    if kind == "pre" and cs < start:
        return None if any(cs < b <= start for b in scope) else start - ce
    if kind == "pre" and start <= cs and ce < end:
        return 0
    if kind == "post" and cs >= end:
        return None if any(end <= b <= cs for b in scope) else cs - end
    return None


def _list_ends(doc: Doc) -> list[int]:
    """Token index after each mention not followed by a list continuation: a following cue
    ("are not seen") reaches back over "effusion or pneumothorax", not over "effusion has
    increased and pneumothorax"."""
    ents = list(doc.ents)
    out = []
    for a, b in zip(ents, ents[1:]):
        gap = doc[a.end : b.start]
        if not all(t.is_space or t.lower_ in terms.LIST_GLUE for t in gap):
            out.append(b.start)
    return out


def _status(ent, cues: dict[str, list], scopes: tuple, doc: Doc) -> tuple[str, str | None]:
    """Status and deciding cue of one entity (see the module docstring for the order).

    ``scopes``: the scope starts for preceding cues and those for following cues.
    """
    if ent.label_.startswith("normal:"):
        return "negated", "normal"
    best: dict[str, tuple[int, str | None]] = {}
    for status, _ext in _NEGEX.values():
        near = []
        for cs, ce, kind in cues[status]:
            d = _distance((cs, ce, kind), ent.start, ent.end, scopes[kind == "post"])
            if d is not None:
                near.append((d, doc[cs:ce].text.lower()))
        if near:
            best[status] = min(near)
    if "negated" in best and "uncertain" in best:
        winner = "negated" if best["negated"][0] < best["uncertain"][0] else "uncertain"
        return winner, best[winner][1]
    for status in ("negated", "uncertain", "historical"):
        if status in best:
            return status, best[status][1]
    return "asserted", None


def _link(found: list[RawMention], text: str) -> list[RawMention]:
    """An observation takes the status of the same concept's diagnosis linked to it."""
    out = list(found)
    for i in range(len(out) - 2, -1, -1):
        a, b = out[i], out[i + 1]
        gap = " ".join(text[a.end : b.start].lower().split())
        gap = f" {gap} " if gap else " "
        if set(a.concepts) & set(b.concepts) and _LINK.fullmatch(gap):
            out[i] = a._replace(status=b.status, cue="linked")
    return out


def _phrases(found: list[RawMention], text: str) -> list[RawMention]:
    """Each mention's span extended back over its pre-modifiers (:mod:`.phrase`), never
    into the previous mention; normal statements ("lungs are clear") keep their span."""
    low, index = collapse(text)
    out, floor = [], 0
    for m in found:
        start = m.start if m.cue == "normal" else phrase.phrase_start(low, index, floor, m.start)
        out.append(m._replace(start=start))
        floor = max(floor, m.end)
    return out


def mentions(text: str) -> list[RawMention]:
    """Every concept mention of ``text`` in order, with character span (the finding's noun
    phrase), status and cue; the status is decided on the matched head phrase."""
    if not text or not text.strip():
        return []
    nlp = pipeline()
    doc = nlp(text)
    cues, scope = _cues(nlp, doc)
    post_scope = sorted({*scope, *_list_ends(doc)})
    found = []
    for ent in doc.ents:
        status, cue = _status(ent, cues, (scope, post_scope), doc)
        concepts = tuple(ent.label_.removeprefix("normal:").split("|"))
        s = ent.start_char
        found.append(RawMention(s, ent.end_char, concepts, status, cue, s))
    return _phrases(_link(found, text), text)
