"""The hand-written sparse step agrees with the dense autograd objective."""

from __future__ import annotations

import pytest
import torch

from workbench.sae.matryoshka import MatryoshkaSAE, reference_losses
from workbench.sae.select import batch_topk, encode_select, top_candidates
from workbench.sae.step import (
    clip_grads_,
    forward_backward,
    project_decoder_grad_,
)
from workbench.sae.workspace import Workspace


def _sae(d_in=16, d_sae=64, k=4, sizes=(8, 24, 32), seed=0) -> MatryoshkaSAE:
    g = torch.Generator().manual_seed(seed)
    sae = MatryoshkaSAE(d_in, d_sae, k, sizes)
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.W_enc_DF.add_(0.3 * torch.randn(d_in, d_sae, generator=g))
        sae.b_enc_F.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec_D.copy_(0.2 * torch.randn(d_in, generator=g))
    return sae


@pytest.mark.parametrize("with_aux", [False, True])
def test_sparse_step_matches_autograd(with_aux):
    sae = _sae()
    x = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(64, dtype=torch.bool)
    if with_aux:
        dead[torch.arange(0, 64, 3)] = True  # some of them are also active this batch
    grads, stats = forward_backward(sae, x, k=4, dead_F=dead, k_aux=5, aux_alpha=0.5)

    ref = reference_losses(sae, x, dead_F=dead, k_aux=5, aux_alpha=0.5)
    ref.total.backward()
    torch.testing.assert_close(stats.loss, ref.total.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.prefix_mse, ref.prefix_mse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.aux, ref.aux, rtol=1e-5, atol=1e-5)
    if with_aux:
        assert float(stats.aux) > 0
    assert stats.n_active == 4 * 48
    for got, param in zip(grads, (sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D)):
        assert got.shape == param.shape
        torch.testing.assert_close(got, param.grad, rtol=1e-4, atol=1e-5)
    assert int(stats.fired.sum()) == 4 * 48


def test_batch_topk_exact_on_large_batches():
    g = torch.Generator().manual_seed(2)
    pre = torch.randn(700, 512, generator=g) + torch.linspace(-2, 1, 512)  # column structure
    idx, vals = batch_topk(pre, 700 * 8)
    ref = pre.relu().flatten().topk(700 * 8)
    assert torch.equal(idx, ref.indices.sort().values)
    torch.testing.assert_close(vals, pre.flatten()[idx])
    assert bool((idx[1:] > idx[:-1]).all())


@pytest.mark.parametrize("hint", [None, 0.0, 0.5, 50.0])
def test_chunked_selection_matches_dense(hint):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(700, 24, generator=g)
    W, b = torch.randn(24, 4000, generator=g) * 0.3, torch.randn(4000, generator=g) * 0.1
    pre = torch.addmm(b, x, W)
    dead = torch.arange(5, 4000, 97)
    sel = encode_select(
        x, W, b, 700 * 6, cut_hint=hint, dead_idx=dead, threshold=0.7, chunk_elems=300 * 4000
    )  # three chunks
    idx, vals = batch_topk(pre, 700 * 6)  # a hint of 50 is above the cut: dense fallback
    assert torch.equal(sel.idx, idx)
    assert bool((sel.idx[1:] > sel.idx[:-1]).all())  # ascending without a sort
    torch.testing.assert_close(sel.vals, vals)
    torch.testing.assert_close(sel.pre_dead, pre[:, dead])
    assert sel.n_above == int((pre > 0.7).sum())


def test_batch_topk_keeps_only_positive():
    pre = -torch.ones(10, 20)
    pre[3, 4] = 2.0
    idx, vals = batch_topk(pre, 50)
    assert idx.tolist() == [3 * 20 + 4] and vals.tolist() == [2.0]


def test_decoder_projection_and_clipping():
    sae = _sae()
    g = torch.randn(64, 16)
    project_decoder_grad_(sae.W_dec_FD.detach(), g)
    torch.testing.assert_close((g * sae.W_dec_FD).sum(1), torch.zeros(64), atol=1e-5, rtol=0)
    grads = [torch.full((3,), 4.0), torch.full((4,), 3.0)]
    norm = clip_grads_(grads, 1.0)
    assert float(norm) == pytest.approx((3 * 16 + 4 * 9) ** 0.5)
    total = sum(float(x.pow(2).sum()) for x in grads) ** 0.5
    assert total == pytest.approx(1.0, rel=1e-4)


def test_sparse_step_matches_autograd_on_a_pruned_batch():
    """Large enough for the striped pruning, the group partition and a cut hint (half the
    k B-th value, so the pruning is active and the result must stay exact)."""
    g = torch.Generator().manual_seed(4)
    sae = MatryoshkaSAE(32, 512, 8, (32, 96, 384))
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.b_enc_F.copy_(0.05 * torch.randn(512, generator=g))
        sae.b_dec_D.copy_(0.2 * torch.randn(32, generator=g))
    x = torch.randn(256, 32, generator=g)
    pre = torch.addmm(sae.b_enc_F, x - sae.b_dec_D, sae.W_enc_DF).detach()
    hint = 0.5 * float(pre.flatten().topk(8 * 256).values.min())
    grads, stats = forward_backward(sae, x, k=8, cut_hint=hint)
    ref = reference_losses(sae, x)
    ref.total.backward()
    torch.testing.assert_close(stats.prefix_mse, ref.prefix_mse, rtol=1e-5, atol=1e-5)
    for got, param in zip(grads, (sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D)):
        torch.testing.assert_close(got, param.grad, rtol=1e-4, atol=1e-5)
    fired = (ref.latents != 0).sum(0)
    assert torch.equal(stats.fired, fired)


def test_workspace_and_scaled_input_change_nothing():
    """A reused workspace gives the same step as fresh buffers, call after call (nothing
    stale leaks from one batch into the next), and ``x_scale`` is the normalisation."""
    sae = _sae()
    g = torch.Generator().manual_seed(5)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::5] = True
    ws = Workspace()
    for _ in range(3):
        x = 4.0 * torch.randn(48, 16, generator=g)
        kw = {"k": 4, "dead_F": dead, "k_aux": 5, "aux_alpha": 0.5}
        fresh, fresh_stats = forward_backward(sae, x / 4.0, **kw)
        reused, stats = forward_backward(sae, x, x_scale=0.25, workspace=ws, **kw)
        for a, b in zip(fresh, reused):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(stats.loss, fresh_stats.loss, rtol=1e-6, atol=1e-7)
        assert torch.equal(stats.fired, fresh_stats.fired)
    assert ws.nbytes() > 0


def test_top_candidates_is_topk_in_index_order():
    g = torch.Generator().manual_seed(6)
    idx = torch.randperm(10_000, generator=g)[:3000].sort().values
    vals = torch.randint(0, 50, (3000,), generator=g).float()  # many ties at the cut
    kept_idx, kept_vals = top_candidates(idx, vals, 1000)
    assert kept_idx.numel() == 1000
    assert bool((kept_idx[1:] > kept_idx[:-1]).all())
    assert torch.equal(kept_vals.sort().values, vals.topk(1000).values.sort().values)
    torch.testing.assert_close(kept_vals, vals[torch.searchsorted(idx, kept_idx)])


def test_blocked_projection():
    sae = _sae()
    g = torch.randn(64, 16)
    whole, blocks = g.clone(), g.clone()
    project_decoder_grad_(sae.W_dec_FD.detach(), whole)
    project_decoder_grad_(sae.W_dec_FD.detach(), blocks, block=5)
    torch.testing.assert_close(whole, blocks)
