"""The activation store: the one module that owns its on-disk format.

A store is a directory::

    manifest.json                 model, layer, hook name, d_model, dtype, extra, complete
    log.jsonl                     append-only: one line per committed shard (its size and
                                  studies), one per skipped study
    shard_00000.safetensors       tensor "acts": [n_tokens, d_model]
    shard_00000.parquet           one row per token: row, study_id, subject_id, position,
                                  token_id, token, kind, section, patch_row, patch_col, ...

Writers append whole studies. A shard is written (tensor and table, each atomically), then
one line naming it and its studies is appended to ``log.jsonl``: that line is the commit. A
killed run loses at most the unflushed buffer (and a torn last line, dropped on reopen), and a
rerun skips exactly the studies the log lists. Nothing is rewritten per flush, so resuming
stays cheap at 10^5-10^6 studies (format 1 kept every study id in ``manifest.json`` and
rewrote it on every flush; such stores are still read, and a writer migrates them).
``row`` is global and dense (0..N-1 in shard order).

Under ``accelerate launch`` each process writes its own store in ``<dir>/rank<r>``;
:class:`ActivationStore` reads such a directory as one store. ``record --layers 2,4`` writes
one store per hook in ``<dir>/<hook name>/`` and lists them in ``<dir>/hooks.json``
(:func:`hook_stores`). :meth:`ActivationStore.read_rows` reads chosen rows of a shard without
reading the rest (data-parallel training reads only each process's share).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from workbench.io import atomic_path, write_json
from workbench.store_log import (
    LOG,
    StoreError,
    append_records,
    read_log,
    v1_records,
    view,
)

MANIFEST = "manifest.json"
HOOK_INDEX = "hooks.json"
FORMAT_VERSION = 2
KINDS = ("image", "prompt", "report", "generated", "latent")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_HEADER_KEYS = ("model", "layer", "hook_name", "d_model", "dtype")

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
    ) -> None:
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard_tokens = shard_tokens
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
        self._truncate_torn_tail(log.valid_bytes)
        self.shards = log.shards
        self.n_tokens = sum(s["n_tokens"] for s in log.shards)
        self.n_studies = len(log.studies)
        self.skipped = log.skipped
        self._done = set(log.studies) | {int(s) for s in log.skipped}
        self._drop_orphan_shards()
        self._acts: list[torch.Tensor] = []
        self._cols: list[dict[str, list]] = []
        self._pending: list[int] = []
        self._buffered = 0

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

    def _truncate_torn_tail(self, valid_bytes: int) -> None:
        log = self.path / LOG
        if log.exists() and log.stat().st_size > valid_bytes:
            with open(log, "r+b") as f:
                f.truncate(valid_bytes)
        elif not log.exists():
            log.touch()

    def _drop_orphan_shards(self) -> None:
        """Remove shard files written by a killed run after its last commit."""
        known = {s["stem"] for s in self.shards}
        for f in self.path.glob("shard_*"):
            if f.name.split(".")[0] not in known:
                f.unlink()

    def add(self, study_id: int, acts_ND: torch.Tensor, meta: list[dict] | dict[str, list]) -> None:
        """Buffer one whole study's activations and per-token metadata."""
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
        self._buffered += acts_ND.shape[0]
        if self._buffered >= self.shard_tokens:
            self.flush()

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
        append_records(self.path / LOG, [{"shard": stem, "n_tokens": n, "studies": self._pending}])
        self.shards.append({"stem": stem, "n_tokens": n})
        self.n_tokens += n
        self.n_studies += len(self._pending)
        self._acts, self._cols, self._pending, self._buffered = [], [], [], 0

    def close(self) -> Path:
        """Flush and mark the store complete (the manifest gets the final counts)."""
        self.flush()
        self.manifest.update(
            complete=True,
            n_tokens=self.n_tokens,
            n_shards=len(self.shards),
            n_studies=self.n_studies,
            n_skipped=len(self.skipped),
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


def tensor_region(path: Path) -> tuple[int, torch.dtype, tuple[int, ...]]:
    """Byte offset, dtype and shape of tensor ``acts`` in a safetensors file.

    The format is an 8-byte little-endian header length, a JSON header, then the raw bytes;
    reading the header lets rows be read without loading the file.
    """
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        info = header["acts"]
        return (
            8 + n + int(info["data_offsets"][0]),
            _SAFETENSORS_DTYPES[info["dtype"]],
            tuple(info["shape"]),
        )
    except (OSError, KeyError, ValueError, struct.error) as exc:
        raise StoreError(f"{path}: cannot read the safetensors header: {exc}") from None


def write_hook_index(path: str | Path, hooks: dict[str, str]) -> Path:
    """Record a multi-hook store: ``{hook name: sub-directory}`` in ``<path>/hooks.json``."""
    return write_json(Path(path) / HOOK_INDEX, {"hooks": hooks})


def hook_stores(path: str | Path) -> dict[str, Path] | None:
    """``{hook name: store directory}`` of a multi-hook store, or None for a plain store."""
    index = Path(path) / HOOK_INDEX
    if not index.is_file():
        return None
    try:
        hooks = json.loads(index.read_text())["hooks"]
    except (ValueError, KeyError) as exc:
        raise StoreError(f"{index}: malformed hook index: {exc}") from None
    return {name: Path(path) / sub for name, sub in hooks.items()}


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
        self.manifest = _merge_manifests(manifests, self.path)
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
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise StoreError(f"{f}: row indices outside 0..{n - 1}")
        row_bytes = self.d_model * torch.empty((), dtype=dtype).element_size()
        if rows.size == 0 or n == 0:
            return torch.empty(0, self.d_model, dtype=dtype)
        region = np.memmap(f, dtype=np.uint8, mode="r", offset=offset, shape=(n, row_bytes))
        picked = np.ascontiguousarray(region[rows])
        del region
        self.bytes_read += picked.nbytes
        return torch.from_numpy(picked).view(dtype).view(len(rows), self.d_model)

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


def _merge_manifests(manifests: list[dict], path: Path) -> dict[str, Any]:
    """One manifest view over per-rank parts; refuses parts recorded with different settings."""
    first = manifests[0]
    for key in _HEADER_KEYS:
        values = {json.dumps(m.get(key)) for m in manifests}
        if len(values) > 1:
            raise StoreError(f"{path}: parts disagree on '{key}': {sorted(values)}")
    merged = dict(first)
    merged["n_tokens"] = sum(m["n_tokens"] for m in manifests)
    merged["shards"] = [s for m in manifests for s in m["shards"]]
    merged["studies_complete"] = [s for m in manifests for s in m["studies_complete"]]
    merged["skipped"] = {k: v for m in manifests for k, v in m["skipped"].items()}
    merged["complete"] = all(m.get("complete") for m in manifests)
    merged["n_parts"] = len(manifests)
    return merged
