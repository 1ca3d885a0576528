"""The SemanticGAN vs U-Net study end to end on a tiny generated phantom (32 px, a few steps)."""

import json

import duckdb
import numpy as np
import pytest
from PIL import Image

from segmentation.study import StudyConfig, main, parse_ood, run_study
from workbench.config import ConfigError

pytestmark = [pytest.mark.usefixtures("single_threaded"), pytest.mark.slow]

UNET = """model = "unet"
dataset = "phantom-lungs"
image_size = 32
channels = [4, 8]
recomb_channels = 8
steps = 3
batch_size = 4
"""
GAN = """model = "semantic-gan"
dataset = "phantom-lungs"
image_size = 32
latent_dim = 16
n_mlp = 2
channel_base = 256
channel_max = 16
dseg_ndf = 8
enc_width = 8
enc_feature_dim = 16
steps = 3
enc_steps = 2
batch_size = 4
tto_steps = 2
"""


def _montgomery(root, n=3):
    """A Montgomery-layout fixture: CXR_png, ManualMask/{left,right}Mask, ClinicalReadings."""
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"MCUCXR_{i:04d}_0.png"
        img = (rng.random((40, 40)) * 255).astype(np.uint8)
        for sub, arr in (
            ("CXR_png", img),
            ("ManualMask/leftMask", None),
            ("ManualMask/rightMask", None),
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
            if arr is None:
                arr = np.zeros((40, 40), np.uint8)
                arr[8:32, (24 if "left" in sub else 6) : (34 if "left" in sub else 16)] = 255
            Image.fromarray(arr).save(root / sub / name)
        (root / "ClinicalReadings").mkdir(exist_ok=True)
        (root / "ClinicalReadings" / name.replace(".png", ".txt")).write_text(
            f"Patient's Sex: {'F' if i % 2 else 'M'}\nPatient's Age: 0{40 + i}Y\n"
        )
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from workbench.cxr.phantom.run import PhantomConfig, generate

    tmp = tmp_path_factory.mktemp("study")
    phantom = tmp / "phantom"
    generate(PhantomConfig(out=phantom, studies=30, size=64, seed=2, train_frac=0.6,
                           validate_frac=0.1))  # fmt: skip
    (tmp / "unet.toml").write_text(UNET)
    (tmp / "gan.toml").write_text(GAN)
    cfg = StudyConfig(
        data=phantom, out=tmp / "out", fractions=(0.5, 1.0), seeds=(0, 1),
        unet_preset=tmp / "unet.toml", semgan_preset=tmp / "gan.toml",
        robustness=("noise", "scanner"), robustness_fractions=(0.5,), scanner_strengths=(1.0,),
        imbalance="sex=F:0.75", imbalance_fraction=1.0, n_boot=100, db=tmp / "f.duckdb",
        ood=(f"montgomery={_montgomery(tmp / 'mc')}",), max_test_images=6,
        robustness_images=4, robustness_levels=2, imbalance_seeds=(1,), workers=2,
    )  # fmt: skip
    return cfg, run_study(cfg)


def test_every_analysis_has_rows(study):
    cfg, tables = study
    analyses = {r["analysis"] for r in tables["rows"]}
    assert analyses == {
        "fractions", "fraction_difference", "robustness", "robustness_drop",
        "robustness_clean", "subgroups", "subgroup_gap", "imbalance_gap_change", "ood",
    }  # fmt: skip
    assert set(tables["verdicts"]) == {"0.5", "1"}
    assert set(tables["verdicts"].values()) <= {"helps", "hurts", "no difference shown"}
    for r in tables["rows"]:
        assert (
            r["low"] <= r["value"] + 1e-9
            and r["value"] <= r["high"] + 1e-9
            or (r["analysis"] in ("subgroup_gap", "imbalance_gap_change"))
        )
    ood = [r for r in tables["rows"] if r["analysis"] == "ood"]
    assert {r["dataset"] for r in ood} == {"montgomery"}
    conds = {
        (r["condition"], r["strength"]) for r in tables["rows"] if r["analysis"] == "robustness"
    }
    assert conds == {("noise", 0.02), ("noise", 0.2), ("scanner", 1.0)}  # robustness_levels=2
    for r in tables["rows"]:  # perturbed sets, their clean point and drops: the first 4 images
        if r["analysis"].startswith("robustness"):
            assert r["n_images"] == 4, r
        elif r["analysis"] == "fractions":
            assert r["n_images"] > 4 and r["n_seeds"] == 2, r  # all 5 test images
    imbalanced = {r["train_set"] for r in tables["rows"] if r["analysis"] == "subgroup_gap"}
    assert imbalanced == {"full", "imbalanced", "balanced"}


def test_outputs_on_disk_and_in_duckdb(study):
    cfg, tables = study
    text = (cfg.out / "summary.md").read_text()
    for heading in ("Labelled fractions", "Robustness", "Subgroups", "Out of domain"):
        assert f"## {heading}" in text
    for png in ("fractions.png", "robustness.png", "subgroups.png"):
        assert Image.open(cfg.out / png).size[0] > 200
    grid = Image.open(cfg.out / "semantic-gan-samples.png")  # 16 samples: 8 x (image, mask)
    assert grid.size == (8 * 32, 4 * 32) and "semantic-gan-samples.png" in text
    assert json.loads((cfg.out / "tables.json").read_text()) == json.loads(json.dumps(tables))
    con = duckdb.connect(str(cfg.db), read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM segmentation_study").fetchone()[0]
        models = {
            m for (m,) in con.execute("SELECT DISTINCT model FROM segmentation_results").fetchall()
        }
    finally:
        con.close()
    assert n == len(tables["rows"])
    assert "semantic-gan[full,f=0.5,s=0]" in models and "unet[imbalanced,f=1,s=1]" in models
    assert "unet[imbalanced,f=1,s=0]" not in models  # imbalance_seeds=(1,)


def test_rerun_reuses_runs_and_scores(study):
    cfg, _ = study
    ledger = cfg.out / "per_image.jsonl"
    lines = ledger.read_text().count("\n")
    model_pt = cfg.out / "runs" / "semantic-gan" / "full" / "f0.5-s0" / "model.pt"
    mtime = model_pt.stat().st_mtime
    argv = ["--preset", str(cfg.out / "study.toml")]
    (cfg.out / "study.toml").write_text(
        "\n".join(
            f"{k} = {json.dumps(v)}"
            for k, v in json.loads((cfg.out / "study-cfg.json").read_text()).items()
            if v is not None
        )
    )
    assert main(argv) == 0
    assert ledger.read_text().count("\n") == lines and model_pt.stat().st_mtime == mtime


def test_bad_study_configs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="models"):
        StudyConfig(models=("unet", "ssn")).validate()
    with pytest.raises(ConfigError, match="robustness"):
        StudyConfig(robustness=("fog",)).validate()
    with pytest.raises(ValueError, match="NAME=ROOT"):
        parse_ood("lidc=/x")


def test_resume_scores_only_what_is_missing(study):
    """A study stopped mid-scoring (rows of one test set lost) redoes that set only."""
    cfg, tables = study
    ledger = cfg.out / "per_image.jsonl"
    lines = ledger.read_text().splitlines()

    def lost(line):
        r = json.loads(line)
        return (r["model"], r["seed"], r["condition"], r["strength"]) == (
            "semantic-gan", 0, "noise", 0.2)  # fmt: skip

    kept = [ln for ln in lines if not lost(ln)]
    assert len(lines) - len(kept) == 4  # robustness_images
    ledger.write_text("".join(ln + "\n" for ln in kept))
    model_pt = cfg.out / "runs" / "semantic-gan" / "full" / "f0.5-s0" / "model.pt"
    mtime = model_pt.stat().st_mtime
    again = run_study(cfg)
    redone = ledger.read_text().splitlines()
    assert len(redone) == len(lines) and redone[: len(kept)] == kept
    assert all(lost(ln) for ln in redone[len(kept) :])
    assert model_pt.stat().st_mtime == mtime
    assert again["verdicts"] == tables["verdicts"]
