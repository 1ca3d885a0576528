"""Which label a feature is known by, and every score of every label named by its test.

A feature can carry several labels: analyse's ``statistical`` one (its best concept and report
n-grams), ``offline`` rules, an LLM's, a person's. The page leads with the label that scores
best, not with whichever method wrote last, so a concept label with AUROC 1.00 is never hidden
under a list of stop words. The ranking itself is SQL (:func:`workbench.ui.queries.ranked_labels`,
shared by the page and the features table so both name a feature the same way); this module
turns its rows into named scores and says why a score is blank.

Rank score of a label (chance = 0.5, perfect = 1): the mean of its detection, detection-vs-hard-
negatives and fuzzing balanced accuracies, plus the concept AUROC when the label names that
concept (analyse's statistical label does when the AUROC reaches ``label_min_auroc``). A
person's label always leads; a label with no score comes after every scored one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

# scorer prefix (feature_scores.scorer = '<name>:<judge>') -> the test's name on the page
TESTS = {
    "detection": "detection",
    "detection_hard": "detection vs hard negatives",
    "fuzz": "fuzzing",
    "simulation": "simulation",
}
# the metric shown for each test (the others are one click away in the numbers table)
MAIN_METRIC = {
    "detection": "balanced_accuracy",
    "detection_hard": "balanced_accuracy",
    "fuzz": "balanced_accuracy",
    "simulation": "correlation",
}
# flags of `python -m workbench label` that turn each test on (default on)
FLAGS = {"detection_hard": "--hard-negatives", "fuzz": "--fuzz", "simulation": "--simulation"}
RANKED_SCORERS = ("detection", "detection_hard", "fuzz")


class NamedScore(NamedTuple):
    """One score of a label: the test, the metric, its value and how many examples it saw."""

    test: str
    metric: str
    value: float
    n: int | None = None

    def text(self) -> str:
        """E.g. 'detection balanced accuracy 0.81' or 'concept AUROC 0.99'."""
        metric = self.metric.replace("_", " ").replace("auroc", "AUROC")
        return f"{self.test} {metric} {self.value:.2f}"


class LabelCard(NamedTuple):
    """A label as the page shows it: text, who wrote it, named scores, why others are blank."""

    method: str
    label: str
    model: str | None
    rank_score: float | None
    scores: list[NamedScore]
    blanks: list[str]

    def scores_text(self) -> str:
        """All named scores in one line (blank reasons are listed separately)."""
        return " · ".join(s.text() for s in self.scores)


def scorer_name(scorer: str) -> str:
    """'detection_hard:llm:qwen' -> 'detection_hard'."""
    return scorer.split(":", 1)[0]


def names_concept(label: dict[str, Any]) -> str | None:
    """The concept a statistical label names (its best concept, written first), else None."""
    if label.get("method") != "statistical":
        return None
    try:
        details = json.loads(label.get("details") or "{}")
    except ValueError:
        return None
    concept = details.get("best_concept") if isinstance(details, dict) else None
    text = label.get("label") or ""
    return concept if concept and text.startswith(f"{concept} (AUROC") else None


def named_scores(label: dict[str, Any], score_rows: Iterable[dict[str, Any]]) -> list[NamedScore]:
    """The label's scores named by their test: concept AUROC first, then each scorer's main
    metric (averaged over judges when several judged it)."""
    out: list[NamedScore] = []
    if names_concept(label) and label.get("score") is not None:
        out.append(NamedScore("concept", "auroc", float(label["score"])))
    by_test: dict[str, list[tuple[float, int | None]]] = {}
    for r in score_rows:
        name = scorer_name(r["scorer"])
        if r["method"] == label["method"] and MAIN_METRIC.get(name) == r["metric"]:
            by_test.setdefault(name, []).append((float(r["value"]), r.get("n_examples")))
    for name in TESTS:
        if name in by_test:
            vals = by_test[name]
            n = sum(k or 0 for _, k in vals) or None
            out.append(NamedScore(TESTS[name], MAIN_METRIC[name], _mean(v for v, _ in vals), n))
    return out


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals)


def blank_reasons(
    label: dict[str, Any],
    scores: Sequence[NamedScore],
    tests_run: set[str],
    dead: bool,
    run_hint: str = "python -m workbench label --run RUN",
) -> list[str]:
    """Why a label has no value for a test: never run in this database, not run for this
    feature, or not computable (a dead feature, a statistical label naming no concept)."""
    if dead:
        return ["no scores: the feature never fires, so nothing can be tested"]
    have = {s.test for s in scores}
    out: list[str] = []
    if label.get("method") == "statistical" and "concept" not in have:
        out.append(_concept_blank(label))
    if not tests_run:
        out.append(f"detection, fuzzing, simulation: not run yet (`{run_hint}` scores labels)")
        return out
    for name, test in TESTS.items():
        if test in have:
            continue
        if name not in tests_run:
            flag = FLAGS.get(name)
            how = f" (`label {flag}`)" if flag else ""
            out.append(f"{test}: not run on this database{how}")
        else:
            out.append(f"{test}: not scored for this label (see the label notes in the Runs tab)")
    return out


def _concept_blank(label: dict[str, Any]) -> str:
    """Why a statistical label carries no concept AUROC."""
    if label.get("score") is None:
        return "concept AUROC: no study labels in this run to compute it"
    return (
        f"concept AUROC: the best concept's AUROC ({label['score']:.2f}) is below the "
        "threshold for naming it, so the label does not claim a concept"
    )


def cards(
    labels: Sequence[dict[str, Any]],
    score_rows: Sequence[dict[str, Any]],
    tests_run: set[str],
    dead: bool,
) -> list[LabelCard]:
    """One card per label, in the ranked order of ``labels`` (:func:`queries.ranked_labels`)."""
    out = []
    for lab in labels:
        scores = named_scores(lab, score_rows)
        out.append(
            LabelCard(
                method=lab.get("method") or "",
                label=lab.get("label") or "",
                model=lab.get("model"),
                rank_score=lab.get("rank_score"),
                scores=scores,
                blanks=blank_reasons(lab, scores, tests_run, dead),
            )
        )
    return out


def why_leads(ranked: Sequence[LabelCard]) -> str:
    """One sentence saying why the first card is the headline."""
    if not ranked:
        return ""
    top = ranked[0]
    if len(ranked) == 1:
        return "the only label of this feature"
    if top.method == "human":
        return "written by a person (a person's label always leads)"
    if top.rank_score is None:
        return f"no label is scored yet; {top.method} is preferred among unscored labels"
    return (
        f"highest score of {len(ranked)} labels: {top.rank_score:.2f} "
        "(mean of its detection, fuzzing and concept scores)"
    )
