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
forward per batch, and encodes the activation the clean forward meets at the hook once for all
prefixes. Losses are the mean next-token cross entropy over every predicted token of every
sequence (positions 1..T-1 predicted from 0..T-2, padding excluded), the same averaging as
TransformerLens' ``return_type="loss"``.

Splicing uses the workbench's own forward hooks (:func:`workbench.models.hooks.intervene`),
so it works for MAIRA-2, LLaVA and text-only causal LMs alike; ``tests`` check it against
SAELens' ``HookedSAETransformer`` on the same tokens.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.hooks import decoder_layers, intervene, modules_up_to, parse_hook_name
from workbench.sae.matryoshka import MatryoshkaSAE

LOSS_MASK = "loss_mask"
SPLICE_MASK = "splice_mask"
_MASKS = (LOSS_MASK, SPLICE_MASK)
_SPENT = object()  # a replayed module's recordings are used up


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


def _counted(
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor | None,
    loss_mask_BT: torch.Tensor | None,
) -> torch.Tensor:
    """[B, T - 1] bool: whether the target at ``t + 1`` (predicted from ``t``) counts."""
    keep = torch.ones_like(input_ids_BT[:, 1:], dtype=torch.bool)
    if attention_mask_BT is not None:
        mask = attention_mask_BT.to(keep.device).bool()
        keep &= mask[:, 1:] & mask[:, :-1]
    if loss_mask_BT is not None:
        keep &= loss_mask_BT.to(keep.device).bool()[:, 1:]
    return keep


def predicting_positions(
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor | None = None,
    loss_mask_BT: torch.Tensor | None = None,
) -> torch.Tensor:
    """The positions (shared by the batch) whose logits predict a target that counts."""
    keep = _counted(input_ids_BT, attention_mask_BT, loss_mask_BT)
    return torch.nonzero(keep.any(0)).flatten()


def next_token_ce(
    logits_BTV: torch.Tensor,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor | None = None,
    loss_mask_BT: torch.Tensor | None = None,
    positions_K: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Summed next-token cross entropy and the number of predicted tokens.

    Target ``t`` (predicted from position ``t - 1``) counts when both positions are real
    tokens (``attention_mask``) and, if given, ``loss_mask[t]`` is true. With ``positions_K``
    the logits are only those positions' ([B, K, V], e.g. from the model's
    ``logits_to_keep``) and K must cover every position whose target counts.
    """
    keep = _counted(input_ids_BT, attention_mask_BT, loss_mask_BT)
    targets = input_ids_BT[:, 1:]
    if positions_K is None:
        logits_BTV = logits_BTV[:, :-1]
    else:
        positions_K = positions_K.to(keep.device)
        if int(keep.sum()) != int(keep[:, positions_K].sum()):
            raise ValueError("positions_K leaves out a position whose target counts")
        keep, targets = keep[:, positions_K], targets[:, positions_K]
    logits = logits_BTV.float()
    targets = targets.to(logits.device)
    flat = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none").view_as(targets)
    ce = ce[keep.to(logits.device)]
    return float(ce.sum()), int(keep.sum())


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


def _keep_copy(into: list[torch.Tensor]):
    def fn(hidden: torch.Tensor) -> None:  # None: the activation goes on unchanged
        into.append(hidden.clone())

    return fn


def _replace_with(new: torch.Tensor):
    def fn(hidden: torch.Tensor) -> torch.Tensor:
        return new

    return fn


@contextmanager
def _recording(modules: Sequence[nn.Module]) -> Iterator[list[list]]:
    """Collect each module's forward outputs (one per call, in order) during the block."""
    outputs: list[list] = [[] for _ in modules]

    def keep(calls: list):
        def hook(module: nn.Module, args: tuple, output) -> None:
            calls.append(output)

        return hook

    handles = [m.register_forward_hook(keep(calls)) for m, calls in zip(modules, outputs)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _replaying(modules: Sequence[nn.Module], outputs: list[list]) -> Iterator[None]:
    """Each module returns its recorded outputs in turn instead of computing them.

    Forward hooks still run on the replayed output. The editing hooks of :func:`_ce_of_run`
    return new tensors, never edit in place, so the recordings serve every edited run.
    """
    own = [m.__dict__.get("forward") for m in modules]  # a wrapper someone else installed

    def replay(calls: list):
        turn = iter(calls)

        def forward(*args, **kwargs):
            output = next(turn, _SPENT)
            if output is _SPENT:
                raise RuntimeError("a replayed module ran more often than in the clean run")
            return output

        return forward

    try:
        for module, calls in zip(modules, outputs, strict=True):
            module.forward = replay(calls)  # an instance attribute shadows the class's
        yield
    finally:
        for module, previous in zip(modules, own):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def _replay_plan(model: nn.Module, hook: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the modules up to the hook whose outputs the clean run records, the blocks before the
    hook's block). What those blocks return feeds only replayed blocks and is never read, so
    they replay block L's recording (of the right type and shape) and keep no copy of their
    own: at MAIRA-2's layer 15 that is 15 residual streams fewer held per study."""
    upstream = modules_up_to(model, hook)
    if not upstream:
        return [], []
    before = {id(b) for b in decoder_layers(model)[: parse_hook_name(hook)]}
    return [m for m in upstream if id(m) not in before], [m for m in upstream if id(m) in before]


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model``'s forward (or, for a wrapper that passes its keywords on, its
    ``language_model``'s) accepts transformers' ``logits_to_keep``."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return True
    inner = getattr(model, "language_model", None)
    return isinstance(inner, nn.Module) and takes_logits_to_keep(inner)


def _ce_of_run(
    model: nn.Module, batch: Mapping, inputs: dict, edit: dict, keep_logits: bool
) -> tuple[float, int]:
    """Summed next-token CE of one forward of ``inputs`` with ``edit`` at its hooks.

    With a ``loss_mask`` and ``keep_logits`` (the model takes ``logits_to_keep``:
    transformers' causal LMs, LLaVA, MAIRA-2) the model computes logits only where a counted
    target is predicted: the output head and softmax over the vocabulary then run on the
    report tokens, not on every image and prompt token. Otherwise every position's logits,
    with the same losses.
    """
    ids, attention = inputs["input_ids"], inputs.get("attention_mask")
    loss_mask = batch.get(LOSS_MASK)
    positions, extra = None, {}
    if loss_mask is not None and keep_logits:
        positions = predicting_positions(ids, attention, loss_mask).to(ids.device)
        extra["logits_to_keep"] = positions
    with intervene(model, edit):
        logits = model(**inputs, use_cache=False, **extra).logits
    return next_token_ce(logits, ids, attention, loss_mask, positions)


OnClean = Callable[[Mapping[str, torch.Tensor], torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def splice_losses_by_prefix(
    model: nn.Module,
    sae: MatryoshkaSAE,
    batches: Iterable[Mapping[str, torch.Tensor]],
    hook_name: str | None = None,
    prefixes: Sequence[int | None] = (None,),
    on_clean: OnClean | None = None,
) -> dict[int | None, SpliceLosses]:
    """:func:`splice_losses` for several ``n_groups`` at once: prefix -> :class:`SpliceLosses`.

    Per batch the model runs once clean, once zero-ablated and once per prefix (the edited
    runs from the hook on, replaying the clean run's outputs up to it), so the
    batches are read once (they may be a generator) and the shared runs are not repeated. The
    clean run captures the activation at the hook and the SAE encodes it once: every run
    meets that same activation at the hook (nothing before it is edited), so each prefix's
    run splices in a decoding of that one code. ``on_clean(batch, acts_BTD, latents_BTF)``,
    if given, receives the clean activation and its code (analyse's SAE quality measures
    FVU and L0 on them instead of running the model once more).
    """
    hook = hook_name or sae.hook_name
    if hook is None:
        raise ValueError("the SAE records no hook name; pass hook_name='blocks.L.hook_resid_post'")
    recorded_modules, stand_ins = _replay_plan(model, hook)
    replayed = [*recorded_modules, *stand_ins]
    keep_logits = takes_logits_to_keep(model)
    for n_groups in prefixes:
        if n_groups is not None and not 1 <= n_groups <= len(sae.group_sizes):
            raise ValueError(f"n_groups={n_groups} outside 1..{len(sae.group_sizes)}")
    totals = {"clean": 0.0, "zero": 0.0, **{("spliced", n): 0.0 for n in prefixes}}
    count = 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k not in _MASKS}
        if "input_ids" not in inputs:
            raise ValueError(f"a batch has no input_ids (keys: {sorted(batch)})")
        seen: list[torch.Tensor] = []
        with _recording(recorded_modules) as recorded:
            total, n = _ce_of_run(model, batch, inputs, {hook: _keep_copy(seen)}, keep_logits)
        recorded += recorded[-1:] * len(stand_ins)  # block L's outputs, for the blocks before
        totals["clean"] += total
        x = seen[0]
        lat = sae.encode(x.to(sae.W_enc_DF.device))
        recon = {m: sae.decode(lat, m).to(x.device, x.dtype) for m in prefixes}
        if on_clean is not None:
            on_clean(batch, x, lat)
        del lat  # the reconstructions are all the spliced runs need
        mask = batch.get(SPLICE_MASK)
        edits = {"zero": _zero, **{("spliced", m): _replace_with(r) for m, r in recon.items()}}
        for name, fn in edits.items():
            with _replaying(replayed, recorded):
                edit = {hook: _only_at(fn, mask)}
                totals[name] += _ce_of_run(model, batch, inputs, edit, keep_logits)[0]
        del recorded
        count += n
    if count == 0:
        raise ValueError("no predicted tokens in the batches (empty or fully masked)")
    clean, zero = totals["clean"] / count, totals["zero"] / count
    return {n: SpliceLosses(clean, totals[("spliced", n)] / count, zero, count) for n in prefixes}
