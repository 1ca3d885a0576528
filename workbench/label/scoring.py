"""Scoring a feature label: detection and fuzzing sets and their metrics (delphi, Paulo et al.
2024, sec. 3.3), and the simulation score (OpenAI's automated-interpretability: correlation of
simulated with true activations, pooled over all tokens of all examples).

The judge's 0/1 answers are compared with the truth (did the feature fire on the example):
precision, recall, F1, balanced accuracy and accuracy, plus ROC-AUC when the judge gave
probabilities (P(1) from log-probs). A metric whose denominator is empty is ``None`` ("not
computable"), never a made-up number.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

from workbench.stats import auroc


class DetectionMetrics(NamedTuple):
    """Detection scores of one label on one shuffled example set."""

    n: int
    n_active: int
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    balanced_accuracy: float | None
    auroc: float | None

    def rows(self) -> list[tuple[str, float]]:
        """(metric, value) pairs of the computable metrics, for ``feature_scores``."""
        names = ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "auroc")
        return [(m, float(getattr(self, m))) for m in names if getattr(self, m) is not None]


class SimulationScore(NamedTuple):
    """Correlation of the explainer's simulated activations with the true ones."""

    n: int
    """Examples simulated."""
    n_tokens: int
    correlation: float | None
    """Pearson correlation pooled over all tokens; None when either side is constant."""

    def rows(self) -> list[tuple[str, float]]:
        return [] if self.correlation is None else [("correlation", self.correlation)]


def simulation_score(
    truth: Sequence[Sequence[float]], predicted: Sequence[Sequence[float]]
) -> SimulationScore:
    """Pooled Pearson correlation of per-token predictions with true activations."""
    xs, ys = [], []
    for t, p in zip(truth, predicted, strict=True):
        if len(t) != len(p):
            raise ValueError(f"{len(t)} true activations but {len(p)} predictions")
        xs += [float(v) for v in t]
        ys += [float(v) for v in p]
    n = len(xs)
    if n < 2:
        return SimulationScore(len(truth), n, None)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    corr = sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None
    return SimulationScore(len(truth), n, corr)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def detection_metrics(
    truth: Sequence[int], predicted: Sequence[int], probs: Sequence[float] | None = None
) -> DetectionMetrics:
    """Confusion-matrix metrics of ``predicted`` against ``truth`` (both 0/1 sequences)."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths but {len(predicted)} predictions")
    if probs is not None and len(probs) != len(truth):
        raise ValueError(f"{len(truth)} truths but {len(probs)} probabilities")
    tp = sum(1 for t, p in zip(truth, predicted) if t and p)
    fp = sum(1 for t, p in zip(truth, predicted) if not t and p)
    fn = sum(1 for t, p in zip(truth, predicted) if t and not p)
    tn = len(truth) - tp - fp - fn
    recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    balanced = None if recall is None or specificity is None else (recall + specificity) / 2
    return DetectionMetrics(
        n=len(truth),
        n_active=tp + fn,
        accuracy=_ratio(tp + tn, len(truth)),
        precision=_ratio(tp, tp + fp),
        recall=recall,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        balanced_accuracy=balanced,
        auroc=None if probs is None else auroc(truth, probs),
    )


def shuffled(positives: list, negatives: list, seed: int) -> tuple[list, list[int]]:
    """Positives and negatives in a seeded random order, with the 0/1 truth of each."""
    items = [(ex, 1) for ex in positives] + [(ex, 0) for ex in negatives]
    random.Random(seed).shuffle(items)
    return [ex for ex, _ in items], [t for _, t in items]


def misplace_marks(ex, rng: random.Random):
    """``ex`` with its activating tokens' marks moved to as many random silent tokens.

    None when the window has too few silent tokens. The activations become 1.0 on the
    chosen tokens, 0 elsewhere (only the marks matter to the judge).
    """
    hot = [i for i, a in enumerate(ex.acts) if a > 0]
    cold = [i for i, a in enumerate(ex.acts) if a <= 0]
    if not hot or len(cold) < len(hot):
        return None
    chosen = set(rng.sample(cold, len(hot)))
    return ex._replace(acts=tuple(1.0 if i in chosen else 0.0 for i in range(len(ex.acts))))


def fuzz_set(examples: list, seed: int) -> tuple[list, list[int]]:
    """Fuzzing items (delphi): each activating text example once correctly marked (truth 1)
    and once with its marks on random silent tokens (truth 0), shuffled."""
    rng = random.Random(seed)
    correct, wrong = [], []
    for ex in examples:
        if ex.kind != "text":
            continue  # an image patch cannot be marked in words
        moved = misplace_marks(ex, rng)
        if moved is not None:
            correct.append(ex)
            wrong.append(moved)
    return shuffled(correct, wrong, seed)


def chunks(items: list, size: int) -> list[list]:
    """``items`` in consecutive prompts of at most ``size`` (delphi shows a few per prompt)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
