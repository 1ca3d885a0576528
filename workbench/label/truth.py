"""Do labels name what a feature is known to encode? The phantom ground-truth metric.

On the phantom benchmark every study's findings are known, and ``analyse`` scores each
feature against them (``feature_concepts``, ``source = 'phantom'``). A feature whose best
phantom concept reaches ``AUROC >= threshold`` (0.9) encodes that concept; its label is
*right* when it names the concept. The matcher is
:func:`workbench.label.text.names_concept`: the concept's own words ("pleural effusion"),
any phrase the rule-based report labeller maps to it ("enlarged heart" for cardiomegaly, "ICD"
for a pacemaker, "NG tube" for an enteric tube), or for a change concept a change word ("new",
"resolved", "larger"/"worse", "smaller"/"improved", "unchanged"/"stable").

The metric is the fraction of such features whose label (of one method) names the concept;
features without a label of that method are counted apart, not as misses.
"""

from __future__ import annotations

from typing import NamedTuple

import duckdb

from workbench.label.text import names_concept

THRESHOLD = 0.9


class GroundTruth(NamedTuple):
    """The ground-truth metric of one labelling method."""

    method: str
    n_features: int
    """Labelled features whose best phantom concept has AUROC >= threshold."""
    n_named: int
    """Of those, labels that name the concept."""
    n_unlabelled: int
    """Qualifying features without a label of this method."""
    misses: list[tuple[int, str, str]]
    """(feature, concept, label) of the labels that do not name their concept."""

    @property
    def fraction(self) -> float | None:
        return self.n_named / self.n_features if self.n_features else None

    def line(self) -> str:
        """One line for the command output."""
        if not self.n_features:
            return f"{self.method}: no labelled feature with phantom concept AUROC >= {THRESHOLD}"
        return (
            f"{self.method}: {self.n_named}/{self.n_features} labels name their phantom concept "
            f"({100 * self.fraction:.0f} %, features with AUROC >= {THRESHOLD}; "
            f"{self.n_unlabelled} such features unlabelled)"
        )


def _qualifying(con: duckdb.DuckDBPyConnection, threshold: float) -> dict[int, str]:
    """Feature -> its best phantom concept, for features where that AUROC >= threshold."""
    rows = con.execute(
        """SELECT feature, arg_max(concept, auroc) AS concept, max(auroc) AS auroc
           FROM feature_concepts WHERE source = 'phantom' AND auroc IS NOT NULL
           GROUP BY feature HAVING max(auroc) >= ?""",
        [threshold],
    ).fetchall()
    return {int(f): c for f, c, _ in rows}


def ground_truth(
    con: duckdb.DuckDBPyConnection, methods: list[str] | None = None, threshold: float = THRESHOLD
) -> list[GroundTruth]:
    """The metric for each of ``methods`` (default: every method in ``feature_labels``);
    empty when the run has no phantom concept scores."""
    best = _qualifying(con, threshold)
    if not best:
        return []
    if methods is None:
        methods = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT method FROM feature_labels ORDER BY method"
            ).fetchall()
        ]
    out = []
    for method in methods:
        labels = dict(
            con.execute(
                "SELECT feature, label FROM feature_labels WHERE method = ? AND label IS NOT NULL",
                [method],
            ).fetchall()
        )
        scored = [(f, c, labels[f]) for f, c in sorted(best.items()) if f in labels]
        misses = [(f, c, lab) for f, c, lab in scored if not names_concept(lab, c)]
        out.append(
            GroundTruth(
                method, len(scored), len(scored) - len(misses), len(best) - len(scored), misses
            )
        )
    return out
