"""Out-of-fold L2 logistic probes: the fitting shared by the probe ceiling and the k-sparse probes.

:mod:`workbench.analyse.probes` reads the pooled residual stream with them,
:mod:`workbench.analyse.sparse_probe` a few SAE features per concept.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.stats import auroc_columns

L2_GRID = (1e-3, 1e-2, 1e-1)


def row_space(x: np.ndarray) -> np.ndarray:
    """Standardised ``x`` expressed in its own row space (exact for L2-penalised linear fits)."""
    t = torch.from_numpy(x).double()
    t = (t - t.mean(0)) / t.std(0).clamp(min=1e-6)
    if t.shape[1] <= t.shape[0]:
        return t.numpy()
    u, s, _ = torch.linalg.svd(t, full_matrices=False)
    keep = s > s.max() * 1e-8
    return (u[:, keep] * s[keep]).numpy()


def subject_folds(subjects: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold 0..k-1 of each study; all studies of a subject share one fold."""
    uniq = np.unique(subjects)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = dict(zip(uniq[perm].tolist(), (np.arange(len(uniq)) % k).tolist()))
    return np.array([fold_of[s] for s in subjects.tolist()], np.int64)


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float, iters: int = 100) -> tuple:
    """Weights [k, C] and biases [C] of independent L2 logistic regressions (y NaN: unused).

    ``z`` is [S, k], the same inputs for every concept, or [S, C, k], each concept its own.
    """
    Z = torch.from_numpy(z).double()
    Y = torch.from_numpy(np.nan_to_num(y, nan=0.0)).double()
    M = torch.from_numpy(~np.isnan(y)).double()
    n = M.sum(0).clamp(min=1)
    W = torch.zeros(Z.shape[-1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b], max_iter=iters, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        logits = (Z @ W if Z.dim() == 2 else torch.einsum("sck,kc->sc", Z, W)) + b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, reduction="none")
        loss = ((bce * M).sum(0) / n).sum() + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().numpy(), b.detach().numpy()


def probe_aurocs(z: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold AUROC per concept [C] (best over :data:`L2_GRID`) and the L2 chosen."""
    C = y.shape[1]
    best, chosen = np.full(C, np.nan), np.full(C, np.nan)
    for l2 in L2_GRID:
        scores = np.zeros_like(y)
        for k in np.unique(folds):
            train = folds != k
            W, b = fit_logistic(z[train], y[train], l2)
            scores[~train] = z[~train] @ W + b
        auc = auroc_columns(scores, y)
        better = np.nan_to_num(auc, nan=-1) > np.nan_to_num(best, nan=-1)
        best[better], chosen[better] = auc[better], l2
    return best, chosen
