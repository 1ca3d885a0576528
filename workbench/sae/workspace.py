"""Scratch tensors that one training step hands to the next instead of allocating them anew.

A step of the SAE trainer needs a dozen buffers of ``B x d_in``, ``d_sae x d_in`` or
``G B x d_in`` floats (tens to hundreds of MB at the shapes users train). Allocated fresh, the
allocator returns them to the kernel and the next step faults every page in again: at 1024 /
16384 / 64 that was ~600 MB of page faults and a fifth of the step's CPU time in the kernel.
A :class:`Workspace` keeps one tensor per name and returns it while the shape, dtype and
device still match, so a trainer's steady state allocates nothing large.

Contents are garbage on return: every caller overwrites what it reads. A buffer must not be
asked for twice in a step for two live purposes, and what a step returns from it (the
gradients) is only valid until the next step that uses the same workspace.
"""

from __future__ import annotations

import torch


class Workspace:
    """Named reusable scratch tensors (see the module docstring for the contract)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """An uninitialised tensor of ``shape``; the same storage as last time when it fits."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf

    def nbytes(self) -> int:
        """Bytes held (for memory reports)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


def scratch(
    ws: Workspace | None, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype=None
) -> torch.Tensor:
    """``ws.get(...)`` on ``like``'s device (and dtype unless given); a fresh tensor without a
    workspace (one-off calls and tests)."""
    dtype = dtype or like.dtype
    if ws is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    return ws.get(name, tuple(shape), dtype, like.device)
