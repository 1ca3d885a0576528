"""SAE quality sums: FVU, L0, dead and dense fractions per Matryoshka prefix, and the plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analyse.quality import DENSE_FREQ, QualityAccumulator, plan_quality
from workbench.sae import MatryoshkaSAE
from workbench.store import StoreWriter

pytestmark = pytest.mark.usefixtures("single_threaded")
HOOK = "blocks.0.hook_resid_post"


def _sae(d: int = 6, groups=(2, 4, 6)) -> MatryoshkaSAE:
    torch.manual_seed(0)
    sae = MatryoshkaSAE(
        d, sum(groups), k=3, group_sizes=groups, hook_name="blocks.0.hook_resid_post"
    )
    with torch.no_grad():
        sae.b_dec_D.copy_(torch.randn(d) * 0.1)
        sae.threshold.fill_(0.2)
    return sae


@torch.no_grad()
def test_sums_match_direct_figures_per_prefix():
    sae = _sae()
    x = torch.randn(50, 6) * 2 + 1
    acc = QualityAccumulator(sae)
    acc.update(sae, x[:20])
    acc.update(sae, x[20:], sae.encode(x[20:]))  # pre-encoded latents are used as given
    cols = acc.columns()
    lat = sae.encode(x)
    var = float((x - x.mean(0)).pow(2).sum())
    for g, end in enumerate(sae.group_ends):
        recon = sae.decode(lat, g + 1)
        assert cols["n_groups"][g] == g + 1 and cols["n_latents"][g] == end
        assert cols["fvu"][g] == pytest.approx(float((x - recon).pow(2).sum()) / var, rel=1e-5)
        assert cols["l0"][g] == pytest.approx(float((lat[:, :end] > 0).sum()) / 50)
        fires = (lat[:, :end] > 0).sum(0)
        assert cols["dead_frac"][g] == pytest.approx(float((fires == 0).float().mean()))
        dense = float((fires > DENSE_FREQ * 50).float().mean())
        assert cols["dense_frac"][g] == pytest.approx(dense)
    assert acc.n_tokens == 50


def test_silent_latents_are_dead_and_everywhere_latents_dense():
    sae = _sae(4, (2, 6))
    with torch.no_grad():
        sae.W_enc_DF.zero_()
        sae.b_enc_F.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]))  # latent 0 fires always
        sae.b_dec_D.zero_()
    acc = QualityAccumulator(sae)
    acc.update(sae, torch.randn(30, 4))
    cols = acc.columns()
    assert cols["dead_frac"] == [0.5, 7 / 8] and cols["dense_frac"] == [0.5, 1 / 8]
    assert cols["l0"] == [1.0, 1.0]


def test_empty_update_is_ignored_and_constant_tokens_have_no_fvu():
    sae = _sae()
    acc = QualityAccumulator(sae)
    acc.update(sae, torch.zeros(0, 6))
    acc.update(sae, torch.ones(5, 6))
    assert acc.n_tokens == 5 and acc.columns()["fvu"] == [None, None, None]


def _store(path, studies=(1, 2, 3, 4, 5)):
    w = StoreWriter(path, model="tiny", layer=0, hook_name=HOOK, d_model=6)
    row = {"subject_id": 9, "token_id": 1, "token": "a", "kind": "report", "section": "findings",
           "patch_row": None, "patch_col": None}  # fmt: skip
    for s in studies:
        meta = [{**row, "position": p} for p in range(3)]
        w.add(s, torch.randn(3, 6), meta)
    w.close()
    from workbench.store import ActivationStore

    return ActivationStore(path)


def test_plan_without_model_samples_stored_studies(tmp_path):
    store = _store(tmp_path / "acts")
    notes: list[str] = []
    plan = plan_quality(3, 0, store, None, torch.device("cpu"), notes)
    assert plan.mode == "store" and not plan.held_out and plan.adapter is None
    assert len(plan.store_sample) == 3 and set(plan.store_sample) <= {1, 2, 3, 4, 5}
    assert np.all(np.diff(plan.store_sample) > 0)
    assert "CE loss recovered not computed (no model)" in notes[-1]
    again = plan_quality(3, 0, store, None, torch.device("cpu"), [])
    assert list(again.store_sample) == list(plan.store_sample)  # seeded
    off = plan_quality(0, 0, store, None, torch.device("cpu"), notes)
    assert off.mode == "off" and "quality_studies = 0" in notes[-1]
    big = plan_quality(50, 0, store, None, torch.device("cpu"), [])
    assert sorted(big.store_sample) == [1, 2, 3, 4, 5]
    many = _store(tmp_path / "many", studies=range(100, 200))
    capped = plan_quality(50, 0, many, None, torch.device("cpu"), [])
    assert len(capped.store_sample) == 10  # a tenth of the store rides along the encode pass
