"""Writing an activation store: whole studies appended, a shard committed by a log line.

The format itself (the directory layout, the manifest, the commit log) is described in
:mod:`workbench.store`, which re-exports everything here; this module holds the names and
columns a shard has (:data:`META_SCHEMA`, :data:`KINDS`) because the writer makes them and
:class:`workbench.store.ActivationStore` only reads them back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from workbench.io import atomic_path, write_json
from workbench.store_log import (
    LOG,
    StoreError,
    append_records,
    cut_torn_tail,
    read_log,
    v1_records,
)

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
