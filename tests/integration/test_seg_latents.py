"""Segmentation latents -> store -> train-sae -> analyse on tiny U-Net, SSN, SemanticGAN runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmentation import latents as L
from segmentation import train as tr
from segmentation.data import load_dataset
from segmentation.fixtures import write_phantom_fixture
from segmentation.io import study_key
from workbench.models import hooks as H
from workbench.models.mini.dense import patch_coverage
from workbench.record.run import RecordConfig, RecordError, record
from workbench.store import ActivationStore, StoreError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]

TINY = ["--image-size", "32", "--crop-size", "32", "--channels", "4,8", "--batch-size", "4",
        "--recomb-channels", "8", "--no-progress", "--threads", "1", "--mc-samples", "4",
        "--rank", "2", "--steps", "3"]  # fmt: skip
GAN = ["--model", "semantic-gan", "--dataset", "phantom-lungs", "--image-size", "32",
       "--latent-dim", "16", "--n-mlp", "2", "--channel-base", "256", "--channel-max", "16",
       "--dseg-ndf", "8", "--enc-width", "8", "--enc-feature-dim", "16", "--batch-size", "4",
       "--labelled-fraction", "0.5", "--tto-steps", "2", "--no-progress", "--steps", "2",
       "--enc-steps", "1", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seglat")
    phantom = write_phantom_fixture(root / "phantom", studies=8, size=48)
    out = {"phantom": phantom}
    for name, model, dataset, extra in (
        ("nodules-ssn", "ssn", "phantom-nodules", ["--use-roi"]),
        ("lungs-unet", "unet", "phantom-lungs", []),
        ("nodules-diag", "ssn-diag", "phantom-nodules", []),
        ("nodules-lung-ssn", "ssn", "phantom-nodules", ["--lung-class", "--num-classes", "3"]),
    ):
        argv = ["--model", model, "--data", str(phantom), "--dataset", dataset, *TINY, *extra]
        assert tr.main([*argv, "--out", str(root / name)]) == 0
        out[name] = root / name
    assert tr.main([*GAN, "--data", str(phantom), "--out", str(root / "lungs-gan")]) == 0
    out["lungs-gan"] = root / "lungs-gan"
    return out


def _record(runs, name, hook, out, **kw) -> ActivationStore:
    cfg = RecordConfig(model=f"segmentation:{runs[name]}", hook=hook, out=out, progress=False,
                       samples=8, **kw)  # fmt: skip
    return ActivationStore(record(cfg))


def _by_study(store: ActivationStore) -> dict[int, tuple[torch.Tensor, list[dict]]]:
    acts, meta = torch.cat([a for a, _ in store.iter_shards()]), store.metadata_all().to_pylist()
    out: dict[int, list[int]] = {}
    for i, m in enumerate(meta):
        out.setdefault(m["study_id"], []).append(i)
    return {s: (acts[rows], [meta[i] for i in rows]) for s, rows in out.items()}


def test_ssn_hooks_are_the_model_tensors_with_the_masks_at_each_pixel(runs, tmp_path):
    run = L.open_run(runs["nodules-ssn"])
    assert L.hooks_of(run) == (H.SEG_BOTTLENECK, H.SEG_FEATURES, H.SEG_COV_FACTOR)
    feats = _record(runs, "nodules-ssn", H.SEG_FEATURES, tmp_path / "f")
    factor = _record(runs, "nodules-ssn", H.SEG_COV_FACTOR, tmp_path / "c")
    bottleneck = _record(runs, "nodules-ssn", H.SEG_BOTTLENECK, tmp_path / "b")
    samples = load_dataset("phantom-nodules", runs["phantom"], None, 32, 32)
    assert feats.manifest["studies_complete"] == sorted(study_key(s.meta)[0] for s in samples)
    assert (feats.d_model, factor.d_model, bottleneck.d_model) == (8, 4, 8)  # 2 x 2 classes
    s = samples[0]
    sid = study_key(s.meta)[0]
    x = torch.from_numpy(s.image[None, None])
    roi = torch.from_numpy(s.roi[None])
    with torch.no_grad():
        out = run.model.backbone(x)
        head = run.model.head(out.features, roi)
    acts, meta = _by_study(feats)[sid]
    assert acts.shape == (32 * 32, 8) and {m["kind"] for m in meta} == {"latent"}
    torch.testing.assert_close(acts, out.features[0].flatten(1).T)
    torch.testing.assert_close(_by_study(bottleneck)[sid][0], out.bottleneck[0].flatten(1).T)
    f_acts = _by_study(factor)[sid][0]  # the loadings the model samples with (ROI applied)
    torch.testing.assert_close(f_acts, head.cov_factor[0].reshape(4, -1).T)
    assert (f_acts[torch.from_numpy(s.roi.reshape(-1) == 0)] == 0).all()
    # crop 32 px at 32 px: each pixel's grader coverage is the grader's mask itself
    for k in range(4):
        got = np.array([m[f"concept_nodule_annotator_{k}"] for m in meta])
        assert np.array_equal(got, s.masks[k].reshape(-1).astype(float))
    p = s.masks.astype(bool).mean(0).reshape(-1)
    assert np.allclose([m["target_annotator_variance"] for m in meta], p * (1 - p))
    var = np.array([m["target_sample_variance"] for m in meta])
    assert var.min() >= 0 and var.max() <= 0.25 and var.max() > 0
    assert {m["concept_sex=F"] for m in meta} == {1.0 if s.meta["sex"] == "F" else 0.0}
    groups = feats.manifest["extra"]["concept_groups"]
    assert groups["sample_variance"] == "uncertainty" and groups["lung"] == "structure"


def test_a_lung_field_ssn_keeps_the_nodule_targets_and_the_lung_concept(runs, tmp_path):
    feats = _record(runs, "nodules-lung-ssn", H.SEG_FEATURES, tmp_path / "f")
    factor = _record(runs, "nodules-lung-ssn", H.SEG_COV_FACTOR, tmp_path / "c")
    assert (feats.d_model, factor.d_model) == (8, 6)  # rank 2 x 3 classes
    assert feats.manifest["extra"]["lung_class"] is True
    two = {study_key(s.meta)[0]: s for s in load_dataset("phantom-nodules", runs["phantom"],
                                                         None, 32, 32)}  # fmt: skip
    for sid, (_, meta) in _by_study(feats).items():
        s = two[sid]  # the graders' nodule masks, without the lung field
        p = (s.masks > 0).mean(0).reshape(-1)
        assert np.allclose([m["target_annotator_variance"] for m in meta], p * (1 - p))
        assert np.allclose([m["concept_annotated"] for m in meta], p)
        lung = np.array([m["concept_lung"] for m in meta])
        assert 0.2 < lung.mean() < 1  # the lung field concept at each position, as before
        var = np.array([m["target_sample_variance"] for m in meta])
        assert var.min() >= 0 and var.max() <= 0.25


def test_whole_image_tokens_are_image_kind_with_area_coverage(runs, tmp_path):
    store = _record(runs, "lungs-unet", H.SEG_BOTTLENECK, tmp_path / "b", pool=2)
    samples = {study_key(s.meta)[0]: s for s in load_dataset("phantom-lungs", runs["phantom"],
                                                               None, 32, 32)}  # fmt: skip
    for sid, (acts, meta) in _by_study(store).items():
        assert acts.shape == (8 * 8, 8) and {m["kind"] for m in meta} == {"image"}  # 16 / 2
        from segmentation.io import read_mask

        folder = samples[sid].meta["mask_dir"]
        lung = read_mask(f"{folder}/left_lung.png") | read_mask(f"{folder}/right_lung.png")
        want = patch_coverage(lung.astype(np.float32), 8, 1)
        assert np.allclose([m["concept_lung"] for m in meta], want)
        assert "target_sample_variance" not in meta[0]  # a U-Net has no samples
    assert store.manifest["extra"]["pool"] == 2 and store.manifest["extra"]["seg_model"] == "unet"


def test_semantic_gan_w_plus_and_synthesis_maps(runs, tmp_path):
    assert L.hooks_of(L.open_run(runs["lungs-gan"]))[:2] == (
        H.GAN_W_PLUS,
        "generator.blocks.0.hook_out",
    )
    w = _record(runs, "lungs-gan", H.GAN_W_PLUS, tmp_path / "w")
    acts, meta = next(iter(_by_study(w).values()))
    assert acts.shape == (8, 16) and [m["token"] for m in meta] == [f"w{i}" for i in range(8)]
    assert {m["kind"] for m in meta} == {"latent"} and "concept_lung" not in meta[0]
    assert "concept_sex=F" in meta[0]
    block = _record(runs, "lungs-gan", H.generator_block_name(2), tmp_path / "g")
    again = _record(runs, "lungs-gan", H.generator_block_name(2), tmp_path / "g2")
    assert block.layer == 2 and block.n_tokens == 8 * 16 * 16  # 16 px map, 8 studies
    first = torch.cat([a for a, _ in block.iter_shards()])
    torch.testing.assert_close(first, torch.cat([a for a, _ in again.iter_shards()]))  # seeded


def test_resume_after_a_kill_records_each_study_once(runs, tmp_path, monkeypatch):
    real, calls = L._study_tokens, []

    def dies(*args):
        if len(calls) == 4:  # the first call is the width probe
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(L, "_study_tokens", dies)
    with pytest.raises(KeyboardInterrupt):
        _record(runs, "nodules-ssn", H.SEG_BOTTLENECK, tmp_path / "r", shard_tokens=200)
    monkeypatch.setattr(L, "_study_tokens", real)
    partial = ActivationStore(tmp_path / "r").manifest["studies_complete"]
    assert 0 < len(partial) < 8
    done = _record(runs, "nodules-ssn", H.SEG_BOTTLENECK, tmp_path / "r", shard_tokens=200)
    clean = _record(runs, "nodules-ssn", H.SEG_BOTTLENECK, tmp_path / "clean")
    ids = done.manifest["studies_complete"]
    assert len(ids) == len(set(ids)) == 8
    a, b = _by_study(done), _by_study(clean)
    for sid in b:
        torch.testing.assert_close(a[sid][0], b[sid][0])
    with pytest.raises(StoreError, match="pool"):
        _record(runs, "nodules-ssn", H.SEG_BOTTLENECK, tmp_path / "r", pool=2)


def test_wrong_hooks_and_flags_are_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="has no hook 'head.hook_cov_factor'"):
        _record(runs, "nodules-diag", H.SEG_COV_FACTOR, tmp_path / "a")
    with pytest.raises(ValueError, match="--hook is required"):
        _record(runs, "lungs-unet", "", tmp_path / "b")
    with pytest.raises(ValueError, match="SemanticGAN runs only"):
        _record(runs, "lungs-unet", H.SEG_FEATURES, tmp_path / "c", tto_steps=3)
    with pytest.raises(FileNotFoundError, match="no segmentation run"):
        record(RecordConfig(model="segmentation:/nonexistent", hook=H.SEG_FEATURES))
    assert issubclass(RecordError, RuntimeError)


def test_train_sae_and_analyse_run_unchanged_on_a_latent_store(runs, tmp_path, capsys):
    from workbench.analyse.run import main as analyse_main
    from workbench.train_sae import main as train_main

    store = _record(runs, "nodules-ssn", H.SEG_FEATURES, tmp_path / "run" / "activations")
    small = ["--d-sae", "16", "--k", "4", "--group-sizes", "4,12", "--batch-size", "256",
             "--warmup-steps", "5", "--threshold-start-step", "5", "--log-every", "5",
             "--no-progress", "--device", "cpu", "--norm-batches", "2", "--buffer-tokens",
             "2000", "--tokens", "3000"]  # fmt: skip
    assert train_main(["--run", str(tmp_path / "run"), *small]) == 0
    assert analyse_main(["--run", str(tmp_path / "run"), "--report"]) == 0
    printed = capsys.readouterr().out
    assert "token-level concepts" in printed and "sample_variance" in printed
    assert "nodule_annotator_0" in printed
    assert store.hook_name in (tmp_path / "run" / "sae" / "cfg.json").read_text()


def test_demo_step_builds_the_latent_run(runs, tmp_path):
    import shutil

    from workbench import db
    from workbench.demo import DemoConfig, step_seg_latents
    from workbench.run import RunLayout

    layout = RunLayout(tmp_path / "demo")
    assert step_seg_latents(DemoConfig(run=layout.root)).startswith("skipped")
    shutil.copytree(runs["nodules-ssn"], layout.segmentation / "nodules-ssn")
    report = step_seg_latents(DemoConfig(run=layout.root))
    assert "token-level concepts" in report and "sample_variance" in report
    latent = RunLayout(layout.seg_latents)
    assert ActivationStore(latent.activations).hook_name == H.SEG_FEATURES
    con = db.connect(latent.root)
    try:
        n = con.execute("SELECT count(*) FROM feature_token_concepts").fetchone()[0]
    finally:
        con.close()
    assert n > 0
    assert step_seg_latents(DemoConfig(run=layout.root)) == report  # a rerun reuses everything
