"""Cross-entropy loss recovered: the model's next-token loss with an SAE spliced in.

The figure SAELens (``ce_loss_score`` in ``sae_lens.evals``) and the SAE literature report:
run the model three times on the same tokens,

* clean;
* with the activation at the SAE's hook replaced by the SAE's reconstruction
  ``decode(encode(x))`` at every position (optionally from the first ``n_groups`` Matryoshka
  groups only);
* with that activation replaced by zeros,

and report ``recovered = (zero - spliced) / (zero - clean)``: 1 when the reconstruction is as
good as the real activation, 0 when it is as bad as none. A batch may carry a ``splice_mask``
of the positions replaced (both by the reconstruction and by zeros; the others keep their
clean activation): an SAE trained on a store that kept only some token positions is then
spliced in where it was trained, as analyse's SAE-quality step does.
:func:`splice_losses_by_prefix` gets every Matryoshka prefix from one clean and one ablated
forward per batch. Losses are the mean next-token cross
entropy over every predicted token of every sequence (positions 1..T-1 predicted from
0..T-2, padding excluded), the same averaging as TransformerLens' ``return_type="loss"``.

Splicing uses the workbench's own forward hooks (:func:`workbench.models.hooks.intervene`),
so it works for MAIRA-2, LLaVA and text-only causal LMs alike; ``tests`` check it against
SAELens' ``HookedSAETransformer`` on the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.hooks import intervene
from workbench.sae.matryoshka import MatryoshkaSAE

LOSS_MASK = "loss_mask"
SPLICE_MASK = "splice_mask"
_MASKS = (LOSS_MASK, SPLICE_MASK)


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


def _only_at(fn, mask_BT: torch.Tensor | None):
    """``fn`` applied where ``mask_BT`` is true; elsewhere the activation stays as it was."""
    if mask_BT is None:
        return fn

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        keep = mask_BT.to(hidden.device).bool()[..., None]
        return torch.where(keep, fn(hidden), hidden)

    return apply


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
    count (e.g. report tokens only) and a ``splice_mask`` [B, T] of the positions replaced;
    both are removed before the forward pass. ``hook_name`` defaults to the SAE's own;
    ``n_groups`` splices the reconstruction of the first ``n_groups`` Matryoshka groups (all
    by default).
    """
    return splice_losses_by_prefix(model, sae, batches, hook_name, (n_groups,))[n_groups]


@torch.no_grad()
def splice_losses_by_prefix(
    model: nn.Module,
    sae: MatryoshkaSAE,
    batches: Iterable[Mapping[str, torch.Tensor]],
    hook_name: str | None = None,
    prefixes: Sequence[int | None] = (None,),
) -> dict[int | None, SpliceLosses]:
    """:func:`splice_losses` for several ``n_groups`` at once: prefix -> :class:`SpliceLosses`.

    Per batch the model runs once clean, once zero-ablated and once per prefix, so the
    batches are read once (they may be a generator) and the shared runs are not repeated.
    """
    hook = hook_name or sae.hook_name
    if hook is None:
        raise ValueError("the SAE records no hook name; pass hook_name='blocks.L.hook_resid_post'")
    for n_groups in prefixes:
        if n_groups is not None and not 1 <= n_groups <= len(sae.group_sizes):
            raise ValueError(f"n_groups={n_groups} outside 1..{len(sae.group_sizes)}")
    variants = {"clean": None, "zero": _zero}
    variants.update({("spliced", n): _reconstruct(sae, n) for n in prefixes})
    totals = dict.fromkeys(variants, 0.0)
    count = 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k not in _MASKS}
        if "input_ids" not in inputs:
            raise ValueError(f"a batch has no input_ids (keys: {sorted(batch)})")
        for name, fn in variants.items():
            edit = {} if fn is None else {hook: _only_at(fn, batch.get(SPLICE_MASK))}
            with intervene(model, edit):
                logits = model(**inputs).logits
            total, n = next_token_ce(
                logits, inputs["input_ids"], inputs.get("attention_mask"), batch.get(LOSS_MASK)
            )
            totals[name] += total
        count += n
    if count == 0:
        raise ValueError("no predicted tokens in the batches (empty or fully masked)")
    clean, zero = totals["clean"] / count, totals["zero"] / count
    return {n: SpliceLosses(clean, totals[("spliced", n)] / count, zero, count) for n in prefixes}
