"""The probe ceiling's pieces: subject folds, the row-space trick, the logistic fit."""

from __future__ import annotations

import numpy as np
import torch

from workbench.analyse.logistic import fit_logistic, probe_aurocs, row_space, subject_folds


def test_folds_keep_a_subject_together_and_are_balanced():
    subjects = np.repeat(np.arange(30), 2)
    folds = subject_folds(subjects, 5, seed=0)
    assert set(folds.tolist()) == set(range(5))
    for s in range(30):
        assert len(set(folds[subjects == s].tolist())) == 1
    assert np.bincount(folds).tolist() == [12] * 5


def test_row_space_keeps_every_l2_probe_prediction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 60))  # wider than tall, as MAIRA-2's pooled residuals
    y = (x[:, 0] + 0.3 * rng.normal(size=20) > 0).astype(np.float64)[:, None]
    t = torch.from_numpy(x)
    full = ((t - t.mean(0)) / t.std(0)).numpy()
    z = row_space(x)
    assert z.shape == (20, 19)  # centred: rank S - 1
    W1, b1 = fit_logistic(full, y, 0.1, iters=300)
    W2, b2 = fit_logistic(z, y, 0.1, iters=300)
    np.testing.assert_allclose(full @ W1 + b1, z @ W2 + b2, atol=1e-3)


def test_probe_finds_a_linear_concept_and_skips_missing_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = np.stack([(x[:, 1] > 0).astype(float), rng.integers(0, 2, 60).astype(float)], 1)
    y[:10, 0] = np.nan  # unknown labels are left out of fit and score
    auc, l2 = probe_aurocs(x, y, np.arange(60) % 4)
    assert auc[0] > 0.95 and 0.2 < auc[1] < 0.8
    assert set(l2.tolist()) <= {1e-3, 1e-2, 1e-1}
