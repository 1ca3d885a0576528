"""Token-level concept scores: the sparse AUROC and Spearman against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr

from workbench import db
from workbench.analyse.token_concepts import spearman_sparse, token_concept_report
from workbench.models.hooks import SEG_FEATURES
from workbench.run import RunLayout
from workbench.sae import save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import StoreWriter


def _dense_auroc(score: np.ndarray, label: np.ndarray) -> float:
    known = ~np.isnan(label)
    s, y = score[known], label[known] == 1
    r = rankdata(s)
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("n_fire", [0, 1, 7, 40])
def test_spearman_sparse_equals_scipy_on_the_dense_vector(n_fire):
    rng = np.random.default_rng(n_fire)
    n = 60
    target = rng.normal(size=n)
    target[rng.choice(n, 9, replace=False)] = np.nan
    target[:5] = 0.25  # ties in the target too
    rows = np.sort(rng.choice(n, n_fire, replace=False))
    vals = rng.choice([0.7, 1.0, 1.5, 2.0], n_fire)  # ties among firing tokens
    dense = np.zeros(n)
    dense[rows] = vals
    known = ~np.isnan(target)
    want = spearmanr(dense[known], target[known]).statistic if dense[known].std() else np.nan
    got = spearman_sparse(rows, vals, target)
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def _planted_store(path, n_studies=4, per_study=50, seed=0):
    """Coordinate 0 grows with the lung coverage, 1 is noise, 2 grows with the target."""
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, model="segmentation:x", layer=0, hook_name=SEG_FEATURES, d_model=4,
                    extra={"concept_groups": {"lung": "structure"}})  # fmt: skip
    truth = {"lung": [], "target": [], "x": []}
    for s in range(n_studies):
        lung = rng.uniform(0, 1, per_study)
        target = rng.uniform(0, 1, per_study)
        target[:3] = np.nan
        x = np.zeros((per_study, 4), np.float32)
        x[:, 0] = 0.6 + lung + rng.normal(0, 0.2, per_study)
        x[:, 1] = rng.uniform(0, 2, per_study)
        x[:, 2] = np.where(np.isnan(target), 1.0, 0.4 + 2 * np.nan_to_num(target))
        meta = {
            "position": list(range(per_study)), "kind": ["latent"] * per_study,
            "concept_lung": lung.tolist(), "target_sample_variance": target.tolist(),
        }  # fmt: skip
        w.add(100 + s, torch.from_numpy(x), meta)
        truth["lung"].append(lung)
        truth["target"].append(target)
        truth["x"].append(x)
    w.close()
    return {k: np.concatenate(v) for k, v in truth.items()}


def test_analyse_scores_features_against_token_concepts(tmp_path):
    from workbench.analyse.run import AnalyseConfig, analyse

    run = RunLayout(tmp_path / "run")
    truth = _planted_store(run.activations)
    save_sae(signed_identity_sae(4, k=4, hook_name=SEG_FEATURES), run.sae)
    analyse(AnalyseConfig(run=run.root, device="cpu", top_k=4, per_quantile=1))
    con = db.connect(run.root)
    try:
        rows = con.execute(
            "SELECT feature, concept, concept_group, metric, value FROM feature_token_concepts"
        ).fetchall()
        report = token_concept_report(con)
        notes = con.execute("SELECT notes FROM runs").fetchone()[0]
    finally:
        con.close()
    got = {(f, c, m): v for f, c, _, m, v in rows}
    assert {g for *_, g, _, _ in rows} == {"structure", "uncertainty"}
    label = (truth["lung"] >= 0.5).astype(float)
    for f in (0, 1, 2):
        act = np.where(truth["x"][:, f] > 0.5, truth["x"][:, f], 0.0)  # the SAE's threshold
        assert got[(f, "lung", "auroc")] == pytest.approx(_dense_auroc(act, label))
        known = ~np.isnan(truth["target"])
        rho = spearmanr(act[known], truth["target"][known]).statistic
        assert got[(f, "sample_variance", "spearman")] == pytest.approx(rho)
    assert got[(0, "lung", "auroc")] > 0.9 and got[(2, "sample_variance", "spearman")] > 0.99
    assert got[(4, "lung", "auroc")] == pytest.approx(0.5)  # never fires: all tokens tie
    assert got[(4, "sample_variance", "spearman")] is None  # a constant side: NULL
    assert "lung" in report and "sample_variance" in report
    assert "not the language model's residual" in notes
