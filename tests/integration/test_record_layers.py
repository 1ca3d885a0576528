"""``record --layers``: several hooks from one forward pass, one store per hook."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.record_fixtures import make_phantom, save_tiny_maira2
from workbench.cxr.collection import load_collection
from workbench.models.hooks import decoder_layers
from workbench.record.run import RecordConfig, RecordError, main, record
from workbench.store import ActivationStore, hook_stores

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
HOOKS = {1: "blocks.1.hook_resid_post", 2: "blocks.2.hook_resid_post"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    return make_phantom(root / "phantom", studies=8), save_tiny_maira2(root / "model", n_layers=4)


def _cfg(world, out, **kw) -> RecordConfig:
    base = dict(model=str(world[1]), data=world[0], out=out, progress=False, shard_tokens=150)
    return RecordConfig(**{**base, **kw})


def _same_store(a, b) -> None:
    """Rows, metadata and bookkeeping of two stores are identical (shard cuts may differ)."""
    sa, sb = ActivationStore(a), ActivationStore(b)
    assert (sa.hook_name, sa.layer, sa.d_model) == (sb.hook_name, sb.layer, sb.d_model)
    assert torch.equal(
        torch.cat([x for x, _ in sa.iter_shards()]), torch.cat([x for x, _ in sb.iter_shards()])
    )
    assert sa.metadata_all().equals(sb.metadata_all())
    assert sa.manifest["studies_complete"] == sb.manifest["studies_complete"]


def test_each_hook_store_equals_its_single_layer_recording(world, tmp_path, monkeypatch):
    from workbench.models import registry

    prepared, later = [], []
    real_prepare = registry.VisionLanguageAdapter.prepare

    def counting_prepare(self, *a, **kw):
        prepared.append(1)
        return real_prepare(self, *a, **kw)

    monkeypatch.setattr(registry.VisionLanguageAdapter, "prepare", counting_prepare)
    n_items = len(load_collection(world[0]).items)
    handles = []

    def spy_later_blocks(self, *a, **kw):
        if not handles:  # the adapter is made inside record(): hook its model once
            handles.append(decoder_layers(self.model)[3].register_forward_hook(
                lambda *x: later.append("block 3 ran")))  # fmt: skip
            handles.append(self.model.get_output_embeddings().register_forward_hook(
                lambda *x: later.append("lm head ran")))  # fmt: skip
        return real_residuals(self, *a, **kw)

    real_residuals = registry.ModelAdapter.residuals
    monkeypatch.setattr(registry.ModelAdapter, "residuals", spy_later_blocks)
    out = record(_cfg(world, tmp_path / "multi", layers=(2, 1)))
    for h in handles:
        h.remove()
    assert handles and later == []  # the forward stopped after block 2 every time
    assert len(prepared) == n_items  # one preparation per study for both hooks
    stores = hook_stores(out)
    assert list(stores) == [HOOKS[1], HOOKS[2]]
    assert json.loads((out / "cfg.json").read_text())["layers"] == [2, 1]
    for layer, hook in HOOKS.items():
        single = record(_cfg(world, tmp_path / f"single{layer}", layer=layer))
        _same_store(stores[hook], single)
    a, b = (ActivationStore(stores[h]).shard(0) for h in HOOKS.values())
    assert not torch.equal(a, b)


def test_resume_after_a_kill_completes_every_store(world, tmp_path, monkeypatch):
    from workbench.record import run as rec_mod

    real, seen = rec_mod.record_item, []

    def dies_after_four(adapter, item, layers, cfg):
        if len(seen) == 4:
            raise KeyboardInterrupt
        seen.append(item.study_id)
        return real(adapter, item, layers, cfg)

    monkeypatch.setattr(rec_mod, "record_item", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        record(_cfg(world, tmp_path / "acts", layers=(1, 2)))
    monkeypatch.setattr(rec_mod, "record_item", real)
    out = record(_cfg(world, tmp_path / "acts", layers=(1, 2)))
    whole = record(_cfg(world, tmp_path / "whole", layers=(1, 2)))
    for hook in HOOKS.values():
        _same_store(out / hook, whole / hook)


def test_layouts_are_not_mixed(world, tmp_path):
    record(_cfg(world, tmp_path / "one", limit=1))
    with pytest.raises(RecordError, match="single-layer store"):
        record(_cfg(world, tmp_path / "one", limit=1, layers=(1, 2)))
    record(_cfg(world, tmp_path / "two", limit=1, layers=(1, 2)))
    with pytest.raises(RecordError, match="one store per hook"):
        record(_cfg(world, tmp_path / "two", limit=1))
    argv = ["--model", str(world[1]), "--data", str(world[0]), "--out", str(tmp_path / "cli"),
            "--no-progress", "--limit", "2", "--layers", "0,3"]  # fmt: skip
    assert main(argv) == 0
    assert list(hook_stores(tmp_path / "cli")) == ["blocks.0.hook_resid_post",
                                                    "blocks.3.hook_resid_post"]  # fmt: skip
    assert main([*argv[:-1], "7"]) == 1  # outside the model's 4 blocks
