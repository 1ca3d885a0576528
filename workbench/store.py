"""The activation store: the one module that owns its on-disk format.

A store is a directory::

    manifest.json                 model, layer, hook name, d_model, dtype, extra, complete
    log.jsonl                     append-only: one line per committed shard (size, studies),
                                  one per skipped study (workbench.store_log)
    shard_00000.safetensors       tensor "acts": [n_tokens, d_model]
    shard_00000.parquet           one row per token: row, study_id, subject_id, position,
                                  token_id, token, kind, section, patch_row, patch_col, ...

Writers append whole studies. A shard is written (tensor and table, each atomically), then a
log line naming it and its studies is appended: that line is the commit. A killed run loses
at most the unflushed buffer (a torn last line is dropped on reopen) and a rerun skips exactly
the logged studies; nothing is rewritten per flush, so resuming stays cheap at 10^6 studies
(format 1 rewrote every study id in ``manifest.json`` per flush; it is read and migrated).
The buffer is flushed at ``shard_tokens`` tokens or ``flush_seconds`` after its first study,
so the work a crash can lose is bounded in tokens and in time. ``row`` is global and dense.

Under ``accelerate launch`` each process writes ``<dir>/rank<r>``; :class:`ActivationStore`
reads the parts as one store. ``record --layers`` writes one store per hook in
``<dir>/<hook name>/``, listed in ``hooks.json`` (:func:`hook_stores`).
:meth:`ActivationStore.read_rows` reads chosen rows of a shard without the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from workbench.io import atomic_path, write_json
from workbench.store_log import (
    HOOK_INDEX,
    LOG,
    StoreError,
    append_records,
    cut_torn_tail,
    hook_stores,
    merge_manifests,
    read_log,
    tensor_region,
    v1_records,
    view,
)
from workbench.store_log import write_hook_index as write_hook_index  # re-exported

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
KINDS = ("image", "prompt", "report", "generated", "latent")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Token metadata schema: columns every shard has, in this order (extra columns may follow).
META_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("study_id", pa.int64()),
        ("subject_id", pa.int64()),
        ("position", pa.int32()),
        ("token_id", pa.int64()),
        ("token", pa.string()),
        ("kind", pa.string()),
        ("section", pa.string()),
        ("patch_row", pa.int32()),
        ("patch_col", pa.int32()),
    ]
)


def _shard_stem(i: int) -> str:
    return f"shard_{i:05d}"


def _columns_from_meta(meta: list[dict] | dict[str, list], n: int, path: Path) -> dict[str, list]:
    """Normalise per-token metadata (list of dicts or dict of columns) to columns of length n."""
    if isinstance(meta, list):
        keys = list(dict.fromkeys(k for m in meta for k in m))
        cols = {k: [m.get(k) for m in meta] for k in keys}
    else:
        cols = {k: list(v) for k, v in meta.items()}
    for k, v in cols.items():
        if len(v) != n:
            raise StoreError(f"{path}: metadata column '{k}' has {len(v)} rows for {n} tokens")
    kinds = set(cols.get("kind", []))
    if not kinds <= set(KINDS):
        raise StoreError(f"{path}: unknown token kind(s) {sorted(kinds - set(KINDS))}")
    return cols


class StoreWriter:
    """Append whole studies to a store; resumes from its log if the store exists."""

    def __init__(
        self,
        path: str | Path,
        *,
        model: str,
        layer: int,
        hook_name: str,
        d_model: int,
        dtype: str = "float32",
        shard_tokens: int = 65536,
        extra: dict[str, Any] | None = None,
        flush_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard_tokens = shard_tokens
        self.flush_seconds = flush_seconds  # a crash loses at most this long of recording
        self._clock = clock
        self.torch_dtype = DTYPES[dtype]
        header = {
            "model": model,
            "layer": layer,
            "hook_name": hook_name,
            "d_model": d_model,
            "dtype": dtype,
        }
        self.manifest = self._open_manifest(header, extra or {})
        log = read_log(self.path / LOG)
        cut_torn_tail(self.path / LOG, log.valid_bytes)
        self.shards = log.shards
        self.n_tokens = sum(s["n_tokens"] for s in log.shards)
        self.n_studies = len(log.studies)
        self.skipped = log.skipped
        self.dropped_images = log.dropped
        self._done = set(log.studies) | {int(s) for s in log.skipped}
        self._drop_orphan_shards()
        self._acts: list[torch.Tensor] = []
        self._cols: list[dict[str, list]] = []
        self._pending: list[int] = []
        self._dropped: dict[str, list[str]] = {}
        self._buffered = 0
        self._buffer_since: float | None = None

    @property
    def completed(self) -> set[int]:
        """Study ids already stored, buffered or skipped: a resumed run must not record them."""
        return self._done

    def _open_manifest(self, header: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """The existing manifest when its settings match ``header`` (resume), else a new one.

        Opening marks the store incomplete until :meth:`close`; a format-1 store is migrated
        (its study list moves into the log).
        """
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            clash = {k: (old.get(k), v) for k, v in header.items()}
            clash = {k: pair for k, pair in clash.items() if pair[0] != pair[1]}
            if clash:
                raise StoreError(f"{manifest_path}: cannot resume, settings differ: {clash}")
            if old.get("format_version", 1) < 2:
                with atomic_path(self.path / LOG) as tmp:
                    tmp.write_text("")
                append_records(self.path / LOG, v1_records(old))
            extra = old.get("extra", extra)
        manifest = {"format_version": FORMAT_VERSION, **header, "extra": extra, "complete": False}
        write_json(manifest_path, manifest)
        return manifest

    def _drop_orphan_shards(self) -> None:
        """Remove shard files written by a killed run after its last commit."""
        known = {s["stem"] for s in self.shards}
        for f in self.path.glob("shard_*"):
            if f.name.split(".")[0] not in known:
                f.unlink()

    def add(
        self,
        study_id: int,
        acts_ND: torch.Tensor,
        meta: list[dict] | dict[str, list],
        dropped: list[str] | tuple[str, ...] = (),
    ) -> None:
        """Buffer one whole study's activations and per-token metadata.

        ``dropped`` names input files the study was recorded without (an unreadable lateral
        or prior image); they go into the manifest's ``dropped_images`` with the study.
        """
        if acts_ND.ndim != 2 or acts_ND.shape[1] != self.manifest["d_model"]:
            raise StoreError(
                f"study {study_id}: activations of shape {tuple(acts_ND.shape)}, "
                f"expected [n, {self.manifest['d_model']}]"
            )
        if not torch.isfinite(acts_ND).all():
            raise StoreError(f"study {study_id}: activations contain NaN or inf")
        cols = _columns_from_meta(meta, acts_ND.shape[0], self.path)
        cols["study_id"] = [int(study_id)] * acts_ND.shape[0]
        self._acts.append(acts_ND.detach().to("cpu", self.torch_dtype).contiguous())
        self._cols.append(cols)
        self._pending.append(int(study_id))
        self._done.add(int(study_id))
        if dropped:
            self._dropped[str(int(study_id))] = list(dropped)
        self._buffered += acts_ND.shape[0]
        if self._buffer_since is None:
            self._buffer_since = self._clock()
        if self._buffered >= self.shard_tokens or self._buffer_age() >= self.flush_seconds:
            self.flush()

    def _buffer_age(self) -> float:
        """Seconds since the oldest unflushed study was buffered (0 when the buffer is empty)."""
        return 0.0 if self._buffer_since is None else self._clock() - self._buffer_since

    def skip(self, study_id: int, reason: str) -> None:
        """Record that a study was not stored, and why (one appended log line)."""
        append_records(self.path / LOG, [{"skip": int(study_id), "reason": reason}])
        self.skipped[str(int(study_id))] = reason
        self._done.add(int(study_id))

    def flush(self) -> None:
        """Write buffered studies as one shard, then commit it with one appended log line."""
        if not self._acts:
            return
        acts = torch.cat(self._acts)
        table = _to_table(self._cols, self.n_tokens)
        stem = _shard_stem(len(self.shards))
        for suffix, write in (
            (".safetensors", lambda p: save_file({"acts": acts}, str(p))),
            (".parquet", lambda p: pq.write_table(table, p)),
        ):
            with atomic_path(self.path / f"{stem}{suffix}") as tmp:
                write(tmp)
        n = int(acts.shape[0])
        record = {"shard": stem, "n_tokens": n, "studies": self._pending}
        if self._dropped:
            record["dropped"] = self._dropped
        append_records(self.path / LOG, [record])
        self.shards.append({"stem": stem, "n_tokens": n})
        self.dropped_images.update(self._dropped)
        self.n_tokens += n
        self.n_studies += len(self._pending)
        self._acts, self._cols, self._pending, self._buffered = [], [], [], 0
        self._dropped, self._buffer_since = {}, None

    def close(self) -> Path:
        """Flush and mark the store complete (the manifest gets the final counts)."""
        self.flush()
        self.manifest.update(
            complete=True,
            n_tokens=self.n_tokens,
            n_shards=len(self.shards),
            n_studies=self.n_studies,
            n_skipped=len(self.skipped),
            n_dropped_images=len(self.dropped_images),
        )
        write_json(self.path / MANIFEST, self.manifest)
        return self.path


def _to_table(cols_list: list[dict[str, list]], start: int) -> pa.Table:
    """Concatenate per-study metadata columns into one table in META_SCHEMA order."""
    keys = list(dict.fromkeys(k for c in cols_list for k in c))
    n = sum(len(c["study_id"]) for c in cols_list)
    merged = {
        k: [v for c in cols_list for v in c.get(k, [None] * len(c["study_id"]))] for k in keys
    }
    merged["row"] = list(range(start, start + n))
    arrays, fields = [], []
    for field in META_SCHEMA:
        values = merged.pop(field.name, [None] * n)
        arrays.append(pa.array(values, type=field.type))
        fields.append(field)
    for k, values in merged.items():
        arr = pa.array(values)
        arrays.append(arr)
        fields.append(pa.field(k, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


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
