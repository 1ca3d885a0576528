"""One training step of the Matryoshka BatchTopK SAE, forward and backward written by hand.

Only the encoder's forward product ``(x - b_dec) W_enc`` is dense (B x d_in x d_sae). Every
other term touches the k active latents per token only, so it costs O(B k d_in):

* BatchTopK (Bussmann et al. 2024, arXiv 2412.06410) keeps the ``k B`` largest activations of
  the batch, found exactly without a full sort (:mod:`workbench.sae.select`).
* The code is a CSR matrix with one row per (group, token) "bag": one bag sum
  (:func:`workbench.sae.bags.bag_sum_`, ``embedding_bag``) gives every group's partial
  reconstruction and a running sum over groups gives every prefix reconstruction x_hat_i
  (paper Sec. 3, Eq. 3) without decoding densely or once per prefix.
* dL/dx_hat_i flows back to each group as a reverse cumulative sum; the gradient of each active
  value is a sampled dense-dense product (``sampled_addmm``), and the decoder and encoder weight
  gradients are bag sums over the entries listed latent by latent (the transposed code). No
  gradient w.r.t. the input is formed.
* The aux-k loss (Gao et al. 2024, App. A.2) only touches dead latents.

:func:`workbench.sae.matryoshka.reference_losses` is the same objective with autograd; the
unit tests check that both give the same loss and gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from workbench.sae.bags import ColumnOrder, bag_sum_, column_order, csr
from workbench.sae.matryoshka import MatryoshkaSAE
from workbench.sae.select import augmented_input, encode_select, flatnonzero
from workbench.sae.workspace import Workspace, scratch


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

    Grouping the entries by group (a stable partition: one mask per group, no sort; tokens and
    latents stay ascending inside) makes every group's partial reconstructions and gradients
    one contiguous [B, d_in] block.
    """
    n_groups = len(sae.group_sizes)
    rows = torch.div(idx, sae.d_sae, rounding_mode="floor")
    cols = idx - rows * sae.d_sae
    bounds = torch.tensor(sae.group_ends[:-1], device=idx.device, dtype=idx.dtype)
    groups = torch.bucketize(cols, bounds, right=True)
    if n_groups > 1:
        order = torch.cat([flatnonzero(groups == g) for g in range(n_groups)])
        rows, cols, vals, groups = rows[order], cols[order], vals[order], groups[order]
    bags = groups * batch + rows
    crow = torch.zeros(batch * n_groups + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(bags, minlength=batch * n_groups).cumsum(0)
    return Code(rows, cols, vals, bags, crow)


def _sampled_dots(pattern, left, W_dec_FD, alpha: float = 1.0) -> torch.Tensor:
    """alpha <left[row], W_dec[col]> for every stored entry of CSR ``pattern`` (SDDMM)."""
    return torch.sparse.sampled_addmm(pattern, left, W_dec_FD.T, beta=0.0, alpha=alpha).values()


class _Aux(NamedTuple):
    loss: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    dvals: torch.Tensor
    dec_grad: torch.Tensor | None  # [n_dead, d_in]: the dead latents' rows of dL/dW_dec


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
    The decoder's gradient comes back for the dead latents' rows only (in ``dead_idx``
    order): every other row's is zero.
    """
    B = residual_BD.shape[0]
    ka = min(k_aux, dead_idx.numel())
    top = pre_dead_BX.topk(ka, dim=1, sorted=False)
    ind, perm = top.indices.sort(dim=1)
    vals = top.values.gather(1, perm).clamp_min(0).reshape(-1)
    local = ind.reshape(-1)  # positions in dead_idx
    cols = dead_idx[local]
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
    dvals = _sampled_dots(csr(crow, cols, vals, (B, sae.d_sae)), g_BD, sae.W_dec_FD)
    dvals = dvals * (vals > 0)  # ReLU
    by = column_order(local, dead_idx.numel())
    dec_grad = g_BD.new_empty(dead_idx.numel(), g_BD.shape[1])
    bag_sum_(dec_grad, g_BD, rows[by.order], vals[by.order], by.crow)
    return _Aux(loss, rows, cols, dvals, dec_grad)


def prefix_residuals_(xc_BD: torch.Tensor, part_GBD: torch.Tensor) -> torch.Tensor:
    """Overwrite each group's partial reconstruction with S_g = sum_{i >= g} (x - x_hat_i);
    return each prefix's mean squared error.

    x_hat_i = b_dec + sum_{g <= i} part_g (cumulative over groups, paper Sec. 3 Eq. 3), and a
    latent of group g appears in every prefix i >= g, so dL/d part_g = -2/B S_g; the callers
    fold -2/B into the sparse values. S_{G-1} = x - x_hat is the residual (aux-k). In place:
    the step's largest buffer serves as partial reconstructions, residuals and gradients.
    """
    G, B, _ = part_GBD.shape
    torch.sub(xc_BD, part_GBD[0], out=part_GBD[0])
    for i in range(1, G):
        torch.sub(part_GBD[i - 1], part_GBD[i], out=part_GBD[i])
    mse = torch.stack([torch.linalg.vector_norm(part_GBD[i]).square() / B for i in range(G)])
    for i in range(G - 2, -1, -1):
        part_GBD[i].add_(part_GBD[i + 1])
    return mse


def _centred_input(sae, x_BD, x_scale: float, ws: Workspace | None) -> torch.Tensor:
    """``[x_scale x - b_dec | 1]`` in one pass into a reused buffer: the batch's
    normalisation, centring and the encoder's bias column at once (the trainer used to divide
    and subtract into two fresh tensors and the encoder to copy the result once more)."""
    B, D = x_BD.shape
    out = scratch(ws, "step.x_aug", (B, D + 1), sae.b_dec_D)
    return augmented_input(x_BD, sae.b_dec_D, x_scale, out)


def _decode(sae, code: Code, xc_BD, ws: Workspace | None):
    """Every group's partial reconstruction (one bag sum over group-major bags), turned
    in place into the suffix residuals S (:func:`prefix_residuals_`); the bags' CSR."""
    B, D = xc_BD.shape
    G = len(sae.group_sizes)
    part = scratch(ws, "step.part", (G * B, D), xc_BD)
    bag_sum_(part, sae.W_dec_FD, code.cols, code.vals, code.crow)
    prefix_mse = prefix_residuals_(xc_BD, part.view(G, B, D))
    code_csr = csr(code.crow, code.cols, code.vals, (G * B, sae.d_sae))
    return part.view(G, B, D), code_csr, prefix_mse


def _decoder_backward(sae, code: Code, code_csr, by: ColumnOrder, S_GBD, ws):
    """dL/d(kept value) (SDDMM), dL/dW_dec (a bag sum per latent over the residuals) and
    dL/db_dec's reconstruction term, all with dL/d part_g = c S_g, c = -2/B folded into the
    sparse values."""
    G, B, D = S_GBD.shape
    c = -2.0 / B
    S_bag = S_GBD.view(G * B, D)
    dvals = _sampled_dots(code_csr, S_bag, sae.W_dec_FD, alpha=c)
    grad_W_dec = scratch(ws, "grad.W_dec", tuple(sae.W_dec_FD.shape), S_bag)
    bag_sum_(grad_W_dec, S_bag, code.bags[by.order], code.vals[by.order].mul_(c), by.crow)
    grad_b_dec = S_GBD[0].sum(0).mul_(c)
    return dvals, grad_W_dec, grad_b_dec


def _encoder_backward(sae, rows, dpre, by: ColumnOrder, x_aug, ws):
    """dL/dW_enc = (x - b_dec)^T dL/dpre and dL/db_enc, with dL/dpre sparse (no input
    gradient). One bag sum per latent over the rows of ``[x - b_dec | 1]``, written transposed
    into one ``[d_in + 1, d_sae]`` buffer, gives both: its rows ``:d_in`` are dL/dW_enc and
    its last row dL/db_enc (contiguous views, no copies)."""
    A = x_aug.shape[1]
    grad_AF = scratch(ws, "grad.W_enc_b_enc", (A, sae.d_sae), x_aug)
    bag_sum_(grad_AF, x_aug, rows[by.order], dpre[by.order], by.crow, transposed=True)
    return grad_AF[: A - 1], grad_AF[A - 1]


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
    x_scale: float = 1.0,
    workspace: Workspace | None = None,
) -> tuple[Grads, StepStats]:
    """Loss terms and parameter gradients of one batch of ``x_scale * x_BD`` (normalised).

    loss = sum_i mean_b ||x_b - x_hat_i,b||^2 + aux_alpha * aux  (see ``reference_losses``).
    With ``inference_threshold`` the stats also count the activations the inference encoder
    (ReLU above that threshold) would keep on this batch. ``cut_hint`` (a value below the
    k B-th largest activation, e.g. 0.8 x the last step's smallest kept one) only saves time;
    ``dense_threads`` is the CPU thread count of the encoder product (see ``encode_select``).
    With a ``workspace`` the step's large buffers, the returned gradients included, are reused
    from the previous call (:mod:`workbench.sae.workspace`).
    """
    B, D = x_BD.shape
    ws = workspace
    use_aux = dead_F is not None and k_aux > 0 and bool(dead_F.any())
    dead_idx = dead_F.nonzero().squeeze(1) if use_aux else None
    thr = None if inference_threshold is None else max(inference_threshold, 0.0)
    with record_function("sae.select"):  # normalised input, encoder product and BatchTopK
        x_aug = _centred_input(sae, x_BD, x_scale, ws)
        xc_BD = x_aug[:, :D]
        sel = encode_select(
            x_aug, sae.W_enc_DF, sae.b_enc_F, k * B, cut_hint, dead_idx, thr, compute_dtype,
            dense_threads=dense_threads, workspace=ws, augmented=True,
        )  # fmt: skip
    with record_function("sae.decode"):
        code = make_code(sel.idx, sel.vals, sae, B)
        S_GBD, code_csr, prefix_mse = _decode(sae, code, xc_BD, ws)
    with record_function("sae.decoder_backward"):
        by = column_order(code.cols, sae.d_sae)
        dvals, grad_W_dec, grad_b_dec = _decoder_backward(sae, code, code_csr, by, S_GBD, ws)
    rows, dpre, enc_by = code.rows, dvals, by
    aux = x_BD.new_zeros(())
    if use_aux:
        with record_function("sae.aux"):
            out = _aux_k(sae, sel.pre_dead, dead_idx, S_GBD[-1], k_aux, aux_alpha)
            aux = out.loss
            if out.dec_grad is not None:
                grad_W_dec.index_add_(0, dead_idx, out.dec_grad)
                rows, dpre = torch.cat([rows, out.rows]), torch.cat([dpre, out.dvals])
                enc_by = column_order(torch.cat([code.cols, out.cols]), sae.d_sae)
    with record_function("sae.encoder_backward"):
        grad_W_enc, grad_b_enc = _encoder_backward(sae, rows, dpre, enc_by, x_aug, ws)
        grad_b_dec.addmv_(sae.W_enc_DF, grad_b_enc, alpha=-1.0)
    # batch variance around the mean; xc is centred near b_dec, so this is well conditioned
    mean_D = xc_BD.mean(0)
    total_var = torch.linalg.vector_norm(xc_BD).square() / B - mean_D.dot(mean_D)
    stats = StepStats(
        loss=prefix_mse.sum() + aux_alpha * aux,
        prefix_mse=prefix_mse,
        total_var=total_var,
        aux=aux,
        fired=by.counts,
        min_act=code.vals.min() if code.vals.numel() else x_BD.new_zeros(()),
        n_active=int(code.vals.numel()),
        n_above=sel.n_above,
    )
    return Grads(grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec), stats


@torch.no_grad()
def project_decoder_grad_(W_dec_FD: torch.Tensor, grad_FD: torch.Tensor, block: int = 256):
    """Remove each decoder row's gradient component parallel to that (unit-norm) row, in
    place. The row dots run in blocks of rows: a whole-matrix ``vecdot`` makes a temporary of
    the decoder's size (5-6x slower at 16384 x 1024)."""
    coef_F = torch.empty(W_dec_FD.shape[0], dtype=grad_FD.dtype, device=grad_FD.device)
    for f in range(0, W_dec_FD.shape[0], block):
        rows = slice(f, f + block)
        torch.linalg.vecdot(grad_FD[rows], W_dec_FD[rows], out=coef_F[rows])
    return grad_FD.addcmul_(coef_F.unsqueeze(1), W_dec_FD, value=-1.0)


@torch.no_grad()
def clip_grads_(grads: Grads, max_norm: float) -> torch.Tensor:
    """Scale all gradients so their joint L2 norm is at most ``max_norm``; returns the norm."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if max_norm > 0:
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        if bool(scale < 1.0):  # x * 1 == x: an unclipped step skips four passes
            for g in grads:
                g.mul_(scale)
    return norm
