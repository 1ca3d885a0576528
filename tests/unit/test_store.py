"""The activation store: round trip, resume after a kill, per-rank parts, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.store import ActivationStore, StoreError, StoreWriter, iter_study_sums

HEADER = dict(model="tiny", layer=1, hook_name="blocks.1.hook_resid_post", d_model=4)


def _study(sid: int, n: int) -> tuple[torch.Tensor, list[dict]]:
    acts = torch.full((n, 4), float(sid)) + torch.arange(n).unsqueeze(1)
    meta = [
        {"subject_id": 10 + sid, "position": p, "token_id": p, "token": f"t{p}", "kind": "report"}
        for p in range(n)
    ]
    return acts, meta


def test_round_trip_rows_are_global_and_dense(tmp_path):
    w = StoreWriter(tmp_path / "s", shard_tokens=5, **HEADER)
    for sid, n in [(1, 3), (2, 4), (3, 2)]:
        w.add(sid, *_study(sid, n))
    w.close()
    s = ActivationStore(tmp_path / "s")
    assert s.n_tokens == 9 and s.d_model == 4 and s.hook_name == HEADER["hook_name"]
    assert s.num_shards == 2  # 3+4 >= 5 flushes, then 2 at close
    meta = s.metadata_all()
    assert meta.column("row").to_pylist() == list(range(9))
    assert meta.column("study_id").to_pylist() == [1] * 3 + [2] * 4 + [3] * 2
    acts = torch.cat([a for a, _ in s.iter_shards()])
    assert torch.equal(acts[3], torch.full((4,), 2.0))
    assert s.manifest["complete"] is True
    assert meta.column("patch_row").null_count == 9


def test_resume_skips_completed_and_drops_orphans(tmp_path):
    path = tmp_path / "s"
    w = StoreWriter(path, shard_tokens=3, **HEADER)
    w.add(1, *_study(1, 3))  # flushed: complete
    w.add(2, *_study(2, 2))  # buffered only: lost by the "kill"
    (path / "shard_00007.safetensors").write_bytes(b"half-written")
    del w
    w = StoreWriter(path, shard_tokens=3, **HEADER)
    assert w.completed == {1}
    assert not (path / "shard_00007.safetensors").exists()
    for sid in (1, 2, 3):
        if sid not in w.completed:
            w.add(sid, *_study(sid, 2))
    w.skip(4, "report has no FINDINGS")
    w.close()
    s = ActivationStore(path)
    ids = s.metadata_all().column("study_id").to_pylist()
    assert sorted(set(ids)) == [1, 2, 3] and ids.count(1) == 3
    assert s.manifest["skipped"] == {"4": "report has no FINDINGS"}
    assert 4 in StoreWriter(path, **HEADER).completed


def test_per_rank_parts_read_as_one_store(tmp_path):
    for rank, sids in enumerate([(1, 3), (2,)]):
        w = StoreWriter(tmp_path / f"rank{rank}", **HEADER)
        for sid in sids:
            w.add(sid, *_study(sid, 2))
        w.close()
    s = ActivationStore(tmp_path)
    assert s.n_tokens == 6 and s.manifest["n_parts"] == 2
    assert s.metadata_all().column("row").to_pylist() == list(range(6))
    assert sorted(s.manifest["studies_complete"]) == [1, 2, 3]


def test_bad_input_is_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", **HEADER)
    with pytest.raises(StoreError, match="shape"):
        w.add(1, torch.zeros(2, 5), [{"kind": "report"}] * 2)
    with pytest.raises(StoreError, match="NaN"):
        w.add(1, torch.tensor([[float("nan")] * 4]), [{"kind": "report"}])
    with pytest.raises(StoreError, match="kind"):
        w.add(1, torch.zeros(1, 4), [{"kind": "pixels"}])
    with pytest.raises(StoreError, match="resume"):
        StoreWriter(tmp_path / "s", **{**HEADER, "layer": 2})
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore(tmp_path / "nothing")


def test_manifest_disagreeing_with_shard_is_caught(tmp_path):
    w = StoreWriter(tmp_path / "s", **HEADER)
    w.add(1, *_study(1, 2))
    w.close()
    log = tmp_path / "s/log.jsonl"
    record = json.loads(log.read_text())
    log.write_text(json.dumps({**record, "n_tokens": 5}) + "\n")
    with pytest.raises(StoreError, match="disagrees"):
        ActivationStore(tmp_path / "s").shard(0)
    with pytest.raises(StoreError, match="disagrees"):
        ActivationStore(tmp_path / "s").read_rows(0, [0])


def test_study_sums_group_kept_rows_by_study_and_slot(tmp_path):
    w = StoreWriter(tmp_path / "s", shard_tokens=6, **HEADER)
    kinds = {7: ["report", "image", "report", "report"], 3: ["report"] * 3, 5: ["image"] * 2}
    acts = {}
    for sid, ks in kinds.items():  # 7 and 3 fill shard 0 (7 tokens >= 6); 5 is shard 1
        acts[sid] = torch.arange(len(ks) * 4, dtype=torch.float32).view(-1, 4) ** 2 + sid
        w.add(sid, acts[sid], [{"position": p, "kind": k} for p, k in enumerate(ks)])
    w.close()
    store = ActivationStore(tmp_path / "s")

    def reports_by_parity(meta):
        keep_N = np.array([k == "report" for k in meta.column("kind").to_pylist()])
        return keep_N, np.asarray(meta.column("position").to_pylist())[keep_N] % 2

    blocks = list(iter_study_sums(store, reports_by_parity, n_slots=2))
    assert len(blocks) == 1  # shard 1 holds no report token: nothing is yielded for it
    (block,) = blocks
    assert block.study_ids.tolist() == [3, 7]  # ascending, not in stored order
    assert block.counts.tolist() == [[2, 1], [2, 1]]  # 7: positions 0, 2 even; 3 odd
    expected_USW = torch.stack(
        [
            torch.stack([acts[3][[0, 2]].sum(0), acts[3][1]]),
            torch.stack([acts[7][[0, 2]].sum(0), acts[7][3]]),
        ]
    )
    torch.testing.assert_close(block.sums, expected_USW, rtol=0, atol=0)

    def everything(meta):
        return np.ones(meta.num_rows, dtype=bool), None

    one_slot = list(iter_study_sums(store, everything, transform=lambda x: 2 * x[:, :1]))
    assert [b.study_ids.tolist() for b in one_slot] == [[3, 7], [5]]
    assert one_slot[1].counts.tolist() == [[2]]
    torch.testing.assert_close(one_slot[0].sums[1, 0], 2 * acts[7][:, :1].sum(0))
    with pytest.raises(StoreError, match=r"slots 0\.\.1 outside 0\.\.0"):
        list(iter_study_sums(store, reports_by_parity, n_slots=1))
