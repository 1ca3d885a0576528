"""SQL that turns the sparse activations Parquet into the per-feature tables of analyse.

Everything here runs inside DuckDB against ``read_parquet(<feature_acts.parquet>)`` and the
``tokens`` table, so the work is vectorised, parallel and spills to disk instead of holding
tokens x features in memory. Group states stay small: ``min_by(..., n)`` keeps n entries per
(feature, quantile), the n-gram and study tables are grouped aggregates.

Quantile examples follow SAEDashboard (reference sae.md section 4): the interval
[0, max_act] of each feature is cut into ``n_quantiles`` equal groups and ``per_quantile``
tokens are drawn uniformly at random from each, excluding the top examples. The draw is the
``per_quantile`` smallest values of a seeded hash of the row (a bottom-k sample, which is
uniform and reproducible).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

_TMP_EXAMPLES = "_examples"


def _acts(path: Path) -> str:
    return "read_parquet('" + str(path).replace("'", "''") + "')"


def insert_tokens(con: duckdb.DuckDBPyConnection, meta: pa.Table) -> None:
    """Append one shard's token metadata to ``tokens`` (store columns by name, extras dropped)."""
    con.register("_meta", meta)
    con.execute(
        "INSERT INTO tokens SELECT row, study_id, subject_id, position, token_id, token, kind, "
        "section, patch_row, patch_col FROM _meta"
    )
    con.unregister("_meta")


def build_study_features(con: duckdb.DuckDBPyConnection, acts: Path) -> None:
    """``study_features``: max activation and firing count of each feature per study."""
    con.execute(
        f"""INSERT INTO study_features
        SELECT t.study_id, a.feature, max(a.value), count(*)
        FROM {_acts(acts)} a JOIN tokens t ON a.row = t.row
        GROUP BY t.study_id, a.feature ORDER BY a.feature, t.study_id"""
    )


def stage_top_examples(con, top_vals: np.ndarray, top_rows: np.ndarray) -> None:
    """Put the streaming top-k (value, row) pairs into the temporary examples table."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_TMP_EXAMPLES} (feature INTEGER, example_group VARCHAR,"
        " quantile INTEGER, rank INTEGER, row BIGINT, activation REAL)"
    )
    F, k = top_rows.shape
    mask = top_rows >= 0
    feats, ranks = np.nonzero(mask)
    table = pa.table(
        {
            "feature": pa.array(feats.astype(np.int32)),
            "rank": pa.array((ranks + 1).astype(np.int32)),
            "row": pa.array(top_rows[mask].astype(np.int64)),
            "activation": pa.array(top_vals[mask].astype(np.float32)),
        }
    )
    con.register("_top", table)
    con.execute(
        f"INSERT INTO {_TMP_EXAMPLES} SELECT feature, 'top', NULL, rank, row, activation FROM _top"
    )
    con.unregister("_top")


def stage_quantile_examples(
    con, acts: Path, n_quantiles: int, per_quantile: int, seed: int
) -> None:
    """Sample ``per_quantile`` tokens from each of ``n_quantiles`` activation intervals.

    Only rows are kept (their activation is read with the context window, in
    :func:`build_examples`): carrying the values through the sampling doubled its cost.
    """
    con.execute(
        f"""INSERT INTO {_TMP_EXAMPLES}
        WITH q AS (
            SELECT a.feature, a.row, a.value,
                   least({n_quantiles - 1}, floor({n_quantiles} * a.value / s.max_act))::INTEGER
                       AS quantile
            FROM {_acts(acts)} a JOIN feature_stats s ON a.feature = s.feature
            ANTI JOIN (SELECT feature, row FROM {_TMP_EXAMPLES} WHERE example_group = 'top') t
                ON a.feature = t.feature AND a.row = t.row
        ),
        picked AS (
            SELECT feature, quantile, min_by(row, hash(row, {seed}), {per_quantile}) AS rows
            FROM q GROUP BY feature, quantile
        ),
        flat AS (SELECT feature, quantile, unnest(rows) AS row FROM picked)
        SELECT feature, 'quantile', quantile,
               row_number() OVER (PARTITION BY feature, quantile ORDER BY hash(row, {seed}))
                   ::INTEGER,
               row, NULL
        FROM flat"""
    )


def build_examples(con, acts: Path, context: int) -> None:
    """``feature_examples``: staged examples with token info and a context window.

    The window is the ``context`` tokens before and after the example within its study
    (a study is a contiguous range of rows in the store). Its tokens come from a window
    function over the tokens of the studies concerned, computed once per row whatever the
    number of features using it; its activations from the few non-zero entries of the
    feature inside the window, spread into a dense list (0 where the feature is silent).
    """
    c = context
    con.execute(
        f"""INSERT INTO feature_examples
        WITH e AS (
            SELECT row_number() OVER () AS eid, x.*, b.lo, b.hi
            FROM {_TMP_EXAMPLES} x JOIN tokens t ON x.row = t.row
            JOIN (SELECT study_id, min(row) AS smin, max(row) AS smax FROM tokens
                  GROUP BY study_id) s ON s.study_id = t.study_id,
            LATERAL (SELECT greatest(x.row - {c}, s.smin) AS lo,
                            least(x.row + {c}, s.smax) AS hi) b
        ),
        tw AS (
            SELECT row, list(token) OVER w AS toks FROM tokens
            WHERE study_id IN (SELECT t.study_id FROM e JOIN tokens t ON e.row = t.row)
            WINDOW w AS (PARTITION BY study_id ORDER BY row
                         ROWS BETWEEN {c} PRECEDING AND {c} FOLLOWING)
        ),
        cw AS (SELECT eid, feature, unnest(range(lo, hi + 1)) AS crow FROM e),
        nz AS (
            SELECT cw.eid, list({{'r': cw.crow, 'a': a.value}}) AS l
            FROM cw JOIN {_acts(acts)} a ON a.row = cw.crow AND a.feature = cw.feature
            GROUP BY cw.eid
        )
        SELECT e.feature, e.example_group, e.quantile, e.rank, e.row, t.study_id, t.position,
               t.token, t.kind, t.section,
               coalesce(e.activation, list_filter(nz.l, lambda x: x.r = e.row)[1].a),
               t.patch_row, t.patch_col, tw.toks,
               list_transform(range(e.lo, e.hi + 1), lambda r:
                   coalesce(list_filter(nz.l, lambda x: x.r = r)[1].a, 0)::REAL),
               (e.row - e.lo)::INTEGER
        FROM e JOIN tokens t ON e.row = t.row JOIN tw ON tw.row = e.row
        LEFT JOIN nz USING (eid)
        ORDER BY e.feature, e.example_group DESC, e.quantile DESC, e.rank"""
    )
    con.execute(f"DROP TABLE {_TMP_EXAMPLES}")


def build_ngrams(con, acts: Path, top: int) -> None:
    """``feature_ngrams``: characteristic report n-grams where each feature fires.

    The n-gram of a report token is the token preceded by the report token before it (same
    study), as decoded text. Score = activation mass on the n-gram x log(report tokens /
    occurrences of the n-gram), a tf-idf that discounts n-grams frequent everywhere.
    """
    con.execute(
        f"""INSERT INTO feature_ngrams
        WITH rt AS (
            SELECT t.row, trim(regexp_replace(coalesce(p.token, '') || t.token, '\\s+', ' ', 'g'))
                       AS ngram
            FROM tokens t LEFT JOIN tokens p
                ON p.row = t.row - 1 AND p.study_id = t.study_id AND p.kind = 'report'
            WHERE t.kind = 'report'
        ),
        df AS (SELECT ngram, count(*) AS c FROM rt GROUP BY ngram),
        total AS (SELECT count(*)::DOUBLE AS n FROM rt),
        fired AS (
            SELECT a.feature, rt.ngram, sum(a.value) AS mass, count(*) AS n
            FROM {_acts(acts)} a JOIN rt ON a.row = rt.row
            WHERE rt.ngram <> '' GROUP BY ALL
        )
        SELECT feature,
               row_number() OVER (PARTITION BY feature ORDER BY score DESC, ngram)::INTEGER,
               ngram, score, n
        FROM (SELECT f.feature, f.ngram, f.mass * ln(total.n / df.c) AS score, f.n
              FROM fired f JOIN df USING (ngram), total)
        QUALIFY row_number() OVER (PARTITION BY feature ORDER BY score DESC, ngram) <= {top}
        ORDER BY feature, 2"""
    )


def build_statistical_labels(con, min_auroc: float) -> None:
    """``feature_labels`` rows with method 'statistical': best concept, n-grams, token kind.

    The label names the best concept when its AUROC reaches ``min_auroc``, then the top
    report n-grams, then the token kind holding most of the feature's mass; dead features
    are labelled 'dead'. ``score`` is the best concept's AUROC (NULL without labels).
    """
    con.execute(
        f"""INSERT INTO feature_labels
        WITH best AS (SELECT feature, concept, auroc FROM feature_concepts WHERE rank = 1),
        ng AS (SELECT feature, list(ngram ORDER BY rank) AS grams FROM feature_ngrams GROUP BY 1),
        k AS (
            SELECT feature, CASE greatest(frac_image, frac_prompt, frac_report, frac_other)
                WHEN frac_image THEN 'image' WHEN frac_report THEN 'report'
                WHEN frac_prompt THEN 'prompt' ELSE 'generated/latent' END AS kind
            FROM feature_stats WHERE NOT dead
        )
        SELECT s.feature, 'statistical',
            CASE WHEN s.dead THEN 'dead'
                 ELSE concat_ws('; ',
                    CASE WHEN b.auroc >= {min_auroc}
                         THEN b.concept || ' (AUROC ' || printf('%.2f', b.auroc) || ')' END,
                    CASE WHEN len(ng.grams) > 0
                         THEN 'report: ' || array_to_string(
                             list_transform(ng.grams, lambda g: '"' || g || '"'), ', ') END,
                    'mostly ' || k.kind || ' tokens')
            END,
            b.auroc, NULL,
            json_object('best_concept', b.concept, 'auroc', b.auroc, 'ngrams', ng.grams,
                        'kind', k.kind, 'frequency', s.frequency),
            now()::TIMESTAMP
        FROM feature_stats s LEFT JOIN best b USING (feature) LEFT JOIN ng USING (feature)
        LEFT JOIN k USING (feature)
        ORDER BY s.feature"""
    )
