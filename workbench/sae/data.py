"""Training batches from an activation store: shuffled across shards with a bounded buffer.

The order is a pure function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would, without saving any buffer state:

* epoch ``e`` visits the shards in a permutation drawn from ``(seed, e)``;
* consecutive shards of that permutation are grouped into *windows* of at least
  ``buffer_tokens`` rows (one shard at least); a window is loaded whole, its rows permuted with
  ``(seed, e, w)`` and served in that order;
* the stream is the concatenation of the windows; batch ``s`` is rows ``[s B, (s + 1) B)``.

Memory is one window (about ``buffer_tokens`` rows plus one shard), whatever the store's size.

Data-parallel training gives process r of W the rows ``[r B/W, (r+1) B/W)`` of every global
batch. With ``gather=True`` (:meth:`ShuffledBatches.local`) a process reads only those rows
of each window (``read_rows`` on the source) instead of whole shards: the same values in the
same order as slicing the full batch, for about 1/W of the bytes.
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

    bytes_read: int

    def shard_sizes(self) -> list[int]: ...

    def read(self, i: int) -> torch.Tensor: ...

    def read_rows(self, i: int, rows: np.ndarray) -> torch.Tensor: ...

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

    @property
    def bytes_read(self) -> int:
        return self.store.bytes_read

    def read(self, i: int) -> torch.Tensor:
        return self.store.shard(i)

    def read_rows(self, i: int, rows: np.ndarray) -> torch.Tensor:
        return self.store.read_rows(i, rows)

    def describe(self, i: int) -> str:
        return f"{self.path} shard {i}"

    def check(self, i: int, x_ND: torch.Tensor, rows: np.ndarray | None = None) -> None:
        """NaN/inf refused with the store's own message: shard file, global row and study
        (``rows``: the shard rows of ``x_ND``'s rows, for a gather)."""
        from workbench.store import StoreError

        try:
            self.store.check_finite(i, x_ND, rows)
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
        self.bytes_read = 0

    def shard_sizes(self) -> list[int]:
        n = self.acts.shape[0]
        return [min(self.shard_tokens, n - s) for s in range(0, n, self.shard_tokens)]

    def read(self, i: int) -> torch.Tensor:
        out = self.acts[i * self.shard_tokens : (i + 1) * self.shard_tokens]
        self.bytes_read += out.numel() * out.element_size()
        return out

    def read_rows(self, i: int, rows: np.ndarray) -> torch.Tensor:
        out = self.acts[i * self.shard_tokens : (i + 1) * self.shard_tokens][torch.as_tensor(rows)]
        self.bytes_read += out.numel() * out.element_size()
        return out

    def describe(self, i: int) -> str:
        return f"in-memory shard {i}"


def check_finite(
    x_ND: torch.Tensor, where: str, first_row: int = 0, rows: np.ndarray | None = None
) -> None:
    """Raise :class:`DataError` naming the first row with a NaN or inf (``rows``: the shard
    row of each of ``x_ND``'s rows when they are not contiguous)."""
    bad = ~torch.isfinite(x_ND).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        row = int(rows[first]) if rows is not None else first + first_row
        raise DataError(f"{where}: non-finite activation (NaN or inf) at row {row}")


def check_shard(
    source: ShardSource, i: int, x_ND: torch.Tensor, rows: np.ndarray | None = None
) -> None:
    """Refuse NaN/inf in (rows ``rows`` of) shard ``i``: the source's own check if it has one
    (the store names file, row and study, as every stage reading a store does), else
    :func:`check_finite`."""
    own = getattr(source, "check", None)
    if own is not None:
        own(i, x_ND, rows)
    else:
        check_finite(x_ND, source.describe(i), rows=rows)


def scan_source(source: ShardSource, rank: int = 0, world: int = 1) -> None:
    """Read every shard once and refuse NaN/inf or a wrong width before training starts.

    With ``world`` processes, process ``rank`` scans every ``world``-th shard from ``rank``.
    """
    for i, size in enumerate(source.shard_sizes()):
        if i % world != rank:
            continue
        x = source.read(i)
        if tuple(x.shape) != (size, source.d_in):
            raise DataError(f"{source.describe(i)}: shape {tuple(x.shape)}, expected {size} rows")
        check_shard(source, i, x)


def _rng(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


class ShuffledBatches:
    """Deterministic shuffled batches of ``batch_size`` rows; ``batch(step)`` in any order."""

    def __init__(
        self,
        source: ShardSource,
        batch_size: int,
        buffer_tokens: int = 262144,
        seed: int = 0,
        gather: bool = False,
    ):
        self.source = source
        self.sizes = source.shard_sizes()
        self.n_tokens = int(sum(self.sizes))
        if self.n_tokens == 0:
            raise DataError("the activation store is empty (0 tokens)")
        self.batch_size = batch_size
        self.buffer_tokens = max(1, buffer_tokens)
        self.seed = seed
        self.gather = gather
        self._epoch_plan: tuple[int, list[list[int]], list[int]] | None = None
        self._window: tuple[tuple[int, int], torch.Tensor] | None = None
        self._local: tuple[tuple[int, ...], torch.Tensor, np.ndarray] | None = None
        self._gathered: tuple[int, torch.Tensor] | None = None

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
        """Global batch ``step``: ``[batch_size, d_in]`` float32.

        With ``gather`` only this batch's rows are read (no window is loaded): used for the
        few global batches every process needs (normalisation, initialisation).
        """
        if not self.gather:
            return self.rows(step * self.batch_size, self.batch_size)
        if self._gathered is None or self._gathered[0] != step:
            self._gathered = (step, self._walk(step * self.batch_size, self.batch_size, None))
        return self._gathered[1]

    def local(self, step: int, rank: int, world: int) -> torch.Tensor:
        """Process ``rank``'s slice of global batch ``step``: equal to
        ``batch(step)[rank * B / world : (rank + 1) * B / world]``, bit for bit. With
        ``gather`` a window's rows are read only where this process will use them."""
        share = self.batch_size // world
        if not self.gather or world == 1:
            return self.batch(step)[rank * share : (rank + 1) * share]
        return self._walk(step * self.batch_size + rank * share, share, (rank, world))

    def _walk(self, start: int, count: int, owner: tuple[int, int] | None) -> torch.Tensor:
        """Stream rows ``[start, start + count)`` read by row gathers, window by window."""
        out = []
        while count > 0:
            epoch, offset = divmod(start, self.n_tokens)
            windows, starts = self._plan(epoch)
            w = bisect.bisect_right(starts, offset) - 1
            length = sum(self.sizes[i] for i in windows[w])
            lo = offset - starts[w]
            take = min(count, length - lo)
            if owner is None:
                out.append(self._read_positions(epoch, w, np.arange(lo, lo + take)))
            else:
                rows, before = self._owned_rows(epoch, w, length, *owner)
                out.append(rows[before[lo] : before[lo] + take])
            start += take
            count -= take
        return torch.cat(out) if len(out) > 1 else out[0]

    def _owned_rows(self, epoch: int, w: int, length: int, rank: int, world: int):
        """The rows of window ``w`` that process ``rank`` uses (in stream order), and for each
        window position the number of owned positions before it."""
        key = (epoch, w, rank, world)
        if self._local is None or self._local[0] != key:
            self._local = None  # free the previous window first
            _, starts = self._plan(epoch)
            stream = epoch * self.n_tokens + starts[w] + np.arange(length, dtype=np.int64)
            mine = (stream % self.batch_size) // (self.batch_size // world) == rank
            before = np.cumsum(mine) - mine
            self._local = (key, self._read_positions(epoch, w, np.flatnonzero(mine)), before)
        return self._local[1], self._local[2]

    def _read_positions(self, epoch: int, w: int, positions: np.ndarray) -> torch.Tensor:
        """float32 rows at ``positions`` of window ``w``'s shuffled order, reading only them."""
        windows, _ = self._plan(epoch)
        shards = windows[w]
        bounds = np.cumsum([0] + [self.sizes[i] for i in shards])
        perm = torch.randperm(int(bounds[-1]), generator=_rng(self.seed, epoch, w + 1)).numpy()
        wanted = perm[positions]
        which = np.searchsorted(bounds, wanted, side="right") - 1
        out = torch.empty(len(positions), self.source.d_in)
        for j, shard in enumerate(shards):
            slots = np.flatnonzero(which == j)
            if not slots.size:
                continue
            slots = slots[np.argsort(wanted[slots])]  # read each shard in row order
            rows = wanted[slots] - bounds[j]
            x = self.source.read_rows(shard, rows)
            if x.ndim != 2 or x.shape[1] != self.source.d_in:
                raise DataError(f"{self.source.describe(shard)}: shape {tuple(x.shape)}")
            check_shard(self.source, shard, x, rows)
            out[torch.from_numpy(slots)] = x.float()
        return out


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
