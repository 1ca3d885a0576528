"""Bootstrap intervals for the segmentation study: means, paired differences, subgroup gaps.

The study scores every test image once per training seed, so a metric is a matrix
``[S seeds, N images]`` over the SAME images for every seed. Intervals come from a two-level
(hierarchical) bootstrap: each replicate draws S seeds and N images with replacement and
averages the selected cells, so the interval reflects both the test-set sample and the
run-to-run variation of training. Two models are compared with the SAME draws on the matrix
of their per-image differences (paired); subgroup gaps (best minus worst subgroup mean) are
recomputed on each replicate's images. Intervals are percentile intervals (default 95 %).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULT_BOOT = 2000


class Interval(NamedTuple):
    value: float
    """Point estimate (mean over seeds and images, or the gap on the full sample)."""
    low: float
    """Lower percentile bound."""
    high: float
    """Upper percentile bound."""
    n_images: int
    n_seeds: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _as_matrix(values) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2 or m.size == 0 or not np.isfinite(m).all():
        raise ValueError(f"need a finite non-empty [seeds, images] matrix, got shape {m.shape}")
    return m


def _draws(S: int, N: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, S, (n_boot, S)), rng.integers(0, N, (n_boot, N))


def _replicate_means(m: np.ndarray, si: np.ndarray, ii: np.ndarray) -> np.ndarray:
    """Mean over the drawn seeds of each seed's mean over the drawn images: ``[n_boot]``."""
    per_seed = np.stack([m[s][ii].mean(axis=1) for s in range(m.shape[0])])  # [S, n_boot]
    return per_seed[si, np.arange(si.shape[0])[:, None]].mean(axis=1)


def _interval(point: float, reps: np.ndarray, level: float, S: int, N: int) -> Interval:
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(reps, [a, 100 - a])
    return Interval(float(point), float(lo), float(hi), N, S)


def mean_ci(values, n_boot=DEFAULT_BOOT, level=0.95, seed=0) -> Interval:
    """Mean of a ``[seeds, images]`` (or ``[images]``) matrix with a hierarchical interval."""
    m = _as_matrix(values)
    si, ii = _draws(*m.shape, n_boot, seed)
    return _interval(m.mean(), _replicate_means(m, si, ii), level, *m.shape)


def paired_difference_ci(a, b, n_boot=DEFAULT_BOOT, level=0.95, seed=0) -> Interval:
    """Mean of ``a - b`` for two models scored on the same images and seed indices."""
    ma, mb = _as_matrix(a), _as_matrix(b)
    if ma.shape != mb.shape:
        raise ValueError(f"paired matrices differ in shape: {ma.shape} vs {mb.shape}")
    return mean_ci(ma - mb, n_boot, level, seed)


def _gap(m: np.ndarray, groups: np.ndarray, names: list, ii: np.ndarray | None = None):
    """Best minus worst subgroup mean (over seeds and the given images)."""
    cols = np.arange(m.shape[1]) if ii is None else ii
    g = groups[cols]
    means = [m[:, cols][:, g == name].mean() for name in names if (g == name).any()]
    return max(means) - min(means) if len(means) >= 2 else np.nan


def gap_ci(values, groups, n_boot=DEFAULT_BOOT, level=0.95, seed=0) -> Interval:
    """Gap between the best and worst subgroup mean, images resampled, seeds averaged.

    ``groups`` gives each image's subgroup (None for unknown, left out). With small groups the
    gap is biased upwards (the max and min of noisy means); compare gaps under the same
    sample sizes, e.g. imbalanced vs balanced training sets on the same test images.
    """
    m = _as_matrix(values)
    g = np.asarray([str(x) if x is not None else "" for x in groups], dtype=object)
    keep = g != ""
    m, g = m[:, keep], g[keep]
    names = sorted(set(g))
    if len(names) < 2:
        raise ValueError(f"a gap needs at least two subgroups, got {names}")
    _, ii = _draws(*m.shape, n_boot, seed)
    reps = np.array([_gap(m, g, names, row) for row in ii])
    return _interval(_gap(m, g, names), reps[np.isfinite(reps)], level, *m.shape)


def gap_difference_ci(a, b, groups, n_boot=DEFAULT_BOOT, level=0.95, seed=0) -> Interval:
    """Gap of ``a`` minus gap of ``b`` (e.g. imbalanced minus balanced training), both
    computed on the same resampled images in every replicate."""
    ma, mb = _as_matrix(a), _as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError("gap difference needs the same test images for both")
    g = np.asarray([str(x) if x is not None else "" for x in groups], dtype=object)
    keep = g != ""
    ma, mb, g = ma[:, keep], mb[:, keep], g[keep]
    names = sorted(set(g))
    _, ii = _draws(max(ma.shape[0], mb.shape[0]), ma.shape[1], n_boot, seed)
    reps = np.array([_gap(ma, g, names, row) - _gap(mb, g, names, row) for row in ii])
    point = _gap(ma, g, names) - _gap(mb, g, names)
    return _interval(point, reps[np.isfinite(reps)], level, ma.shape[0], ma.shape[1])


def verdict(diff: Interval, better: str = "higher") -> str:
    """'helps' / 'hurts' / 'no difference shown' for a difference interval (A minus B)."""
    if not diff.excludes_zero():
        return "no difference shown"
    up = diff.low > 0
    return "helps" if up == (better == "higher") else "hurts"
