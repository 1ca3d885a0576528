"""The features are scored through exactly the probe's poolings (workbench.analyse.pooled).

A planted world where each concept is readable by one feature under one pooling only:

- feature 0 fires (1.0) on one report token of an A-negative study and on three of an
  A-positive one: its maximum is 1 everywhere, only its *report mean* tells A;
- feature 1 fires (1.0) on an image token of B-positive studies, and (5.0) on a prompt token
  of every study: its maximum over all tokens is 5 everywhere, its *image max* tells B;
- feature 2 fires (2.0) on one report token of every study, and C-positive studies have 4
  report tokens, the others 8: only a mean over *all* report tokens (silent ones included,
  as the probe's mean) tells C; a mean over the tokens where it fires would not.

The store holds the latents themselves as the "residual stream", so the probe's own pooling
(:func:`workbench.analyse.probes.pool_store`) gives the reference values for every feature.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from workbench.analyse.pooled import best_pooled_features
from workbench.analyse.probes import pool_store
from workbench.stats import auroc_columns
from workbench.store import ActivationStore, StoreWriter

S, F = 24, 5
A = np.arange(S) % 2 == 0
B = np.arange(S) % 3 == 0
C = np.arange(S) % 4 < 2
ROW = {"subject_id": 1, "token_id": 0, "token": "t", "patch_row": None, "patch_col": None}


def _study(i: int, rng) -> tuple[np.ndarray, list[dict]]:
    """Latents [n, F] and token metadata of study i (image, prompt, report tokens)."""
    kinds = ["image"] * 3 + ["prompt"] * 2 + ["report"] * (4 if C[i] else 8)
    x = np.zeros((len(kinds), F), np.float32)
    report = [t for t, k in enumerate(kinds) if k == "report"]
    x[report[: 3 if A[i] else 1], 0] = 1.0
    x[3, 1] = 5.0  # prompt
    if B[i]:
        x[1, 1] = 1.0
    x[report[-1], 2] = 2.0
    x[:, 3] = rng.random(len(kinds)) * (rng.random(len(kinds)) < 0.3)  # noise
    meta = [{**ROW, "kind": k, "section": k, "position": p} for p, k in enumerate(kinds)]
    return x, meta


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooled")
    rng = np.random.default_rng(0)
    w = StoreWriter(root / "acts", model="m", layer=0, hook_name="h", d_model=F)
    rows, kinds, sids, dense = [], [], [], []
    for i in range(S):
        x, meta = _study(i, rng)
        w.add(100 + i, torch.from_numpy(x), meta)
        dense.append(x)
        kinds += [m["kind"] for m in meta]
        sids += [100 + i] * len(meta)
    w.close()
    x = np.concatenate(dense)
    rows, feats = np.nonzero(x)
    acts = root / "acts.parquet"
    pq.write_table(
        pa.table({"row": rows.astype(np.int64), "feature": feats.astype(np.int32),
                  "value": x[rows, feats]}), acts,
    )  # fmt: skip
    con = duckdb.connect()
    con.register("_t", pa.table({"row": np.arange(len(x)), "study_id": sids, "kind": kinds}))
    con.execute("CREATE TABLE tokens AS SELECT * FROM _t")
    con.execute(
        f"CREATE TABLE study_features AS SELECT DISTINCT t.study_id, a.feature "
        f"FROM read_parquet('{acts}') a JOIN tokens t USING (row)"
    )
    y = np.stack([A, B, C], 1).astype(np.float64)
    yield con, f"read_parquet('{acts}')", ActivationStore(root / "acts"), y
    con.close()


def test_each_concept_is_found_under_the_one_pooling_that_reads_it(world):
    con, acts, _, y = world
    ids = np.arange(100, 100 + S)
    names = ["image max", "image mean", "report max", "report mean"]
    best = best_pooled_features(con, acts, ids, y, F, names)
    assert best.auroc.tolist() == [1.0, 1.0, 1.0]
    assert best.feature.tolist() == [0, 1, 2]
    # feature 1 also reaches 1.0 by its image mean: ties go to the earlier pooling
    assert best.pooling == ["report mean", "image max", "report mean"]
    for block in (1, 2):  # feature blocks change nothing
        again = best_pooled_features(con, acts, ids, y, F, names, block=block)
        assert again.feature.tolist() == [0, 1, 2] and again.pooling == best.pooling


def test_pooled_scores_equal_the_probe_pooling_of_each_latent(world):
    con, acts, store, y = world
    ids = np.arange(100, 100 + S)
    x, names = pool_store(store, ids)  # [S, 4 * F]: image max/mean, report max/mean
    assert names == ["image max", "image mean", "report max", "report mean"]
    y = y.copy()
    y[:4, 2] = np.nan  # unknown labels are left out alike
    y[4, 2] = -1.0  # uncertain: left out too (the probe fits 1 / 0 only)
    known = np.where(np.isin(y, (0.0, 1.0)), y, np.nan)
    ref = np.stack([auroc_columns(x, np.repeat(known[:, [c]], x.shape[1], 1)) for c in range(3)])
    best = best_pooled_features(con, acts, ids, y, F, names)
    for c in range(3):
        col = int(np.nanargmax(ref[c]))
        assert best.auroc[c] == pytest.approx(ref[c, col])
        assert ref[c, names.index(best.pooling[c]) * F + best.feature[c]] == pytest.approx(
            ref[c, col]
        )
    # a subset of the studies: the score is computed on the probed studies only
    sub = best_pooled_features(con, acts, ids[::2], y[::2], F, names)
    assert sub.feature[0] == -1 and np.isnan(sub.auroc[0])  # A is constant on even studies


def test_the_study_maximum_over_all_tokens_cannot_see_them(world):
    """What feature_concepts scored before: the maximum over every token of the study."""
    con, acts, _, y = world
    top = con.execute(
        f"SELECT t.study_id, a.feature, max(a.value) FROM {acts} a JOIN tokens t USING (row) "
        "GROUP BY ALL"
    ).fetchall()
    m = np.zeros((S, F))
    for sid, f, v in top:
        m[sid - 100, f] = v
    auc = [auroc_columns(m[:, [f]], y[:, [c]])[0] for f, c in ((0, 0), (1, 1), (2, 2))]
    assert auc == [0.5, 0.5, 0.5]


def test_unknown_pooling_is_refused(world):
    con, acts, _, y = world
    with pytest.raises(ValueError, match="unknown pooling"):
        best_pooled_features(con, acts, np.arange(100, 100 + S), y, F, ["prompt max"])
    with pytest.raises(ValueError, match="unknown pooling"):
        best_pooled_features(con, acts, np.arange(100, 100 + S), y, F, ["image"])


def test_report_of_an_older_database_asks_for_a_rerun():
    from workbench.analyse.report import probe_table

    con = duckdb.connect()
    con.execute("CREATE TABLE concept_probes (concept VARCHAR, feature_auroc DOUBLE)")
    assert "rerun analyse (without --reuse)" in probe_table(con)


def test_report_without_sparse_probes_asks_for_a_rerun_and_never_fails():
    """A features.duckdb of an analyse before the k-sparse probes has no such table."""
    from workbench.analyse.report import sparse_table

    con = duckdb.connect()
    assert "predates them; rerun analyse (without --reuse)" in sparse_table(con)
    con.execute("CREATE TABLE concept_probes (concept VARCHAR, source VARCHAR, n_pos INTEGER)")
    con.execute(
        "CREATE TABLE concept_sparse_probes (concept VARCHAR, source VARCHAR, k INTEGER, "
        "auroc DOUBLE, ratio DOUBLE, features INTEGER[], poolings VARCHAR[])"
    )
    assert sparse_table(con).startswith("k-sparse probes: none")


def test_shortlist_ranks_every_candidate_and_carries_its_pooled_values(world):
    """With room for every feature, the shortlist is the reference AUROCs sorted (ties: lower
    feature, earlier pooling), each feature once under its best pooling, and its values are
    the probe's pooled columns."""
    con, acts, store, y = world
    ids = np.arange(100, 100 + S)
    x, names = pool_store(store, ids)  # column p * F + f: pooling p of feature f
    known = np.where(np.isin(y, (0.0, 1.0)), y, np.nan)
    for block in (1, 2, 1024):  # the running merge across feature blocks changes nothing
        short = best_pooled_features(con, acts, ids, y, F, names, block=block, top=6).shortlist
        assert short.feature.shape == (3, 6) and short.values.shape == (S, 3, 6)
        for c in range(3):
            ref = auroc_columns(x, np.repeat(known[:, [c]], x.shape[1], 1))
            fired = [p * F + f for p in range(4) for f in range(F) if x[:, p * F + f].any()]
            ranked = sorted(fired, key=lambda col: (-ref[col], col % F, col // F))
            order = [col for i, col in enumerate(ranked)  # each feature under its best pooling
                     if col % F not in {o % F for o in ranked[:i]}]  # fmt: skip
            n = len(order)
            got = [int(p) * F + int(f) for f, p in zip(short.feature[c], short.pooling[c])]
            assert got[:n] == order and (short.feature[c, n:] == -1).all()
            np.testing.assert_allclose(short.auroc[c, :n], ref[order])
            np.testing.assert_allclose(short.values[:, c, :n], x[:, order], rtol=1e-6)


def test_shortlist_pads_past_the_features_that_fire(world):
    con, acts, store, y = world
    ids = np.arange(100, 100 + S)
    short = best_pooled_features(con, acts, ids, y, F, ["report max"], top=8).shortlist
    # features 0, 2 and 3 fire on report tokens; 1 (image, prompt) and 4 never do
    assert [sorted(r) for r in short.feature[:, :3].tolist()] == [[0, 2, 3]] * 3
    assert (short.feature[:, 3:] == -1).all() and np.isneginf(short.auroc[:, 3:]).all()
    assert not short.values[:, :, 3:].any()
    assert best_pooled_features(con, acts, ids, y, F, ["report max"]).shortlist is None
