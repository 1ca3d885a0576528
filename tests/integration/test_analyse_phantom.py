"""analyse on a real (tiny) phantom dataset: the readers, reports, labels and recovery table.

Activations are planted from the phantom's ground truth: coordinate j carries concept j of the
findings and devices on one image token of each study where it is present, so feature j must
recover concept j with AUROC 1 through the whole path (MIMIC-layout CSVs, report files,
phantom-labels.csv, CheXpert labels, concept_recovery, the --report text).
"""

from __future__ import annotations

import csv

import pytest
import torch

from tests.fixtures.analyse_world import HOOK, planted_sae
from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse, recovery_report
from workbench.cxr.findings import DEVICES, FINDINGS
from workbench.sae import save_sae
from workbench.store import StoreWriter

pytestmark = pytest.mark.slow  # generating the phantom takes a few seconds on a busy CPU
CONCEPTS = FINDINGS + DEVICES  # 13 concepts -> coordinates 0..12
D = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from workbench.cxr.phantom.run import PhantomConfig, generate

    run = tmp_path_factory.mktemp("phantom_run")
    generate(PhantomConfig(out=run / "phantom", studies=24, size=64, seed=3, masks=False))
    with open(run / "phantom" / "phantom-labels.csv", newline="") as fh:
        truth = list(csv.DictReader(fh))
    w = StoreWriter(run / "activations", model="tiny", layer=1, hook_name=HOOK, d_model=D)
    for rec in truth:
        acts = torch.zeros(6, D)
        for j, concept in enumerate(CONCEPTS):
            if rec[concept] == "1":
                acts[0, j] = 1.5 + j / 10
        kinds = ["image"] * 4 + ["report"] * 2
        meta = {
            "subject_id": [int(rec["subject_id"])] * 6,
            "position": list(range(6)),
            "token_id": [5] * 6,
            "token": ["<image>"] * 4 + [" no", " effusion"],
            "kind": kinds,
            "patch_row": [0, 0, 1, 1, None, None],
            "patch_col": [0, 1, 0, 1, None, None],
        }
        w.add(int(rec["study_id"]), acts, meta)
    w.close()
    save_sae(planted_sae(d=D), run / "sae")
    analyse(AnalyseConfig(run=run))
    return run


def test_every_present_concept_is_recovered_by_its_planted_feature(run):
    con = db.connect(run)
    rows = con.execute(
        "SELECT concept, n_pos, best_feature, auroc, recovered "
        "FROM concept_recovery WHERE category <> 'change'"
    ).fetchall()
    assert {r[0] for r in rows} == set(CONCEPTS)
    scored = [r for r in rows if r[1] > 0]
    assert len(scored) >= 8
    for concept, _, feat, auroc, ok in scored:
        assert (feat, auroc, ok) == (CONCEPTS.index(concept), 1.0, True), concept


def test_studies_come_from_the_dataset(run):
    con = db.connect(run)
    got = con.execute(
        "SELECT count(*), count(split), count(findings), bool_and(has_chexpert), "
        "bool_and(has_phantom), count(frontal_path) FROM studies"
    ).fetchone()
    assert got[0] == 24 and got[1] == 24 and got[2] >= 20 and got[3] and got[4] and got[5] == 24
    n_chexpert = con.execute("SELECT count(*) FROM concepts WHERE source = 'chexpert'").fetchone()
    assert n_chexpert == (14,)


def test_report_text(run):
    text = recovery_report(run)
    n = sum(1 for c in FINDINGS if f"\n{c} " in "\n" + text)
    assert n == len(FINDINGS)
    assert "findings recovered (AUROC >= 0.95): " in text
    last = text.strip().splitlines()[-1]
    hits, total = last.split(": ")[1].split(" of the ")[0], last.split(" of the ")[1].split()[0]
    assert hits == total  # every scored finding is recovered
