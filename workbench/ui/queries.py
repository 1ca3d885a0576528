"""The app's reads from ``features.duckdb``: parameterised SQL in, plain rows (dicts) out.

Every value from the browser reaches DuckDB as a bound parameter; the only text spliced into
SQL is a sort column chosen from :data:`SORTS` (a fixed whitelist). Tables are those of
:mod:`workbench.db`; a table a stage has not written yet reads as empty, never as an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from workbench.ui.context import AppContext

Rows = list[dict[str, Any]]


# Label shown for a feature: a human's beats an LLM's beats the statistical one, newest first.
# ``where`` narrows the labels read before ranking (a page needs a handful of features, not 16k).
def _best_label(where: str = "") -> str:
    return f"""
    SELECT feature, label, method, score FROM (
      SELECT *, row_number() OVER (PARTITION BY feature ORDER BY
        CASE method WHEN 'human' THEN 0 WHEN 'statistical' THEN 2 ELSE 1 END,
        created_at DESC NULLS LAST) AS rn
      FROM feature_labels {where}) WHERE rn = 1"""


_BEST_LABEL = _best_label()

# Sort choice -> ORDER BY expression (whitelist: the only SQL text not bound as a parameter).
SORTS: Mapping[str, str] = MappingProxyType(
    {
        "feature": "feature",
        "frequency": "frequency",
        "max activation": "max_act",
        "AUROC": "auroc",
        "label score": "score",
        "selectivity": "selectivity",
    }
)

DENSITIES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "any": (0.0, 1.0),
        "dead": (0.0, 0.0),
        "< 0.01%": (1e-12, 1e-4),
        "0.01% – 0.1%": (1e-4, 1e-3),
        "0.1% – 1%": (1e-3, 1e-2),
        "1% – 10%": (1e-2, 1e-1),
        "> 10%": (1e-1, 1.0),
    }
)


def feature_table(
    ctx: AppContext,
    search: str = "",
    concept: str | None = None,
    density: str = "any",
    group: int | None = None,
    sort: str = "frequency",
    descending: bool = True,
    limit: int = 200,
    meaning: bool = False,
) -> tuple[Rows, int]:
    """Features matching the filters (first ``limit`` in the chosen order) and the total count.

    With ``concept`` set, the concept columns show that concept's AUROC (else the best one).
    ``search`` matches any label of the feature (case-insensitive) or its index. ``meaning``
    keeps the features that mean the shown concept, not its word: assertion selectivity >=
    :data:`MIN_SELECTIVITY` on report mentions or pointing game >= :data:`MIN_POINTING`.
    """
    if not ctx.has("features", "feature_stats", "feature_labels", "feature_concepts"):
        return [], 0
    where, params = _table_filters(search, concept, density, group)
    sel, loc = _meaning_sources(ctx)
    if meaning:
        where += " AND (m.selectivity >= $min_sel OR p.pointing_game >= $min_point)"
        params.update(min_sel=MIN_SELECTIVITY, min_point=MIN_POINTING)
    order = SORTS.get(sort, SORTS["frequency"])
    direction = "DESC" if descending else "ASC"
    concept_rows = "concept = $concept" if concept else "rank = 1"
    sql = f"""
      WITH lab AS ({_BEST_LABEL}),
      con AS (SELECT feature, concept, auroc FROM feature_concepts WHERE {concept_rows}),
      hits AS (
        SELECT f.feature, l.label, l.method, l.score, c.concept, c.auroc,
               s.frequency, s.max_act, f.matryoshka_group AS "group", m.selectivity,
               p.pointing_game
        FROM features f
        LEFT JOIN feature_stats s USING (feature)
        LEFT JOIN lab l USING (feature)
        LEFT JOIN con c USING (feature)
        LEFT JOIN {sel} m ON m.feature = f.feature AND m.concept = c.concept
        LEFT JOIN {loc} p ON p.feature = f.feature AND p.concept = c.concept
        WHERE {where})"""
    page = f"SELECT * FROM hits ORDER BY {order} {direction} NULLS LAST, feature LIMIT $limit"
    rows = ctx.rows(sql + page, {**params, "limit": limit})
    if len(rows) < limit:
        return rows, len(rows)
    # a full page: count separately (cheaper than a window over every matching row)
    return rows, ctx.rows(sql + "SELECT count(*) AS n FROM hits", params)[0]["n"]


# "Means the concept" (the Features tab's filter and the meaning table of analyse --report).
MIN_SELECTIVITY, MIN_POINTING = 0.9, 0.8


def _meaning_sources(ctx: AppContext) -> tuple[str, str]:
    """The mention and localisation tables, or empty stand-ins for runs analysed before them."""
    sel = (
        "feature_mentions"
        if ctx.has("feature_mentions")
        else ("(SELECT NULL::INTEGER AS feature, NULL AS concept, NULL::DOUBLE AS selectivity)")
    )
    loc = (
        "feature_localisation"
        if ctx.has("feature_localisation")
        else ("(SELECT NULL::INTEGER AS feature, NULL AS concept, NULL::DOUBLE AS pointing_game)")
    )
    return sel, loc  # fmt: skip


def mention_scores(ctx: AppContext, feature: int, limit: int = 6) -> Rows:
    """Mean activation per mention status for the concepts whose mentions it fires on most."""
    if not ctx.has("feature_mentions"):
        return []
    sql = """SELECT concept, n_fired, mean_asserted, mean_negated, mean_uncertain,
                    mean_historical, selectivity
             FROM feature_mentions WHERE feature = ? ORDER BY n_fired DESC, concept LIMIT ?"""
    return ctx.rows(sql, [feature, limit])


def localisation(ctx: AppContext, feature: int, limit: int = 6) -> Rows:
    """Pointing game and patch AUROC against the masks, best concepts first."""
    if not ctx.has("feature_localisation"):
        return []
    sql = """SELECT concept, n_studies, pointing_game, patch_auroc FROM feature_localisation
             WHERE feature = ? ORDER BY pointing_game DESC, patch_auroc DESC NULLS LAST, concept
             LIMIT ?"""
    return ctx.rows(sql, [feature, limit])


def _table_filters(
    search: str, concept: str | None, density: str, group: int | None
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of :func:`feature_table` from fixed fragments, values as parameters."""
    lo, hi = DENSITIES.get(density, DENSITIES["any"])
    clauses = ["coalesce(s.frequency, 0) BETWEEN $lo AND $hi"]
    params: dict[str, Any] = {"lo": lo, "hi": hi}
    if concept:
        clauses.append("c.concept IS NOT NULL")
        params["concept"] = concept
    if group is not None:
        clauses.append("f.matryoshka_group = $group")
        params["group"] = group
    text = (search or "").strip()
    if text:
        match = """f.feature IN (SELECT feature FROM feature_labels
                                 WHERE label ILIKE '%' || $text || '%')"""
        if text.isdigit():
            match = f"(f.feature = $index OR {match})"
            params["index"] = int(text)
        clauses.append(match)
        params["text"] = text
    return " AND ".join(clauses), params


def density_histogram(ctx: AppContext, per_decade: int = 4) -> tuple[Rows, int]:
    """Features per log10-frequency bin (``per_decade`` bins a decade) and the dead count."""
    if not ctx.has("feature_stats"):
        return [], 0
    rows = ctx.rows(
        """SELECT floor(log10(frequency) * $r)::INTEGER AS bin, count(*) AS n
           FROM feature_stats WHERE frequency > 0 GROUP BY bin ORDER BY bin""",
        {"r": per_decade},
    )
    dead = ctx.rows("SELECT count(*) AS n FROM feature_stats WHERE coalesce(frequency, 0) = 0")
    return rows, dead[0]["n"]


def best_per_concept(ctx: AppContext) -> Rows:
    """For every concept, the feature with the highest AUROC (best concepts first)."""
    if not ctx.has("feature_concepts"):
        return []
    return ctx.rows(
        """SELECT concept, source, feature, auroc FROM feature_concepts WHERE auroc IS NOT NULL
           QUALIFY row_number() OVER (PARTITION BY concept, source
                                      ORDER BY auroc DESC, feature) = 1
           ORDER BY auroc DESC, concept"""
    )


def concepts(ctx: AppContext) -> list[str]:
    """Concept names for the filter, most prevalent first."""
    if not ctx.has("concepts"):
        return []
    return [r["concept"] for r in ctx.rows("SELECT concept FROM concepts ORDER BY n_pos DESC")]


def groups(ctx: AppContext) -> list[int]:
    """Matryoshka group indices present."""
    if not ctx.has("features"):
        return []
    sql = "SELECT DISTINCT matryoshka_group AS g FROM features WHERE g IS NOT NULL ORDER BY g"
    return [r["g"] for r in ctx.rows(sql)]


def feature_header(ctx: AppContext, feature: int) -> dict[str, Any] | None:
    """The feature's row of ``features`` joined with its statistics, or None if unknown."""
    rows = ctx.rows(
        "SELECT * FROM features f LEFT JOIN feature_stats s USING (feature) WHERE f.feature = ?",
        [feature],
    )
    return rows[0] if rows else None


def by_feature(ctx: AppContext, table: str, feature: int, order: str, limit: int = 1000) -> Rows:
    """All rows of a feature-keyed ``table`` (a name from :mod:`workbench.db`), in ``order``."""
    if not ctx.has(table):
        return []
    return ctx.rows(
        f"SELECT * FROM {table} WHERE feature = ? ORDER BY {order} LIMIT ?", [feature, limit]
    )


def labels(ctx: AppContext, feature: int) -> Rows:
    """Every label of the feature, preferred first, with its scores when any were computed."""
    if not ctx.has("feature_labels"):
        return []
    scored = "NULL"
    if ctx.has("feature_scores"):
        # e.g. "detection:offline: accuracy 0.81 · f1 0.86" (one scorer per label, usually)
        scored = """(SELECT string_agg(DISTINCT x.scorer, ', ') || ': ' || string_agg(
                       x.metric || ' ' || round(x.value, 2), ' · ' ORDER BY x.metric)
                     FROM feature_scores x WHERE x.feature = l.feature AND x.method = l.method)"""
    sql = f"""SELECT label, method, score, model, {scored} AS scored FROM feature_labels l
              WHERE feature = ? ORDER BY CASE method WHEN 'human' THEN 0
              WHEN 'statistical' THEN 2 ELSE 1 END, created_at DESC NULLS LAST"""
    return ctx.rows(sql, [feature])


def neighbors(ctx: AppContext, feature: int, limit: int = 10) -> Rows:
    """Nearest features by decoder cosine, with their labels."""
    if not ctx.has("feature_neighbors", "feature_labels"):
        return []
    near = "WHERE feature IN (SELECT neighbor FROM feature_neighbors WHERE feature = ?)"
    sql = f"""WITH lab AS ({_best_label(near)})
              SELECT n.neighbor, n.cosine, lab.label FROM feature_neighbors n
              LEFT JOIN lab ON lab.feature = n.neighbor
              WHERE n.feature = ? ORDER BY n.rank LIMIT ?"""
    return ctx.rows(sql, [feature, feature, limit])


def image_grid(ctx: AppContext, study_id: int) -> dict[str, Any] | None:
    """Row range and patch grid of the study's first image (image tokens are contiguous)."""
    if not ctx.has("tokens"):
        return None
    rows = ctx.rows(
        """SELECT min(row) AS lo, max(patch_row) + 1 AS n_rows, max(patch_col) + 1 AS n_cols
           FROM tokens WHERE study_id = ? AND kind = 'image' AND patch_row IS NOT NULL""",
        [study_id],
    )
    if not rows or rows[0]["lo"] is None:
        return None
    grid = rows[0]
    grid["hi"] = grid["lo"] + grid["n_rows"] * grid["n_cols"] - 1
    return grid


def patch_acts(ctx: AppContext, study_id: int, feature: int, grid: dict[str, Any]) -> Rows:
    """The feature's activation on each patch of the study's first image (firing patches only)."""
    if not ctx.has("feature_acts", "tokens"):
        return []
    sql = """SELECT t.patch_row, t.patch_col, a.value FROM feature_acts a
             JOIN tokens t ON t.row = a.row
             WHERE a.feature = ? AND a.row BETWEEN ? AND ? AND t.row BETWEEN ? AND ?
               AND t.kind = 'image'"""
    lo, hi = grid["lo"], grid["hi"]
    return ctx.rows(sql, [feature, lo, hi, lo, hi])


def study(ctx: AppContext, study_id: int) -> dict[str, Any] | None:
    """The study's row of ``studies``, or None."""
    if not ctx.has("studies"):
        return None
    rows = ctx.rows("SELECT * FROM studies WHERE study_id = ?", [study_id])
    return rows[0] if rows else None


def study_list(ctx: AppContext, limit: int = 2000) -> list[int]:
    """Study ids for the picker."""
    if not ctx.has("studies"):
        return []
    return [
        r["study_id"]
        for r in ctx.rows("SELECT study_id FROM studies ORDER BY study_id LIMIT ?", [limit])
    ]


def study_positives(ctx: AppContext, study_id: int) -> list[str]:
    """Concepts labelled present in the study (ground truth or CheXpert)."""
    if not ctx.has("study_labels"):
        return []
    sql = "SELECT DISTINCT concept FROM study_labels WHERE study_id = ? AND value = 1 ORDER BY 1"
    return [r["concept"] for r in ctx.rows(sql, [study_id])]


def study_span(ctx: AppContext, study_id: int) -> tuple[int, int] | None:
    """First and last token row of the study (a study's rows are contiguous in the store).

    Passed on as constants, they let DuckDB skip every Parquet row group of other studies.
    """
    if not ctx.has("tokens"):
        return None
    rows = ctx.rows(
        "SELECT min(row) AS lo, max(row) AS hi FROM tokens WHERE study_id = ?", [study_id]
    )
    return None if not rows or rows[0]["lo"] is None else (rows[0]["lo"], rows[0]["hi"])


def study_sections(ctx: AppContext, study_id: int, per_section: int = 8) -> Rows:
    """The most active features of each section of the study ('image' for image tokens).

    Ranked by activation relative to the feature's own maximum, so a feature near its peak
    outranks a loud but commonplace one.
    """
    span = study_span(ctx, study_id)
    if span is None or not ctx.has("feature_acts", "feature_stats"):
        return []
    sql = f"""WITH toks AS (
        SELECT row, CASE WHEN kind = 'image' THEN 'image' ELSE coalesce(section, kind) END
               AS section FROM tokens WHERE row BETWEEN $lo AND $hi),
      acts AS MATERIALIZED (SELECT t.section, a.feature, max(a.value) AS act
               FROM feature_acts a JOIN toks t ON t.row = a.row
               WHERE a.row BETWEEN $lo AND $hi GROUP BY ALL),
      lab AS ({_best_label("WHERE feature IN (SELECT feature FROM acts)")})
      SELECT acts.section, acts.feature, acts.act, acts.act / nullif(s.max_act, 0) AS rel,
             lab.label
      FROM acts JOIN feature_stats s USING (feature) LEFT JOIN lab USING (feature)
      QUALIFY row_number() OVER (PARTITION BY acts.section ORDER BY rel DESC) <= $n
      ORDER BY acts.section = 'image' DESC, acts.section, rel DESC"""
    return ctx.rows(sql, {"lo": span[0], "hi": span[1], "n": per_section})


def study_tokens(ctx: AppContext, study_id: int, feature: int | None) -> Rows:
    """The study's text tokens in order, with the feature's activation on each (0 if silent)."""
    span = study_span(ctx, study_id)
    if span is None:
        return []
    params = {"lo": span[0], "hi": span[1]}
    acts = "SELECT NULL::BIGINT AS row, NULL::REAL AS value WHERE false"
    if feature is not None and ctx.has("feature_acts"):
        acts = "SELECT row, value FROM feature_acts WHERE feature = $f AND row BETWEEN $lo AND $hi"
        params["f"] = feature
    sql = f"""SELECT t.token, t.kind, t.section, coalesce(a.value, 0.0) AS value
              FROM tokens t LEFT JOIN ({acts}) a USING (row)
              WHERE t.row BETWEEN $lo AND $hi AND t.kind IN ('prompt', 'report', 'generated')
              ORDER BY t.position"""
    return ctx.rows(sql, params)
