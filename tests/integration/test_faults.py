"""Fault injection: every stage is SIGKILLed at random moments, then rerun to the end.

For record, train_sae, analyse, label, steer and seg-train, a clean run gives the reference
and its duration. Then, in each round, a fresh copy of the inputs is run and killed at a random
moment in ``[0, 0.9 x duration]``, its rerun killed at another, and a last rerun goes to the end
(:func:`tests.integration.fault_harness.kill_and_finish`). After every kill the outputs on
disk must be usable: old-and-complete or new-and-complete, no duplicated rows; at the end the
result must equal the clean run's (rows, and values bit for bit: every stage is
deterministic on one thread).

The ``ci`` variant runs 2 rounds per stage; the ``soak`` variant (``pytest --soak``) 8;
``WORKBENCH_FAULT_SEED`` picks other kill moments.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from tests.integration.fault_harness import kill_and_finish, timed
from workbench import db, generations

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
SEED = int(os.environ.get("WORKBENCH_FAULT_SEED", "15"))  # other seeds, other kill moments
ROUNDS = [pytest.param(2, id="ci"), pytest.param(8, id="soak", marks=pytest.mark.soak)]


def _query(run: Path, sql: str) -> list[tuple]:
    con = db.connect(run)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _no_duplicates(run: Path, table: str, key: str) -> None:
    dup = _query(run, f"SELECT {key}, count(*) FROM {table} GROUP BY ALL HAVING count(*) > 1")
    assert not dup, f"duplicated {table} rows: {dup[:3]}"


# ---------------------------------------------------------------- record


@pytest.fixture(scope="module")
def record_world(tmp_path_factory):
    from tests.fixtures.record_fixtures import make_phantom, save_tiny_maira2

    root = tmp_path_factory.mktemp("fault-record")
    return make_phantom(root / "phantom", studies=6), save_tiny_maira2(root / "model", n_layers=2)


def _store_rows(path: Path) -> dict[tuple[int, int], torch.Tensor]:
    from workbench.store import ActivationStore

    store, out = ActivationStore(path), {}
    for i in range(store.num_shards):
        acts, meta = store.shard(i), store.metadata(i)
        keys = zip(meta["study_id"].to_pylist(), meta["position"].to_pylist(), strict=True)
        for r, key in enumerate(keys):
            assert key not in out, f"row {key} stored twice"
            out[key] = acts[r]
    return out


def _store_is_whole(path: Path) -> None:
    """Every shard the manifest names is readable and complete; no study is stored twice."""
    from workbench.store import ActivationStore

    if not (path / "manifest.json").exists():
        return  # killed before the store was created: nothing written, nothing to check
    store = ActivationStore(path)
    done = store.manifest["studies_complete"]
    assert len(done) == len(set(done)), "a study is listed twice"
    rows = store.metadata_all()["row"].to_pylist()
    assert rows == list(range(store.n_tokens)), "rows are not dense"
    assert set(store.metadata_all()["study_id"].to_pylist()) == set(done)
    _store_rows(path)


@pytest.mark.parametrize("rounds", ROUNDS)
def test_record_survives_kills(record_world, tmp_path, rounds):
    from workbench.record.run import RecordConfig, record

    def cfg(out):
        phantom, model = record_world
        return RecordConfig(model=str(model), data=phantom, out=out, progress=False,
                            shard_tokens=150)  # fmt: skip

    duration = timed(lambda: record(cfg(tmp_path / "clean")))
    clean, rng = _store_rows(tmp_path / "clean"), random.Random(SEED)
    for r in range(rounds):
        out = tmp_path / f"faulty{r}"
        kill_and_finish(
            lambda out=out: record(cfg(out)), duration, lambda out=out: _store_is_whole(out), rng
        )
        resumed = _store_rows(out)
        assert clean.keys() == resumed.keys()
        assert all(torch.equal(clean[k], resumed[k]) for k in clean)


# ---------------------------------------------------------------- train_sae


@pytest.mark.parametrize("rounds", ROUNDS)
def test_train_sae_survives_kills(tmp_path, rounds):
    from tests.integration.test_train_sae import write_store
    from workbench.sae import load_sae
    from workbench.sae.config import TrainSAEConfig
    from workbench.sae.data import StoreSource
    from workbench.sae.io import sae_incomplete
    from workbench.sae.synthetic import superposition
    from workbench.sae.trainer import train_on

    store = write_store(tmp_path / "store", superposition(6000, 16, n_features=48, seed=1))

    def cfg(out):
        return TrainSAEConfig(
            store=store, out=out, d_sae=64, k=4, group_sizes=(8, 16, 40), batch_size=256,
            tokens=256 * 40, warmup_steps=3, threshold_start_step=2, dead_tokens=512,
            norm_batches=2, buffer_tokens=2000, progress=False, device="cpu",
            checkpoint_every=3, log_every=2,
        )  # fmt: skip

    duration = timed(lambda: train_on(StoreSource(store), cfg(tmp_path / "clean")))
    clean = load_sae(tmp_path / "clean").state_dict()
    rng = random.Random(SEED)
    for r in range(rounds):
        out = tmp_path / f"faulty{r}"

        def whole_or_absent(out=out) -> None:
            if sae_incomplete(out) is None:  # a complete artefact can only be the final one
                got = load_sae(out).state_dict()
                assert all(torch.equal(v, clean[k]) for k, v in got.items())

        train = lambda out=out: train_on(StoreSource(store), cfg(out))  # noqa: E731
        kill_and_finish(train, duration, whole_or_absent, rng)
        assert sae_incomplete(out) is None
        log = (out / "train_log.jsonl").read_text().splitlines()
        steps = [json.loads(x)["step"] for x in log]
        assert steps == sorted(set(steps)), "training log lines lost or repeated"


# ---------------------------------------------------------------- analyse


def _analysis(run: Path) -> dict[str, list[tuple]]:
    tables = {
        "feature_stats": "SELECT * FROM feature_stats ORDER BY feature",
        "feature_examples": "SELECT * EXCLUDE (context_tokens, context_acts) FROM "
        "feature_examples ORDER BY ALL",
        "feature_concepts": "SELECT * FROM feature_concepts ORDER BY ALL",
        "acts": "SELECT feature, count(*), sum(value) FROM feature_acts GROUP BY 1 ORDER BY 1",
    }
    return {name: _query(run, sql) for name, sql in tables.items()}


@pytest.mark.parametrize("rounds", ROUNDS)
def test_analyse_survives_kills(tmp_path, rounds):
    from tests.fixtures.analyse_world import make_run, planted_sae
    from workbench.analyse.run import AnalyseConfig, analyse
    from workbench.sae import save_sae

    def second_sae(run: Path) -> None:
        sae = planted_sae()
        with torch.no_grad():
            sae.b_enc_F.fill_(0.6)
        save_sae(sae, run / "sae")

    clean = make_run(tmp_path / "clean")
    second_sae(clean)
    duration = timed(lambda: analyse(AnalyseConfig(run=clean)))
    template = make_run(tmp_path / "template")
    analyse(AnalyseConfig(run=template))  # the old generation, with a label of another stage
    with db.rewrite(template) as con:
        con.execute("INSERT INTO feature_labels VALUES (0, 'llm', 'x', 1, 'm', '{}', NULL)")
    old_fp = _query(template, "SELECT sae_fingerprint FROM runs")[0][0]
    new_fp = _query(clean, "SELECT sae_fingerprint FROM runs")[0][0]
    second_sae(template)
    rng = random.Random(SEED)
    for r in range(rounds):
        run = shutil.copytree(template, tmp_path / f"faulty{r}", symlinks=True)
        check = lambda run=run: _old_or_new(run, {old_fp, new_fp})  # noqa: E731
        kill_and_finish(lambda run=run: analyse(AnalyseConfig(run=run)), duration, check, rng)
        assert _query(run, "SELECT sae_fingerprint FROM runs WHERE stage = 'analyse'") == [
            (new_fp,)
        ]
        assert _analysis(run) == _analysis(clean)
        assert not list(run.glob("*.tmp")) and len(list(run.glob("feature_acts-*"))) == 1


def _old_or_new(run: Path, fingerprints: set[str]) -> None:
    """One whole generation of either SAE; the other stage's label neither lost nor doubled."""
    assert generations.incomplete(run) is None
    fp = _query(run, "SELECT sae_fingerprint FROM runs WHERE stage = 'analyse'")
    assert len(fp) == 1 and fp[0][0] in fingerprints
    n_label = _query(
        run,
        "SELECT (SELECT count(*) FROM feature_labels WHERE method = 'llm') + "
        "(SELECT count(*) FROM retired_feature_labels)",
    )
    assert n_label == [(1,)], "the other stage's label was lost or duplicated"
    stats = _query(run, "SELECT sum(n_fires) FROM feature_stats")
    assert stats == _query(run, "SELECT count(*) FROM feature_acts"), "mixed generations"


# ---------------------------------------------------------------- label and steer


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted run of the label/steer tests, with a tiny MAIRA-2 and an SAE to steer."""
    from tests.fixtures import planted_run
    from workbench.models.hooks import resid_post_name
    from workbench.models.processor import Maira2Processor
    from workbench.models.tiny import tiny_maira2, tiny_tokenizer
    from workbench.sae import MatryoshkaSAE, save_sae

    run = tmp_path_factory.mktemp("fault-planted") / "run"
    planted_run.build(run, n_studies=6)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = tiny_maira2(tokenizer)
    model.save_pretrained(run / "model")
    Maira2Processor.for_model(model.config, tokenizer).save_pretrained(run / "model")
    torch.manual_seed(1)
    save_sae(MatryoshkaSAE(48, 16, k=4, hook_name=resid_post_name(1)), run / "sae-steer")
    return run


LABELS = "SELECT feature, method, label, score, model, details FROM feature_labels ORDER BY ALL"
SCORES = "SELECT * EXCLUDE (created_at) FROM feature_scores ORDER BY ALL"


@pytest.mark.parametrize("rounds", ROUNDS)
def test_label_survives_kills(planted, tmp_path, rounds):
    from workbench.label.run import LabelConfig, run_label

    clean = shutil.copytree(planted, tmp_path / "clean")
    duration = timed(lambda: run_label(LabelConfig(run=clean)))
    rng = random.Random(SEED)
    for r in range(rounds):
        run = shutil.copytree(planted, tmp_path / f"faulty{r}")

        def no_duplicates(run=run) -> None:
            _no_duplicates(run, "feature_labels", "feature, method")
            _no_duplicates(run, "feature_scores", "feature, method, scorer, metric")

        kill_and_finish(lambda run=run: run_label(LabelConfig(run=run)), duration, no_duplicates,
                        rng)  # fmt: skip
        assert _query(run, LABELS) == _query(clean, LABELS)
        assert _query(run, SCORES) == _query(clean, SCORES)


STEERED = "SELECT * EXCLUDE (created_at, details), details FROM steering_results ORDER BY ALL"


def _steered(run: Path) -> list[tuple]:
    """Steering rows, with the run directory's own path left out of ``details``."""
    rows = []
    for *cells, details in _query(run, STEERED):
        rows.append((*cells, {k: v for k, v in json.loads(details).items() if k != "model"}))
    return rows


@pytest.mark.parametrize("rounds", ROUNDS)
def test_steer_survives_kills(planted, tmp_path, rounds):
    from workbench.steer.run import SteerConfig, run_steer

    def cfg(run: Path) -> SteerConfig:  # rows written after every arm (write_every_s=0)
        return SteerConfig(run=run, sae=run / "sae-steer", concepts=("pacemaker",),
                           feature=(0, 1), strengths=(0.5, 80.0), methods=("sae", "prompt"),
                           unit="raw", n_studies=2, max_new_tokens=4, site="layer",
                           positions="all", write_every_s=0.0)  # fmt: skip

    clean = shutil.copytree(planted, tmp_path / "clean")
    duration = timed(lambda: run_steer(cfg(clean)))
    rng = random.Random(SEED)
    key = "method, direction, features, strength, study_id, concept"
    for r in range(rounds):
        run = shutil.copytree(planted, tmp_path / f"faulty{r}")
        check = lambda run=run: _no_duplicates(run, "steering_results", key)  # noqa: E731
        kill_and_finish(lambda run=run: run_steer(cfg(run)), duration, check, rng)
        assert _steered(run) == _steered(clean)


# ---------------------------------------------------------------- seg-train


@pytest.mark.parametrize("rounds", ROUNDS)
def test_seg_train_survives_kills(tmp_path, rounds):
    from segmentation import train as tr
    from segmentation.fixtures import write_phantom_fixture
    from segmentation.models import load_model

    data = write_phantom_fixture(tmp_path / "phantom", studies=8, size=48)

    def cfg(out: Path):
        return tr.TrainConfig(
            model="ssn", data=data, dataset="phantom-nodules", out=out, steps=12,
            checkpoint_every=2, log_every=1, image_size=32, crop_size=32, channels=(4, 8),
            batch_size=4, recomb_channels=8, mc_samples=4, rank=2, progress=False, threads=1,
        )  # fmt: skip

    duration = timed(lambda: tr.train(cfg(tmp_path / "clean")))
    clean, _, _ = load_model(tmp_path / "clean")
    rng = random.Random(SEED)
    for r in range(rounds):
        out = tmp_path / f"faulty{r}"

        def log_is_whole(out=out) -> None:
            if (out / "log.jsonl").exists():
                lines = (out / "log.jsonl").read_text().splitlines()
                steps = [json.loads(x)["step"] for x in lines]
                assert steps == list(range(1, len(steps) + 1)), f"log steps {steps}"

        kill_and_finish(lambda out=out: tr.train(cfg(out)), duration, log_is_whole, rng)
        model, _, extra = load_model(out)
        assert extra["step"] == 12
        for name, tensor in clean.state_dict().items():
            assert torch.equal(tensor, model.state_dict()[name]), name
