"""The feature page's own reads: where a feature fires on images, and its examples in context.

Same rules as :mod:`workbench.ui.queries` (parameterised SQL, plain rows, a missing table reads
as empty). Two reads matter for speed on a 16k-feature run with millions of activations:

- the studies where a feature peaks on *image* tokens come from ``study_features.image_max``
  (sorted by feature, so a lookup touches one block); a database analysed before that column
  existed falls back to one scan of the feature's activations joined with ``tokens``;
- example contexts (the sentence around each text example) read the token windows by row
  (``row IN`` a list: the table's zone maps skip the rest) and the feature's activations in
  those windows with one filtered scan of ``feature_acts``.
"""

from __future__ import annotations

import json
from typing import Any

from workbench.ui.context import AppContext
from workbench.ui.queries import Rows, ranked_labels

TEXT_KINDS = ("prompt", "report", "generated")


def labels(ctx: AppContext, feature: int) -> Rows:
    """Every label of the feature, the one it is known by first (:func:`ranked_labels`)."""
    if not ctx.has("feature_labels"):
        return []
    sql = f"""WITH one AS (SELECT $f AS feature), ranked AS ({ranked_labels(ctx, "one")})
              SELECT * FROM ranked ORDER BY label_rank"""
    return ctx.rows(sql, {"f": feature})


def label_scores(ctx: AppContext, feature: int) -> Rows:
    """Every score of every label of the feature (``feature_scores`` rows)."""
    if not ctx.has("feature_scores"):
        return []
    sql = """SELECT method, scorer, metric, value, n_examples FROM feature_scores
             WHERE feature = ? ORDER BY method, scorer, metric"""
    return ctx.rows(sql, [feature])


def tests_run(ctx: AppContext) -> set[str]:
    """Scorer names (detection, fuzz, ...) that wrote any score to this database."""
    if not ctx.has("feature_scores"):
        return set()
    sql = "SELECT DISTINCT split_part(scorer, ':', 1) AS name FROM feature_scores"
    return {r["name"] for r in ctx.rows(sql)}


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


def has_column(ctx: AppContext, table: str, column: str) -> bool:
    """Whether ``table`` of the run's database has ``column`` (older runs may lack new ones)."""
    if not ctx.has(table):
        return False
    sql = """SELECT count(*) AS n FROM duckdb_columns()
             WHERE database_name = 'features' AND table_name = ? AND column_name = ?"""
    return ctx.rows(sql, [table, column])[0]["n"] > 0


def image_overview(ctx: AppContext, feature: int, limit: int = 6) -> tuple[dict[str, Any], Rows]:
    """How much the feature fires on image tokens (``n_image`` patches in ``n_studies``
    studies, ``peak``, and the run's ``n_total`` image tokens) and the studies where its
    image-token maximum is highest (study_id, image_max, n_image), best first."""
    total = "(SELECT count(*) FROM tokens WHERE kind = 'image')" if ctx.has("tokens") else "0"
    if has_column(ctx, "study_features", "image_max"):
        per_study = """SELECT study_id, image_max, n_image FROM study_features
                       WHERE feature = $f AND image_max IS NOT NULL"""
    elif ctx.has("feature_acts", "tokens"):
        per_study = """SELECT t.study_id, max(a.value) AS image_max, count(*) AS n_image
                       FROM feature_acts a JOIN tokens t ON t.row = a.row
                       WHERE a.feature = $f AND t.kind = 'image' GROUP BY t.study_id"""
    else:
        return {"n_image": 0, "n_studies": 0, "peak": None, "n_total": 0}, []
    rows = ctx.rows(
        f"""WITH s AS MATERIALIZED ({per_study})
            SELECT study_id, image_max, n_image, sum(n_image) OVER () AS all_image,
                   count(*) OVER () AS n_studies, {total} AS n_total
            FROM s ORDER BY image_max DESC, study_id LIMIT $n""",
        {"f": feature, "n": limit},
    )
    if not rows:
        return {"n_image": 0, "n_studies": 0, "peak": None, "n_total": _total(ctx, total)}, []
    first = rows[0]
    summary = {
        "n_image": int(first["all_image"]),
        "n_studies": int(first["n_studies"]),
        "peak": first["image_max"],
        "n_total": int(first["n_total"]),
    }
    return summary, [{k: r[k] for k in ("study_id", "image_max", "n_image")} for r in rows]


def _total(ctx: AppContext, total: str) -> int:
    return int(ctx.rows(f"SELECT {total} AS n")[0]["n"])


def patch_grid_shape(ctx: AppContext) -> tuple[int, int] | None:
    """(n_rows, n_cols) of the image patch grid the model uses (None: no image tokens)."""
    if not ctx.has("tokens"):
        return None
    row = ctx.rows(
        "SELECT max(patch_row) + 1 AS r, max(patch_col) + 1 AS c FROM tokens WHERE kind = 'image'"
    )[0]
    return None if row["r"] is None else (int(row["r"]), int(row["c"]))


def image_grids(ctx: AppContext, study_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each study's first image: row range (lo, hi) and patch grid (n_rows, n_cols), as
    :func:`workbench.ui.queries.image_grid` gives for one study."""
    if not study_ids or not ctx.has("tokens"):
        return {}
    rows = ctx.rows(
        """SELECT study_id, min(row) AS lo, max(patch_row) + 1 AS n_rows,
                  max(patch_col) + 1 AS n_cols FROM tokens
           WHERE study_id IN (SELECT unnest(?::BIGINT[])) AND kind = 'image'
             AND patch_row IS NOT NULL GROUP BY study_id""",
        [study_ids],
    )
    return {r["study_id"]: {**r, "hi": r["lo"] + r["n_rows"] * r["n_cols"] - 1} for r in rows}


def study_frontals(ctx: AppContext, study_ids: list[int]) -> dict[int, str | None]:
    """Frontal image path of each study (as analyse stored it)."""
    if not study_ids or not ctx.has("studies"):
        return {}
    sql = """SELECT study_id, frontal_path FROM studies
             WHERE study_id IN (SELECT unnest(?::BIGINT[]))"""
    return {r["study_id"]: r["frontal_path"] for r in ctx.rows(sql, [study_ids])}


def context_windows(
    ctx: AppContext, feature: int, centres: list[int], reach: int = 40
) -> tuple[Rows, dict[int, float]]:
    """Text tokens within ``reach`` rows of each example row (same rows for every example) and
    the feature's activation on the firing ones: (token rows in order, row -> activation)."""
    if not centres or not ctx.has("tokens"):
        return [], {}
    wanted = sorted({r for c in centres for r in range(max(0, c - reach), c + reach + 1)})
    kinds = ", ".join(f"'{k}'" for k in TEXT_KINDS)
    toks = ctx.rows(
        f"""SELECT row, study_id, kind, section, token FROM tokens
            WHERE row BETWEEN $lo AND $hi AND row IN (SELECT unnest($rows::BIGINT[]))
              AND kind IN ({kinds}) ORDER BY row""",
        {"lo": wanted[0], "hi": wanted[-1], "rows": wanted},
    )
    if not ctx.has("feature_acts"):
        return toks, {}
    acts = ctx.rows(
        """WITH w AS (SELECT unnest($los::BIGINT[]) AS lo, unnest($his::BIGINT[]) AS hi)
           SELECT DISTINCT a.row, a.value FROM feature_acts a
           JOIN w ON a.row BETWEEN w.lo AND w.hi
           WHERE a.feature = $f AND a.row BETWEEN $lo AND $hi""",
        {
            "los": [c - reach for c in centres],
            "his": [c + reach for c in centres],
            "f": feature,
            "lo": wanted[0],
            "hi": wanted[-1],
        },  # fmt: skip
    )
    return toks, {r["row"]: float(r["value"]) for r in acts}


def _in(table: str, order: str, extra: str = "") -> str:
    return (
        f"SELECT * FROM {table} WHERE feature IN (SELECT unnest($fs::INTEGER[])) {extra} "
        f"ORDER BY feature, {order}"
    )


def export_rows(ctx: AppContext, features: list[int]) -> dict[str, Rows]:
    """Everything an export holds for ``features``: table name -> rows (missing tables: [])."""
    parts = {
        "stats": ("feature_stats", "feature", ""),
        "features": ("features", "feature", ""),
        "histograms": ("feature_histograms", "bin", ""),
        "examples": ("feature_examples", "example_group = 'top' DESC, quantile DESC, rank", ""),
        "concepts": ("feature_concepts", "rank", "AND rank <= 12"),
        "neighbors": ("feature_neighbors", "rank", ""),
        "logits": ("feature_logits", "direction, rank", ""),
        "scores": ("feature_scores", "method, scorer, metric", ""),
    }
    out: dict[str, Rows] = {}
    for key, (table, order, extra) in parts.items():
        out[key] = ctx.rows(_in(table, order, extra), {"fs": features}) if ctx.has(table) else []
    out["labels"] = []
    if ctx.has("feature_labels"):
        sql = f"""WITH keep AS (SELECT unnest($fs::INTEGER[]) AS feature),
                  r AS ({ranked_labels(ctx, "keep")})
                  SELECT * FROM r ORDER BY feature, label_rank"""
        out["labels"] = ctx.rows(sql, {"fs": features})
    out["quantile_counts"] = _quantile_counts(ctx, features)
    return out


def analyse_config(ctx: AppContext) -> dict[str, Any]:
    """The configuration of the last analyse run (from the ``runs`` table), or {}."""
    if not ctx.has("runs"):
        return {}
    rows = ctx.rows(
        "SELECT config FROM runs WHERE stage = 'analyse' ORDER BY finished_at DESC LIMIT 1"
    )
    try:
        cfg = json.loads(rows[0]["config"]) if rows and rows[0]["config"] else {}
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _quantile_counts(ctx: AppContext, features: list[int]) -> Rows:
    """Firing tokens per quantile interval of [0, max_act] (analyse's n_quantiles groups)."""
    if not ctx.has("feature_acts", "feature_stats"):
        return []
    n = int(analyse_config(ctx).get("n_quantiles") or 10)
    # the same interval as analyse's quantile examples (workbench.analyse.tables)
    sql = """SELECT a.feature, least($n - 1, floor($n * a.value / s.max_act))::INTEGER AS q,
                    count(*) AS n
             FROM feature_acts a JOIN feature_stats s USING (feature)
             WHERE a.feature IN (SELECT unnest($fs::INTEGER[])) AND s.max_act > 0
             GROUP BY ALL ORDER BY ALL"""
    return [{**r, "n_quantiles": n} for r in ctx.rows(sql, {"fs": features, "n": n})]
