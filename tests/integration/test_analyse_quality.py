"""SAE quality through the recorded model: a tiny MAIRA-2 recorded on part of a tiny phantom.

The store holds 6 of the phantom's studies, so the others are held out. The signed-identity
SAE with a plain ReLU reconstructs every activation exactly (FVU 0, CE loss recovered 1); with
an unreachable threshold it reconstructs nothing (recovered 0). A model that is not the
recorded one is caught and the figures fall back to stored activations.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.record_fixtures import make_phantom, save_tiny_maira2
from workbench import db
from workbench.analyse.report import meaning_report
from workbench.analyse.run import AnalyseConfig, analyse
from workbench.record.run import RecordConfig, record
from workbench.sae import save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import ActivationStore
from workbench.ui import runinfo
from workbench.ui.context import open_context

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
N_STORED = 6


def _sae(store: ActivationStore, threshold: float):
    sae = signed_identity_sae(store.d_model, k=4, hook_name=store.hook_name)
    sae.threshold.fill_(threshold)  # -1: plain ReLU, relu(x) - relu(-x) = x exactly
    return sae


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality") / "run"
    make_phantom(root / "phantom", studies=10)
    model = save_tiny_maira2(root / "model", n_layers=4)
    out = record(RecordConfig(model=str(model), run=root, limit=N_STORED, progress=False))
    store = ActivationStore(out)
    save_sae(_sae(store, -1.0), root / "sae")
    save_sae(_sae(store, 1e6), root / "sae-empty")
    return root


def _analyse(run, **kw) -> tuple[list[dict], list[str]]:
    analyse(AnalyseConfig(run=run, device="cpu", quality_studies=3, n_neighbors=2, **kw))
    con = db.connect(run)
    try:
        cur = con.execute("SELECT * FROM sae_quality ORDER BY n_groups")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    finally:
        con.close()
    return rows, notes


def test_exact_sae_on_held_out_studies(run):
    rows, notes = _analyse(run)
    stored = set(ActivationStore(run / "activations").manifest["studies_complete"])
    assert len(stored) == N_STORED
    assert [r["n_groups"] for r in rows] == [1, 2] and rows[-1]["n_latents"] == 96
    whole = rows[-1]
    assert whole["source"] == "model" and whole["held_out"] and whole["n_studies"] == 3
    assert whole["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert whole["ce_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert whole["ce_spliced"] == pytest.approx(whole["ce_clean"], abs=1e-4)
    assert whole["ce_zero_ablated"] > whole["ce_clean"] and whole["n_ce_tokens"] > 0
    assert rows[0]["fvu"] > 0.1  # the first group holds only +x[:24]
    assert rows[0]["ce_clean"] == whole["ce_clean"]  # one clean pass for every prefix
    assert not any("CE loss recovered not computed" in n for n in notes)
    report = meaning_report(run)
    assert "SAE quality on 3 held-out studies" in report
    assert "CE loss recovered by the whole SAE: 1.000 (target >= 0.9)" in report
    ctx = open_context(run)
    try:
        facts = runinfo.runs_view(ctx).facts
    finally:
        ctx.close()
    assert "<i>CE loss recovered</i>" in facts and "3 held-out studies" in facts
    assert "through the recorded model" in facts


def test_empty_reconstruction_recovers_nothing(run):
    rows, _ = _analyse(run, sae=run / "sae-empty")
    whole = rows[-1]
    assert whole["ce_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert whole["l0"] == 0 and whole["dead_frac"] == 1.0 and whole["fvu"] > 1.0


def test_another_model_falls_back_to_stored_activations(run, tmp_path):
    other = save_tiny_maira2(tmp_path / "other", n_layers=4, seed=1)
    rows, notes = _analyse(run, model=other)
    whole = rows[-1]
    assert whole["source"] == "store" and not whole["held_out"]
    assert whole["ce_recovered"] is None and whole["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert whole["n_studies"] == 3
    [note] = [n for n in notes if "CE loss recovered not computed" in n]
    assert "differ from the stored ones" in note
