"""The gap-share candidate rule (site image): the SAE features that carry a concept's image gap.

The difference-of-means patch map ``D`` of a concept (``image.patch_regression`` on the
residual: its with-minus-without gap per patch, adjusted for the other concepts) splits exactly
over the SAE's basis, because the residual is the reconstruction ``z W_dec + b_dec`` plus the
error and least squares is linear in what it fits:

    D = sum_f b_f W_dec[f] + gap(error)          (b_f: feature f's own adjusted gap per patch)

Feature f's **share** of the gap is the part of ``D`` its term carries along ``D``:

    share_f = sum_{section, patch} b_f <W_dec[f], D> / ||D||^2

Shares over every feature add up to the fraction of ``D`` the reconstruction carries (1 when
the error term has no gap). A feature whose activation *falls* with the concept and whose
decoder row points away from ``D`` (a normal heart border, for cardiomegaly) has a positive
share too: the concept is partly the absence of that feature.

The rule steers the ``n`` features of largest positive share together, each with its own
adjusted map (the same maps as the ``meaning`` rule's features). It picks the features the
concept moves, whatever their study-level AUROC: on the shipped demo 32 of 2,048 features
carry 86-100 % of each concept's gap, where the 32 best by AUROC (of the 8-29 above 0.75)
carry 18-59 % (benchmarks/RESULTS.md, *Steering*).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.steer.candidates import Candidate
from workbench.steer.image import PatchRegression

RULE = (
    "candidate rule (gap): the {n} SAE features carrying the largest positive share of the "
    "concept's adjusted patch gap (share_f = sum b_f <W_dec[f], D> / |D|^2, D the difference-"
    "of-means patch map, b_f the feature's own adjusted gap), steered together"
)


def gap_shares(
    dim: PatchRegression, latent: PatchRegression, W_dec_FD: torch.Tensor, concept: str
) -> torch.Tensor:
    """``[F]``: each feature's share of ``concept``'s difference-of-means patch map.

    ``dim`` is the patch regression of the residual, ``latent`` that of every SAE feature's
    activation (in feature order, ``F`` columns) on the same studies and covariates.
    """
    d_maps = dim.concept_map(concept, skip_unseen=True)
    b_maps = latent.concept_map(concept, skip_unseen=True)
    W = W_dec_FD.detach().float().cpu()
    widths = {b.shape[-1] for b in b_maps.values()}
    if widths != {W.shape[0]}:
        raise ValueError(
            f"the latent regression has {sorted(widths)} columns for the SAE's {W.shape[0]} "
            "features (fit it with every feature, in feature order)"
        )
    norm2 = sum(float((d.float() ** 2).sum()) for d in d_maps.values())
    if norm2 == 0.0:
        return torch.zeros(W.shape[0])
    shares = torch.zeros(W.shape[0])
    for section, b_PF in b_maps.items():
        if section in d_maps:
            shares += (b_PF.float() * (d_maps[section].float() @ W.T)).sum(0)
    return shares / norm2


def choose_by_gap(
    dim: PatchRegression,
    latent: PatchRegression,
    W_dec_FD: torch.Tensor,
    concepts: Sequence[str],
    n: int,
) -> list[Candidate]:
    """Per concept the ``n`` features of largest positive share (ties: lower number first);
    ``Candidate.gap_share`` is what they carry together. A concept without a feature of
    positive share is left out."""
    out = []
    for concept in concepts:
        shares = gap_shares(dim, latent, W_dec_FD, concept)
        order = sorted(range(len(shares)), key=lambda f: (-float(shares[f]), f))
        chosen = tuple(f for f in order[:n] if shares[f] > 0)
        if chosen:
            carried = float(shares[list(chosen)].sum())
            out.append(Candidate(concept, chosen, float("nan"), None, None, False, carried))
    return out
