"""The activation store's commit log (``log.jsonl``): appended, never rewritten.

Each committed shard is one line ``{"shard": stem, "n_tokens": n, "studies": [...]}`` and each
skipped study one line ``{"skip": id, "reason": ...}``. A writer appends (and fsyncs) a shard's
line only after its files are on disk, so the log is the commit record; a run killed while
appending leaves a torn last line, which readers ignore and writers cut off. Resuming reads the
log once (O(studies)); a flush costs O(its own studies), whatever the store's size.
Format-1 stores kept the study list in ``manifest.json``; :func:`v1_records` converts it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG = "log.jsonl"


class StoreError(ValueError):
    """An activation store is missing, malformed, or inconsistent with what was asked
    (defined here so the log can raise it; :mod:`workbench.store` re-exports it)."""


class LogState:
    """What a store's log says: committed shards, studies, skips (and the valid byte length)."""

    def __init__(self) -> None:
        self.shards: list[dict[str, Any]] = []
        self.studies: list[int] = []
        self.skipped: dict[str, str] = {}
        self.valid_bytes = 0

    def apply(self, record: dict[str, Any], where: Path) -> None:
        if "shard" in record:
            self.shards.append({"stem": record["shard"], "n_tokens": int(record["n_tokens"])})
            self.studies.extend(int(s) for s in record.get("studies", ()))
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


def v1_records(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Log records equivalent to a format-1 manifest (its studies attach to the last shard)."""
    shards = manifest.get("shards", [])
    records: list[dict[str, Any]] = [
        {"shard": s["stem"], "n_tokens": s["n_tokens"], "studies": []} for s in shards
    ]
    if records:
        records[-1]["studies"] = list(manifest.get("studies_complete", []))
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
    }
