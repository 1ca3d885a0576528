"""analyse on a tiny run with planted features: every table holds the numbers it should."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.fixtures.analyse_world import (
    EFFUSION,
    N_STUDIES,
    PACEMAKER,
    make_run,
    sid,
    study_tokens,
)
from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse, main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("analyse"))
    analyse(AnalyseConfig(run=run))
    return run


@pytest.fixture
def con(run):
    c = db.connect(run)
    yield c
    c.close()


def _dense() -> np.ndarray:
    """The SAE's activations computed by hand: [tokens, 16]."""
    x = np.concatenate([study_tokens(i)[0].numpy() for i in range(N_STUDIES)])
    lat = np.concatenate([x, -x], axis=1)
    return np.where(lat > 0.5, lat, 0.0)


def test_feature_stats_match_the_planted_activations(con):
    lat = _dense()
    got = con.execute(
        "SELECT n_fires, max_act, sum_act, frequency FROM feature_stats ORDER BY feature"
    ).fetchnumpy()
    np.testing.assert_array_equal(got["n_fires"], (lat > 0).sum(0))
    np.testing.assert_allclose(got["max_act"], lat.max(0), rtol=1e-6)
    np.testing.assert_allclose(got["sum_act"], lat.sum(0), rtol=1e-5)
    np.testing.assert_allclose(got["frequency"], (lat > 0).mean(0))
    kinds = con.execute(
        "SELECT feature, frac_image, frac_prompt, frac_report, n_studies, dead "
        "FROM feature_stats WHERE feature < 4 ORDER BY feature"
    ).fetchall()
    assert kinds == [
        (0, 1.0, 0.0, 0.0, len(PACEMAKER), False),
        (1, 0.0, 0.0, 1.0, len(EFFUSION), False),
        (2, 0.0, 1.0, 0.0, N_STUDIES, False),
        (3, 1.0, 0.0, 0.0, N_STUDIES, False),
    ]
    assert con.execute("SELECT count(*) FROM feature_stats WHERE dead").fetchone()[0] == 12
    assert con.execute("SELECT mean_act FROM feature_stats WHERE feature = 5").fetchone() == (None,)


def test_histogram_counts_every_firing(con):
    got = con.execute(
        "SELECT h.feature, sum(h.count) = any_value(s.n_fires), "
        "bool_and(h.bin_lo < h.bin_hi) FROM feature_histograms h "
        "JOIN feature_stats s USING (feature) GROUP BY 1"
    ).fetchall()
    assert {r[0] for r in got} == {0, 1, 2, 3} and all(r[1] and r[2] for r in got)


def test_top_and_quantile_examples(con):
    lat = _dense()[:, 3]
    top = con.execute(
        "SELECT row, activation, rank FROM feature_examples WHERE feature = 3 "
        "AND example_group = 'top' ORDER BY rank"
    ).fetchnumpy()
    assert len(top["row"]) == 20
    np.testing.assert_allclose(top["activation"], np.sort(lat[lat > 0])[::-1][:20], rtol=1e-6)
    np.testing.assert_allclose(lat[top["row"]], top["activation"], rtol=1e-6)
    q = con.execute(
        "SELECT quantile, row, activation FROM feature_examples WHERE feature = 3 "
        "AND example_group = 'quantile'"
    ).fetchnumpy()
    mx = lat.max()
    assert len(q["row"]) > 0 and not set(q["row"]) & set(top["row"])
    for quant, act in zip(q["quantile"], q["activation"]):
        assert quant * mx / 10 <= act + 1e-6 and (act < (quant + 1) * mx / 10 or quant == 9)
    per = con.execute(
        "SELECT max(c) FROM (SELECT count(*) c FROM feature_examples "
        "WHERE example_group = 'quantile' GROUP BY feature, quantile)"
    ).fetchone()
    assert per[0] <= 5


def test_examples_carry_token_info_and_context(con):
    rows = con.execute(
        "SELECT e.row, e.token, e.kind, e.activation, e.patch_row, e.patch_col, e.context_tokens,"
        " e.context_acts, e.center, e.study_id, t.study_id FROM feature_examples e "
        "JOIN tokens t USING (row)"
    ).fetchall()
    assert rows
    for _row, tok, kind, act, pr, pc, ctx_t, ctx_a, center, s_e, s_t in rows:
        assert ctx_t[center] == tok and ctx_a[center] == pytest.approx(act)
        assert len(ctx_t) == len(ctx_a) <= 11 and s_e == s_t
        assert (pr is not None) == (pc is not None) == (kind == "image")
    # the effusion feature's context shows the words around it, with zeros elsewhere
    ctx = con.execute(
        "SELECT context_tokens, context_acts FROM feature_examples "
        "WHERE feature = 1 AND rank = 1 AND example_group = 'top'"
    ).fetchone()
    assert ctx[0][-4:] == [" small", " left", " effusion", "."]
    assert ctx[1][-2:] == [pytest.approx(1.5), 0.0]


def test_study_features_and_sparse_parquet(run, con):
    lat = _dense()
    study_of_row = np.repeat([sid(i) for i in range(N_STUDIES)], 10)
    got = con.execute("SELECT study_id, feature, max_act, n_fires FROM study_features").fetchall()
    want = set()
    for f in range(lat.shape[1]):
        for s in np.unique(study_of_row[lat[:, f] > 0]):
            v = lat[study_of_row == s, f]
            want.add((int(s), f, round(float(v.max()), 5), int((v > 0).sum())))
    assert {(s, f, round(m, 5), n) for s, f, m, n in got} == want
    table = pq.read_table(run / db.ACTS_NAME)
    assert table.num_rows == int((lat > 0).sum())
    rows = table.column("row").to_numpy()
    assert (np.diff(rows) >= 0).all()
    np.testing.assert_allclose(
        table.column("value").to_numpy(), lat[rows, table.column("feature").to_numpy()], rtol=1e-6
    )


def test_concepts_and_missing_labels_are_counted(con):
    best = dict(
        con.execute(
            "SELECT feature, concept FROM feature_concepts WHERE rank = 1 AND feature < 2"
        ).fetchall()
    )
    assert best == {0: "pacemaker", 1: "pleural_effusion"}
    assert (
        con.execute(
            "SELECT auroc FROM feature_concepts WHERE feature = 1 AND concept = 'Pleural Effusion'"
        ).fetchone()[0]
        == 1.0
    )
    counts = dict(
        (r[0], r[1:])
        for r in con.execute(
            "SELECT concept, n_pos, n_neg, n_uncertain, n_missing FROM concepts"
        ).fetchall()
    )
    assert counts["Pleural Effusion"] == (6, 4, 1, 1)
    assert counts["pacemaker"] == (6, 5, 0, 1)
    assert (
        con.execute(
            "SELECT count(*) FROM feature_concepts WHERE concept = 'nodule' AND auroc IS NOT NULL"
        ).fetchone()[0]
        == 0
    )  # no positives: NULL
    notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    assert "1 of 12 stored studies have no phantom labels (left out of those AUROCs)" in notes
    assert "no model: logit effects skipped" in notes


def test_recovery_and_statistical_labels(con):
    rec = con.execute(
        "SELECT best_feature, auroc, recovered FROM concept_recovery WHERE concept = 'pacemaker'"
    ).fetchone()
    assert rec == (0, 1.0, True)
    assert con.execute(
        "SELECT best_feature FROM concept_recovery WHERE concept = 'nodule'"
    ).fetchone() == (None,)
    labels = dict(
        con.execute(
            "SELECT feature, label FROM feature_labels WHERE method = 'statistical'"
        ).fetchall()
    )
    assert len(labels) == 16
    assert labels[0].startswith("pacemaker (AUROC 1.00)")
    assert '"left effusion"' in labels[1] and "pleural_effusion" in labels[1]
    assert labels[2] == "mostly prompt tokens" and labels[5] == "dead"


def test_neighbors_exclude_self_and_opposites(con):
    got = con.execute(
        "SELECT neighbor, cosine FROM feature_neighbors WHERE feature = 0 ORDER BY rank"
    ).fetchall()
    assert len(got) == 10 and all(n != 0 and n != 8 for n, _ in got)  # 8 is -feature 0
    assert all(c == pytest.approx(0.0) for _, c in got)


def test_batching_and_sharding_do_not_change_results(run, tmp_path):
    other = make_run(tmp_path, shard_tokens=25)
    analyse(AnalyseConfig(run=other, batch_tokens=3))
    a, b = db.connect(run), db.connect(other)
    for sql in (
        "SELECT * FROM feature_stats ORDER BY feature",
        "SELECT feature, example_group, quantile, rank, row, activation, context_acts "
        "FROM feature_examples ORDER BY ALL",
        "SELECT * FROM study_features ORDER BY ALL",
        "SELECT * FROM feature_concepts ORDER BY ALL",
    ):
        assert a.execute(sql).fetchall() == b.execute(sql).fetchall(), sql


def test_cli_report(run, capsys):
    assert main(["--run", str(run), "--reuse", "--report"]) == 0
    out = capsys.readouterr().out
    assert "pacemaker" in out and "findings recovered (AUROC >= 0.95)" in out
