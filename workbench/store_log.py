"""The activation store's side records: its commit log, the multi-hook index, the tensor header.

The commit log (``log.jsonl``) is appended, never rewritten.

Each committed shard is one line ``{"shard": stem, "n_tokens": n, "studies": [...]}`` (plus
``"dropped": {study: [files]}`` for studies recorded without an unreadable optional image) and
each skipped study one line ``{"skip": id, "reason": ...}``. A writer appends (and fsyncs) a shard's
line only after its files are on disk, so the log is the commit record; a run killed while
appending leaves a torn last line, which readers ignore and writers cut off. Resuming reads the
log once (O(studies)); a flush costs O(its own studies), whatever the store's size.
Format-1 stores kept the study list in ``manifest.json``; :func:`v1_records` converts it.

``hooks.json`` lists the per-hook stores of ``record --layers``; :func:`tensor_region` reads a
shard's safetensors header so rows can be read without the rest (``read_rows``).
:mod:`workbench.store` re-exports what callers use; :mod:`workbench.store_writer` appends.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from workbench.io import write_json

LOG = "log.jsonl"
HOOK_INDEX = "hooks.json"
HEADER_KEYS = ("model", "layer", "hook_name", "d_model", "dtype")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class StoreError(ValueError):
    """An activation store is missing, malformed, or inconsistent with what was asked
    (defined here so the log can raise it; :mod:`workbench.store` re-exports it)."""


class LogState:
    """What a store's log says: committed shards, studies, skips (and the valid byte length)."""

    def __init__(self) -> None:
        self.shards: list[dict[str, Any]] = []
        self.studies: list[int] = []
        self.skipped: dict[str, str] = {}
        self.dropped: dict[str, list[str]] = {}
        self.valid_bytes = 0

    def apply(self, record: dict[str, Any], where: Path) -> None:
        if "shard" in record:
            self.shards.append({"stem": record["shard"], "n_tokens": int(record["n_tokens"])})
            self.studies.extend(int(s) for s in record.get("studies", ()))
            self.dropped.update(record.get("dropped", {}))
        elif "skip" in record:
            self.skipped[str(int(record["skip"]))] = str(record.get("reason", ""))
        else:
            raise StoreError(f"{where}: unknown log record {sorted(record)}")


def read_log(path: Path) -> LogState:
    """Parse ``log.jsonl``; a torn last line (a run killed mid-append) is ignored."""
    state = LogState()
    if not path.exists():
        return state
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # torn tail: never committed
        try:
            record = json.loads(data[pos:end])
        except json.JSONDecodeError:
            if data[end + 1 :].strip() == b"":
                break  # a torn last line
            raise StoreError(f"{path}: unreadable line at byte {pos}") from None
        state.apply(record, path)
        pos = end + 1
        state.valid_bytes = pos
    return state


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append JSON lines and force them to disk (the commit point of a flush or a skip)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def cut_torn_tail(path: Path, valid_bytes: int) -> None:
    """Cut a log back to its committed lines (a writer reopening after a kill); create it."""
    if path.exists() and path.stat().st_size > valid_bytes:
        with open(path, "r+b") as f:
            f.truncate(valid_bytes)
    elif not path.exists():
        path.touch()


def v1_records(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Log records equivalent to a format-1 manifest (its studies attach to the last shard)."""
    shards = manifest.get("shards", [])
    records: list[dict[str, Any]] = [
        {"shard": s["stem"], "n_tokens": s["n_tokens"], "studies": []} for s in shards
    ]
    if records:
        records[-1]["studies"] = list(manifest.get("studies_complete", []))
        if manifest.get("dropped_images"):
            records[-1]["dropped"] = dict(manifest["dropped_images"])
    records += [{"skip": int(k), "reason": v} for k, v in manifest.get("skipped", {}).items()]
    return records


def view(manifest: dict[str, Any], part: Path) -> dict[str, Any]:
    """Manifest of one part with shards, n_tokens, studies and skips filled in from its log."""
    if manifest.get("format_version", 1) < 2:
        return manifest
    log = read_log(part / LOG)
    return {
        **manifest,
        "shards": log.shards,
        "n_tokens": sum(s["n_tokens"] for s in log.shards),
        "studies_complete": log.studies,
        "skipped": log.skipped,
        "dropped_images": log.dropped,
    }


def merge_manifests(manifests: list[dict], path: Path) -> dict[str, Any]:
    """One manifest view over per-rank parts; refuses parts recorded with different settings."""
    first = manifests[0]
    for key in HEADER_KEYS:
        values = {json.dumps(m.get(key)) for m in manifests}
        if len(values) > 1:
            raise StoreError(f"{path}: parts disagree on '{key}': {sorted(values)}")
    merged = dict(first)
    merged["n_tokens"] = sum(m["n_tokens"] for m in manifests)
    merged["shards"] = [s for m in manifests for s in m["shards"]]
    merged["studies_complete"] = [s for m in manifests for s in m["studies_complete"]]
    merged["skipped"] = {k: v for m in manifests for k, v in m["skipped"].items()}
    merged["dropped_images"] = {
        k: v for m in manifests for k, v in m.get("dropped_images", {}).items()
    }
    merged["complete"] = all(m.get("complete") for m in manifests)
    merged["n_parts"] = len(manifests)
    return merged


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
