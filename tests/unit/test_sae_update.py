"""Whole trainer steps (sparse step, projection, clipping, Adam, renormalisation, dead-latent
bookkeeping) against the same steps written plainly with autograd and a textbook Adam."""

from __future__ import annotations

import copy

import torch

from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import TensorSource
from workbench.sae.matryoshka import reference_losses
from workbench.sae.plan import lr_factor
from workbench.sae.trainer import Trainer


def _reference_step(sae, opt, x, dead, tr: Trainer, step: int) -> torch.Tensor:
    """One step of the objective's specification: autograd, then the trainer's update rules
    written out (no workspace, no sparse code, no fused optimiser)."""
    cfg = tr.cfg
    opt.zero_grad(set_to_none=True)
    ref = reference_losses(sae, x, dead_F=dead, k_aux=tr.plan.k_aux, aux_alpha=cfg.aux_alpha)
    ref.total.backward()
    with torch.no_grad():
        w, g = sae.W_dec_FD, sae.W_dec_FD.grad
        g -= (g * w).sum(1, keepdim=True) * w  # no component along each unit-norm row
        params = list(sae.parameters())
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
        scale = min(1.0, cfg.max_grad_norm / (float(norm) + 1e-6))
        for p in params:
            p.grad.mul_(scale)
        for group in opt.param_groups:
            group["lr"] = tr.plan.lr * lr_factor(step, tr.plan, cfg.decay_start)
        opt.step()
        sae.W_dec_FD.div_(sae.W_dec_FD.norm(dim=1, keepdim=True))
    return (ref.latents != 0).sum(0)


def test_trainer_steps_match_the_autograd_reference(tmp_path):
    g = torch.Generator().manual_seed(7)
    acts = torch.randn(640, 16, generator=g) * 3.0 + torch.linspace(-1, 1, 16)
    cfg = TrainSAEConfig(
        out=tmp_path, d_sae=64, k=2, group_sizes=(8, 24, 32), batch_size=64, tokens=640,
        lr=3e-3, warmup_steps=2, decay_start=0.5, norm_batches=2, dead_tokens=64, k_aux=6,
        aux_alpha=0.5, max_grad_norm=0.05, progress=False, checkpoint_every=0, resume=False,
        scan_store=False, buffer_tokens=640, device="cpu",
    )  # fmt: skip
    tr = Trainer(cfg, TensorSource(acts, shard_tokens=640))
    tr.initialise()
    sae = copy.deepcopy(tr.sae)
    opt = torch.optim.Adam(sae.parameters(), lr=1.0, betas=(cfg.adam_beta1, cfg.adam_beta2),
                           foreach=False)  # fmt: skip
    since = torch.zeros(64, dtype=torch.long)
    saw_aux = False
    for step in range(tr.plan.steps):
        x = tr.batches.batch(step) / tr.norm_factor
        dead = since >= cfg.dead_tokens
        fired = _reference_step(sae, opt, x, dead, tr, step)
        stats = tr.train_step(logging=False)
        saw_aux |= bool(stats.aux > 0)
        since.add_(cfg.batch_size).masked_fill_(fired > 0, 0)
        assert torch.equal(stats.fired, fired), step
        assert torch.equal(tr.since_fired, since), step
        for name, want in sae.named_parameters():
            got = getattr(tr.sae, name)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5, msg=f"{name}, {step}")
    assert saw_aux  # the aux-k path (dead latents) ran
    assert bool((tr.sae.W_enc_DF != acts.new_zeros(())).any())
