"""Cross-entropy loss recovered: the model's next-token loss with an SAE spliced in.

The figure SAELens (``ce_loss_score`` in ``sae_lens.evals``) and the SAE literature report:
run the model three times on the same tokens,

* clean;
* with the activation at the SAE's hook replaced by the SAE's reconstruction
  ``decode(encode(x))`` at every position (optionally from the first ``n_groups`` Matryoshka
  groups only);
* with that activation replaced by zeros,

and report ``recovered = (zero - spliced) / (zero - clean)``: 1 when the reconstruction is as
good as the real activation, 0 when it is as bad as none. Losses are the mean next-token cross
entropy over every predicted token of every sequence (positions 1..T-1 predicted from
0..T-2, padding excluded), the same averaging as TransformerLens' ``return_type="loss"``.

Splicing uses the workbench's own forward hooks (:func:`workbench.models.hooks.intervene`),
so it works for MAIRA-2, LLaVA and text-only causal LMs alike; ``tests`` check it against
SAELens' ``HookedSAETransformer`` on the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.hooks import intervene
from workbench.sae.matryoshka import MatryoshkaSAE

LOSS_MASK = "loss_mask"


class SpliceLosses(NamedTuple):
    """Mean next-token cross entropy (nats) clean, spliced and zero-ablated, and its count."""

    clean: float
    spliced: float
    zero_ablated: float
    n_tokens: int

    @property
    def recovered(self) -> float:
        """``(zero - spliced) / (zero - clean)``; NaN when ablation changes nothing."""
        gap = self.zero_ablated - self.clean
        return (self.zero_ablated - self.spliced) / gap if gap != 0 else math.nan


def next_token_ce(
    logits_BTV: torch.Tensor,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor | None = None,
    loss_mask_BT: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Summed next-token cross entropy and the number of predicted tokens.

    Target ``t`` (predicted from position ``t - 1``) counts when both positions are real
    tokens (``attention_mask``) and, if given, ``loss_mask[t]`` is true.
    """
    logits = logits_BTV[:, :-1].float()
    targets = input_ids_BT[:, 1:].to(logits.device)
    keep = torch.ones_like(targets, dtype=torch.bool)
    if attention_mask_BT is not None:
        mask = attention_mask_BT.to(logits.device).bool()
        keep &= mask[:, 1:] & mask[:, :-1]
    if loss_mask_BT is not None:
        keep &= loss_mask_BT.to(logits.device).bool()[:, 1:]
    flat = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none").view_as(targets)[keep]
    return float(ce.sum()), int(keep.sum())


def _reconstruct(sae: MatryoshkaSAE, n_groups: int | None):
    def fn(hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.to(sae.W_enc_DF.device)
        return sae.decode(sae.encode(x), n_groups).to(hidden.device, hidden.dtype)

    return fn


def _zero(hidden: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(hidden)


@torch.no_grad()
def splice_losses(
    model: nn.Module,
    sae: MatryoshkaSAE,
    batches: Iterable[Mapping[str, torch.Tensor]],
    hook_name: str | None = None,
    n_groups: int | None = None,
) -> SpliceLosses:
    """:class:`SpliceLosses` of ``sae`` spliced into ``model`` over ``batches``.

    Each batch is the model's keyword inputs (``input_ids``, ``attention_mask``,
    ``pixel_values``, ...) and may carry a ``loss_mask`` [B, T] of the target positions that
    count (e.g. report tokens only); it is removed before the forward pass. ``hook_name``
    defaults to the SAE's own; ``n_groups`` splices the reconstruction of the first
    ``n_groups`` Matryoshka groups (all by default).
    """
    hook = hook_name or sae.hook_name
    if hook is None:
        raise ValueError("the SAE records no hook name; pass hook_name='blocks.L.hook_resid_post'")
    if n_groups is not None and not 1 <= n_groups <= len(sae.group_sizes):
        raise ValueError(f"n_groups={n_groups} outside 1..{len(sae.group_sizes)}")
    totals = {"clean": 0.0, "spliced": 0.0, "zero_ablated": 0.0}
    count = 0
    variants = {"clean": None, "spliced": _reconstruct(sae, n_groups), "zero_ablated": _zero}
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != LOSS_MASK}
        if "input_ids" not in inputs:
            raise ValueError(f"a batch has no input_ids (keys: {sorted(batch)})")
        for name, fn in variants.items():
            with intervene(model, {hook: fn} if fn is not None else {}):
                logits = model(**inputs).logits
            total, n = next_token_ce(
                logits, inputs["input_ids"], inputs.get("attention_mask"), batch.get(LOSS_MASK)
            )
            totals[name] += total
        count += n
    if count == 0:
        raise ValueError("no predicted tokens in the batches (empty or fully masked)")
    return SpliceLosses(
        totals["clean"] / count, totals["spliced"] / count, totals["zero_ablated"] / count, count
    )
