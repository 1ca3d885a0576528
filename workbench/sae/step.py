"""One training step of the Matryoshka BatchTopK SAE, forward and backward written by hand.

Only the encoder's forward product ``(x - b_dec) W_enc`` is dense (B x d_in x d_sae). Every
other term touches the k active latents per token only, so it costs O(B k d_in):

* BatchTopK (Bussmann et al. 2024, arXiv 2412.06410) keeps the ``k B`` largest activations of
  the batch, found exactly without a full sort (:mod:`workbench.sae.select`).
* The code is a CSR matrix with one row per (group, token) "bag": one ``embedding_bag`` gives
  every group's partial reconstruction and a running sum over groups gives every prefix
  reconstruction x_hat_i (paper Sec. 3, Eq. 3) without decoding densely or once per prefix.
* dL/dx_hat_i flows back to each group as a reverse cumulative sum; the gradient of each active
  value is a sampled dense-dense product (``sampled_addmm``), and the decoder and encoder weight
  gradients are sparse-transposed products. No gradient w.r.t. the input is formed.
* The aux-k loss (Gao et al. 2024, App. A.2) only touches dead latents.

:func:`workbench.sae.matryoshka.reference_losses` is the same objective with autograd; the
unit tests check that both give the same loss and gradients.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from workbench.sae.matryoshka import MatryoshkaSAE
from workbench.sae.select import encode_select


class Code(NamedTuple):
    """A batch's sparse code, entries sorted by (group, token, latent)."""

    rows: torch.Tensor  # [N] token index
    cols: torch.Tensor  # [N] latent index
    vals: torch.Tensor  # [N] activation (> 0)
    bags: torch.Tensor  # [N] group * B + token
    crow: torch.Tensor  # [n_groups * B + 1] CSR row pointer over bags


class Grads(NamedTuple):
    """Gradients of the step's loss w.r.t. the four parameters (same shapes)."""

    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor  # [d_in]


class StepStats(NamedTuple):
    """What one step measured (normalised units); tensors stay on the compute device."""

    loss: torch.Tensor  # scalar total loss
    prefix_mse: torch.Tensor  # [n_groups] mean squared error of each prefix reconstruction
    total_var: torch.Tensor  # scalar mean squared deviation of x from the batch mean
    aux: torch.Tensor  # scalar normalised aux-k loss (0 without dead latents)
    fired: torch.Tensor  # [d_sae] times each latent was kept in this batch
    min_act: torch.Tensor  # scalar smallest kept activation (threshold estimate input)
    n_active: int  # entries kept (k * B unless fewer were positive)
    n_above: int  # pre-activations above the inference threshold (-1: not asked)


def make_code(idx: torch.Tensor, vals: torch.Tensor, sae: MatryoshkaSAE, batch: int) -> Code:
    """Turn flat indices of a [B, F] code (ascending) into group-major (group, token) bags.

    Sorting the entries by group (stably, so tokens and latents stay ascending inside) makes
    every group's partial reconstructions and gradients one contiguous [B, d_in] block.
    """
    n_groups = len(sae.group_sizes)
    rows = torch.div(idx, sae.d_sae, rounding_mode="floor")
    cols = idx - rows * sae.d_sae
    bounds = torch.tensor(sae.group_ends[:-1], device=idx.device, dtype=idx.dtype)
    groups = torch.bucketize(cols, bounds, right=True)
    if n_groups > 1:
        groups, order = torch.sort(groups, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
    bags = groups * batch + rows
    crow = torch.zeros(batch * n_groups + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(bags, minlength=batch * n_groups).cumsum(0)
    return Code(rows, cols, vals, bags, crow)


def _csr(crow, cols, vals, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _transposed(keys: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """CSR of the transpose: rows = latents, columns = ``keys`` (tokens or bags)."""
    order = torch.argsort(cols, stable=True)
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=cols.device)
    crow[1:] = torch.bincount(cols, minlength=shape[0]).cumsum(0)
    return _csr(crow, keys[order], vals[order], shape)


def _sampled_dots(pattern: torch.Tensor, left: torch.Tensor, W_dec_FD: torch.Tensor):
    """<left[row], W_dec[col]> for every stored entry of CSR ``pattern`` (SDDMM)."""
    return torch.sparse.sampled_addmm(pattern, left, W_dec_FD.T, beta=0.0).values()


class _Aux(NamedTuple):
    loss: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    dvals: torch.Tensor
    dec_grad: torch.Tensor | None  # [d_sae, d_in]


def _aux_k(
    sae: MatryoshkaSAE,
    pre_dead_BX: torch.Tensor,
    dead_idx: torch.Tensor,
    residual_BD: torch.Tensor,
    k_aux: int,
    alpha: float,
) -> _Aux:
    """Aux-k: the top ``k_aux`` dead latents of each token fit the detached residual.

    Normalised by the residual's variance as in OpenAI's implementation (Gao et al. 2024,
    App. A.2) and dictionary_learning; gradients flow to dead latents' encoder and decoder.
    """
    B = residual_BD.shape[0]
    ka = min(k_aux, dead_idx.numel())
    top = pre_dead_BX.topk(ka, dim=1, sorted=False)
    ind, perm = top.indices.sort(dim=1)
    vals = top.values.gather(1, perm).clamp_min(0).reshape(-1)
    cols = dead_idx[ind].reshape(-1)
    rows = torch.arange(B, device=cols.device).repeat_interleave(ka)
    crow = torch.arange(0, B * ka + 1, ka, device=cols.device)
    recon_BD = F.embedding_bag(cols, sae.W_dec_FD, crow[:-1], mode="sum", per_sample_weights=vals)
    diff_BD = residual_BD - recon_BD
    var = (residual_BD - residual_BD.mean(0)).pow(2).sum(-1).mean()
    if not bool(var > 0):
        zero = vals.new_zeros(())
        return _Aux(zero, rows[:0], cols[:0], vals[:0], None)
    loss = diff_BD.pow(2).sum(-1).mean() / var
    g_BD = diff_BD.mul_(-2.0 * alpha / (B * var))  # d(alpha * loss) / d recon
    dvals = _sampled_dots(_csr(crow, cols, vals, (B, sae.d_sae)), g_BD, sae.W_dec_FD)
    dvals = dvals * (vals > 0)  # ReLU
    dec_grad = _transposed(rows, cols, vals, (sae.d_sae, B)) @ g_BD
    return _Aux(loss, rows, cols, dvals, dec_grad)


def _prefix_errors(xc_BD: torch.Tensor, part_GBD: torch.Tensor):
    """Residuals x - x_hat_i of every prefix, and dL/d(partial reconstruction of group g).

    x_hat_i = b_dec + sum_{g <= i} part_g (cumulative over groups, paper Sec. 3 Eq. 3), and a
    latent of group g appears in every prefix i >= g, so its gradient is
    -2/B * sum_{i >= g} (x - x_hat_i). Also returns each prefix's mean squared error.
    """
    G, B, _ = part_GBD.shape
    err_GBD = torch.empty_like(part_GBD)
    torch.sub(xc_BD, part_GBD[0], out=err_GBD[0])
    for i in range(1, G):
        torch.sub(err_GBD[i - 1], part_GBD[i], out=err_GBD[i])
    mse = torch.stack([torch.linalg.vector_norm(err_GBD[i]).square() / B for i in range(G)])
    g_GBD = torch.empty_like(part_GBD)
    torch.mul(err_GBD[G - 1], -2.0 / B, out=g_GBD[G - 1])
    for i in range(G - 2, -1, -1):
        torch.add(g_GBD[i + 1], err_GBD[i], alpha=-2.0 / B, out=g_GBD[i])
    return err_GBD, g_GBD, mse


@torch.no_grad()
def forward_backward(
    sae: MatryoshkaSAE,
    x_BD: torch.Tensor,
    k: int,
    dead_F: torch.Tensor | None = None,
    k_aux: int = 0,
    aux_alpha: float = 1 / 32,
    compute_dtype: torch.dtype | None = None,
    inference_threshold: float | None = None,
    cut_hint: float | None = None,
    dense_threads: int | None = None,
) -> tuple[Grads, StepStats]:
    """Loss terms and parameter gradients of one batch (inputs already normalised).

    loss = sum_i mean_b ||x_b - x_hat_i,b||^2 + aux_alpha * aux  (see ``reference_losses``).
    With ``inference_threshold`` the stats also count the activations the inference encoder
    (ReLU above that threshold) would keep on this batch. ``cut_hint`` (a value below the
    k B-th largest activation, e.g. 0.8 x the last step's smallest kept one) only saves time;
    ``dense_threads`` is the CPU thread count of the encoder product (see ``encode_select``).
    """
    B, D = x_BD.shape
    G, n_feat = len(sae.group_sizes), sae.d_sae
    W_dec = sae.W_dec_FD
    xc_BD = x_BD - sae.b_dec_D
    use_aux = dead_F is not None and k_aux > 0 and bool(dead_F.any())
    dead_idx = dead_F.nonzero().squeeze(1) if use_aux else None
    thr = None if inference_threshold is None else max(inference_threshold, 0.0)
    with record_function("sae.select"):  # the encoder product and BatchTopK
        sel = encode_select(
            xc_BD, sae.W_enc_DF, sae.b_enc_F, k * B, cut_hint, dead_idx, thr, compute_dtype,
            dense_threads=dense_threads,
        )  # fmt: skip
    with record_function("sae.decode"):
        code = make_code(sel.idx, sel.vals, sae, B)
        # group-major bags: one embedding_bag gives every group's partial reconstruction
        part = F.embedding_bag(
            code.cols, W_dec, code.crow[:-1], mode="sum", per_sample_weights=code.vals
        )
        err_GBD, g_GBD, prefix_mse = _prefix_errors(xc_BD, part.view(G, B, D))
    with record_function("sae.decoder_backward"):
        g_bag = g_GBD.view(G * B, D)
        code_csr = _csr(code.crow, code.cols, code.vals, (G * B, n_feat))
        dvals = _sampled_dots(code_csr, g_bag, W_dec)
        grad_W_dec = _transposed(code.bags, code.cols, code.vals, (n_feat, G * B)) @ g_bag
        grad_b_dec = g_GBD[0].sum(0)
    rows, cols, dpre = code.rows, code.cols, dvals
    aux = x_BD.new_zeros(())
    if use_aux:
        with record_function("sae.aux"):
            out = _aux_k(sae, sel.pre_dead, dead_idx, err_GBD[-1], k_aux, aux_alpha)
            aux = out.loss
            if out.dec_grad is not None:
                grad_W_dec += out.dec_grad
                rows, cols = torch.cat([rows, out.rows]), torch.cat([cols, out.cols])
                dpre = torch.cat([dpre, out.dvals])
    # encoder: dL/dW_enc = (x - b_dec)^T dL/dpre with dL/dpre sparse; no input gradient
    with record_function("sae.encoder_backward"):
        grad_b_enc = torch.zeros_like(sae.b_enc_F).index_add_(0, cols, dpre)
        grad_W_enc = (_transposed(rows, cols, dpre, (n_feat, B)) @ xc_BD).T.contiguous()
        grad_b_dec -= sae.W_enc_DF @ grad_b_enc
    # batch variance around the mean; xc is centred near b_dec, so this is well conditioned
    mean_D = xc_BD.mean(0)
    total_var = torch.linalg.vector_norm(xc_BD).square() / B - mean_D.dot(mean_D)
    stats = StepStats(
        loss=prefix_mse.sum() + aux_alpha * aux,
        prefix_mse=prefix_mse,
        total_var=total_var,
        aux=aux,
        fired=torch.bincount(code.cols, minlength=n_feat),
        min_act=code.vals.min() if code.vals.numel() else x_BD.new_zeros(()),
        n_active=int(code.vals.numel()),
        n_above=sel.n_above,
    )
    return Grads(grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec), stats


@torch.no_grad()
def project_decoder_grad_(W_dec_FD: torch.Tensor, grad_FD: torch.Tensor) -> torch.Tensor:
    """Remove each decoder row's gradient component parallel to that (unit-norm) row."""
    return grad_FD.sub_((grad_FD * W_dec_FD).sum(1, keepdim=True) * W_dec_FD)


@torch.no_grad()
def clip_grads_(grads: Grads, max_norm: float) -> torch.Tensor:
    """Scale all gradients so their joint L2 norm is at most ``max_norm``; returns the norm."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if max_norm > 0:
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale)
    return norm
