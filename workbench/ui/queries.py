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
from workbench.ui.labels import RANKED_SCORERS

Rows = list[dict[str, Any]]


def ranked_labels(ctx: AppContext, keep: str | None = None) -> str:
    """SQL (a CTE body) of every label with its rank score and ``label_rank`` (1 = the label
    the feature is known by), ranked as :mod:`workbench.ui.labels` explains.

    ``keep`` names a CTE with a ``feature`` column that narrows the labels and scores read (a
    page needs a handful of features, not 16k); None reads them all.
    """
    only = f"AND feature IN (SELECT feature FROM {keep})" if keep else ""
    scored = ""
    if ctx.has("feature_scores"):
        tests = ", ".join(f"'{t}'" for t in RANKED_SCORERS)
        scored = f"""SELECT feature, method, value FROM feature_scores
            WHERE metric = 'balanced_accuracy' AND split_part(scorer, ':', 1) IN ({tests})
            {only} UNION ALL"""
    return f"""
      SELECT l.feature, l.method, l.label, l.score, l.model, l.details, r.rank_score,
        row_number() OVER (PARTITION BY l.feature ORDER BY l.method = 'human' DESC,
          r.rank_score DESC NULLS LAST,
          CASE WHEN l.method LIKE 'llm%' THEN 0 WHEN l.method = 'offline' THEN 1
               WHEN l.method = 'statistical' THEN 3 ELSE 2 END,
          l.created_at DESC NULLS LAST, l.method) AS label_rank
      FROM feature_labels l LEFT JOIN (
        SELECT feature, method, avg(value) AS rank_score FROM ({scored}
          SELECT feature, method, score FROM feature_labels
          WHERE method = 'statistical' AND score IS NOT NULL {only}
            AND starts_with(label, json_extract_string(details, '$.best_concept') || ' (AUROC'))
        GROUP BY feature, method) r USING (feature, method)
      WHERE true {only.replace("AND feature", "AND l.feature")}"""


def known_labels(ctx: AppContext, keep: str | None = None) -> str:
    """SQL (a CTE body): the one label each feature is known by (see :func:`ranked_labels`)."""
    return f"SELECT * FROM ({ranked_labels(ctx, keep)}) WHERE label_rank = 1"


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


# A concept's features: those whose study max separates its studies at least this well.
ASSOCIATED_AUROC = 0.7
# A search returns at most this many matches to rank (then the first ``limit`` are shown).
SEARCH_CAP = 5000


def feature_table(
    ctx: AppContext,
    search: str = "",
    concept: tuple[str, str] | None = None,
    density: str = "any",
    group: int | None = None,
    sort: str = "frequency",
    descending: bool = True,
    limit: int = 200,
    meaning: bool = False,
) -> tuple[Rows, int]:
    """Features matching the filters (first ``limit`` in the chosen order) and the total count.

    ``label`` is the label each feature is known by (:func:`known_labels`), ``score`` its rank
    score. ``concept`` = (source, name) keeps the features associated with that concept
    (AUROC >= :data:`ASSOCIATED_AUROC`) and shows its AUROC (else each feature's best concept),
    with the assertion ``selectivity`` on that concept's report mentions when analyse wrote
    ``feature_mentions``. ``meaning`` keeps the features that mean the shown concept, not its
    word: selectivity >= :data:`MIN_SELECTIVITY` or pointing game >= :data:`MIN_POINTING`.
    ``search`` matches any label (case-insensitive) or the feature's index; then every match
    comes back (up to :data:`SEARCH_CAP`) with the matching labels in ``matched``, for the
    handler to rank.
    """
    if not ctx.has("features", "feature_stats", "feature_labels", "feature_concepts"):
        return [], 0
    where, params = _table_filters(search, concept, density, group)
    text = (search or "").strip()
    sel_cte, sel_join = _meaning_sources(ctx)
    if meaning:
        where += " AND (sel.selectivity >= $min_sel OR loc.pointing_game >= $min_point)"
        params.update(min_sel=MIN_SELECTIVITY, min_point=MIN_POINTING)
    con_rows = "concept = $concept AND source = $source" if concept else "rank = 1"
    sql = f"""
      WITH lab AS ({known_labels(ctx)}),
      con AS (SELECT feature, concept, source, auroc FROM feature_concepts WHERE {con_rows}),
      matched AS (SELECT feature, list({{'method': method, 'label': label}}) AS labels
                  FROM feature_labels WHERE $text <> '' AND label ILIKE '%' || $text || '%'
                  GROUP BY feature){sel_cte},
      hits AS (
        SELECT f.feature, l.label, l.method, l.rank_score AS score, c.concept, c.source,
               c.auroc, s.frequency, s.max_act, f.matryoshka_group AS "group",
               sel.selectivity, loc.pointing_game, m.labels AS matched
        FROM features f
        LEFT JOIN feature_stats s USING (feature)
        LEFT JOIN lab l USING (feature)
        LEFT JOIN con c USING (feature)
        LEFT JOIN matched m USING (feature) {sel_join}
        WHERE {where})"""
    params["text"] = text
    if text:
        rows = ctx.rows(sql + "SELECT * FROM hits LIMIT $cap", {**params, "cap": SEARCH_CAP})
        return rows, len(rows)
    order = f"{SORTS.get(sort, SORTS['frequency'])} {'DESC' if descending else 'ASC'} NULLS LAST"
    if concept and sort == "AUROC":
        order += ", selectivity DESC NULLS LAST"
    page = f"SELECT * FROM hits ORDER BY {order}, feature LIMIT $limit"
    rows = ctx.rows(sql + page, {**params, "limit": limit})
    if len(rows) < limit:
        return rows, len(rows)
    # a full page: count separately (cheaper than a window over every matching row)
    return rows, ctx.rows(sql + "SELECT count(*) AS n FROM hits", params)[0]["n"]


# "Means the concept" (the Features tab's filter and the meaning table of analyse --report).
MIN_SELECTIVITY, MIN_POINTING = 0.9, 0.8


def _meaning_sources(ctx: AppContext) -> tuple[str, str]:
    """CTEs and joins adding, for the shown concept, the assertion selectivity on its report
    mentions (``feature_mentions``) and the pointing game against its masks
    (``feature_localisation``); concept names are compared case- and underscore-blind (the
    analyse tables use the phantom's names, the filter may show CheXpert's). Runs analysed
    before those tables get NULLs."""
    norm = "lower(replace({}, '_', ' '))"
    parts = []
    for alias, table, column in (
        ("sel", "feature_mentions", "selectivity"),
        ("loc", "feature_localisation", "pointing_game"),
    ):
        if ctx.has(table):
            body = f"SELECT feature, {norm.format('concept')} AS norm, {column} FROM {table}"
        else:
            body = f"SELECT NULL::INTEGER AS feature, NULL AS norm, NULL::DOUBLE AS {column}"
        parts.append((alias, body))
    cte = "".join(f", {alias} AS ({body})" for alias, body in parts)
    join = " ".join(
        f"LEFT JOIN {alias} ON {alias}.feature = f.feature "
        f"AND {alias}.norm = {norm.format('c.concept')}"
        for alias, _ in parts
    )
    return cte, join


def _table_filters(
    search: str, concept: tuple[str, str] | None, density: str, group: int | None
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of :func:`feature_table` from fixed fragments, values as parameters."""
    lo, hi = DENSITIES.get(density, DENSITIES["any"])
    clauses = ["coalesce(s.frequency, 0) BETWEEN $lo AND $hi"]
    params: dict[str, Any] = {"lo": lo, "hi": hi}
    if concept:
        clauses.append("c.auroc >= $min_auroc")
        params.update(source=concept[0], concept=concept[1], min_auroc=ASSOCIATED_AUROC)
    if group is not None:
        clauses.append("f.matryoshka_group = $group")
        params["group"] = group
    text = (search or "").strip()
    if text:
        match = "m.labels IS NOT NULL"
        if text.isdigit():
            match = f"(f.feature = $index OR {match})"
            params["index"] = int(text)
        clauses.append(match)
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


def concepts(ctx: AppContext) -> Rows:
    """Every scored concept with its source and positive count (the filter's choices)."""
    if not ctx.has("concepts"):
        return []
    return ctx.rows(
        "SELECT concept, source, n_pos FROM concepts "
        "ORDER BY lower(replace(concept, '_', ' ')), source"
    )


def feature_range(ctx: AppContext) -> tuple[int, int] | None:
    """The smallest and largest feature index of the SAE (None without features)."""
    if not ctx.has("features"):
        return None
    row = ctx.rows("SELECT min(feature) AS lo, max(feature) AS hi FROM features")[0]
    return None if row["lo"] is None else (int(row["lo"]), int(row["hi"]))


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


def neighbors(ctx: AppContext, feature: int, limit: int = 10) -> Rows:
    """Nearest features by decoder cosine, with the labels they are known by."""
    if not ctx.has("feature_neighbors", "feature_labels"):
        return []
    sql = f"""WITH near AS (SELECT neighbor AS feature, rank, cosine FROM feature_neighbors
                            WHERE feature = $f),
              lab AS ({known_labels(ctx, "near")})
              SELECT near.feature AS neighbor, near.cosine, lab.label FROM near
              LEFT JOIN lab USING (feature) ORDER BY near.rank LIMIT $n"""
    return ctx.rows(sql, {"f": feature, "n": limit})


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


def study_positives(ctx: AppContext, study_id: int) -> Rows:
    """Concepts labelled present in the study, with their source (ground truth, CheXpert)."""
    if not ctx.has("study_labels"):
        return []
    sql = """SELECT DISTINCT concept, source FROM study_labels
             WHERE study_id = ? AND value = 1 ORDER BY 1, 2"""
    return ctx.rows(sql, [study_id])


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
      lab AS ({known_labels(ctx, "acts")})
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
