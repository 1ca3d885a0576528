"""Streaming feature statistics agree with the same statistics computed on the dense matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analyse.stats import KINDS, FeatureAccumulator, kind_codes, sparsify


def _random_latents(n=300, F=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lat = torch.rand(n, F, generator=g) * 4
    lat[torch.rand(n, F, generator=g) < 0.7] = 0
    lat[:, 5] = 0  # a dead feature
    lat[3, 7] = lat[9, 7] = 2.5  # a tie
    return lat


def _accumulate(lat: torch.Tensor, kinds: torch.Tensor, batch: int, top_k=5) -> tuple:
    acc = FeatureAccumulator(lat.shape[1], top_k=top_k, bins_per_octave=2)
    for b0 in range(0, lat.shape[0], batch):
        sb = sparsify(lat[b0 : b0 + batch], b0)
        acc.update(sb, kinds[sb.rows], min(batch, lat.shape[0] - b0))
    return acc, acc.summary()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparsify_gives_global_rows_and_values(dtype):
    lat = torch.tensor([[0.0, 1.5], [2.0, 0.0], [0.0, 0.0]], dtype=dtype)
    sb = sparsify(lat, row0=100)
    assert sb.rows.tolist() == [100, 101] and sb.feats.tolist() == [1, 0]
    assert sb.vals.tolist() == [1.5, 2.0] and sb.vals.dtype == torch.float32


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_counts_sums_max_match_dense(batch):
    lat = _random_latents()
    kinds = torch.randint(
        0, len(KINDS), (lat.shape[0],), generator=torch.Generator().manual_seed(1)
    )
    _, s = _accumulate(lat, kinds, batch)
    dense = lat.numpy().astype(np.float64)
    assert s.n_tokens == 300
    np.testing.assert_array_equal(s.n_fires, (dense > 0).sum(0))
    np.testing.assert_allclose(s.sum_act, dense.sum(0), rtol=1e-6)
    np.testing.assert_allclose(s.max_act, dense.max(0), rtol=1e-6)
    for k in range(len(KINDS)):
        np.testing.assert_allclose(s.sum_by_kind[:, k], dense[kinds.numpy() == k].sum(0), rtol=1e-6)
    assert s.n_fires[5] == 0 and s.max_act[5] == 0


@pytest.mark.parametrize("batch", [1, 13, 300])
def test_top_k_is_exact_whatever_the_batching(batch):
    lat = _random_latents()
    _, s = _accumulate(lat, torch.zeros(300, dtype=torch.long), batch)
    for f in range(lat.shape[1]):
        col = lat[:, f].numpy()
        want = np.sort(col[col > 0])[::-1][:5]
        got = s.top_vals[f][np.isfinite(s.top_vals[f])]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        rows = s.top_rows[f][s.top_rows[f] >= 0]
        np.testing.assert_allclose(col[rows], want, rtol=1e-6)  # rows point at those values
    assert (s.top_rows[5] == -1).all()


def test_histogram_bins_are_log_spaced_and_count_every_firing():
    lat = _random_latents()
    acc, s = _accumulate(lat, torch.zeros(300, dtype=torch.long), 64)
    np.testing.assert_array_equal(s.hist.sum(1), s.n_fires)
    edges = s.bin_edges
    np.testing.assert_allclose(edges[1:] / edges[:-1], np.sqrt(2))  # 2 bins per octave
    col = lat[:, 0].numpy()
    vals = col[col > 0]
    want = np.histogram(vals, bins=edges)[0]
    np.testing.assert_array_equal(s.hist[0], want)
    assert s.min_bin == -40  # 2^(min_bin / r) is the first edge
    assert edges[0] == pytest.approx(2.0 ** (s.min_bin / 2))


def test_out_of_range_values_are_clamped_into_end_bins():
    acc = FeatureAccumulator(2, top_k=1, bins_per_octave=1, min_octave=-2, max_octave=2)
    lat = torch.tensor([[1e-6, 0.0], [1e6, 0.0]])
    acc.update(sparsify(lat, 0), torch.zeros(2, dtype=torch.long), 2)
    h = acc.summary().hist
    assert h[0, 0] == 1 and h[0, -1] == 1 and h.sum() == 2


def test_memory_does_not_grow_with_tokens():
    acc = FeatureAccumulator(16, top_k=4)
    sizes = None
    for i in range(5):
        lat = torch.rand(1000, 16)
        acc.update(sparsify(lat, i * 1000), torch.zeros(16000, dtype=torch.long), 1000)
        now = [t.numel() for t in (acc.n_fires, acc.sum_by_kind, acc.hist, acc.top_vals)]
        assert sizes is None or now == sizes
        sizes = now


def test_bad_latents_are_refused():
    acc = FeatureAccumulator(3)
    for bad in (-1.0, float("nan"), float("inf")):
        lat = torch.tensor([[bad, 1.0, 0.0]])
        sb = sparsify(lat, 0)
        with pytest.raises(ValueError, match="finite and non-negative"):
            acc.update(sb, torch.zeros(sb.rows.numel(), dtype=torch.long), 1)


def test_kind_codes_maps_and_refuses_unknown_kinds():
    assert kind_codes(["report", "image", "report", "latent"]).tolist() == [2, 0, 2, 4]
    with pytest.raises(ValueError, match=r"shard 3: unknown token kind\(s\) \['audio'\]"):
        kind_codes(["image", "audio"], source="shard 3")


def test_constructor_validates():
    with pytest.raises(ValueError):
        FeatureAccumulator(0)
    with pytest.raises(ValueError):
        FeatureAccumulator(4, top_k=0)
