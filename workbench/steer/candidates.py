"""Which SAE features to steer for a concept: chosen from the analysis, never by hand.

The rule (:data:`RULE`, printed by ``steer``):

1. A feature is a candidate for concept C when its study-level AUROC for C
   (``feature_concepts``) is at least ``min_auroc`` and it is not dead.
2. Where the analysis measured what the feature means (``feature_mentions``: assertion
   selectivity; ``feature_localisation``: pointing game against C's masks), a candidate that
   *means* C ranks first: selectivity >= ``min_selectivity`` (fires on "C present", not on the
   word) or pointing game >= ``min_pointing`` (fires where C is on the image).
3. Then by AUROC (higher first), then by feature number (lower first).
4. The first ``n`` candidates are steered together (one is the default).

The ``exclusive`` rule keeps, of those, only the features whose AUROC is highest for C among
the 13 judged findings and devices: a feature that fires for several concepts (a generic
"tube" feature of every device) steers none of them, so ablating C's features leaves the
others' alone.

Target concepts are the phantom findings and devices scored in ``concepts`` (or the CheXpert
labels on a run without phantom ground truth), limited to those the report labeller reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import duckdb

from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.db import has_table
from workbench.steer.metrics import JUDGED, READABLE

RULE = (
    "candidate rule: study-level AUROC >= {min_auroc:g} and not dead; features that mean the "
    "concept first (assertion selectivity >= {min_selectivity:g} or pointing game >= "
    "{min_pointing:g}, where analysed), then by AUROC, then by number; the first {n} steered "
    "together"
)
EXCLUSIVE = (
    "; exclusive: only features whose AUROC is highest for this concept among the judged "
    "findings and devices"
)


class Candidate(NamedTuple):
    """The features chosen for one concept and the evidence they were chosen on."""

    concept: str
    features: tuple[int, ...]
    auroc: float
    selectivity: float | None
    pointing: float | None
    means_it: bool
    gap_share: float | None = None
    """Share of the concept's adjusted image gap the features carry (the gap rule,
    :mod:`workbench.steer.gap`); None under the meaning rule."""


def default_concepts(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Phantom concepts scored in ``concepts`` (both classes); else the CheXpert labels."""
    rows = con.execute(
        "SELECT concept, source FROM concepts WHERE n_pos > 0 AND n_neg > 0 ORDER BY concept"
    ).fetchall()
    phantom = [c for c, s in rows if s == "phantom" and c in JUDGED]
    if phantom:
        return [c for c in JUDGED if c in phantom]
    chexpert = {c for c, s in rows if s == "chexpert"}
    return [c for c in CHEXPERT_LABELS if c in chexpert and c != "No Finding"]


def _meaning_join(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    """SELECT columns and JOINs for the optional meaning tables of the analysis."""
    cols, joins = [], []
    if has_table(con, "feature_mentions"):
        cols.append("m.selectivity")
        joins.append("LEFT JOIN feature_mentions m ON m.feature = c.feature AND m.concept = ?")
    else:
        cols.append("NULL")
    if has_table(con, "feature_localisation"):
        cols.append("l.pointing_game")
        joins.append("LEFT JOIN feature_localisation l ON l.feature = c.feature AND l.concept = ?")
    else:
        cols.append("NULL")
    return ", ".join(cols), " ".join(joins)


def ranked(
    con: duckdb.DuckDBPyConnection,
    concept: str,
    min_auroc: float,
    min_selectivity: float = 0.9,
    min_pointing: float = 0.8,
    exclusive: bool = False,
) -> list[tuple[int, float, float | None, float | None, bool]]:
    """(feature, auroc, selectivity, pointing, means_it) for ``concept``, best first;
    ``exclusive``: only features with no higher AUROC for another judged concept."""
    cols, joins = _meaning_join(con)
    n_params = joins.count("?")
    only = ""
    if exclusive:
        judged = ", ".join(f"'{c}'" for c in JUDGED)
        only = (" AND c.auroc >= (SELECT max(o.auroc) FROM feature_concepts o WHERE "
                f"o.feature = c.feature AND o.concept IN ({judged}))")  # fmt: skip
    rows = con.execute(
        f"SELECT c.feature, c.auroc, {cols} FROM feature_concepts c "
        f"JOIN feature_stats s ON s.feature = c.feature {joins} "
        f"WHERE c.concept = ? AND c.auroc >= ? AND NOT s.dead AND s.max_act > 0{only}",
        [concept] * n_params + [concept, min_auroc],
    ).fetchall()
    out = []
    for feature, auroc, sel, point in rows:
        means_it = (sel is not None and sel >= min_selectivity) or (
            point is not None and point >= min_pointing
        )
        out.append((int(feature), float(auroc), sel, point, means_it))
    out.sort(key=lambda r: (not r[4], -r[1], r[0]))
    return out


def choose(
    con: duckdb.DuckDBPyConnection,
    concepts: Sequence[str],
    n: int = 1,
    min_auroc: float = 0.75,
    min_selectivity: float = 0.9,
    min_pointing: float = 0.8,
    exclusive: bool = False,
) -> tuple[list[Candidate], list[str]]:
    """The candidates of each concept and a note for every concept left without one
    (``exclusive``: :func:`ranked`'s)."""
    chosen, notes = [], []
    for concept in concepts:
        if concept not in READABLE:
            notes.append(f"{concept}: the report labeller cannot read it from text; skipped")
            continue
        best = ranked(con, concept, min_auroc, min_selectivity, min_pointing, exclusive)[:n]
        if not best:
            which = "no live feature" + (" of its own" if exclusive else "")
            notes.append(f"{concept}: {which} with AUROC >= {min_auroc:g}; skipped")
            continue
        head = best[0]
        chosen.append(
            Candidate(concept, tuple(r[0] for r in best), head[1], head[2], head[3], head[4])
        )
    return chosen, notes


def describe(candidates: Sequence[Candidate]) -> str:
    """One line per concept: the features chosen and their evidence."""

    def fmt(x: float | None) -> str:
        return "-" if x is None or x != x else f"{x:.2f}"

    lines = []
    for c in candidates:
        feats = ",".join(map(str, c.features))
        tag = "means it" if c.means_it else "by AUROC"
        if c.gap_share is not None:
            tag = f"by gap share: {c.gap_share:.2f} of the concept's adjusted gap"
        elif c.auroc != c.auroc:  # NaN: given with --feature
            tag = "given with --feature"
        lines.append(
            f"  {c.concept:<20} feature {feats:<10} AUROC {fmt(c.auroc)}  selectivity "
            f"{fmt(c.selectivity)}  pointing {fmt(c.pointing)}  ({tag})"
        )
    return "\n".join(lines)
