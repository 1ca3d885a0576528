"""SAEs across libraries: ours in SAELens + TransformerLens, theirs in analyse and the app.

One tiny run (a Llama built from config, recorded at block 1 by the real ``record`` stage,
an SAE trained by the workbench's trainer) is shared by every test:

- our SAE loads with ``sae_lens.SAE.load_from_disk``, attaches to a ``HookedSAETransformer``
  and gives the workbench's feature activations and the workbench's spliced losses;
- an SAE trained by SAELens on the same store, and a dictionary_learning ``ae.pt``, are
  analysed by ``analyse`` and browsed by the app's handlers like ours.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.fixtures.interop_world import record_store, study_rows, write_model, write_texts
from tests.fixtures.sae_files import write_dictionary_learning
from workbench import db
from workbench.analyse.config import AnalyseConfig
from workbench.analyse.run import analyse
from workbench.analyse.splice import splice_losses
from workbench.interop import export_saelens, hooked_transformer, saelens_metadata, store_batches
from workbench.run import RunLayout
from workbench.sae import load_sae
from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import StoreSource
from workbench.sae.trainer import train_on
from workbench.ui import handlers, handlers_feature, runinfo
from workbench.ui.context import open_context

sae_lens = pytest.importorskip("sae_lens")
pytestmark = pytest.mark.usefixtures("single_threaded")
LAYER, D, D_SAE = 1, 48, 96


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run/model (tiny Llama), run/activations (block 1, all tokens), run/sae (ours)."""
    run = tmp_path_factory.mktemp("interop-sae")
    layout = RunLayout(run)
    write_model(layout.model)
    record_store(run, layout.model, write_texts(run / "texts.csv"), LAYER, layout.activations)
    cfg = TrainSAEConfig(
        out=layout.sae, d_sae=D_SAE, k=6, group_sizes=(24, 72), batch_size=64, tokens=64 * 40,
        warmup_steps=3, threshold_start_step=3, threshold_beta=0.9, norm_batches=2,
        buffer_tokens=1000, lr=0.004, device="cpu", progress=False, log_every=10,
    )  # fmt: skip
    train_on(StoreSource(layout.activations), cfg)
    return run


@pytest.fixture(scope="module")
def studies(run):
    return study_rows(RunLayout(run).activations)


def test_our_sae_in_hooked_sae_transformer_gives_our_feature_activations(run, studies):
    ours = load_sae(RunLayout(run).sae)
    theirs = sae_lens.SAE.load_from_disk(RunLayout(run).sae)
    assert theirs.cfg.metadata.hook_name == f"blocks.{LAYER}.hook_resid_post"
    tl = hooked_transformer(RunLayout(run).model, cls=sae_lens.HookedSAETransformer)
    tl.add_sae(theirs)
    fired = 0
    for ids, recorded in studies.values():
        _, cache = tl.run_with_cache(ids[None])
        acts = cache[f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_post"][0]
        expected = ours.encode(recorded)
        torch.testing.assert_close(acts, expected, rtol=1e-4, atol=1e-5)
        fired += int((expected > 0).sum())
    assert fired > 50  # the comparison is not one of zeros


def _batches(studies):
    return [{"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids))} for ids, _ in
            studies.values()]  # fmt: skip


def test_spliced_loss_equals_saelens_and_transformer_lens(run, studies):
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    ours = load_sae(RunLayout(run).sae)
    hf = load_model_hf(run)
    mine = splice_losses(hf, ours, _batches(studies))
    theirs = sae_lens.SAE.load_from_disk(RunLayout(run).sae)
    tl = hooked_transformer(RunLayout(run).model, cls=sae_lens.HookedSAETransformer)
    per_token = {"ce_loss_with_sae": [], "ce_loss_without_sae": [], "ce_loss_with_ablation": []}
    attached = []
    for ids, _ in studies.values():
        got = get_recons_loss(theirs, tl, ActivationScaler(), ids[None], False, True)
        for key in per_token:
            per_token[key].append(got[key].flatten())
        with torch.no_grad(), tl.saes(saes=[theirs]):  # attached at its hook: spliced in
            attached.append(tl(ids[None], return_type="loss", loss_per_token=True).flatten())
    mean = {k: float(torch.cat(v).mean()) for k, v in per_token.items()}
    assert mine.n_tokens == sum(len(ids) - 1 for ids, _ in studies.values())
    assert mine.clean == pytest.approx(mean["ce_loss_without_sae"], rel=1e-5)
    assert mine.spliced == pytest.approx(mean["ce_loss_with_sae"], rel=1e-5)
    assert mine.spliced == pytest.approx(float(torch.cat(attached).mean()), rel=1e-5)
    assert mine.zero_ablated == pytest.approx(mean["ce_loss_with_ablation"], rel=1e-5)
    score = (mean["ce_loss_with_ablation"] - mean["ce_loss_with_sae"]) / (
        mean["ce_loss_with_ablation"] - mean["ce_loss_without_sae"]
    )  # sae_lens.evals' ce_loss_score
    assert mine.recovered == pytest.approx(score, rel=1e-4, abs=1e-5)
    assert abs(mine.spliced - mine.clean) > 1e-4  # the SAE is not a perfect identity


def load_model_hf(run):
    from workbench.models.registry import load_model

    return load_model(RunLayout(run).model).model


def _analyse_and_browse(run, target, sae_dir, expected_lat):
    """analyse ``target`` with the SAE at ``sae_dir``; check tables and the app's pages."""
    layout = RunLayout(run)
    analyse(AnalyseConfig(run=target, store=layout.activations, sae=sae_dir, model=layout.model))
    con = db.connect(target, read_only=True)
    try:
        sql = "SELECT feature, n_fires FROM feature_stats ORDER BY feature"
        got = con.execute(sql).fetchnumpy()
    finally:
        con.close()
    np.testing.assert_array_equal(got["n_fires"], (expected_lat > 0).sum(0).numpy())
    ctx = open_context(target)
    try:
        assert ctx.status.sae_state == "trained" and ctx.status.has_db
        table = handlers.feature_table(ctx, sort="frequency")
        assert len(table.rows) == expected_lat.shape[1]
        top = int((expected_lat > 0).sum(0).argmax())
        view = handlers_feature.feature_view(ctx, top)
        assert f"{top}" in view.title and "Examples" in view.examples
        return runinfo.runs_view(ctx).facts
    finally:
        ctx.close()


def test_saelens_trained_sae_is_analysed_and_browsed_like_ours(run, studies, tmp_path):
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig
    from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig

    store = RunLayout(run).activations
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=D_SAE, k=6, matryoshka_widths=[24, 96])
    for key, value in saelens_metadata(store).items():
        setattr(cfg.metadata, key, value)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=64 * 20, train_batch_size_samples=64, lr=3e-3, lr_end=3e-3,
        lr_scheduler_name="constant", lr_warm_up_steps=0, device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    batches = store_batches(store, batch_size=64, seed=1)
    trained = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches, evaluator=None).fit()
    trained.save_inference_model(str(tmp_path / "their_sae"))
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "their_sae")
    x = torch.cat([rows for _, rows in studies.values()])
    with torch.no_grad():
        lat = theirs.encode(x)
    head = _analyse_and_browse(run, tmp_path / "run", tmp_path / "their_sae", lat)
    assert "SAELens" in head and str(tmp_path / "their_sae") in head


def test_dictionary_learning_sae_is_analysed_browsed_and_exported(run, studies, tmp_path):
    x = torch.cat([rows for _, rows in studies.values()])
    target = tmp_path / "run"
    state = write_dictionary_learning(
        RunLayout(target).sae, d_in=D, d_sae=D_SAE, k=6, sizes=(24, 72), thr=0.0,
        layer=LAYER, b_dec=x.mean(0),
    )  # fmt: skip
    pre = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    thr = float(pre[pre > 0].quantile(0.8))  # about a fifth of the positive latents fire
    state["threshold"] = torch.tensor(thr)
    torch.save(state, RunLayout(target).sae / "ae.pt")
    expected = pre * (pre > thr)  # dictionary_learning's encode(use_threshold=True)
    head = _analyse_and_browse(run, target, RunLayout(target).sae, expected)
    assert "dictionary_learning" in head
    out = export_saelens(RunLayout(target).sae / "ae.pt", tmp_path / "as_saelens")
    theirs = sae_lens.SAE.load_from_disk(out)
    assert theirs.cfg.metadata.hook_name == f"blocks.{LAYER}.hook_resid_post"
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), expected, rtol=1e-4, atol=1e-5)


def test_store_batches_serve_the_store(run):
    store = RunLayout(run).activations
    got = list(itertools.islice(store_batches(store, batch_size=50, seed=3), 4))
    assert all(b.shape == (50, D) and b.dtype == torch.float32 for b in got)
    rows = torch.cat([r for _, r in study_rows(store).values()])
    first = {tuple(r.tolist()) for r in rows}
    assert all(tuple(r.tolist()) in first for r in got[0])
    with pytest.raises(ValueError, match="batch_size"):
        next(store_batches(store, batch_size=0))
