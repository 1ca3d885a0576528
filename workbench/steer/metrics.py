"""What a steered report is judged by: the concept's flip, side effects, fluency, structure.

- **Readings**: the rule-based report labeller (:mod:`workbench.cxr.labeller`) reads each
  concept as 1 (positive), 0 (negated), -1 (uncertain) or None (not mentioned). A concept is
  *stated* when it reads 1.
- **Success**: steering to *add* a concept succeeds on a study whose unsteered findings do not
  state it when the steered findings do; steering to *remove* it succeeds on a study whose
  unsteered findings state it when the steered ones no longer do. Studies already in the
  intended state are not eligible (they cannot flip).
- **Side effects**: the other phantom concepts (findings and devices) whose stated/not-stated
  reading changed.
- **Fluency**: the repeated n-gram rate (share of word 3-grams that repeat an earlier one in
  the same text: "with with with ..." -> ~1, a normal report ~0) and the perplexity of the
  text under the *unsteered* model, teacher-forced after the study's own prompt.
- **Parses**: the text still reads as a FINDINGS section: section parsing finds it, it has a
  sentence, and no sentence runs past :data:`MAX_SENTENCE_WORDS` words.

Nothing here writes anything; the app uses the same readings for its verdicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from workbench.cxr.findings import CHEXPERT_LABELS, DEVICES, FINDINGS
from workbench.cxr.labeller.context import label_report
from workbench.cxr.sections import parse_report
from workbench.models.batch import continuation_nll
from workbench.models.registry import ModelAdapter

JUDGED: tuple[str, ...] = FINDINGS + DEVICES
"""The concepts whose readings count as side effects (the 13 phantom findings and devices)."""
READABLE: tuple[str, ...] = JUDGED + CHEXPERT_LABELS
"""Every concept the labeller reads from text (a steering target must be one of them)."""
MAX_SENTENCE_WORDS = 40
DEGENERATE_REPEAT = 0.3
"""A report whose repeated 3-gram rate exceeds this (or that does not parse) is degenerate."""
_SENTENCE = re.compile(r"[.;!?](?:\s|$)")


class Judgement(NamedTuple):
    """Everything measured on one text (steered or not)."""

    readings: dict[str, int | None]
    repeat_rate: float
    parses: bool
    perplexity: float | None


def readings(text: str | None, concepts: Sequence[str] = JUDGED) -> dict[str, int | None]:
    """The labeller's value of each concept in ``text`` (None: not mentioned)."""
    labels = label_report(text or "")
    out: dict[str, int | None] = {}
    for c in concepts:
        if c in labels.concepts:
            out[c] = labels.concepts.get(c)
        else:
            v = labels.chexpert.get(c)
            out[c] = None if v is None else int(v)
    return out


def concept_value(text: str | None, concept: str) -> int | None:
    """The labeller's reading of one concept in ``text``."""
    return readings(text, (concept,))[concept]


def flip(baseline: int | None, steered: int | None, direction: str) -> tuple[bool, bool]:
    """(eligible, success) of one study for steering ``direction`` ('add' or 'remove')."""
    if direction == "add":
        return baseline != 1, baseline != 1 and steered == 1
    if direction == "remove":
        return baseline == 1, baseline == 1 and steered != 1
    raise ValueError(f"direction must be add or remove, got {direction!r}")


def side_effects(
    baseline: dict[str, int | None],
    steered: dict[str, int | None],
    target: str,
    concepts: Sequence[str] = JUDGED,
) -> list[str]:
    """Concepts of ``concepts`` other than ``target`` whose stated/not-stated reading differs."""
    return sorted(
        c for c in concepts if c != target and (baseline.get(c) == 1) != (steered.get(c) == 1)
    )


def words(text: str | None) -> list[str]:
    """Lower-cased words and punctuation marks of ``text``."""
    return re.findall(r"\w+|[^\w\s]", (text or "").lower())


def repeat_rate(text: str | None, n: int = 3) -> float:
    """Share of the word n-grams of ``text`` that already occurred earlier in it."""
    toks = words(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def parses(text: str | None) -> bool:
    """Whether ``text`` reads as a FINDINGS section of sentences (see module docstring)."""
    findings = parse_report(f"FINDINGS: {text or ''}").findings
    if not findings:
        return False
    sentences = [s for s in _SENTENCE.split(findings) if s.strip()]
    return bool(sentences) and all(len(s.split()) <= MAX_SENTENCE_WORDS for s in sentences)


def degenerate(judgement: Judgement) -> bool:
    """Repeats itself (> :data:`DEGENERATE_REPEAT`) or does not parse."""
    return judgement.repeat_rate > DEGENERATE_REPEAT or not judgement.parses


def perplexity(adapter: ModelAdapter, study: Any, text: str | None) -> float | None:
    """exp(mean NLL) of ``text``'s findings tokens after ``study``'s prompt, unsteered.

    Every teacher-forced position counts (the findings and the closing end-of-sequence
    token), so a text that should have ended but ran on is penalised too. None for no text.
    """
    return perplexities(adapter, study, [text])[0]


@torch.no_grad()
def perplexities(
    adapter: ModelAdapter, study: Any, texts: Sequence[str | None]
) -> list[float | None]:
    """:func:`perplexity` of several texts after one study's prompt, the prompt run once
    (:func:`workbench.models.batch.continuation_nll`)."""
    prompt = adapter.prepare(study)
    n_prompt = prompt.prompt_length
    ids_P = prompt.model_inputs["input_ids"][0]
    wanted, rests = [], []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            continue
        full = adapter.prepare(study, findings=text)
        ids_T = full.model_inputs["input_ids"][0]
        kinds = [t["kind"] for t in full.tokens]
        if not torch.equal(ids_T[:n_prompt], ids_P) or "report" in kinds[:n_prompt]:
            raise ValueError(f"{adapter.name}: the findings do not follow the study's prompt")
        if len(kinds) > n_prompt:
            wanted.append(i)
            rests.append(ids_T[n_prompt:].tolist())
    out: list[float | None] = [None] * len(texts)
    for i, nll_L in zip(wanted, continuation_nll(adapter.model, prompt.model_inputs, rests),
                        strict=True):  # fmt: skip
        out[i] = float(math.exp(min(float(nll_L.mean()), 50.0)))
    return out


def judge(
    adapter: ModelAdapter | None, study: Any, text: str, concepts: Sequence[str] = READABLE
) -> Judgement:
    """Readings, repeat rate, parse check and (with an adapter) perplexity of one text."""
    return judge_many(adapter, study, [text], concepts)[0]


def judge_many(
    adapter: ModelAdapter | None,
    study: Any,
    texts: Sequence[str],
    concepts: Sequence[str] = READABLE,
) -> list[Judgement]:
    """:func:`judge` of several texts of one study, their perplexities scored in one batch."""
    ppls = perplexities(adapter, study, texts) if adapter is not None else [None] * len(texts)
    return [
        Judgement(readings(t, concepts), repeat_rate(t), parses(t), p)
        for t, p in zip(texts, ppls, strict=True)
    ]
