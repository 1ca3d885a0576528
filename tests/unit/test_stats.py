"""The shared AUROC (workbench.stats): the dense, per-column and sparse forms all equal the
brute-force Mann-Whitney pair count, ties counting one half, and none makes up a number."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from workbench.stats import auroc, auroc_columns, auroc_sparse, average_ranks


def _brute(x: np.ndarray, y: np.ndarray) -> float:
    keep = (y == 0) | (y == 1)
    x, y = x[keep], y[keep]
    pos, neg = x[y == 1], x[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return np.nan
    gt = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return gt / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_sparse_auroc_matches_brute_force_with_ties_and_gaps(seed, ties):
    rng = np.random.default_rng(seed)
    S, C, F = 80, 4, 7
    labels = rng.choice([0.0, 1.0, -1.0, np.nan], size=(S, C), p=[0.5, 0.3, 0.1, 0.1])
    values = rng.integers(1, 4, (S, F)).astype(float) if ties else rng.random((S, F)) + 0.1
    dense = np.where(rng.random((S, F)) < 0.35, values, 0.0)
    dense[:, 2] = 0.0  # a feature that never fires: AUROC 0.5 exactly
    s, f = np.nonzero(dense)
    perm = rng.permutation(len(s))  # input order must not matter
    got = auroc_sparse(f[perm] + 100, s[perm], dense[s, f][perm], labels, 100, F)
    want = np.array([[_brute(dense[:, i], labels[:, j]) for j in range(C)] for i in range(F)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got[2], 0.5)


def test_perfect_and_inverted_features():
    labels = np.array([[1.0], [1.0], [0.0], [0.0], [0.0]])
    # feature 0 fires exactly on the positives, feature 1 exactly on the negatives
    feats = np.array([0, 0, 1, 1, 1])
    studies = np.array([0, 1, 2, 3, 4])
    vals = np.array([1.0, 2.0, 1.0, 1.0, 3.0])
    got = auroc_sparse(feats, studies, vals, labels, 0, 2)
    assert got[0, 0] == 1.0 and got[1, 0] == 0.0


def test_concept_without_both_classes_is_nan_not_half():
    labels = np.array([[1.0, 0.0], [1.0, np.nan], [np.nan, 0.0]])
    got = auroc_sparse(np.array([0]), np.array([0]), np.array([1.0]), labels, 0, 1)
    assert np.isnan(got).all()


def test_feature_outside_block_is_an_error():
    with pytest.raises(ValueError, match="outside the block"):
        auroc_sparse(np.array([5]), np.array([0]), np.array([1.0]), np.ones((1, 1)), 0, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_average_ranks_equal_scipy_with_ties(seed):
    x = np.random.default_rng(seed).integers(0, 5, 40).astype(float)
    np.testing.assert_array_equal(average_ranks(x), rankdata(x))
    assert average_ranks(np.zeros(0)).shape == (0,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_and_column_auroc_match_brute_force_and_sparse(seed):
    rng = np.random.default_rng(seed)
    S, C = 50, 3
    labels = rng.choice([0.0, 1.0, np.nan], size=(S, C), p=[0.5, 0.4, 0.1])
    scores = np.where(rng.random((S, C)) < 0.5, rng.integers(1, 4, (S, C)), 0.0)
    want = np.array([_brute(scores[:, c], labels[:, c]) for c in range(C)])
    np.testing.assert_allclose(auroc_columns(scores, labels), want, atol=1e-12)
    for c in range(C):
        known = ~np.isnan(labels[:, c])
        one = auroc(labels[known, c].astype(int).tolist(), scores[known, c].tolist())
        assert one == pytest.approx(want[c], abs=1e-12)
        s, f = np.nonzero(scores[:, c : c + 1])
        sparse = auroc_sparse(f, s, scores[s, c], labels[:, c : c + 1], 0, 1)
        np.testing.assert_allclose(sparse[0, 0], want[c], atol=1e-12)


def test_one_class_is_none_or_nan_and_lengths_must_agree():
    assert auroc([1, 1], [0.2, 0.3]) is None
    assert auroc([0, 0], [0.2, 0.3]) is None
    assert np.isnan(auroc_columns(np.ones((3, 1)), np.array([[1.0], [1.0], [np.nan]]))).all()
    with pytest.raises(ValueError, match="2 truths but 3 scores"):
        auroc([1, 0], [0.1, 0.2, 0.3])
