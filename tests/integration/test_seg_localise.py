"""Localisation scores apply to a whole-image segmentation latent store as they are.

Issue 18: "The pointing-game/localisation scores of the analyse issue apply directly." A lung
U-Net's pre-head features over a real phantom (findings and devices with masks and labels)
are recorded as ``kind = 'image'`` tokens, an SAE is trained and ``analyse`` run unchanged;
``feature_localisation`` must then score every finding and device that a recorded study has,
on a patch grid that is the same one the store's ``concept_<mask>`` coverage columns use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import db
from workbench.analyse.config import AnalyseConfig
from workbench.analyse.localise import patch_coverage, read_mask
from workbench.cxr.findings import DEVICES, FINDINGS
from workbench.models.hooks import SEG_FEATURES
from workbench.store import ActivationStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]

TINY = ["--image-size", "32", "--channels", "4,8", "--batch-size", "4", "--recomb-channels",
        "8", "--no-progress", "--threads", "1", "--steps", "3"]  # fmt: skip
SAE = ["--d-sae", "16", "--k", "4", "--group-sizes", "4,12", "--batch-size", "256",
       "--warmup-steps", "5", "--threshold-start-step", "5", "--log-every", "5",
       "--no-progress", "--device", "cpu", "--norm-batches", "2", "--buffer-tokens", "1000",
       "--tokens", "3000"]  # fmt: skip
GRID = 16  # 32 px features pooled 2 x 2


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from segmentation import train
    from workbench.analyse.run import main as analyse_main
    from workbench.cxr.phantom.run import PhantomConfig, generate
    from workbench.record.run import RecordConfig, record
    from workbench.train_sae import main as train_sae_main

    root = tmp_path_factory.mktemp("segloc")
    phantom = root / "phantom"
    generate(PhantomConfig(out=phantom, studies=24, size=128, seed=0))
    argv = ["--model", "unet", "--data", str(phantom), "--dataset", "phantom-lungs", *TINY]
    assert train.main([*argv, "--out", str(root / "lungs-unet")]) == 0
    record(RecordConfig(model=f"segmentation:{root / 'lungs-unet'}", hook=SEG_FEATURES,
                        out=root / "run" / "activations", pool=2, progress=False))  # fmt: skip
    assert train_sae_main(["--run", str(root / "run"), *SAE]) == 0
    assert analyse_main(["--run", str(root / "run"), "--device", "cpu"]) == 0
    return root / "run"


def _positives(con, phantom: Path) -> dict[str, list[tuple[int, Path]]]:
    """Per finding/device: (study, mask path) of the recorded studies positive for it."""
    rows = con.execute(
        """SELECT l.concept, l.study_id, s.subject_id, s.frontal_path
           FROM study_labels l JOIN studies s USING (study_id)
           WHERE l.source = 'phantom' AND l.value = 1 ORDER BY 1, 2"""
    ).fetchall()
    out: dict[str, list[tuple[int, Path]]] = {}
    for concept, study, subject, frontal in rows:
        s = str(subject)
        path = (phantom / "masks" / f"p{s[:2]}" / f"p{s}" / f"s{study}" / Path(frontal).stem
                / f"{concept}.png")  # fmt: skip
        if concept in FINDINGS + DEVICES and path.exists():
            out.setdefault(concept, []).append((study, path))
    return out


def test_pointing_game_scores_every_finding_of_a_whole_image_store(run):
    store = ActivationStore(run / "activations")
    phantom = Path(store.manifest["extra"]["data"])
    con = db.connect(run)
    try:
        positives = _positives(con, phantom)
        got = con.execute(
            "SELECT concept, min(n_studies), max(n_studies), count(*), "
            "count(*) FILTER (WHERE pointing_game BETWEEN 0 AND 1) "
            "FROM feature_localisation GROUP BY 1"
        ).fetchall()
        n_image = con.execute(
            "SELECT count(*) FROM feature_stats WHERE NOT dead AND frac_image >= ?",
            [AnalyseConfig().loc_min_image],
        ).fetchone()[0]
    finally:
        con.close()
    assert positives and n_image > 0
    assert {r[0] for r in got} == set(positives)
    for concept, lo, hi, n_rows, n_scored in got:
        assert lo == hi == len(positives[concept]) and n_rows == n_scored == n_image


def test_localisation_grid_is_the_stores_own_coverage(run):
    """The masks analyse maps onto the token grid agree with each token's concept column."""
    store = ActivationStore(run / "activations")
    phantom = Path(store.manifest["extra"]["data"])
    meta = store.metadata_all().to_pylist()
    assert {m["kind"] for m in meta} == {"image"}
    con = db.connect(run)
    try:
        positives = _positives(con, phantom)
    finally:
        con.close()
    checked = 0
    for concept, pairs in positives.items():
        for study, path in pairs:
            want_RC = patch_coverage(read_mask(path), GRID, GRID)
            got_RC = np.zeros((GRID, GRID))
            for m in meta:
                if m["study_id"] == study:
                    got_RC[m["patch_row"], m["patch_col"]] = m[f"concept_{concept}"]
            torch.testing.assert_close(got_RC, want_RC, atol=0.02, rtol=0)
            checked += 1
    assert checked >= 3
