"""Recording the vision side of a tiny MAIRA-2: encoder blocks and projector, with coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.fixtures.record_fixtures import make_phantom, save_tiny_maira2
from workbench.cxr.collection import load_collection
from workbench.models.hooks import (
    VISION_PROJECTOR,
    decoder_layers,
    resid_post_name,
    vision_resid_post_name,
)
from workbench.models.mini.dense import DENSE_CHANNELS, dense_targets
from workbench.models.registry import load_model
from workbench.record.run import RecordConfig, main, record
from workbench.store import ActivationStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis")
    phantom = make_phantom(root / "phantom", studies=6, masks=True)
    model = save_tiny_maira2(root / "model", n_layers=3)
    return phantom, model


def _record(world, out, **kw):
    phantom, model = world
    return record(RecordConfig(model=str(model), data=phantom, out=out, progress=False, **kw))


def _study_acts(store: ActivationStore, study: int) -> tuple[torch.Tensor, list[dict]]:
    acts, meta = [], []
    for a, m in store.iter_shards():
        rows = [i for i, s in enumerate(m["study_id"].to_pylist()) if s == study]
        acts.append(a[rows])
        meta += [m.to_pylist()[i] for i in rows]
    return torch.cat(acts), meta


def test_vision_blocks_and_projector_match_the_model_and_the_lm_never_runs(
    world, tmp_path, monkeypatch
):
    phantom, model_dir = world
    adapter = load_model(str(model_dir))
    item = load_collection(phantom).items[0]
    inp = adapter.prepare(item.source)
    with torch.no_grad():
        pixels = inp.model_inputs["pixel_values"]
        tower = adapter.model.vision_tower(pixels, output_hidden_states=True)
        projected = adapter.model.get_image_features(pixels)
    from workbench.models import registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: adapter)  # record uses this one
    lm_calls = []
    hook = decoder_layers(adapter.model)[0].register_forward_hook(lambda *a: lm_calls.append(1))
    try:
        block = ActivationStore(
            _record(world, tmp_path / "b", hook=vision_resid_post_name(1), image_tokens="all")
        )
        proj = ActivationStore(_record(world, tmp_path / "p", hook=VISION_PROJECTOR,
                                       image_tokens="all"))  # fmt: skip
    finally:
        hook.remove()
    assert block.hook_name == "vision.blocks.1.hook_resid_post" and block.layer == 1
    assert block.d_model == 32 and proj.d_model == 48  # vision width, language-model width
    n_images = pixels.shape[0]
    got_b, meta = _study_acts(block, item.study_id)
    got_p, _ = _study_acts(proj, item.study_id)
    assert got_b.shape == (n_images * 16, 32)  # CLS dropped: 16 patches per image
    want_b = tower.hidden_states[2][:, 1:].reshape(-1, 32)  # hidden_states[0]: embeddings
    torch.testing.assert_close(got_b, want_b)
    torch.testing.assert_close(got_p, projected.reshape(-1, 48))
    image_tokens = [t for t in inp.tokens if t["kind"] == "image"]
    assert [m["position"] for m in meta] == [t["position"] for t in image_tokens]
    assert [(m["patch_row"], m["patch_col"]) for m in meta[:16]] == [
        divmod(i, 4) for i in range(16)
    ]
    assert {m["kind"] for m in meta} == {"image"}
    assert lm_calls == []  # the capture stopped the forward inside the vision tower


def test_frontal_tokens_carry_mask_coverage_and_others_nan(world, tmp_path):
    phantom, model_dir = world
    store = ActivationStore(
        _record(world, tmp_path / "b", hook=vision_resid_post_name(0), image_tokens="all")
    )
    adapter = load_model(str(model_dir))
    groups = store.manifest["extra"]["concept_groups"]
    assert groups["heart"] == "structure" and groups["pacemaker"] == "device"
    checked = 0
    for item in load_collection(phantom).items:
        _, meta = _study_acts(store, item.study_id)
        proc = adapter.processor
        cover = dense_targets(phantom, item.source, proc.image_size, proc.patch_size)
        frontal = [m for m in meta if m["section"] == meta[0]["section"]]
        assert len(frontal) == 16
        for m in frontal:
            p = m["patch_row"] * 4 + m["patch_col"]
            for k, name in enumerate(DENSE_CHANNELS):
                assert m[f"concept_{name}"] == pytest.approx(float(cover[p, k]))
        others = [m for m in meta if m["section"] != meta[0]["section"]]
        assert all(math.isnan(m["concept_heart"]) for m in others)
        checked += bool(np.asarray([m["concept_heart"] for m in frontal]).max() > 0)
    assert checked  # the heart covers some patch of some frontal image


def test_default_filter_keeps_first_and_last_patch_and_bad_hooks_fail(world, tmp_path, caplog):
    store = ActivationStore(_record(world, tmp_path / "fl", hook=VISION_PROJECTOR))
    meta = store.metadata_all().to_pylist()
    per_study: dict[int, int] = {}
    for m in meta:
        per_study[m["study_id"]] = per_study.get(m["study_id"], 0) + 1
    sections = {(m["study_id"], m["section"]) for m in meta}
    assert sum(per_study.values()) == 2 * len(sections)
    phantom, model = world
    base = ["--model", str(model), "--data", str(phantom), "--no-progress"]
    bad = "vision.blocks.7.hook_resid_post"
    assert main([*base, "--out", str(tmp_path / "x"), "--hook", bad]) == 1
    assert "blocks 0..1" in caplog.text
    assert main([*base, "--out", str(tmp_path / "y"), "--hook", "backbone.hook_features"]) == 1
    assert "--model segmentation:RUN" in caplog.text
    with pytest.raises(ValueError, match="not both"):  # refused while parsing the flags
        main([*base, "--hook", resid_post_name(0), "--layer", "1"])
    with pytest.raises(ValueError, match="not both"):
        main([*base, "--hook", VISION_PROJECTOR, "--layers", "0,1"])
