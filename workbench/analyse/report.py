"""``analyse --report``, part two: does a feature *mean* the concept, and how close to the ceiling?

Two tables after the recovery table of :func:`workbench.analyse.concepts.recovery_report`:

- **meaning**, per phantom concept: the best feature by study AUROC among those that mean
  the concept, i.e. assertion selectivity >= ``min_selectivity`` on report mentions or a
  pointing game >= ``min_pointing`` on the frontal image, with both scores; the verdict counts
  the 8 most common findings and all devices that have such a feature with AUROC >= the
  recovery threshold (the issue's target);
- **probe ceiling**, per concept with labels: the best feature read through the probe's
  poolings (which pooling), its AUROC, the probe AUROC, their ratio, and how many concepts
  with >= 20 positives reach ``ratio >= 0.95``; ``n_neg`` is printed because CheXpert's
  blank labels are left out, so a concept can have few negatives;
- **SAE quality**, per Matryoshka prefix (``sae_quality``): FVU, L0, dead and dense fractions
  and CE loss recovered, with the whole SAE's CE loss recovered against the 0.9 target.
"""

from __future__ import annotations

from pathlib import Path

from workbench import db

MEANING_SQL = """
WITH sel AS (SELECT feature, concept, selectivity FROM feature_mentions),
loc AS (SELECT feature, concept, pointing_game FROM feature_localisation),
cand AS (
    SELECT c.concept, c.feature, c.auroc, s.selectivity, l.pointing_game
    FROM feature_concepts c
    LEFT JOIN sel s USING (feature, concept) LEFT JOIN loc l USING (feature, concept)
    WHERE c.source = 'phantom' AND c.auroc IS NOT NULL
      AND (s.selectivity >= $sel OR l.pointing_game >= $point)
),
best AS (SELECT concept, first(feature ORDER BY auroc DESC, feature) AS f, max(auroc) AS a
      FROM cand GROUP BY 1)
SELECT r.concept, r.category, r.n_pos, r.prevalence_rank, b.f, b.a, s.selectivity,
       l.pointing_game, r.threshold
FROM concept_recovery r LEFT JOIN best b USING (concept)
LEFT JOIN sel s ON s.feature = b.f AND s.concept = r.concept
LEFT JOIN loc l ON l.feature = b.f AND l.concept = r.concept
WHERE r.category IN ('finding', 'device')
ORDER BY r.category DESC, r.prevalence_rank
"""


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def meaning_table(con, min_selectivity: float = 0.9, min_pointing: float = 0.8) -> str:
    """The meaning table and its verdict line (see the module docstring)."""
    rows = con.execute(MEANING_SQL, {"sel": min_selectivity, "point": min_pointing}).fetchall()
    if not rows:
        return "no phantom ground truth in this run: meaning table not computed"
    lines = [
        f"features that mean the concept (selectivity >= {min_selectivity:g} on report "
        f"mentions or pointing game >= {min_pointing:g} on the image):",
        f"{'concept':<22} {'category':<8} {'n_pos':>6} {'feature':>8} {'AUROC':>6} "
        f"{'select':>7} {'point':>6}",
    ]
    for concept, cat, n_pos, _, feat, auc, sel, point, _ in rows:
        lines.append(
            f"{concept:<22} {cat:<8} {n_pos:>6} {_fmt(feat, 'd'):>8} {_fmt(auc):>6} "
            f"{_fmt(sel):>7} {_fmt(point):>6}"
        )
    thr = rows[0][8]
    top = [r for r in rows if r[1] == "finding" and r[3] <= 8 and r[2] > 0]
    devices = [r for r in rows if r[1] == "device" and r[2] > 0]
    ok = [sum(1 for r in group if r[5] is not None and r[5] >= thr) for group in (top, devices)]
    lines.append(
        f"AUROC >= {thr:g} with meaning: {ok[0]} of the {len(top)} most common findings, "
        f"{ok[1]} of {len(devices)} devices"
    )
    return "\n".join(lines)


def probe_table(con, min_pos: int = 20, target: float = 0.95) -> str:
    """Best feature (under the probe's poolings) vs probe per concept, and the count of
    concepts with ``min_pos`` positives that reach ``target``."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'concept_probes'"
    ).fetchall()}  # fmt: skip
    if "pooling" not in cols:
        return ("probe ceiling: this features.duckdb predates the features' scoring through the "
                "probe's poolings; rerun analyse (without --reuse)")  # fmt: skip
    rows = con.execute(
        "SELECT concept, source, n_pos, n_neg, best_feature, pooling, feature_auroc, "
        "probe_auroc, ratio FROM concept_probes WHERE n_pos > 0 AND n_neg > 0 "
        "ORDER BY source DESC, concept"
    ).fetchall()
    if not rows:
        return "probe ceiling: no concept with both positive and negative studies"
    lines = [
        "probe ceiling (logistic probe on the residual stream, out of fold by subject; the "
        "feature read through the same poolings):",
        f"{'concept':<26} {'source':<8} {'n_pos':>6} {'n_neg':>6} {'feature':>8} "
        f"{'pooling':<11} {'feat.AUC':>8} {'probe':>6} {'ratio':>6}",
    ]
    for concept, source, n_pos, n_neg, feat, pooling, auc, probe, ratio in rows:
        lines.append(
            f"{concept[:26]:<26} {source:<8} {n_pos:>6} {n_neg:>6} {_fmt(feat, 'd'):>8} "
            f"{pooling or '-':<11} {_fmt(auc):>8} {_fmt(probe):>6} {_fmt(ratio):>6}"
        )
    big = [r for r in rows if r[2] >= min_pos and r[8] is not None]
    hits = sum(1 for r in big if r[8] >= target)
    lines.append(f"best feature >= {target:g} x probe: {hits} of {len(big)} concepts with >= "
                 f"{min_pos} positives")  # fmt: skip
    return "\n".join(lines)


SPARSE_SQL = """
    SELECT s.concept, s.source, p.n_pos, s.k, s.auroc, s.ratio, s.features
    FROM concept_sparse_probes s JOIN concept_probes p USING (concept, source)
    ORDER BY s.source DESC, s.concept, s.k"""


def sparse_table(con, min_pos: int = 20, target: float = 0.95) -> str:
    """The k-sparse probes per concept (AUROC at each k, ratio to the probe at the largest k)
    and the count of concepts with ``min_pos`` positives whose largest k reaches ``target``."""
    if not db.has_table(con, "concept_sparse_probes"):
        return ("k-sparse probes: this features.duckdb predates them; rerun analyse (without "
                "--reuse)")  # fmt: skip
    by: dict[tuple, dict] = {}
    for concept, source, n_pos, k, auc, ratio, feats in con.execute(SPARSE_SQL).fetchall():
        by.setdefault((concept, source, n_pos), {})[k] = (auc, ratio, feats)
    if not by:
        return "k-sparse probes: none (no concept had both classes to probe)"
    ks = sorted({k for got in by.values() for k in got})
    top = ks[-1]
    lines = [
        "k-sparse probes (logistic probe on the concept's k best features, out of fold; "
        f"ratio to the probe at k = {top}):",
        f"{'concept':<26} {'source':<8} " + " ".join(f"{f'k={k}':>6}" for k in ks)
        + f" {'ratio':>6}  features (k = {top})",
    ]  # fmt: skip
    for (concept, source, _), got in by.items():
        aucs = " ".join(f"{_fmt(got.get(k, (None,))[0]):>6}" for k in ks)
        auc, ratio, feats = got.get(top, (None, None, None))
        lines.append(f"{concept[:26]:<26} {source:<8} {aucs} {_fmt(ratio):>6}  {feats or '-'}")
    big = [got[top][1] for (_, _, n), got in by.items() if n >= min_pos and top in got]
    hits = sum(1 for r in big if r is not None and r >= target)
    lines.append(f"{top} features >= {target:g} x probe: {hits} of {len(big)} concepts with >= "
                 f"{min_pos} positives")  # fmt: skip
    return "\n".join(lines)


def quality_report(con, target: float = 0.9) -> str:
    """The SAE quality per Matryoshka prefix and the whole SAE's CE loss recovered."""
    rows = con.execute(
        "SELECT n_groups, n_latents, fvu, l0, dead_frac, dense_frac, ce_recovered, held_out, "
        "source, n_studies, n_tokens FROM sae_quality ORDER BY n_groups"
    ).fetchall()
    if not rows:
        return "SAE quality: not measured (see the run's notes)"
    held, source, n_studies, n_tokens = rows[-1][7:]
    where = "held-out" if held else "stored (not held-out)"
    lines = [
        f"SAE quality on {n_studies} {where} studies ({n_tokens} tokens, from the {source}):",
        f"{'prefix':>6} {'latents':>8} {'FVU':>7} {'L0':>7} {'dead':>6} {'dense':>6} "
        f"{'CE rec.':>8}",
    ]
    for g, n, fvu, l0, dead, dense, rec, *_ in rows:
        lines.append(
            f"{g:>6} {n:>8} {_fmt(fvu):>7} {_fmt(l0, '.1f'):>7} {_fmt(dead):>6} "
            f"{_fmt(dense):>6} {_fmt(rec):>8}"
        )
    rec = rows[-1][6]
    verdict = "not measured (no model)" if rec is None else f"{rec:.3f} (target >= {target:g})"
    lines.append(f"CE loss recovered by the whole SAE: {verdict}")
    return "\n".join(lines)


def meaning_report(run: Path) -> str:
    """The meaning, probe, k-sparse probe and SAE-quality tables for ``analyse --report``."""
    con = db.connect(run)
    try:
        parts = (meaning_table(con), probe_table(con), sparse_table(con), quality_report(con))
        return "\n\n".join(parts)
    finally:
        con.close()
