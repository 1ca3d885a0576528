"""k-sparse probes (workbench.analyse.sparse_probe): a union concept takes two features.

Planted: concept U is "A or B"; feature 0 fires on A studies, feature 1 on B studies, the
others are noise. No single feature separates U; the two together do. Concept A itself is
read by feature 0 alone, so k = 1 already reaches it.
"""

from __future__ import annotations

import numpy as np

from workbench.analyse.logistic import probe_aurocs
from workbench.analyse.sparse_probe import _ranked, sparse_aurocs

S, M = 120, 6


def _world(seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.random(S) < 0.3, rng.random(S) < 0.3
    values = rng.random((S, 1, M)).astype(np.float32) * (rng.random((S, 1, M)) < 0.3)
    values[:, 0, 0] = a * (1.0 + rng.random(S))
    values[:, 0, 1] = b * (1.0 + rng.random(S))
    values = np.repeat(values, 2, axis=1)  # concept 0: U = A or B, concept 1: A
    y = np.stack([a | b, a], 1).astype(np.float64)
    return values, y, np.arange(S) % 5


def test_a_union_takes_two_features_and_a_single_concept_one():
    values, y, folds = _world()
    auc = sparse_aurocs(values, y, folds, ks=(1, 2, 5))
    assert auc.shape == (3, 2)
    assert auc[0, 0] < 0.85  # one feature sees only half of the union
    assert auc[1, 0] > 0.97 and auc[2, 0] > 0.97
    assert auc[0, 1] > 0.97  # A: its feature alone


def test_candidates_rank_by_auroc_on_the_given_studies():
    """Ranked on the training folds' rows: a candidate perfect on other rows does not count,
    and a concept with one class there ranks nothing first (NaN AUROCs, original order)."""
    values, y, folds = _world(1)
    values[:, 0, 5] = np.where(folds == 0, y[:, 0] * 10.0, 0.0)  # perfect on fold 0 only
    rank = _ranked(values[folds != 0], y[folds != 0])
    assert rank[0, 0] in (0, 1) and 5 not in rank[0, :2].tolist()  # silent there: AUROC 0.5
    one_class = y.copy()
    one_class[:, 1] = 1.0
    assert _ranked(values, one_class)[1].tolist() == list(range(M))


def test_unknown_labels_are_left_out_and_match_the_dense_probe_when_k_is_all():
    values, y, folds = _world(2)
    y[:10, 0] = np.nan
    auc = sparse_aurocs(values, y, folds, ks=(M,))[0]
    dense, _ = probe_aurocs((values[:, 0] - values[:, 0].mean(0)) / values[:, 0].std(0),
                            y[:, :1], folds)  # fmt: skip
    assert abs(auc[0] - dense[0]) < 0.01  # all candidates: the probe on those columns


def test_padding_is_never_chosen_before_a_real_candidate():
    """A candidate worse than chance on the training folds still ranks before the padding of
    a short shortlist (an all-zero column, AUROC 0.5)."""
    values, y, _ = _world(3)
    values[:, :, 2:] = 0.0
    values[:, 0, 1] = 1.0 - y[:, 0] + 0.1  # below chance for U
    valid = np.zeros((2, M), bool)
    valid[:, :2] = True
    assert _ranked(values, y)[0, 1] != 1  # without the mask a pad outranks it...
    assert _ranked(values, y, valid)[0, :2].tolist() == [0, 1]  # ...with it, it is second
