"""Issue 15, ``record`` end to end: a bad lateral keeps its study, skips are loud and counted,
progress is logged without the bar, and the store is flushed on time."""

from __future__ import annotations

import logging
import shutil

import pytest

from tests.fixtures.record_fixtures import make_phantom, save_tiny_maira2
from workbench.cxr.collection import load_collection
from workbench.record.run import RecordConfig, record
from workbench.store import ActivationStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec15")
    return make_phantom(root / "phantom", studies=6), save_tiny_maira2(root / "model", n_layers=2)


def _cfg(phantom, model, out, **kw) -> RecordConfig:
    base = dict(model=str(model), data=phantom, out=out, progress=False, shard_tokens=100_000)
    return RecordConfig(**{**base, **kw})


def test_unreadable_lateral_keeps_the_study_and_names_the_file(world, tmp_path):
    phantom = shutil.copytree(world[0], tmp_path / "phantom")
    items = load_collection(phantom).items
    with_lateral = [it for it in items if it.source.lateral_path is not None]
    assert with_lateral, "the fixture needs a study with a lateral view"
    victim = with_lateral[0]
    victim.source.lateral_path.write_bytes(b"\xff\xd8 not a whole jpeg")
    store = ActivationStore(record(_cfg(phantom, world[1], tmp_path / "acts")))
    manifest = store.manifest
    sid = victim.study_id
    assert sid in manifest["studies_complete"] and str(sid) not in manifest["skipped"]
    dropped = manifest["dropped_images"][str(sid)]
    assert len(dropped) == 1 and str(victim.source.lateral_path) in dropped[0]
    meta = store.metadata_all()
    rows = [s for s, sid_ in zip(meta["section"].to_pylist(), meta["study_id"].to_pylist())
            if sid_ == sid]  # fmt: skip
    assert "current_lateral" not in rows and "current_frontal" in rows


def test_skipped_studies_are_warned_and_the_final_count_is_true(world, tmp_path, caplog):
    phantom = shutil.copytree(world[0], tmp_path / "phantom")
    items = load_collection(phantom).items
    for it in items[:2]:
        it.source.frontal_path.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.INFO, logger="workbench.record"):
        store = ActivationStore(record(_cfg(phantom, world[1], tmp_path / "acts")))
    n_stored = len(store.manifest["studies_complete"])
    assert n_stored == len(items) - 2
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recorded ")]
    assert done and done[-1].startswith(f"recorded {n_stored} studies")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    skipped = [w for w in warnings if "studies skipped" in w]
    assert skipped and skipped[0].startswith("2 studies skipped")
    assert str(items[0].study_id) in skipped[0] and "manifest.json" in skipped[0]


def test_progress_is_logged_without_the_bar_and_shards_follow_the_clock(world, tmp_path, caplog):
    # an interval shorter than any study: every study logs a line and closes a shard
    cfg = _cfg(*world, tmp_path / "acts", log_seconds=1e-9, flush_seconds=1e-9, limit=3)
    with caplog.at_level(logging.INFO, logger="workbench.record"):
        store = ActivationStore(record(cfg))
    beats = [r.getMessage() for r in caplog.records if " done, " in r.getMessage()]
    assert [b.split(":")[1].split()[0] for b in beats] == ["1/3", "2/3", "3/3"]
    assert store.num_shards == 3  # flushed on time, far below shard_tokens
