"""The store's append-only commit log, row-range reads and multi-hook index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench import store_writer
from workbench.store import (
    ActivationStore,
    StoreError,
    StoreWriter,
    hook_stores,
    write_hook_index,
)

HEADER = dict(model="tiny", layer=1, hook_name="blocks.1.hook_resid_post", d_model=4)


def _write(path, ids, n=2, **kw) -> StoreWriter:
    w = StoreWriter(path, **{**HEADER, **kw})
    for sid in ids:
        acts = torch.full((n, 4), float(sid)) + torch.arange(n).unsqueeze(1)
        w.add(sid, acts, {"position": list(range(n)), "kind": ["report"] * n})
    return w


def test_resume_bookkeeping_stays_linear_at_1e5_studies(tmp_path, monkeypatch):
    """10^5 study ids: flushes append, the manifest is written only at open and close."""
    writes = []
    real = store_writer.write_json
    monkeypatch.setattr(store_writer, "write_json", lambda p, o: writes.append(p) or real(p, o))
    n_studies, per_shard = 100_000, 5_000
    w = StoreWriter(tmp_path / "s", shard_tokens=per_shard, **HEADER)
    one, meta = torch.ones(1, 4), {"kind": ["report"]}
    for sid in range(n_studies + 7):  # the last 7 stay buffered: lost by the "kill"
        w.add(sid, one, meta)
    assert len(writes) == 1  # the open; 20 flushes wrote no manifest
    assert (tmp_path / "s/manifest.json").stat().st_size < 1024
    log_bytes = (tmp_path / "s/log.jsonl").stat().st_size
    assert log_bytes < 8 * n_studies  # every id once: ~6 bytes each, nothing rewritten
    del w
    again = StoreWriter(tmp_path / "s", shard_tokens=per_shard, **HEADER)
    assert again.completed == set(range(n_studies))
    assert again.n_tokens == n_studies and len(again.shards) == n_studies // per_shard
    for sid in range(n_studies, n_studies + 7):
        assert sid not in again.completed
        again.add(sid, one, meta)
    again.close()
    store = ActivationStore(tmp_path / "s")
    assert len(store.manifest["studies_complete"]) == n_studies + 7 == store.n_tokens
    assert store.manifest["complete"] and store.manifest["n_studies"] == n_studies + 7


def test_torn_last_line_is_ignored_then_cut(tmp_path):
    w = _write(tmp_path / "s", [1, 2], shard_tokens=2)  # two shards committed
    w.add(3, torch.zeros(2, 4), {"kind": ["report"] * 2})  # flushed: third shard
    log = tmp_path / "s/log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + lines[2][:15])  # killed while appending shard 3
    assert ActivationStore(tmp_path / "s").manifest["studies_complete"] == [1, 2]
    w = StoreWriter(tmp_path / "s", shard_tokens=2, **HEADER)
    assert w.completed == {1, 2}
    assert log.read_text() == "".join(lines[:2])  # the torn bytes were cut off
    assert not (tmp_path / "s/shard_00002.safetensors").exists()  # the orphan is gone
    w.add(3, torch.zeros(2, 4), {"kind": ["report"] * 2})
    w.close()
    assert ActivationStore(tmp_path / "s").manifest["studies_complete"] == [1, 2, 3]
    log.write_text("not json\n" + log.read_text())
    with pytest.raises(StoreError, match="unreadable line"):
        ActivationStore(tmp_path / "s")


def test_format_1_store_is_read_and_migrated(tmp_path):
    path = tmp_path / "s"
    w = _write(path, [1, 2, 3], shard_tokens=4)
    w.skip(9, "no findings")
    w.close()
    v1 = {
        "format_version": 1,
        **HEADER,
        "dtype": "float32",
        "n_tokens": 6,
        "shards": [{"stem": "shard_00000", "n_tokens": 4}, {"stem": "shard_00001", "n_tokens": 2}],
        "studies_complete": [1, 2, 3],
        "skipped": {"9": "no findings"},
        "extra": {},
        "complete": True,
    }
    (path / "manifest.json").write_text(json.dumps(v1))
    (path / "log.jsonl").unlink()
    old = ActivationStore(path)
    assert old.n_tokens == 6 and old.manifest["studies_complete"] == [1, 2, 3]
    w = StoreWriter(path, shard_tokens=4, **HEADER)
    assert w.completed == {1, 2, 3, 9}
    w.add(4, torch.zeros(1, 4), {"kind": ["report"]})
    w.close()
    new = ActivationStore(path)
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 2
    assert sorted(new.manifest["studies_complete"]) == [1, 2, 3, 4] and new.n_tokens == 7
    assert new.manifest["skipped"] == {"9": "no findings"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_read_rows_reads_only_the_rows_asked(tmp_path, dtype):
    _write(tmp_path / "s", [1, 2, 3], n=5, shard_tokens=100, dtype=dtype).close()
    store = ActivationStore(tmp_path / "s")
    whole = store.shard(0)
    assert store.bytes_read == whole.numel() * whole.element_size()
    store.bytes_read = 0
    rows = np.array([14, 0, 7, 7, 3])
    got = store.read_rows(0, rows)
    assert got.dtype == whole.dtype and torch.equal(got, whole[torch.from_numpy(rows)])
    assert store.bytes_read == len(rows) * 4 * whole.element_size()
    assert store.read_rows(0, np.array([], dtype=np.int64)).shape == (0, 4)
    with pytest.raises(StoreError, match="outside"):
        store.read_rows(0, np.array([15]))


def test_multi_hook_index(tmp_path):
    for layer in (2, 4):
        hook = f"blocks.{layer}.hook_resid_post"
        _write(tmp_path / hook, [1], layer=layer, hook_name=hook).close()
    write_hook_index(tmp_path, {f"blocks.{k}.hook_resid_post": f"blocks.{k}.hook_resid_post"
                                for k in (2, 4)})  # fmt: skip
    hooks = hook_stores(tmp_path)
    assert list(hooks) == ["blocks.2.hook_resid_post", "blocks.4.hook_resid_post"]
    assert ActivationStore(hooks["blocks.4.hook_resid_post"]).layer == 4
    assert hook_stores(tmp_path / "blocks.2.hook_resid_post") is None
    with pytest.raises(StoreError, match="one store per hook"):
        ActivationStore(tmp_path)


def test_gathered_rows_with_nan_name_file_row_and_study(tmp_path):
    from safetensors.torch import load_file, save_file

    from workbench.sae.data import DataError, ShuffledBatches, StoreSource

    _write(tmp_path / "s", [1, 2, 3], n=4, shard_tokens=100).close()  # one shard of 12 rows
    f = tmp_path / "s/shard_00000.safetensors"
    acts = load_file(f)["acts"]
    acts[9, 2] = float("nan")  # study 3's second row
    save_file({"acts": acts}, f)
    with pytest.raises(DataError, match=r"shard_00000.safetensors.* row 9 .*study 3"):
        for rank in (0, 1):  # 3 batches of 4 cover the 12 rows; one process reads row 9
            stream = ShuffledBatches(StoreSource(tmp_path / "s"), 4, 100, gather=True)
            for step in range(3):
                stream.local(step, rank, 2)
