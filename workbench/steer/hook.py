"""The hook that applies steering inside ``generate``, one intervention per batch row.

:class:`SteeringHook` sits at one residual hook (:func:`workbench.models.hooks.intervene`).
Each row of the batch has its own :class:`~workbench.steer.intervene.Steering` (or None: that
row is generated unsteered) and its own prompt mask, because under left padding the image
tokens, the prompt and the pads sit at different columns in different rows. The hook tracks
absolute positions across calls: the first call sees the whole (padded) prompt, each cached
decoding step one new column, which is a generated position of every row.

Positions a row does not steer (and every position of an unsteered row) are returned
unchanged bit for bit, so a row's text depends only on its own intervention: an unsteered
row in a steered batch is the baseline, and a zero step is exactly the identity.

A :class:`GenerationMonitor` rides on the same hook: it counts decoding steps (progress) and
raises :class:`GenerationCancelledError` when its event is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from workbench.sae import MatryoshkaSAE


class SteeringError(ValueError):
    """A steering request that cannot be applied (wrong feature, SAE/model mismatch, ...)."""


class GenerationCancelledError(RuntimeError):
    """Raised inside ``generate`` when the caller set the monitor's cancel event."""


class Steering(NamedTuple):
    """One intervention: a vector added and/or SAE latents clamped, at ``positions``."""

    add: torch.Tensor | None
    """Added at every chosen position (float32); None: nothing added."""
    clamp: Mapping[int, float]
    """SAE feature -> the value its activation is set to (raw units)."""
    positions: frozenset[str]
    """Subset of :data:`POSITION_KINDS`."""


def prompt_mask(tokens: list[dict], prompt_length: int, positions: frozenset[str]) -> torch.Tensor:
    """Which prompt positions are steered; 'generated' includes the last prompt position."""
    mask = torch.zeros(prompt_length, dtype=torch.bool)
    for i, tok in enumerate(tokens[:prompt_length]):
        kind = "image" if tok.get("kind") == "image" else "prompt"
        mask[i] = kind in positions
    if "generated" in positions and prompt_length:
        mask[prompt_length - 1] = True  # its output is the first generated token
    return mask


def left_padded(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-row prompt masks ``[P_b]`` right-aligned in one ``[B, max P_b]`` mask (pads False),
    the layout of a left-padded batch."""
    width = max(len(m) for m in masks)
    out_BP = torch.zeros((len(masks), width), dtype=torch.bool)
    for b, mask in enumerate(masks):
        out_BP[b, width - len(mask) :] = mask
    return out_BP


class GenerationMonitor:
    """Counts forward calls of one ``generate`` (prefill, then one per token) and cancels it."""

    def __init__(
        self,
        on_step: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ):
        self.on_step, self.cancel, self.steps = on_step, cancel, 0

    def __call__(self, acts_BTD: torch.Tensor) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelledError("generation cancelled")
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps)


class _Clamp:
    """One row's clamp: latents ``index_K`` set to ``values_K`` through their decoder rows."""

    def __init__(self, row: int, clamp, sae: MatryoshkaSAE):
        device = sae.W_dec_FD.device
        self.row = row
        self.index_K = torch.tensor(list(clamp), dtype=torch.long, device=device)
        self.values_K = torch.tensor(list(clamp.values()), dtype=torch.float32, device=device)
        self.dirs_KD = sae.W_dec_FD[self.index_K].detach().float()


class SteeringHook:
    """Intervention ``acts_BTD -> acts_BTD`` for :func:`workbench.models.hooks.intervene`.

    ``steering`` is one Steering (every row of the batch gets it) or one per row (None: the
    row is not steered); ``mask`` is the prompt mask ``[P]`` or per row ``[B, P]`` (left-padded
    layout, :func:`left_padded`). One instance serves one ``generate`` call.
    """

    def __init__(
        self,
        steering: Steering | Sequence[Steering | None] | None,
        mask: torch.Tensor,
        sae: MatryoshkaSAE | None = None,
        monitor: GenerationMonitor | None = None,
    ):
        rows = [steering] if steering is None or _is_steering(steering) else list(steering)
        self.mask_BP = (mask[None] if mask.ndim == 1 else mask).clone()
        if len(self.mask_BP) != len(rows):
            raise SteeringError(f"{len(rows)} steerings but {len(self.mask_BP)} row masks")
        if any(s is not None and s.clamp for s in rows) and sae is None:
            raise SteeringError("clamping needs the SAE")
        self.rows, self.sae, self.monitor, self.seen = rows, sae, monitor, 0
        self.mask_BP[[s is None for s in rows]] = False  # an unsteered row is never touched
        self.generated_B = torch.tensor([s is not None and "generated" in s.positions
                                         for s in rows])  # fmt: skip
        adds = [s.add for s in rows if s is not None and s.add is not None]
        self.add_BD = None
        if adds:
            zero = torch.zeros_like(adds[0], dtype=torch.float32)
            self.add_BD = torch.stack([
                s.add.float() if s is not None and s.add is not None else zero for s in rows
            ])  # fmt: skip
        self.clamps = [_Clamp(b, s.clamp, sae) for b, s in enumerate(rows)
                       if s is not None and s.clamp]  # fmt: skip

    def _mask(self, batch: int, n_tokens: int) -> torch.Tensor:
        """Steered positions of this call, [B, T] (absolute positions tracked across steps)."""
        start = self.seen if (n_tokens == 1 and self.seen > 0) else 0  # cached step vs full pass
        self.seen = start + n_tokens
        pos = torch.arange(start, start + n_tokens)
        in_prompt = pos < self.mask_BP.shape[1]
        mask_BT = self.generated_B[:, None].repeat(1, n_tokens)
        mask_BT[:, in_prompt] = self.mask_BP[:, pos[in_prompt]]
        if len(mask_BT) == 1 and batch > 1:  # one steering for every row of the batch
            mask_BT = mask_BT.expand(batch, -1)
        return mask_BT

    @torch.no_grad()
    def delta(self, acts_BTD: torch.Tensor) -> torch.Tensor:
        """What each row's intervention adds at every position (float32, on acts' device)."""
        out = torch.zeros(acts_BTD.shape, dtype=torch.float32, device=acts_BTD.device)
        if self.add_BD is not None:
            out += self.add_BD.to(acts_BTD.device)[:, None, :]
        for c in self.clamps:
            rows = slice(None) if len(self.rows) == 1 else slice(c.row, c.row + 1)
            x_ND = acts_BTD[rows].reshape(-1, acts_BTD.shape[-1]).to(c.dirs_KD.device)
            latents_NK = self.sae.encode(x_ND)[:, c.index_K].float()
            diff_NK = c.values_K - latents_NK  # exactly 0 where the clamp changes nothing
            out[rows] += (diff_NK @ c.dirs_KD).reshape(out[rows].shape).to(out.device)
        return out

    @torch.no_grad()
    def __call__(self, acts_BTD: torch.Tensor) -> torch.Tensor | None:
        if self.monitor is not None:
            self.monitor(acts_BTD)
        mask_BT = self._mask(acts_BTD.shape[0], acts_BTD.shape[1]).to(acts_BTD.device)
        if not mask_BT.any():
            return None
        steered = (acts_BTD.float() + self.delta(acts_BTD)).to(acts_BTD.dtype)
        return torch.where(mask_BT[..., None], steered, acts_BTD)


def _is_steering(value) -> bool:
    """A Steering is a NamedTuple (a tuple too): tell it from a sequence of steerings."""
    return hasattr(value, "_fields")
