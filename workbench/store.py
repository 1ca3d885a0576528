"""The activation store: the one module that owns its on-disk format.

A store is a directory::

    manifest.json                 model, layer, hook name, d_model, dtype, extra, complete
    log.jsonl                     append-only: one line per committed shard (size, studies),
                                  one per skipped study (workbench.store_log)
    shard_00000.safetensors       tensor "acts": [n_tokens, d_model]
    shard_00000.parquet           one row per token: row, study_id, subject_id, position,
                                  token_id, token, kind, section, patch_row, patch_col, ...

Writers (:class:`StoreWriter`, in :mod:`workbench.store_writer`, re-exported here) append
whole studies. A shard is written (tensor and table, each atomically), then a
log line naming it and its studies is appended: that line is the commit. A killed run loses
at most the unflushed buffer (a torn last line is dropped on reopen) and a rerun skips exactly
the logged studies; nothing is rewritten per flush, so resuming stays cheap at 10^6 studies
(format 1 rewrote every study id in ``manifest.json`` per flush; it is read and migrated).
The buffer is flushed at ``shard_tokens`` tokens or ``flush_seconds`` after its first study,
so the work a crash can lose is bounded in tokens and in time. ``row`` is global and dense.

Under ``accelerate launch`` each process writes ``<dir>/rank<r>``; :class:`ActivationStore`
reads the parts as one store. ``record --layers`` writes one store per hook in
``<dir>/<hook name>/``, listed in ``hooks.json`` (:func:`hook_stores`).
:meth:`ActivationStore.read_rows` reads chosen rows of a shard without the rest;
:func:`iter_study_sums` sums chosen rows per study (and slot) shard by shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from workbench.store_log import (
    HOOK_INDEX,
    StoreError,
    hook_stores,
    merge_manifests,
    tensor_region,
    view,
)
from workbench.store_log import write_hook_index as write_hook_index  # re-exported
from workbench.store_writer import (  # noqa: F401 (public through store: the format's names)
    DTYPES,
    FORMAT_VERSION,
    KINDS,
    MANIFEST,
    META_SCHEMA,
    StoreWriter,
)


class ActivationStore:
    """Read a store (or a directory of per-rank stores ``rank<r>/``) as one sequence of rows.

    ``bytes_read`` counts the activation bytes this object has read (whole shards and
    :meth:`read_rows`), so a caller can check that it reads only what it needs.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if (self.path / MANIFEST).exists():
            parts = [self.path]
        else:
            parts = sorted(self.path.glob("rank*/"), key=lambda p: int(p.name[4:] or 0))
            parts = [p for p in parts if (p / MANIFEST).exists()]
        if not parts:
            hooks = hook_stores(self.path)
            if hooks:
                raise StoreError(
                    f"{self.path} holds one store per hook ({HOOK_INDEX}); open one of "
                    f"{', '.join(str(p) for p in hooks.values())}"
                )
            raise StoreError(f"{self.path}: no {MANIFEST} here (not an activation store)")
        self.parts = parts
        manifests = [view(json.loads((p / MANIFEST).read_text()), p) for p in parts]
        self.manifest = merge_manifests(manifests, self.path)
        self._shards = [(p, s) for p, m in zip(parts, manifests) for s in m["shards"]]
        self._offsets = np.cumsum([0] + [s["n_tokens"] for _, s in self._shards])
        self.bytes_read = 0

    d_model = property(lambda self: int(self.manifest["d_model"]))
    hook_name = property(lambda self: str(self.manifest["hook_name"]))
    layer = property(lambda self: int(self.manifest["layer"]))
    n_tokens = property(lambda self: int(self._offsets[-1]))
    num_shards = property(lambda self: len(self._shards))

    def shard_sizes(self) -> list[int]:
        return [s["n_tokens"] for _, s in self._shards]

    def _file(self, i: int) -> Path:
        part, s = self._shards[i]
        return part / f"{s['stem']}.safetensors"

    def shard(self, i: int) -> torch.Tensor:
        """Activations of shard ``i`` as stored: [n_tokens, d_model]."""
        f = self._file(i)
        try:
            acts = load_file(str(f))["acts"]
        except (OSError, KeyError, RuntimeError) as exc:
            raise StoreError(f"{f}: cannot read shard: {exc}") from None
        if acts.shape != (self._shards[i][1]["n_tokens"], self.d_model):
            raise StoreError(f"{f}: shape {tuple(acts.shape)} disagrees with the manifest")
        self.bytes_read += acts.numel() * acts.element_size()
        return acts

    def read_rows(self, i: int, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` (indices within shard ``i``, any order) as stored: [len(rows), d_model].

        Only those rows' bytes are read (a memory map of the tensor's region, gathered in C),
        so a process that needs part of a shard does not pay for all of it.
        """
        f = self._file(i)
        offset, dtype, shape = tensor_region(f)
        n = self._shards[i][1]["n_tokens"]
        if shape != (n, self.d_model):
            raise StoreError(f"{f}: shape {shape} disagrees with the manifest")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return torch.empty(0, self.d_model, dtype=dtype)
        if rows.min() < 0 or rows.max() >= n:
            raise StoreError(f"{f}: row indices outside 0..{n - 1}")
        row_bytes = self.d_model * torch.empty((), dtype=dtype).element_size()
        region = np.memmap(f, dtype=np.uint8, mode="r", offset=offset, shape=(n, row_bytes))
        picked = np.ascontiguousarray(region[rows])  # the gather reads only these rows' pages
        self.bytes_read += picked.nbytes
        return torch.from_numpy(picked).view(dtype).view(len(rows), self.d_model)

    def check_finite(self, i: int, acts_ND: torch.Tensor, rows: np.ndarray | None = None) -> None:
        """Raise :class:`StoreError` naming the shard file, row and study of the first NaN/inf.

        Every stage that reads a store calls this on each shard it loads, so a poisoned store
        fails with the same message wherever it is read (record refuses to write one).
        ``rows``: the shard rows of ``acts_ND``'s rows when they came from :meth:`read_rows`.
        """
        bad = ~torch.isfinite(acts_ND).all(dim=1)
        if not bool(bad.any()):
            return
        first = int(bad.nonzero()[0, 0])
        local = int(rows[first]) if rows is not None else first
        part, s = self._shards[i]
        studies = self.metadata(i).column("study_id")
        study = studies[local].as_py() if local < len(studies) else None
        raise StoreError(
            f"{part / (s['stem'] + '.safetensors')}: non-finite activation (NaN or inf) in "
            f"shard {i} at row {int(self._offsets[i]) + local} (row {local} of the shard, "
            f"study {study}); {int(bad.sum())} row(s) read from this shard are affected. Re-record "
            "the store (record refuses NaN/inf, so the file was changed after it was written)"
        )

    def metadata(self, i: int) -> pa.Table:
        """Token metadata of shard ``i``, with ``row`` made global across per-rank parts."""
        part, s = self._shards[i]
        table = pq.read_table(part / f"{s['stem']}.parquet")
        if len(self.parts) > 1:
            rows = np.arange(self._offsets[i], self._offsets[i + 1], dtype=np.int64)
            table = table.set_column(0, "row", pa.array(rows))
        return table

    def metadata_all(self, columns: list[str] | None = None) -> pa.Table:
        """All token metadata (small: no activations), concatenated in row order."""
        tables = [self.metadata(i) for i in range(self.num_shards)]
        if not tables:
            return META_SCHEMA.empty_table()
        table = pa.concat_tables(tables, promote_options="default")
        return table.select(columns) if columns else table

    def iter_shards(self) -> Iterator[tuple[torch.Tensor, pa.Table]]:
        for i in range(self.num_shards):
            yield self.shard(i), self.metadata(i)


class StudySums(NamedTuple):
    """One shard's kept rows summed per study and slot (:func:`iter_study_sums`)."""

    study_ids: np.ndarray
    """The distinct studies of the shard's kept rows, ascending ``[U]``."""
    sums: torch.Tensor
    """float32 ``[U, n_slots, W]``: the sum of each study's kept rows in each slot."""
    counts: np.ndarray
    """int64 ``[U, n_slots]``: the rows each sum adds (0 where a study has none in a slot)."""


RowSelect = Callable[[pa.Table], tuple[np.ndarray, np.ndarray | None]]
"""Shard metadata -> ``(keep_N, slot_M)``: the bool mask of the rows to sum and, for the M
kept rows in order, each one's slot in ``0..n_slots-1`` (None: every kept row in slot 0)."""


def iter_study_sums(
    store: ActivationStore,
    select: RowSelect,
    n_slots: int = 1,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[StudySums]:
    """Per shard, in order: the rows ``select`` keeps, summed per study and slot.

    A slot subdivides a study (a (section, patch) of its image, say); with ``n_slots=1``
    each study gets one sum. ``transform`` maps the kept rows ``[M, D]`` (as float32) to what
    is summed ``[M, W]`` (default: the rows themselves). A shard with no kept row yields
    nothing. Blocks are per shard: a caller wanting totals adds up a study's blocks (a writer
    stores whole studies, so a study is in one shard unless the store was written otherwise).
    """
    for acts_ND, meta in store.iter_shards():
        keep_N, slot_M = select(meta)
        keep_N = np.asarray(keep_N, dtype=bool)
        if not keep_N.any():
            continue
        sid_M = np.asarray(meta.column("study_id").to_numpy(zero_copy_only=False))[keep_N]
        x_MW = acts_ND[torch.from_numpy(keep_N)].float()
        x_MW = transform(x_MW) if transform is not None else x_MW
        study_U, inverse_M = np.unique(sid_M, return_inverse=True)
        group_M = inverse_M.reshape(-1).astype(np.int64) * n_slots
        if slot_M is not None:
            slot_M = np.asarray(slot_M, dtype=np.int64)
            if slot_M.shape != group_M.shape:
                raise StoreError(f"{store.path}: {slot_M.shape} slots for {len(group_M)} kept rows")
            if slot_M.min() < 0 or slot_M.max() >= n_slots:
                raise StoreError(
                    f"{store.path}: slots {slot_M.min()}..{slot_M.max()} outside 0..{n_slots - 1}"
                )
            group_M += slot_M
        n_groups = len(study_U) * n_slots
        sums_GW = torch.zeros(n_groups, x_MW.shape[1]).index_add_(
            0, torch.from_numpy(group_M), x_MW
        )
        counts_G = np.bincount(group_M, minlength=n_groups)
        yield StudySums(
            study_U,
            sums_GW.view(len(study_U), n_slots, -1),
            counts_G.reshape(len(study_U), n_slots),
        )
