"""One feature through ``label``: explain it, then score the label on held-out examples.

Every scorer writes ``feature_scores`` rows with ``scorer = '<name>:<judge method>'``:

- ``detection`` (delphi, Paulo et al. 2024, sec. 3.3): held-out activating examples mixed
  with as many random silent ones; the judge says which ones the feature fires on;
- ``detection_hard``: the same activating examples against *hard* silent ones, which hold the
  feature's own words or concept ("No pleural effusion." for an asserted-effusion feature), so
  a label that only names a word scores worse than one that names the meaning;
- ``fuzz`` (delphi): held-out text examples with their activating tokens marked, or the marks
  moved to random silent tokens; the judge says which marks fit the label;
- ``simulation`` (OpenAI's automated-interpretability, delphi's simulation scorer): the
  explainer predicts a 0-10 activation per token from the label alone, and the score is the
  correlation with the true activations pooled over activating and silent text examples.

A request that fails after its retries raises :class:`workbench.label.backends.LabelError`, which
``run_label`` records as a failed feature before going on; nothing of that feature is stored,
so a rerun tries it again.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from workbench.label.backends import Backend
from workbench.label.data import FeatureExamples, NegativePool
from workbench.label.prompts import Example
from workbench.label.scoring import (
    DetectionMetrics,
    chunks,
    detection_metrics,
    fuzz_set,
    shuffled,
    simulation_score,
)
from workbench.label.text import canonical, words


class Work(NamedTuple):
    """What one feature still needs: a new label, and the statistical label to score."""

    explain: bool
    statistical: str | None


class ScoreSets(NamedTuple):
    """Shuffled (items, truth) per scorer, None where the feature cannot be scored so, and
    the text examples to simulate (activating first, then silent)."""

    detection: tuple[list, list[int]] | None
    hard: tuple[list, list[int]] | None
    fuzz: tuple[list, list[int]] | None
    simulation: list[Example]


def judge(ask, feature: int, label: str, items, truth, per_prompt: int) -> DetectionMetrics:
    """Metrics of ``label`` over ``items``, asking ``ask`` (detect or fuzz) a batch at a time."""
    predicted: list[int] = []
    probs: list[float] | None = []
    for batch in chunks(items, per_prompt):
        answer = ask(feature, label, batch)
        predicted += answer.predicted
        probs = None if probs is None or answer.probs is None else probs + answer.probs
    return detection_metrics(truth, predicted, probs)


def hard_keys(fx: FeatureExamples, n_words: int = 5) -> set[str]:
    """The words that make a silent example hard for this feature: the words it fires on in
    its explainer examples (most frequent first) and the words of its best concept."""
    counts: Counter[str] = Counter()
    for ex in fx.explain:
        if ex.kind == "text":
            counts.update({w.text.lower() for w in words(ex.tokens, ex.acts) if w.act > 0})
    ranked = [w for w, _ in counts.most_common() if any(ch.isalnum() for ch in w)]
    keys = set(ranked[:n_words])
    if fx.hint is not None:
        keys |= {w for w in canonical(fx.hint.concept).split() if w != "change"}
    return keys


def score_sets(fx: FeatureExamples, pool: NegativePool, cfg) -> tuple[ScoreSets, list[str]]:
    """The example sets of every enabled scorer, and notes on what could not be built."""
    positives = fx.held_out[: cfg.n_score]
    n_image = sum(ex.kind == "image" for ex in positives)
    counts = (len(positives) - n_image, n_image)
    exclude = {ex.study_id for ex in positives}
    negatives = pool.draw(fx.feature, *counts, cfg.seed, exclude_studies=exclude)
    detection, hard, notes = None, None, []
    if positives and negatives:
        detection = shuffled(positives, negatives, cfg.seed + fx.feature)
    else:
        notes.append(
            f"feature {fx.feature}: not scored ({len(positives)} held-out activating, "
            f"{len(negatives)} non-activating examples)"
        )
    if cfg.hard_negatives and positives:
        hard_neg = pool.draw_hard(fx.feature, hard_keys(fx), counts, cfg.seed, exclude)
        if hard_neg:
            hard = shuffled(positives, hard_neg, cfg.seed + fx.feature + 1)
        else:
            notes.append(
                f"feature {fx.feature}: no hard negatives (silent examples with its words)"
            )
    fuzz = fuzz_set(positives, cfg.seed + fx.feature) if cfg.fuzz else None
    simulated: list[Example] = []
    if cfg.simulation:
        simulated = [ex for ex in positives if ex.kind == "text"][: cfg.n_simulate]
        simulated += [ex for ex in negatives if ex.kind == "text"][: cfg.n_simulate]
    return ScoreSets(detection, hard, fuzz if fuzz and fuzz[0] else None, simulated), notes


def _record(feature: int, method: str, scorer: str, n: int, metrics) -> dict:
    return {
        "type": "score",
        "feature": feature,
        "method": method,
        "scorer": scorer,
        "n": n,
        "metrics": dict(metrics),
    }


def score_label(
    backend: Backend, feature: int, method: str, label: str, sets: ScoreSets, cfg
) -> tuple[list[dict], list[str]]:
    """Journal score records of one label (one per scorer that has a set), and notes."""
    records, notes = [], []
    for name, ask, pair in (
        ("detection", backend.detect, sets.detection),
        ("detection_hard", backend.detect, sets.hard),
        ("fuzz", backend.fuzz, sets.fuzz),
    ):
        if pair is not None:
            m = judge(ask, feature, label, *pair, cfg.examples_per_prompt)
            records.append(_record(feature, method, f"{name}:{backend.method}", m.n, m.rows()))
    if sets.simulation and any(a > 0 for ex in sets.simulation for a in ex.acts):
        predicted = [backend.simulate(feature, label, ex) for ex in sets.simulation]
        sim = simulation_score([ex.acts for ex in sets.simulation], predicted)
        if sim.correlation is None:
            notes.append(f"feature {feature}: {method} label simulates constant activations")
        else:
            scorer = f"simulation:{backend.method}"
            records.append(_record(feature, method, scorer, sim.n, sim.rows()))
    return records, notes


def label_record(backend: Backend, fx: FeatureExamples, expl, scores: list[dict]) -> dict:
    """The journal record of a new label, with every scorer's metrics in ``details``."""
    by_scorer = {r["scorer"].split(":")[0]: r["metrics"] for r in scores}
    return {
        "type": "label",
        "feature": fx.feature,
        "method": backend.method,
        "label": expl.text,
        "score": by_scorer.get("detection", {}).get("balanced_accuracy"),
        "model": backend.model,
        "details": {
            "examples": [ex.study_id for ex in fx.explain],
            "answer": (expl.raw or "")[-2000:] or None,
            "concept": fx.hint._asdict() if fx.hint else None,
            "scores": by_scorer,
        },
    }


def label_one(
    backend: Backend, fx: FeatureExamples, pool: NegativePool, cfg, work: Work
) -> tuple[list[dict], list[str]]:
    """Journal records (label, scores) of one feature, and notes on what was skipped."""
    sets, notes = score_sets(fx, pool, cfg)
    records: list[dict] = []
    if work.explain and fx.explain:
        expl = backend.explain(fx.feature, fx.explain, fx.max_act, hint=fx.hint)
        scores, more = score_label(backend, fx.feature, backend.method, expl.text, sets, cfg)
        records += [label_record(backend, fx, expl, scores), *scores]
        notes += more
    elif work.explain:
        notes.append(f"feature {fx.feature}: no activating examples in feature_examples")
    if work.statistical:
        scores, more = score_label(backend, fx.feature, "statistical", work.statistical, sets, cfg)
        records += scores
        notes += more
    return records, notes
