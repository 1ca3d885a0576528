"""The stage-1 gate: does the frozen encoder see each phantom concept, and where?

- **Linear probe AUROC**: a logistic regression (L2, fitted with L-BFGS on standardised
  features) on the frozen encoder's [mean; max] pooled tokens of the train split's frontal
  images, scored by image-level AUROC on the test split (subject-disjoint).
- **Dense-max AUROC**: the image-level AUROC of the dense head's highest patch logit. A
  linear probe on max-pooled *dimensions* cannot express "some patch points along direction
  w", which is what an attention head of the decoder can read; this column can.
- **Pointing game** (Zhang et al., 2016): for each test image where the concept is present
  and has a mask, the patch with the highest dense-head logit for that concept must overlap
  the mask. The score is the hit rate. The strict column counts a hit only on a patch the mask
  covers; the tolerant one on the mask dilated by one patch (8-neighbourhood), which is the
  paper's 15-pixel tolerance at this 16-pixel patch grid and ``analyse``'s pointing game.

The gate of issue 11 is AUROC >= 0.95 and pointing game >= 0.8 for each of the 13 concepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from workbench.cxr.findings import RENDERED
from workbench.models.mini.dense import VisionExample, stack
from workbench.models.mini.vision import VisionHeads, encoder_tokens
from workbench.stats import auroc


class GateRow(NamedTuple):
    """One concept's stage-1 gate figures on the test split."""

    concept: str
    positives: int
    auroc: float | None
    dense_auroc: float | None  # AUROC of max over patches of the dense logit
    pointing: float | None  # None when no positive test image has a mask
    pointed: int  # positive test images with a mask (the pointing game's denominator)
    pointing_near: float | None  # the same with the mask dilated by one patch


@torch.no_grad()
def frozen_outputs(
    tower: torch.nn.Module, heads: VisionHeads, examples: Sequence[VisionExample], batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features [N, 2V] and dense-head logits [N, P, K] of the frozen encoder."""
    tower.eval()
    pooled, dense = [], []
    for start in range(0, len(examples), batch):
        pixels, _, _ = stack(examples[start : start + batch])
        tokens_BPV = encoder_tokens(tower, pixels)
        pooled.append(torch.cat([tokens_BPV.mean(1), tokens_BPV.amax(1)], dim=-1))
        dense.append(heads.dense(tokens_BPV))
    return torch.cat(pooled), torch.cat(dense)


def fit_logistic(
    x_ND: torch.Tensor, y_NC: torch.Tensor, l2: float = 1e-3, iters: int = 200
) -> torch.nn.Linear:
    """Multi-label logistic regression on standardised features (L-BFGS, L2 on weights)."""
    mean, std = x_ND.mean(0), x_ND.std(0).clamp_min(1e-6)
    z_ND = (x_ND - mean) / std
    linear = torch.nn.Linear(x_ND.shape[1], y_NC.shape[1]).double()
    z_ND, y_NC = z_ND.double(), y_NC.double()
    opt = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=iters, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(linear(z_ND), y_NC)
        loss = loss + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    # fold the standardisation into the weights so the probe reads raw features
    with torch.no_grad():
        weight = linear.weight / std.double()
        linear.bias -= (weight * mean.double()).sum(1)
        linear.weight.copy_(weight)
    return linear.float()


def pointing_game(
    dense_NPK: torch.Tensor, cover_NPK: torch.Tensor, k: int, tolerance: int = 0
) -> tuple[float | None, int]:
    """Hit rate of channel ``k``'s top patch on the images whose ``k`` mask is non-empty; with
    ``tolerance`` t, a hit is a top patch within t patches (8-neighbourhood) of the mask."""
    has_mask = cover_NPK[:, :, k].sum(1) > 0
    if not has_mask.any():
        return None, 0
    inside_NP = cover_NPK[has_mask, :, k] > 0
    if tolerance:
        grid = math.isqrt(inside_NP.shape[1])
        inside_N1GG = inside_NP.float().reshape(-1, 1, grid, grid)
        size = 2 * tolerance + 1
        inside_NP = F.max_pool2d(inside_N1GG, size, stride=1, padding=tolerance).flatten(1) > 0
    top_N = dense_NPK[has_mask, :, k].argmax(1)
    hits = inside_NP.gather(1, top_N[:, None]).squeeze(1)
    return float(hits.float().mean()), int(has_mask.sum())


def probe_scores(
    tower: torch.nn.Module,
    heads: VisionHeads,
    train: Sequence[VisionExample],
    test: Sequence[VisionExample],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's linear probe, fitted on ``train``'s pooled features: its logits [N, C] on
    ``test``, with ``test``'s dense-head logits [N, P, K]."""
    x_train, _ = frozen_outputs(tower, heads, train)
    x_test, dense_test = frozen_outputs(tower, heads, test)
    probe = fit_logistic(x_train, torch.stack([e.concepts for e in train]))
    with torch.no_grad():
        return probe(x_test), dense_test


def gate_table(
    tower: torch.nn.Module,
    heads: VisionHeads,
    train: Sequence[VisionExample],
    test: Sequence[VisionExample],
) -> list[GateRow]:
    """Probe AUROC and pointing game of every rendered concept (see the module docstring)."""
    return gate_rows(*probe_scores(tower, heads, train, test), test)


def gate_rows(
    scores: torch.Tensor, dense_test: torch.Tensor, test: Sequence[VisionExample]
) -> list[GateRow]:
    """The gate's rows from :func:`probe_scores`' outputs on ``test`` (for callers that read
    the same scores for more than the table)."""
    y_test = torch.stack([e.concepts for e in test])
    cover_test = torch.stack([e.cover for e in test]).float()
    rows = []
    for k, concept in enumerate(RENDERED):
        truth = y_test[:, k].int().tolist()
        point, n = pointing_game(dense_test, cover_test, k)
        near, _ = pointing_game(dense_test, cover_test, k, tolerance=1)
        peak = dense_test[:, :, k].amax(1).tolist()
        probe_auroc = auroc(truth, scores[:, k].tolist())
        rows.append(GateRow(concept, sum(truth), probe_auroc, auroc(truth, peak), point, n, near))
    return rows


def gate_markdown(rows: Sequence[GateRow]) -> str:
    """The gate as a Markdown table, with the pass count of each criterion."""
    lines = [
        "| concept | test positives | probe AUROC | dense-max AUROC | pointing game (n) "
        "| pointing, 1-patch tolerance |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        au = "-" if r.auroc is None else f"{r.auroc:.3f}"
        dm = "-" if r.dense_auroc is None else f"{r.dense_auroc:.3f}"
        pt = "-" if r.pointing is None else f"{r.pointing:.2f} ({r.pointed})"
        near = "-" if r.pointing_near is None else f"{r.pointing_near:.2f}"
        lines.append(f"| {r.concept} | {r.positives} | {au} | {dm} | {pt} | {near} |")
    n_auroc = sum(1 for r in rows if r.auroc is not None and r.auroc >= 0.95)
    n_point = sum(1 for r in rows if r.pointing is not None and r.pointing >= 0.8)
    n_dense = sum(1 for r in rows if r.dense_auroc is not None and r.dense_auroc >= 0.95)
    n_near = sum(1 for r in rows if r.pointing_near is not None and r.pointing_near >= 0.8)
    lines.append(
        f"| **passing** | | {n_auroc} of {len(rows)} >= 0.95 | {n_dense} of {len(rows)} >= 0.95 "
        f"| {n_point} of {len(rows)} >= 0.8 | {n_near} of {len(rows)} >= 0.8 |"
    )
    return "\n".join(lines)
