"""The activation store: the one module that owns its on-disk format.

A store is a directory::

    manifest.json                 model, layer, hook name, d_model, dtype, counts, studies done
    shard_00000.safetensors       tensor "acts": [n_tokens, d_model]
    shard_00000.parquet           one row per token: row, study_id, subject_id, position,
                                  token_id, token, kind, section, patch_row, patch_col, ...

Writers append whole studies; a shard is written (tensor and table, each atomically) before
the manifest records its studies as complete, so a killed run loses at most the unflushed
buffer and a rerun skips exactly the studies the manifest lists. The buffer is flushed when it
holds ``shard_tokens`` tokens or ``flush_seconds`` after its first study, whichever comes
first, so the work a crash can lose is bounded in tokens and in time. ``row`` is global and dense
(0..N-1 in shard order). Under ``accelerate launch`` each process writes its own store in
``<dir>/rank<r>``; :class:`ActivationStore` reads such a directory as one store.
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from workbench.io import atomic_path, write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
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


class StoreError(ValueError):
    """An activation store is missing, malformed, or inconsistent with what was asked."""


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
    """Append whole studies to a store; resumes from the manifest if the store exists."""

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
        self._acts: list[torch.Tensor] = []
        self._cols: list[dict[str, list]] = []
        self._pending: list[int] = []
        self._dropped: dict[str, list[str]] = {}
        self._buffered = 0
        self._buffer_since: float | None = None

    @property
    def completed(self) -> set[int]:
        """Study ids already stored or skipped: a resumed run must not record them again."""
        done = set(self.manifest["studies_complete"]) | set(self._pending)
        return done | {int(s) for s in self.manifest["skipped"]}

    def _open_manifest(self, header: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """The existing manifest when its settings match ``header`` (resume), else a new one."""
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            manifest = {
                "format_version": FORMAT_VERSION,
                **header,
                "n_tokens": 0,
                "shards": [],
                "studies_complete": [],
                "skipped": {},
                "dropped_images": {},
                "extra": extra,
                "complete": False,
            }
            write_json(manifest_path, manifest)
            return manifest
        manifest = json.loads(manifest_path.read_text())
        clash = {k: (manifest.get(k), v) for k, v in header.items()}
        clash = {k: pair for k, pair in clash.items() if pair[0] != pair[1]}
        if clash:
            raise StoreError(f"{manifest_path}: cannot resume, settings differ: {clash}")
        self.manifest = manifest
        self._drop_orphan_shards()
        return manifest

    def _drop_orphan_shards(self) -> None:
        """Remove shard files written by a killed run after its last manifest update."""
        known = {s["stem"] for s in self.manifest["shards"]}
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
        """Record that a study was not stored, and why (kept in the manifest)."""
        self.manifest["skipped"][str(int(study_id))] = reason
        write_json(self.path / MANIFEST, self.manifest)

    def flush(self) -> None:
        """Write buffered studies as one shard, then mark them complete in the manifest."""
        if not self._acts:
            return
        acts = torch.cat(self._acts)
        start = self.manifest["n_tokens"]
        table = _to_table(self._cols, start)
        stem = _shard_stem(len(self.manifest["shards"]))
        for suffix, write in (
            (".safetensors", lambda p: save_file({"acts": acts}, str(p))),
            (".parquet", lambda p: pq.write_table(table, p)),
        ):
            with atomic_path(self.path / f"{stem}{suffix}") as tmp:
                write(tmp)
        self.manifest["shards"].append({"stem": stem, "n_tokens": int(acts.shape[0])})
        self.manifest["n_tokens"] = start + int(acts.shape[0])
        self.manifest["studies_complete"].extend(self._pending)
        self.manifest.setdefault("dropped_images", {}).update(self._dropped)
        write_json(self.path / MANIFEST, self.manifest)
        self._acts, self._cols, self._pending, self._buffered = [], [], [], 0
        self._dropped, self._buffer_since = {}, None

    def close(self) -> Path:
        """Flush and mark the store complete."""
        self.flush()
        self.manifest["complete"] = True
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
    """Read a store (or a directory of per-rank stores ``rank<r>/``) as one sequence of rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if (self.path / MANIFEST).exists():
            parts = [self.path]
        else:
            parts = sorted(self.path.glob("rank*/"), key=lambda p: int(p.name[4:] or 0))
            parts = [p for p in parts if (p / MANIFEST).exists()]
        if not parts:
            raise StoreError(f"{self.path}: no {MANIFEST} here (not an activation store)")
        self.parts = parts
        manifests = [json.loads((p / MANIFEST).read_text()) for p in parts]
        self.manifest = _merge_manifests(manifests, self.path)
        self._shards = [(p, s) for p, m in zip(parts, manifests) for s in m["shards"]]
        self._offsets = np.cumsum([0] + [s["n_tokens"] for _, s in self._shards])

    d_model = property(lambda self: int(self.manifest["d_model"]))
    hook_name = property(lambda self: str(self.manifest["hook_name"]))
    layer = property(lambda self: int(self.manifest["layer"]))
    n_tokens = property(lambda self: int(self._offsets[-1]))
    num_shards = property(lambda self: len(self._shards))

    def shard_sizes(self) -> list[int]:
        return [s["n_tokens"] for _, s in self._shards]

    def shard(self, i: int) -> torch.Tensor:
        """Activations of shard ``i`` as stored: [n_tokens, d_model]."""
        part, s = self._shards[i]
        f = part / f"{s['stem']}.safetensors"
        try:
            acts = load_file(str(f))["acts"]
        except (OSError, KeyError, RuntimeError) as exc:
            raise StoreError(f"{f}: cannot read shard: {exc}") from None
        if acts.shape != (s["n_tokens"], self.d_model):
            raise StoreError(f"{f}: shape {tuple(acts.shape)} disagrees with the manifest")
        return acts

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Activations of global rows ``[start, stop)`` as stored, reading only those rows."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise StoreError(f"{self.path}: rows [{start}, {stop}) outside 0..{self.n_tokens}")
        parts = []
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for i in range(max(first, 0), self.num_shards):
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            if lo >= stop:
                break
            part, s = self._shards[i]
            f = part / f"{s['stem']}.safetensors"
            try:
                with safe_open(str(f), framework="pt") as handle:
                    parts.append(handle.get_slice("acts")[max(start, lo) - lo : min(stop, hi) - lo])
            except (OSError, KeyError, RuntimeError) as exc:
                raise StoreError(f"{f}: cannot read shard: {exc}") from None
        if not parts:
            return torch.zeros((0, self.d_model), dtype=DTYPES.get(self.manifest["dtype"]))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def check_finite(self, i: int, acts_ND: torch.Tensor) -> None:
        """Raise :class:`StoreError` naming the shard file, row and study of the first NaN/inf.

        Every stage that reads a store calls this on each shard it loads, so a poisoned store
        fails with the same message wherever it is read (record refuses to write one).
        """
        bad = ~torch.isfinite(acts_ND).all(dim=1)
        if not bool(bad.any()):
            return
        local = int(bad.nonzero()[0, 0])
        part, s = self._shards[i]
        studies = self.metadata(i).column("study_id")
        study = studies[local].as_py() if local < len(studies) else None
        raise StoreError(
            f"{part / (s['stem'] + '.safetensors')}: non-finite activation (NaN or inf) in "
            f"shard {i} at row {int(self._offsets[i]) + local} (row {local} of the shard, "
            f"study {study}); {int(bad.sum())} row(s) of this shard are affected. Re-record "
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


def _merge_manifests(manifests: list[dict], path: Path) -> dict[str, Any]:
    """One manifest view over per-rank parts; refuses parts recorded with different settings."""
    first = manifests[0]
    for key in ("model", "layer", "hook_name", "d_model", "dtype"):
        values = {json.dumps(m.get(key)) for m in manifests}
        if len(values) > 1:
            raise StoreError(f"{path}: parts disagree on '{key}': {sorted(values)}")
    merged = dict(first)
    merged["n_tokens"] = sum(m["n_tokens"] for m in manifests)
    merged["studies_complete"] = [s for m in manifests for s in m["studies_complete"]]
    merged["skipped"] = {k: v for m in manifests for k, v in m["skipped"].items()}
    merged["dropped_images"] = {
        k: v for m in manifests for k, v in m.get("dropped_images", {}).items()
    }
    merged["complete"] = all(m.get("complete") for m in manifests)
    merged["n_parts"] = len(manifests)
    return merged
