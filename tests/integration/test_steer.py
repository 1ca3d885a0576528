"""``steer`` end to end on a tiny run: tiny MAIRA-2 on disk, tiny SAE, planted dataset and analysis.

The planted run's analysis chooses the candidate (feature 0 = pacemaker); a store of the
model's width, whose pacemaker studies are shifted along a known direction, feeds the
difference of means.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from workbench import db
from workbench.steer.config import SteerConfig
from workbench.steer.run import main, run_steer, summary_text

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
SAE_DIR, STORE_DIR = "sae-steer", "store-steer"
N_STUDIES = 12  # split: study i is 'test' when i % 5 == 0; pacemaker when i % 3 == 0
SHIFT = torch.linspace(-1.0, 1.0, 48)


def write_store(path, n: int) -> None:
    """48-wide activations: study i's tokens are noise, plus SHIFT when it has a pacemaker."""
    from tests.fixtures.planted_run import findings_of, study_id
    from workbench.models.hooks import resid_post_name
    from workbench.store import StoreWriter

    writer = StoreWriter(path, model="tiny", layer=1, hook_name=resid_post_name(1), d_model=48)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        acts = 0.01 * torch.randn(5, 48, generator=gen)
        if findings_of(i)["pacemaker"]:
            acts += SHIFT
        meta = [{"subject_id": 1, "position": p, "token_id": 0, "token": "t",
                 "kind": "report", "section": None, "patch_row": None, "patch_col": None}
                for p in range(5)]  # fmt: skip
        writer.add(study_id(i), acts, meta)
    writer.close()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tests.fixtures import planted_run
    from workbench.models.hooks import resid_post_name
    from workbench.models.processor import Maira2Processor
    from workbench.models.tiny import single_thread, tiny_maira2, tiny_tokenizer
    from workbench.sae import MatryoshkaSAE, save_sae

    run = tmp_path_factory.mktemp("steer") / "run"
    with single_thread():
        planted_run.build(run, n_studies=N_STUDIES)  # dataset + features.duckdb
        tokenizer = tiny_tokenizer()
        torch.manual_seed(0)
        model = tiny_maira2(tokenizer)
        model.save_pretrained(run / "model")
        Maira2Processor.for_model(model.config, tokenizer).save_pretrained(run / "model")
        torch.manual_seed(1)
        save_sae(MatryoshkaSAE(48, 16, k=4, hook_name=resid_post_name(1)), run / SAE_DIR)
        write_store(run / STORE_DIR, N_STUDIES)
        image_run(run)
    return run


def image_run(run) -> None:
    """<run>/image-tokens: a store of the tiny model's projector output, an SAE there, and the
    planted run's analysis tables standing in for its own (same studies and labels)."""
    from workbench.models.hooks import VISION_PROJECTOR
    from workbench.record.run import RecordConfig, record
    from workbench.run import RunLayout
    from workbench.sae import MatryoshkaSAE, save_sae

    nested = RunLayout(RunLayout(run).image_tokens)
    record(RecordConfig(model=str(run / "model"), data=run / "phantom", hook=VISION_PROJECTOR,
                        out=nested.activations, image_tokens="all", progress=False))  # fmt: skip
    torch.manual_seed(2)
    save_sae(MatryoshkaSAE(48, 16, k=4, hook_name=VISION_PROJECTOR), nested.sae)
    for path in run.glob("feature*"):
        shutil.copy2(path, nested.root / path.name, follow_symlinks=False)


@pytest.fixture
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def stored(run, where: str = "true"):
    con = db.connect(run)
    try:
        cur = con.execute(f"SELECT * FROM steering_results WHERE {where} "
                          "ORDER BY method, direction, strength, study_id")  # fmt: skip
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


def config(run, **kw):
    """The recorded block (site layer), as the evaluation ran before site image existed."""
    base = {"run": run, "sae": run / SAE_DIR, "store": run / STORE_DIR, "concepts": ("pacemaker",)}
    base |= {"unit": "raw", "strengths": (0.5, 80.0), "n_studies": 2, "max_new_tokens": 4}
    base |= {"site": "layer", "positions": "all", "n_candidates": 1}
    return SteerConfig(**(base | kw))


def test_evaluation_of_every_method_and_resume(run):
    out = run_steer(config(run))
    assert "candidate rule: study-level AUROC >= 0.75" in out
    assert re.search(r"pacemaker\s+feature 0 ", out)  # chosen from the analysis
    rows = stored(run)
    # held-out 'test' studies: 0 and 10 have no pacemaker (add: 2), 0 of 12 ... study 0 has one
    add = {r["study_id"] for r in rows if r["direction"] == "add"}
    remove = {r["study_id"] for r in rows if r["direction"] == "remove"}
    assert add == {50000005, 50000010} and remove == {50000000}
    by_arm = {(r["method"], r["direction"], r["strength"]) for r in rows}
    assert by_arm == {
        ("sae", "add", 0.5), ("sae", "add", 80.0), ("sae", "remove", -0.5),
        ("sae", "remove", -80.0), ("dim", "add", 0.5), ("dim", "add", 80.0),
        ("dim", "remove", -0.5), ("dim", "remove", -80.0), ("prompt", "add", 1.0),
        ("prompt", "remove", -1.0),
    }  # fmt: skip
    assert len(rows) == 3 * 5
    strong = [r for r in rows if abs(r["strength"]) == 80.0 and r["method"] == "sae"]
    assert all(r["baseline_text"] != r["steered_text"] for r in strong)
    assert all(r["baseline_ppl"] > 1.0 for r in rows)
    assert all(r["steered_ppl"] > 1.0 for r in rows if r["steered_text"].strip())
    assert all(not r["parses"] for r in rows if not r["steered_text"].strip())
    sae_row = next(r for r in rows if r["method"] == "sae")
    assert sae_row["features"] == [0] and sae_row["feature"] == 0 and sae_row["unit"] == "raw"
    dim_row = next(r for r in rows if r["method"] == "dim")
    assert dim_row["features"] == [] and dim_row["unit"] == "mean_diff"
    prompt = next(r for r in rows if r["method"] == "prompt" and r["direction"] == "add")
    assert "pacemaker" in json.loads(prompt["details"])["indication"]
    assert "operating point: best success" in out and "dim@" in out
    again = run_steer(config(run))  # resumed: nothing recomputed
    assert len(stored(run)) == 15 and again.split("\n", 2)[2] == out.split("\n", 2)[2]
    run_steer(config(run, overwrite=True, methods=("prompt",)))
    assert len(stored(run)) == 15
    con = db.connect(run)
    assert con.execute("SELECT count(*) FROM runs WHERE stage = 'steer'").fetchone()[0] == 3
    con.close()


def test_difference_of_means_comes_from_training_studies(run):
    from workbench.steer.config import SteerConfig as Cfg
    from workbench.steer.run import directions_for, make_plan

    cfg = config(run, methods=("dim",))
    plan = make_plan(cfg, run / "phantom")
    directions, notes = directions_for(cfg, plan, 48)
    assert notes == []
    d = directions["pacemaker"]
    torch.testing.assert_close(d.vector, SHIFT, atol=0.02, rtol=0)
    assert (d.n_pos, d.n_neg) == (3, 6)  # train-split studies 3, 6, 9 vs the other six
    _, narrow = directions_for(cfg, plan, 32)
    assert "48 wide, the model's residual stream 32" in narrow[0]
    assert isinstance(Cfg.limits.fget(cfg).max_ppl_ratio, float)


def test_cli_clamp_and_report(run, capsys):
    argv = ["--run", str(run), "--sae", str(run / SAE_DIR), "--store", str(run / STORE_DIR),
            "--concepts", "pacemaker", "--n-studies", "1", "--max-new-tokens", "3",
            "--site", "layer", "--n-candidates", "1"]  # fmt: skip
    clamp = ["--mode", "clamp", "--strengths", "2", "--methods", "sae", "--unit", "max_act"]
    assert main(argv + clamp + ["--positions", "generated+image"]) == 0
    capsys.readouterr()
    rows = stored(run)
    assert {(r["direction"], r["strength"]) for r in rows} == {
        ("add", 2.0), ("remove", 0.0), ("remove", -2.0),  # 0: ablation
    }  # fmt: skip
    assert {r["positions"] for r in rows} == {"image+generated"}
    con = db.connect(run)
    max_act = con.execute("SELECT max_act FROM feature_stats WHERE feature = 0").fetchone()[0]
    con.close()
    add = next(r for r in rows if r["direction"] == "add")
    assert json.loads(add["details"])["raw_strengths"] == {"0": pytest.approx(2 * max_act)}
    assert main(argv + clamp + ["--positions", "generated+image", "--report"]) == 0
    report = capsys.readouterr().out
    assert "pacemaker" in report and "operating point" in report
    assert main(argv + ["--positions", "words"]) == 1
    assert "'words' is not one of" in capsys.readouterr().out
    assert main(argv + ["--feature", "1", "--concepts", "pacemaker,nodule"]) == 1
    assert "exactly one --concepts" in capsys.readouterr().out


def test_documented_steering_query(run):
    run_steer(config(run, methods=("sae", "prompt"), directions=("add",)))
    doc = (Path(__file__).resolve().parents[2] / "docs" / "steering.md").read_text()
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", doc, re.S) if "steering_results" in b]
    assert blocks
    con = db.connect(run)
    try:
        results = [con.execute(sql).fetchall() for sql in blocks]
    finally:
        con.close()
    methods = {r[0] for r in results[0]}
    assert methods == {"sae", "prompt"}


def test_demo_step_steers_recovered_concepts(run):
    from workbench.steer.run import demo_step

    text = demo_step(run, n_studies=1, max_new_tokens=3)
    assert "candidate rule" in text and "operating point" in text
    rows = stored(run / "image-tokens")  # site image: the results live with the image SAE
    concepts = {r["concept"] for r in rows}
    assert concepts and concepts <= {"pacemaker", "pleural_effusion", "cardiomegaly"}
    assert {r["positions"] for r in rows} == {"image", "prompt"}


def test_steering_at_the_image_tokens(run, capsys):
    from workbench.sae import load_sae
    from workbench.steer.maps import image_maps_for
    from workbench.steer.run import make_plan

    cfg = config(run, site="image", positions="image", sae=None, store=None,
                 methods=("sae", "dim", "prompt", "counterfactual"), n_candidates=2)  # fmt: skip
    out = run_steer(cfg)
    assert "counterfactual skipped" in out  # the planted dataset is no phantom root
    rows = stored(run / "image-tokens")
    assert not stored(run)  # nothing written into the parent run's database
    units = {(r["method"], r["unit"], r["positions"]) for r in rows}
    assert units == {("sae", "adjusted_map", "image"), ("dim", "adjusted_diff", "image"),
                     ("prompt", "prompt", "prompt")}  # fmt: skip
    steered = [r for r in rows if r["method"] in ("sae", "dim")]
    details = json.loads(steered[0]["details"])
    assert details["hook_name"] == "vision.hook_projector_out"
    assert details["sections"] == ["current_frontal"]  # the planted studies have no lateral
    assert "site=vision.hook_projector_out" in details["variant"]
    strong = [r for r in steered if abs(r["strength"]) == 80.0]
    assert any(r["baseline_text"] != r["steered_text"] for r in strong)
    weak = [r for r in steered if abs(r["strength"]) == 0.5]
    assert weak and all(r["baseline_text"] == r["steered_text"] for r in weak)
    sae_row = next(r for r in rows if r["method"] == "sae")
    assert sae_row["features"] == [0]  # the analysis' only pacemaker candidate
    plan = make_plan(cfg, run / "phantom")
    maps, notes, _ = image_maps_for(cfg, plan, load_sae(run / "image-tokens" / "sae"))
    assert notes == [] and set(maps) == {("sae", "pacemaker"), ("dim", "pacemaker")}
    for m in maps.values():  # one [patches, d_model] map of the frontal image, fitted
        assert set(m) == {"current_frontal"} and m["current_frontal"].shape == (16, 48)
        assert m["current_frontal"].abs().sum() > 0
    assert main(["--run", str(run), "--concepts", "pacemaker", "--report"]) == 0
    assert "adjusted" not in capsys.readouterr().out  # units are columns, not printed
    shutil.rmtree(run / "image-tokens")
    assert main(["--run", str(run), "--concepts", "pacemaker"]) == 1
    assert "no image-token run" in capsys.readouterr().out
    assert main(["--run", str(run), "--positions", "all"]) == 1
    assert "need --site layer" in capsys.readouterr().out


def test_the_gap_rule_steers_the_features_carrying_the_gap(run):
    from workbench.sae import load_sae
    from workbench.steer.gap import gap_shares
    from workbench.steer.image import latent_transform, patch_regression
    from workbench.steer.maps import image_maps_for, projection
    from workbench.steer.run import make_plan

    cfg = config(run, site="image", positions="image", sae=None, store=None,
                 methods=("sae",), n_candidates=3, candidate_rule="gap")  # fmt: skip
    out = run_steer(cfg)
    assert "candidate rule (gap)" in out and "by gap share" in out
    features = {tuple(r["features"]) for r in stored(run / "image-tokens")}
    plan = make_plan(cfg, run / "phantom")
    sae = load_sae(run / "image-tokens" / "sae")
    _, _, chosen = image_maps_for(cfg, plan, sae)
    assert features == {chosen[0].features} and len(chosen[0].features) <= 3
    studies = {}
    for concept, by_study in plan.labels.items():
        for sid, value in by_study.items():
            studies.setdefault(sid, {})[concept] = value
    held = {c.study_id for cases in plan.cases.values() for c in cases}
    fit = [run / "image-tokens" / "activations", studies, plan.covariates, held]
    every = latent_transform(sae, range(sae.W_dec_FD.shape[0]))
    shares = gap_shares(patch_regression(*fit), patch_regression(*fit, transform=every),
                        sae.W_dec_FD, "pacemaker")  # fmt: skip
    top = torch.argsort(shares, descending=True)[: len(chosen[0].features)].tolist()
    assert list(chosen[0].features) == top and shares[top[-1]] > 0
    assert chosen[0].gap_share == pytest.approx(float(shares[top].sum()), rel=1e-5)
    with pytest.raises(ValueError, match="candidate_rule gap needs site image"):
        config(run, candidate_rule="gap").validate()
    along = config(run, site="image", positions="image", sae=None, store=None, methods=("sae",),
                   n_candidates=3, image_unit="along_dim")  # fmt: skip
    run_steer(along)
    units = {(r["unit"], "candidates=gap" in r["details"]) for r in stored(run / "image-tokens")}
    assert units == {("adjusted_map", True), ("along_dim", False)}  # two arms, both kept
    maps, _, _ = image_maps_for(along, plan, sae)
    dim_maps = patch_regression(*fit).concept_map("pacemaker", skip_unseen=True)
    assert projection(maps[("sae", "pacemaker")], dim_maps) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="image_unit applies at site image"):
        config(run, image_unit="along_dim").validate()
    null = config(run, site="image", positions="image", sae=None, store=None,
                  methods=("random",), strengths=(1.0,))  # fmt: skip
    text = run_steer(null)
    rows = stored(run / "image-tokens", "method = 'random'")
    assert {(r["unit"], r["direction"], r["strength"]) for r in rows} == {
        ("matched_norm", "add", 1.0), ("matched_norm", "remove", -1.0)}  # fmt: skip
    assert "null control" in text
    maps, _, _ = image_maps_for(null, plan, sae)
    rand = maps[("random", "pacemaker")]["current_frontal"]
    torch.testing.assert_close(rand.norm(dim=-1), dim_maps["current_frontal"].norm(dim=-1))
    with pytest.raises(ValueError, match="method random is a site-image control"):
        config(run, methods=("random",)).validate()
    both = config(run, site="image", positions="image", sae=None, store=None,
                  methods=("sae", "random"), strengths=(1.0,), n_candidates=2)  # fmt: skip
    run_steer(both)  # the SAE arms are stored: only the null of the SAE map is new
    matched = stored(run / "image-tokens", "method = 'random' AND len(features) > 0")
    sae_rows = stored(run / "image-tokens", "method = 'sae' AND unit = 'adjusted_map'")
    assert matched and {tuple(r["features"]) for r in matched} <= {
        tuple(r["features"]) for r in sae_rows}  # fmt: skip
    assert all("null_of=adjusted_map" in json.loads(r["details"])["variant"] for r in matched)
    maps, _, _ = image_maps_for(both, plan, sae)
    key = next(k for k in maps if k[0] == "random" and len(k) == 3)
    sae_map_ = maps[("sae", "pacemaker")]["current_frontal"]
    torch.testing.assert_close(maps[key]["current_frontal"].norm(dim=-1), sae_map_.norm(dim=-1))
    assert "null control" in summary_text(both)


def test_orthogonal_maps_move_no_other_concepts_gap(run):
    from workbench.sae import load_sae
    from workbench.steer.image import patch_regression
    from workbench.steer.maps import image_maps_for, labels_by_study, projection
    from workbench.steer.run import make_plan

    cfg = config(run, site="image", positions="image", sae=None, store=None, orthogonal=True,
                 methods=("sae", "dim", "random"), strengths=(1.0,), n_candidates=2)  # fmt: skip
    plan = make_plan(cfg, run / "phantom")
    maps, _, chosen = image_maps_for(cfg, plan, sae := load_sae(run / "image-tokens" / "sae"))
    held = {c.study_id for cases in plan.cases.values() for c in cases}
    dim = patch_regression(run / "image-tokens" / "activations", labels_by_study(plan.labels),
                           plan.covariates, held)  # fmt: skip
    others = [dim.concept_map(c, skip_unseen=True) for c in plan.covariates if c != "pacemaker"
              and any(n[c] for n in dim.n_pos.values())]  # fmt: skip
    plain, _, _ = image_maps_for(config(run, site="image", positions="image", sae=None,
                                        store=None, methods=("sae", "dim"), n_candidates=2),
                                 plan, sae)  # fmt: skip
    assert others
    for method in ("sae", "dim"):
        m = maps[(method, "pacemaker")]
        assert all(abs(projection(m, o)) < 1e-4 for o in others)
        assert max(abs(projection(plain[(method, "pacemaker")], o)) for o in others) > 1e-3
    null = maps[("random", "pacemaker")]["current_frontal"]
    dim_map = maps[("dim", "pacemaker")]["current_frontal"]
    torch.testing.assert_close(null.norm(dim=-1), dim_map.norm(dim=-1))
    run_steer(cfg)
    variants = {r["method"]: json.loads(r["details"])["variant"]
                for r in stored(run / "image-tokens")}  # fmt: skip
    assert {m for m, v in variants.items() if "maps=orthogonal" in v} == {"sae", "dim", "random"}
    assert chosen and "null control" in summary_text(cfg)
    with pytest.raises(ValueError, match="orthogonal applies to site image"):
        config(run, orthogonal=True).validate()


def test_clamp_at_the_image_tokens_scales_the_candidates(run):
    cfg = config(run, site="image", positions="image", sae=None, store=None, mode="clamp",
                 methods=("sae", "random"), strengths=(1.0, 2.0), n_candidates=2)  # fmt: skip
    text = run_steer(cfg)
    nulls = stored(run / "image-tokens", "method = 'random'")
    assert nulls and not any(r["features"] for r in nulls)  # only dim's null: no SAE map here
    rows = stored(run / "image-tokens", "method = 'sae'")
    assert {(r["unit"], r["mode"], r["direction"], r["strength"]) for r in rows} == {
        ("own_act", "clamp", "add", 1.0), ("own_act", "clamp", "add", 2.0),
        ("own_act", "clamp", "remove", -1.0), ("own_act", "clamp", "remove", -2.0)}  # fmt: skip
    assert all(json.loads(r["details"])["sections"] for r in rows) and "operating point" in text
    ablated = [r for r in rows if r["strength"] == -1.0]
    assert ablated and any(r["steered_text"] != r["baseline_text"] for r in rows)
    with pytest.raises(ValueError, match="mode clamp has its own unit"):
        config(run, site="image", positions="image", mode="clamp",
               image_unit="along_dim").validate()  # fmt: skip
    with pytest.raises(ValueError, match="positions must be image"):
        config(run, site="image", positions="all").validate()


def test_an_interrupted_run_keeps_its_rows_and_resumes(run, monkeypatch):
    from workbench.steer import evaluate

    real, calls = evaluate.Evaluator.run_chunk, []

    def failing(self, pairs, extra=()):
        calls.append(pairs)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, pairs, extra)

    monkeypatch.setattr(evaluate.Evaluator, "run_chunk", failing)
    with pytest.raises(KeyboardInterrupt):  # one report per batch: two done, the third fails
        run_steer(config(run, methods=("sae",), write_every_s=3600.0, batch_size=1))
    assert len(stored(run)) == 2  # written on the way out
    monkeypatch.setattr(evaluate.Evaluator, "run_chunk", real)
    run_steer(config(run, methods=("sae",)))
    assert len(stored(run)) == 2 * 2 + 2 * 1


def test_analyse_reruns_keep_steering_rows_old_and_new(run):
    from workbench.analyse.run import AnalyseConfig, analyse

    def reanalyse():
        analyse(AnalyseConfig(run=run, data=run / "phantom", device="cpu", top_k=8,
                              per_quantile=2, n_logits=0))  # fmt: skip

    with db.rewrite(run) as con:  # a table in the shape of an older version, with one row
        con.execute("DROP TABLE steering_results")
        con.execute(
            "CREATE TABLE steering_results (feature INTEGER, strength DOUBLE, study_id BIGINT, "
            "concept VARCHAR, baseline_text VARCHAR, steered_text VARCHAR, baseline_mentions "
            "BOOLEAN, steered_mentions BOOLEAN, details VARCHAR, created_at TIMESTAMP)"
        )
        con.execute(
            "INSERT INTO steering_results VALUES (0, 4, 7, 'x', 'a', 'b', 0, 0, '{}', NULL)"
        )
    reanalyse()
    assert [r["method"] for r in stored(run)] == [None]
    run_steer(config(run, methods=("prompt",), directions=("add",)))
    reanalyse()
    assert sorted(str(r["method"]) for r in stored(run)) == ["None", "prompt", "prompt"]
