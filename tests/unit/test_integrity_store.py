"""Issue 15 on the store side: bounded loss in time, poisoned shards named, dropped images kept.

Each test here failed before its fix: the writer flushed on a token count only, a NaN in a
shard reached ``analyse`` as a traceback without the shard, an unreadable lateral image
raised and dropped its whole study, and nothing logged progress without the bar.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from workbench.cxr.collection import model_input
from workbench.cxr.studies import StudyRecord
from workbench.progress import Heartbeat
from workbench.store import ActivationStore, StoreError, StoreWriter

HEADER = dict(model="tiny", layer=1, hook_name="blocks.1.hook_resid_post", d_model=4)


class FakeClock:
    """A clock the test moves by hand: no sleeping, no timed assertions."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _study(sid: int, n: int) -> tuple[torch.Tensor, list[dict]]:
    acts = torch.full((n, 4), float(sid)) + torch.arange(n).unsqueeze(1)
    meta = [{"position": p, "token_id": p, "token": f"t{p}", "kind": "report"} for p in range(n)]
    return acts, meta


def test_writer_flushes_on_time_as_well_as_on_tokens(tmp_path):
    clock = FakeClock()
    w = StoreWriter(tmp_path / "s", shard_tokens=10_000, flush_seconds=60, clock=clock, **HEADER)
    w.add(1, *_study(1, 3))
    clock.now = 30.0
    w.add(2, *_study(2, 3))  # 30 s after the first buffered study: still buffered
    assert ActivationStore(tmp_path / "s").manifest["studies_complete"] == []
    clock.now = 61.0
    w.add(3, *_study(3, 3))  # the oldest buffered study is 61 s old: written now
    store = ActivationStore(tmp_path / "s")
    assert store.manifest["studies_complete"] == [1, 2, 3] and store.num_shards == 1
    clock.now = 100.0
    w.add(4, *_study(4, 3))  # a fresh buffer starts its own clock
    assert ActivationStore(tmp_path / "s").manifest["studies_complete"] == [1, 2, 3]


def test_dropped_images_reach_the_manifest_with_their_study(tmp_path):
    w = StoreWriter(tmp_path / "s", shard_tokens=100, **HEADER)
    w.add(7, *_study(7, 2), dropped=["lateral image /x/l.jpg: cannot read image"])
    assert ActivationStore(tmp_path / "s").manifest["dropped_images"] == {}  # not yet stored
    w.close()
    manifest = ActivationStore(tmp_path / "s").manifest
    assert manifest["dropped_images"] == {"7": ["lateral image /x/l.jpg: cannot read image"]}
    assert manifest["studies_complete"] == [7]


def test_non_finite_shard_is_named_with_row_and_study(tmp_path):
    w = StoreWriter(tmp_path / "s", shard_tokens=4, **HEADER)
    for sid in (1, 2, 3):
        w.add(sid, *_study(sid, 4))
    w.close()
    store = ActivationStore(tmp_path / "s")
    poisoned = store.shard(1).clone()
    poisoned[2, 1] = float("inf")
    save_file({"acts": poisoned}, str(tmp_path / "s" / "shard_00001.safetensors"))
    store.check_finite(0, store.shard(0))  # a clean shard passes
    with pytest.raises(StoreError) as err:
        store.check_finite(1, store.shard(1))
    msg = str(err.value)
    assert "shard_00001.safetensors" in msg and "shard 1 at row 6" in msg
    assert "row 2 of the shard" in msg and "study 2" in msg


def _jpeg(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def _record(tmp_path, lateral_ok: bool) -> StudyRecord:
    frontal, lateral = tmp_path / "f.jpg", tmp_path / "l.jpg"
    _jpeg(frontal, 100)
    if lateral_ok:
        _jpeg(lateral, 50)
    else:
        lateral.write_bytes(b"\xff\xd8 truncated jpeg")
    return StudyRecord(
        subject_id=1, study_id=5, split="train", study_datetime=datetime(2180, 1, 1),
        frontal_path=frontal, frontal_view="PA", lateral_path=lateral, prior_study_id=None,
        prior_frontal_path=None, prior_report=None, indication="cough", technique=None,
        comparison=None, findings="Clear.", impression=None, report_path=tmp_path / "r.txt",
    )  # fmt: skip


def test_unreadable_lateral_keeps_the_study_frontal_only(tmp_path, caplog):
    rec = _record(tmp_path, lateral_ok=False)
    named: list[str] = []
    with caplog.at_level(logging.WARNING):
        images = rec.load_images(named)
    assert images.frontal is not None and images.lateral is None and len(images) == 3
    assert len(named) == 1 and "l.jpg" in named[0]
    assert "lateral image left out" in caplog.text
    inputs, dropped = model_input(rec, with_images=True)
    assert inputs["lateral"] is None and inputs["frontal"].size == (8, 8)
    assert inputs["indication"] == "cough" and dropped == tuple(named)


def test_model_input_passes_readable_studies_and_text_sources_unchanged(tmp_path):
    rec = _record(tmp_path, lateral_ok=True)
    inputs, dropped = model_input(rec, with_images=True)
    assert inputs["lateral"] is not None and dropped == ()
    assert model_input(rec, with_images=False) == (rec, ())  # a text-only model reads no pixels
    fields = {"indication": "x"}
    assert model_input(fields, with_images=True) == (fields, ())


def test_heartbeat_logs_at_its_interval_only(caplog):
    clock = FakeClock()
    beat = Heartbeat(logging.getLogger("t.beat"), "record L4", total=10, interval=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.beat"):
        clock.now = 59.0
        assert not beat.update(3, tokens=300)
        clock.now = 60.0
        assert beat.update(4, tokens=400)
        clock.now = 100.0
        assert not beat.update(5)  # 40 s after the last line
        clock.now = 120.0
        assert beat.update(6)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "record L4: 4/10 done, 400 tokens, 0.07/s, 1m00s elapsed, about 1m30s left"
    assert len(lines) == 2
    assert not Heartbeat(logging.getLogger("t.off"), "x", 1, interval=0, clock=clock).update(1)
