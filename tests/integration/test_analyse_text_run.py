"""A text-only run from a CSV of reports: the studies table and SAE quality on stored studies.

Every row of the CSV is recorded, so no study is held out: the SAE quality is measured on
stored studies through the recorded model (and says so), and the ``studies`` table carries
each report's text from the CSV as it would from MIMIC-CXR's CSVs.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.interop_world import FIRST_ID, TEXTS, record_store, write_model, write_texts
from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse
from workbench.sae import save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import ActivationStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]


def test_text_run_from_a_csv(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = write_model(run / "model")
    texts = write_texts(tmp_path / "reports.csv")
    store = ActivationStore(record_store(run, model, texts, 1, run / "activations"))
    sae = signed_identity_sae(store.d_model, k=4, hook_name=store.hook_name)
    sae.threshold.fill_(-1.0)  # exact reconstruction
    save_sae(sae, run / "sae")
    analyse(AnalyseConfig(run=run, device="cpu", quality_studies=8, n_neighbors=2))
    con = db.connect(run)
    try:
        studies = con.execute("SELECT study_id, findings, impression FROM studies").fetchall()
        quality = con.execute(
            "SELECT source, held_out, n_studies, fvu, ce_recovered FROM sae_quality "
            "ORDER BY n_groups DESC LIMIT 1"
        ).fetchone()
        notes = json.loads(con.execute("SELECT notes FROM runs").fetchone()[0])
    finally:
        con.close()
    assert sorted(studies) == [(FIRST_ID + i, t, None) for i, t in enumerate(TEXTS)]
    source, held_out, n_studies, fvu, recovered = quality
    assert (source, held_out, n_studies) == ("model", False, len(TEXTS))
    assert fvu == pytest.approx(0.0, abs=1e-6) and recovered == pytest.approx(1.0, abs=1e-3)
    assert "SAE quality on stored studies: every study of the data is stored" in notes
