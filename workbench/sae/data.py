"""Training batches from an activation store: shuffled across shards with a bounded buffer.

The order is a pure function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would, without saving any buffer state:

* epoch ``e`` visits the shards in a permutation drawn from ``(seed, e)``;
* consecutive shards of that permutation are grouped into *windows* of at least
  ``buffer_tokens`` rows (one shard at least); a window is loaded whole, its rows permuted with
  ``(seed, e, w)`` and served in that order;
* the stream is the concatenation of the windows; batch ``s`` is rows ``[s B, (s + 1) B)``.

Memory is one window (about ``buffer_tokens`` rows plus one shard), whatever the store's size.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class DataError(ValueError):
    """Activations unusable for training (empty, wrong width, NaN/inf); names the source."""


class ShardSource(Protocol):
    """Anything that serves activations shard by shard (the store, or tensors in memory)."""

    d_in: int
    hook_name: str | None
    model: str | None

    def shard_sizes(self) -> list[int]: ...

    def read(self, i: int) -> torch.Tensor: ...

    def describe(self, i: int) -> str: ...


class StoreSource:
    """:class:`workbench.store.ActivationStore` as a :class:`ShardSource`."""

    def __init__(self, path: str | Path):
        from workbench.store import ActivationStore, StoreError

        try:
            self.store = ActivationStore(path)
        except (StoreError, OSError, ValueError) as exc:
            raise DataError(f"cannot open activation store {path}: {exc}") from None
        self.path = Path(path)
        self.d_in = self.store.d_model
        self.hook_name = self.store.hook_name
        self.model = self.store.manifest.get("model")

    def shard_sizes(self) -> list[int]:
        return self.store.shard_sizes()

    def read(self, i: int) -> torch.Tensor:
        return self.store.shard(i)

    def describe(self, i: int) -> str:
        return f"{self.path} shard {i}"

    def check(self, i: int, x_ND: torch.Tensor) -> None:
        """NaN/inf refused with the store's own message: shard file, global row and study."""
        from workbench.store import StoreError

        try:
            self.store.check_finite(i, x_ND)
        except StoreError as exc:
            raise DataError(str(exc)) from None


class TensorSource:
    """In-memory activations cut into pseudo-shards (tests, benchmarks, notebooks)."""

    def __init__(
        self, acts_ND: torch.Tensor, shard_tokens: int = 65536, hook_name: str | None = None
    ):
        if acts_ND.ndim != 2:
            raise DataError(f"activations must be [n_tokens, d], got {tuple(acts_ND.shape)}")
        self.acts = acts_ND
        self.d_in = int(acts_ND.shape[1])
        self.hook_name = hook_name
        self.model = None
        self.shard_tokens = max(1, shard_tokens)

    def shard_sizes(self) -> list[int]:
        n = self.acts.shape[0]
        return [min(self.shard_tokens, n - s) for s in range(0, n, self.shard_tokens)]

    def read(self, i: int) -> torch.Tensor:
        return self.acts[i * self.shard_tokens : (i + 1) * self.shard_tokens]

    def describe(self, i: int) -> str:
        return f"in-memory shard {i}"


def check_finite(x_ND: torch.Tensor, where: str, first_row: int = 0) -> None:
    """Raise :class:`DataError` naming the first row with a NaN or inf."""
    bad = ~torch.isfinite(x_ND).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0]) + first_row
        raise DataError(f"{where}: non-finite activation (NaN or inf) at row {row}")


def check_shard(source: ShardSource, i: int, x_ND: torch.Tensor) -> None:
    """Refuse NaN/inf in shard ``i``: the source's own check if it has one (the store names
    file, row and study, as every stage reading a store does), else :func:`check_finite`."""
    own = getattr(source, "check", None)
    if own is not None:
        own(i, x_ND)
    else:
        check_finite(x_ND, source.describe(i))


def scan_source(source: ShardSource) -> None:
    """Read every shard once and refuse NaN/inf or a wrong width before training starts."""
    for i, size in enumerate(source.shard_sizes()):
        x = source.read(i)
        if tuple(x.shape) != (size, source.d_in):
            raise DataError(f"{source.describe(i)}: shape {tuple(x.shape)}, expected {size} rows")
        check_shard(source, i, x)


def _rng(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


class ShuffledBatches:
    """Deterministic shuffled batches of ``batch_size`` rows; ``batch(step)`` in any order."""

    def __init__(
        self, source: ShardSource, batch_size: int, buffer_tokens: int = 262144, seed: int = 0
    ):
        self.source = source
        self.sizes = source.shard_sizes()
        self.n_tokens = int(sum(self.sizes))
        if self.n_tokens == 0:
            raise DataError("the activation store is empty (0 tokens)")
        self.batch_size = batch_size
        self.buffer_tokens = max(1, buffer_tokens)
        self.seed = seed
        self._epoch_plan: tuple[int, list[list[int]], list[int]] | None = None
        self._window: tuple[tuple[int, int], torch.Tensor] | None = None

    def _plan(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Windows (lists of shard ids) of ``epoch`` and their start offsets in the epoch."""
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            order = torch.randperm(len(self.sizes), generator=_rng(self.seed, epoch)).tolist()
            windows: list[list[int]] = [[]]
            starts, filled, offset = [0], 0, 0
            for shard in order:
                if filled >= self.buffer_tokens:
                    windows.append([])
                    starts.append(offset)
                    filled = 0
                windows[-1].append(shard)
                filled += self.sizes[shard]
                offset += self.sizes[shard]
            self._epoch_plan = (epoch, windows, starts)
        return self._epoch_plan[1], self._epoch_plan[2]

    def _load(self, epoch: int, w: int, shards: Sequence[int]) -> torch.Tensor:
        if self._window is not None and self._window[0] == (epoch, w):
            return self._window[1]
        self._window = None  # free the previous window before loading the next
        parts = []
        for i in shards:
            x = self.source.read(i)
            if x.ndim != 2 or x.shape[1] != self.source.d_in:
                raise DataError(f"{self.source.describe(i)}: shape {tuple(x.shape)}")
            check_shard(self.source, i, x)
            parts.append(x)
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        perm = torch.randperm(rows.shape[0], generator=_rng(self.seed, epoch, w + 1))
        window = rows[perm].float()
        self._window = ((epoch, w), window)
        return window

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Rows ``[start, start + count)`` of the endless shuffled stream."""
        out = []
        while count > 0:
            epoch, offset = divmod(start, self.n_tokens)
            windows, starts = self._plan(epoch)
            w = bisect.bisect_right(starts, offset) - 1
            window = self._load(epoch, w, windows[w])
            lo = offset - starts[w]
            piece = window[lo : lo + count]
            out.append(piece)
            start += piece.shape[0]
            count -= piece.shape[0]
        return torch.cat(out) if len(out) > 1 else out[0]

    def batch(self, step: int) -> torch.Tensor:
        """Global batch ``step``: ``[batch_size, d_in]`` float32."""
        return self.rows(step * self.batch_size, self.batch_size)


@torch.no_grad()
def geometric_median(points_ND: torch.Tensor, iters: int = 100, tol: float = 1e-5):
    """Weiszfeld's algorithm; the initial ``b_dec`` (dictionary_learning, Bricken et al. 2023)."""
    guess = points_ND.mean(0)
    for _ in range(iters):
        prev = guess
        w = 1 / (points_ND - guess).norm(dim=1).clamp_min(1e-8)
        guess = (w[:, None] * points_ND).sum(0) / w.sum()
        if (guess - prev).norm() < tol:
            break
    return guess


def estimate_norm_factor(batches: ShuffledBatches, n_batches: int) -> float:
    """sqrt(E ||x||^2) over the first batches: inputs / factor have unit mean squared norm."""
    n = max(1, min(n_batches, math.ceil(batches.n_tokens / batches.batch_size)))
    total = sum(float(batches.batch(s).double().pow(2).sum(1).mean()) for s in range(n))
    factor = math.sqrt(total / n)
    if not factor > 0:
        raise DataError("all activations are zero: cannot normalise")
    return factor
