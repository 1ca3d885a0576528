"""The SAE and analyse benchmarks and the GPU-scale script run end to end at tiny sizes (CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import duckdb
import pytest
import torch

from workbench import db
from workbench.analyse.run import AnalyseConfig, analyse
from workbench.sae import load_sae
from workbench.store import ActivationStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str):
    """Import a benchmark script as a module (the folder is not a package)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_sae_runs_interleaved_with_every_section(tmp_path):
    pytest.importorskip("sae_lens")
    out = tmp_path / "figures.json"
    argv = ["--d-in", "32", "--d-sae", "256", "--k", "4", "--batch", "256", "--steps", "6",
            "--eval-every", "2", "--threads", "1", "--shard-tokens", "1024", "--held-out", "512",
            "--peers", "ours,saelens-default,saelens-best", "--profile", "2", "--json", str(out),
            "--until-flat", "--flat-window", "1", "--flat-tol", "10",
            "--thr-tol", "10"]  # fmt: skip
    assert _script("bench_sae").main(argv) == 0
    fig = json.loads(out.read_text())
    sp, q = fig["speed"], fig["quality"]
    assert set(q) == {"ours", "saelens-default", "saelens-best"}
    # --flat-tol 10: every peer counts as flat after its second eval, at step 4 of 6
    assert all(row["step"] == 4 and row["converged"] for row in q.values())
    assert sp["ours"]["steps"] == 4 and sp["saelens-best"]["ours_speedup_wall"] > 0
    assert sp["ours"]["fraction_of_limit_wall"] > 0 and sp["limit_matmul_ms"] > 0
    for name in ("saelens-default", "saelens-best"):  # its inference FVU is the saved SAE's
        assert math.isclose(q[name]["fvu_inference"], q[name]["fvu_inference_as_saved"],
                            rel_tol=1e-4)  # fmt: skip
    assert "sae.select" in fig["profile"]["stages"]
    assert fig["best_settings"]["decoder_init_norm"].startswith("1.0")


def test_bench_sae_until_flat_waits_for_the_threshold_too():
    bench = _script("bench_sae")
    args = bench.parse(["--until-flat", "--flat-window", "2", "--flat-tol", "0.01",
                        "--thr-tol", "0.02"])  # fmt: skip
    fvu_flat = [{"fvu_batchtopk": 0.37, "threshold": t} for t in (0.9, 0.8, 0.7)]
    assert not bench.converged(fvu_flat, args)  # FVU flat, threshold still falling
    settled = [{"fvu_batchtopk": 0.37, "threshold": t} for t in (0.700, 0.699, 0.698)]
    assert bench.converged(settled, args)
    falling = [{"fvu_batchtopk": f, "threshold": 0.7} for f in (0.50, 0.45, 0.40)]
    assert not bench.converged(falling, args)  # threshold flat, FVU still falling


def test_bench_sae_estimate_projects_the_whole_run(tmp_path):
    pytest.importorskip("sae_lens")
    out = tmp_path / "estimate.json"
    argv = ["--d-in", "32", "--d-sae", "256", "--k", "4", "--batch", "256", "--tokens", "1e6",
            "--eval-every", "100", "--threads", "1", "--shard-tokens", "1024", "--held-out", "512",
            "--peers", "ours,saelens-best", "--estimate", "3", "--json", str(out)]  # fmt: skip
    assert _script("bench_sae").main(argv) == 0
    est = json.loads(out.read_text())
    assert est["steps_planned"] == 1_000_000 // 256 and est["steps_timed"] == 3
    assert set(est["median_step_s"]) == {"ours", "saelens-best", "limit"}
    per_step = sum(est["median_step_s"].values())
    want = (est["steps_planned"] * per_step + est["steps_planned"] // 100 * est["eval_s"]) / 3600
    assert est["projected_hours"] == pytest.approx(want) and est["projected_hours"] > 0


def test_bench_analyse_tiny_times_every_stage(tmp_path):
    """The tiny shape: a recorded store, and every analysis stage writes rows and is timed."""
    bench = _script("bench_analyse")
    result = bench.bench("tiny", tmp_path)
    assert result["tokens"] > 5000 and result["bare_encoding_cpu_s"] > 0
    assert 4 <= result["l0"] <= 12  # the SAE's thresholds give about k = 8 per token
    rows = result["stage_rows"]
    assert set(rows) == {"mentions", "assertion_selectivity", "feature_localisation",
                         "concept_probes", "sae_quality_ce"}  # fmt: skip
    assert all(n > 0 for n in rows.values()), rows
    steps = result["steps_cpu_s"]
    for step in ("encode pass", "mentions", "localisation", "probes", "SAE quality"):
        assert steps[step] > 0, (step, steps)
    assert result["analyse_cpu_s"] >= sum(steps.values()) - 0.1
    # the check sees a skipped stage: the same run analysed with the meaning stages off
    run = tmp_path / "tiny"
    analyse(AnalyseConfig(run=run, device="cpu", mention_scores=False, localise=False,
                          probe_folds=0, quality_studies=0))  # fmt: skip
    con = db.connect(run)
    try:
        assert set(bench.stage_rows(con).values()) == {0}
    finally:
        con.close()


def test_gpu_scale_tiny_runs_every_stage(tmp_path):
    pytest.importorskip("sae_lens")
    out = tmp_path / "report.json"
    assert _script("gpu_scale").main(["--tiny", "--out", str(tmp_path / "run"), "--json",
                                      str(out), "--device", "cpu"]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["record", "train_sae", "analyse"]
    for s in stages.values():
        assert s["tokens_per_s"] > 0 and 0 < s["fraction_of_matmul_limit"] < 10
    store = ActivationStore(tmp_path / "run" / "activations")
    assert store.hook_name == stages["record"]["hook"] and store.n_tokens > 0
    sae = load_sae(tmp_path / "run" / "sae")
    assert (sae.d_in, sae.d_sae, sae.k) == (store.d_model, 256, 8)
    assert (tmp_path / "run" / "features.duckdb").is_file()
    assert stages["train_sae"]["quality"]["saelens-best"]["fvu_batchtopk"] > 0


def test_semgan_estimate_plays_the_cpu_preset_through_two_workers():
    """bench_semgan's estimate for configs/seg-study-cpu.toml: every run priced, longest first
    on the worker free first (synthetic unit costs, nothing trained)."""
    bench = _script("bench_semgan")
    study = bench.load_config(bench.StudyConfig, bench.STUDY_PRESET)
    cost = {"gan_iter_s": 0.2, "enc_iter_s": 0.2, "tto_image_s": 0.1, "unet_step_s": 0.05,
            "load_image_s": 0.0, "render_image_s": 0.0, "phantom_study_s": 0.01}  # fmt: skip
    est = bench.estimate(study, cost, test_images=250, train_images=2000, studies=2500)
    # 2 models x (2 fractions x 2 seeds + imbalanced and balanced x 1 seed)
    assert est["runs"] == 12 and len(est["semantic_gan_run_s"]) == 6
    train = (study.gan_steps + study.enc_steps) * 0.2
    robust = train + (study.max_test_images + 26 * study.robustness_images) * 0.1
    plain = train + study.max_test_images * 0.1
    assert est["semantic_gan_run_s"] == [round(robust)] * 2 + [round(plain)] * 4
    assert est["unet_runs_s"] == round(6 * 400 * 0.05)
    per_worker = robust + 2 * plain + 3 * 400 * 0.05
    assert est["worker_busy_s"] == [round(per_worker)] * 2
    assert est["total_wall_s"] == round(per_worker + 2500 * 0.01 / 2)


def test_bench_mini_vision_capacity_trains_and_gates_each_tower(tmp_path, capsys):
    """Two tiny towers from scratch on one corpus: each trained the steps asked, each gated."""
    from workbench.cxr.phantom.run import PhantomConfig, generate

    phantom = tmp_path / "phantom"
    generate(PhantomConfig(out=phantom, studies=120, size=256, seed=3))
    argv = ["--threads", "1", "capacity", "--towers", "64x1", "64x2", "--steps", "2"]
    argv += ["--phantom", str(phantom), "--corpus", str(phantom), "--out", str(tmp_path / "o")]
    argv += ["--image-size", "128"]  # not the shipped 192: 8 x 8 patches of 16
    assert _script("bench_mini_vision").main(argv) == 0
    out = capsys.readouterr().out
    assert "tower 64x1: " in out and "tower 64x2: " in out
    assert out.count("| **passing** |") == 2  # one gate table per tower
    assert out.count("| >= 14 mm, CNR < 0.5 |") == 2  # and one nodule breakdown
    for spec in ("64x1", "64x2"):  # stage 1's own final state, with the steps asked
        state = torch.load(tmp_path / "o" / spec / "vision.pt", weights_only=True)
        assert state["stats"]["vision_steps_done"] == 2
    one = torch.load(tmp_path / "o" / "64x1" / "vision.pt", weights_only=True)["tower"]
    two = torch.load(tmp_path / "o" / "64x2" / "vision.pt", weights_only=True)["tower"]
    assert sum(v.numel() for v in two.values()) > sum(v.numel() for v in one.values())
    assert one["embeddings.position_embeddings"].shape[1] == 1 + 8 * 8  # --image-size 128


def test_bench_mini_vision_nodule_contrast_reads_the_surroundings():
    """A bright disc on flat ground stands out; the same disc beside a brighter organ does not;
    masks keep their area under the processor's resize."""
    bench = _script("bench_mini_vision")
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 16).numpy()
    rng = torch.Generator().manual_seed(0)
    ground = 0.05 * torch.randn(64, 64, generator=rng).numpy()
    assert bench.local_cnr(ground + 0.5 * disc, disc) > 5
    organ = (xx >= 37).numpy() * 3.0  # much denser than the disc, right beside it
    assert bench.local_cnr(ground + 0.5 * disc + organ, disc) < 0
    big = bench.input_mask(disc.repeat(2, 0).repeat(2, 1), 64)  # 128 px mask -> 64 px input
    assert abs(int(big.sum()) - int(disc.sum())) <= 4
    with pytest.raises(ValueError, match="square"):
        bench.input_mask(disc[:, :32], 16)
    with pytest.raises(ValueError, match="empty"):
        bench.local_cnr(ground, disc & False)


def test_steer_side_effects_reads_concentration_and_truth(tmp_path, capsys, monkeypatch):
    """Study 1 flips nodule in every SAE report (its baseline missed the true nodule), the
    others never: the top study carries every flip, and each flip moves toward the truth."""
    script = _script("steer_side_effects")
    con = duckdb.connect(str(tmp_path / "f.duckdb"))
    con.execute(
        "CREATE TABLE steering_results (method VARCHAR, direction VARCHAR, study_id BIGINT, "
        "side_effects VARCHAR[], details VARCHAR, eligible BOOLEAN, mode VARCHAR, "
        "strength DOUBLE)"
    )
    flip = json.dumps({"baseline_readings": {"nodule": 0}, "steered_readings": {"nodule": 1}})
    same = json.dumps({"baseline_readings": {}, "steered_readings": {}})
    rows = [("sae", "add", 1, ["nodule"], flip, True, "add", s) for s in (1.0, 2.0)]
    rows += [("sae", "add", sid, [], same, True, "add", 1.0) for sid in (2, 3)]
    rows += [("sae", "add", 1, ["nodule"], flip, True, "add", 8.0)]  # outside --strengths
    con.executemany("INSERT INTO steering_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.close()
    labels = tmp_path / "phantom-labels.csv"
    labels.write_text("subject_id,study_id,nodule\n1,1,1\n2,2,0\n3,3,0\n")
    argv = ["x", "--db", str(tmp_path / "f.duckdb"), "--labels", str(labels), "--top", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    out = capsys.readouterr().out
    assert "sae: 3 studies, 4 reports, side effects 0.500; top 1 carry 1.00; " in out
    assert "rate without them 0.000" in out
    assert "sae add: 2 flips, toward truth 1.00" in out
