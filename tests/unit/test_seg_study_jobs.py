"""The study's job plan: strengths per perturbation, job order, the ledger, run configs."""

from pathlib import Path

import pytest

from segmentation.perturb import PERTURBATIONS
from segmentation.study import StudyConfig, jobs
from segmentation.study_jobs import (
    Job,
    Ledger,
    RunKey,
    order,
    robustness_strengths,
    run_config,
    set_keys,
    worker_threads,
)
from workbench.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_robustness_levels_keep_the_mildest_and_strongest():
    assert robustness_strengths(StudyConfig(), "noise") == PERTURBATIONS["noise"].strengths
    two = StudyConfig(robustness_levels=2)
    assert robustness_strengths(two, "blur") == (0.5, 3.0)
    assert robustness_strengths(StudyConfig(robustness_levels=3), "gamma") == (0.5, 1.5, 2.0)
    assert robustness_strengths(two, "scanner") == (0.5, 1.0)  # scanner_strengths as given
    with pytest.raises(ConfigError, match="robustness_levels"):
        StudyConfig(robustness_levels=1).validate()


def test_job_plan_seeds_robustness_and_order():
    cfg = StudyConfig(fractions=(0.02, 1.0), seeds=(0, 1), robustness_fractions=(0.02,),
                      imbalance_seeds=(0,))  # fmt: skip
    plan = jobs(cfg, imbalanced_size=100)
    # 2 models x (2 fractions x 2 seeds + imbalanced/balanced x 1 seed)
    assert len(plan) == 12
    robust = {(j.key.model, j.key.fraction, j.key.seed) for j in plan if j.robust}
    assert robust == {("unet", 0.02, 0), ("semantic-gan", 0.02, 0)}
    subsets = {j.key.train_set: j.subset for j in plan if j.key.train_set != "full"}
    assert subsets == {"imbalanced": ("sex=F:0.9", 100), "balanced": ("sex=F:0.5", 100)}
    first = order(plan)
    assert first[0] == Job(RunKey("semantic-gan", 0.02, 0, "full"), robust=True)
    assert [j.key.model for j in first] == ["semantic-gan"] * 6 + ["unet"] * 6
    n_sets = len(set_keys(cfg, True))
    assert n_sets == 1 + sum(len(p.strengths) for p in PERTURBATIONS.values()) + 2


def test_ledger_knows_what_is_left(tmp_path):
    cfg = StudyConfig(out=tmp_path, robustness=("noise",), robustness_levels=2)
    job = Job(RunKey("unet", 0.5, 0, "full"), robust=True)
    ledger = Ledger(tmp_path / "per_image.jsonl")
    assert ledger.pending(cfg, job)  # no model yet
    run = tmp_path / "runs" / job.key.dirname()
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    base = job.key._asdict()
    for dataset, cond, strength in set_keys(cfg, True)[:-1]:
        ledger.add({**base, "dataset": dataset, "condition": cond, "strength": strength},
                   [{"id": "a", "dice": 1.0}])  # fmt: skip
    assert ledger.pending(cfg, job)  # noise 0.2 not scored
    assert not ledger.pending(cfg, job._replace(robust=False))
    reread = Ledger(tmp_path / "per_image.jsonl")
    assert reread.done == ledger.done and len(reread.done) == 2


def test_run_config_takes_the_study_threads_and_overrides(tmp_path):
    presets = ROOT / "configs"
    cfg = StudyConfig(out=tmp_path, semgan_preset=presets / "seg-phantom-lungs-semantic-gan.toml",
                      unet_preset=presets / "seg-phantom-lungs-unet.toml", gan_steps=7,
                      enc_steps=3, unet_steps=5, threads=2)  # fmt: skip
    gan = run_config(cfg, RunKey("semantic-gan", 0.02, 1, "full"), (None, None))
    assert (gan.steps, gan.enc_steps, gan.threads, gan.seed) == (7, 3, 2, 1)
    assert gan.out == tmp_path / "runs" / "semantic-gan" / "full" / "f0.02-s1"
    unet = run_config(cfg, RunKey("unet", 0.02, 1, "imbalanced"), ("sex=F:0.9", 50))
    assert (unet.steps, unet.threads, unet.train_subset, unet.train_subset_size) == (
        5, 2, "sex=F:0.9", 50)  # fmt: skip
    assert worker_threads(StudyConfig(workers=2, threads=3)) == 3
    assert worker_threads(StudyConfig(workers=64)) == 1
