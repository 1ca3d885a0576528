"""Train -> resume -> evaluate -> DuckDB, and the demo entry point, on a tiny phantom fixture."""

import json

import pytest
import torch

from segmentation import evaluate as ev
from segmentation import train as tr
from segmentation.data import DataError
from segmentation.demo import run as demo_run
from segmentation.fixtures import write_phantom_fixture
from segmentation.models import load_model
from segmentation.results_db import read_results
from workbench.config import ConfigError

TINY = [
    "--image-size",
    "32",
    "--crop-size",
    "32",
    "--channels",
    "4,8",
    "--batch-size",
    "4",
    "--recomb-channels",
    "8",
    "--no-progress",
    "--threads",
    "1",
]


pytestmark = pytest.mark.usefixtures("single_threaded")  # tiny tensors: one thread is fastest


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_fixture(tmp_path_factory.mktemp("ph"), studies=8, size=48)


def _train(phantom, out, model, steps, extra=()):
    argv = [
        "--model",
        model,
        "--data",
        str(phantom),
        "--dataset",
        "phantom-nodules",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--mc-samples",
        "4",
        "--rank",
        "2",
        *TINY,
        *extra,
    ]
    assert tr.main(argv) == 0


def test_train_resume_evaluate_and_store(phantom, tmp_path, capsys):
    run = tmp_path / "ssn"
    _train(phantom, run, "ssn", 3)
    first = torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]
    _train(phantom, run, "ssn", 5)  # resumes at 3, runs 2 more
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="rank"):  # resuming with another model is refused
        tr.train(
            tr.TrainConfig(
                **{
                    **json.loads((run / "cfg.json").read_text()),
                    "rank": 3,
                    "data": phantom,
                    "out": run,
                    "channels": (4, 8),
                }
            )
        )
    model, spec, extra = load_model(run)
    assert spec.kind == "ssn" and spec.ssn.rank == 2 and extra["step"] == 5
    assert any(not torch.equal(first[k], v) for k, v in model.state_dict().items())
    assert json.loads((run / "cfg.json").read_text())["model"] == "ssn"

    db = tmp_path / "features.duckdb"
    argv = [
        "--model-dir",
        str(run),
        "--data",
        str(phantom),
        "--dataset",
        "phantom-nodules",
        "--split",
        "test",
        "--num-samples",
        "6",
        "--db",
        str(db),
    ]
    assert ev.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= printed["sample_diversity"] <= 1 and "ged" in printed
    rows = read_results(db, model="ssn")
    metrics = {(r["subgroup"], r["metric"]) for r in rows}
    assert {
        ("all", "ged"),
        ("all", "dice"),
        ("all", "dice_annotator_3"),
        ("sex=M", "ece"),
    } <= metrics
    assert all(
        r["dataset"] == "phantom-nodules" and r["n_images"] == 2
        for r in rows
        if r["subgroup"] == "all"
    )
    # rerun replaces, never duplicates; a second model's rows are kept
    assert ev.main(argv) == 0
    assert len(read_results(db, model="ssn")) == len(rows)
    _train(phantom, tmp_path / "unet", "unet", 2)
    assert ev.main([*argv[:1], str(tmp_path / "unet"), *argv[2:]]) == 0
    unet = {
        r["metric"]: r["value"] for r in read_results(db, model="unet") if r["subgroup"] == "all"
    }
    assert unet["sample_diversity"] == 0.0  # deterministic model: identical samples
    assert len(read_results(db, model="ssn")) == len(rows)


def test_diag_model_with_roi_trains_and_evaluates(phantom, tmp_path):
    _train(phantom, tmp_path / "d", "ssn-diag", 2, ["--use-roi"])
    model, spec, extra = load_model(tmp_path / "d")
    assert spec.ssn.diagonal and model.head.cov_factor is None and extra["config"]["use_roi"]
    res = ev.evaluate(ev.EvalConfig(model_dir=tmp_path / "d", data=phantom, num_samples=4))
    per_image = res["per_image"]
    assert len(per_image) == 2 and all(0 <= r["metrics"]["ged"] <= 2 for r in per_image)
    assert (tmp_path / "d" / "eval-phantom-nodules-test.json").exists()


def test_lung_field_class_trains_and_is_scored_on_the_nodule(phantom, tmp_path):
    _train(phantom, tmp_path / "s3", "ssn", 2, ["--lung-class", "--num-classes", "3"])
    _train(phantom, tmp_path / "s2", "ssn", 2)
    model, spec, extra = load_model(tmp_path / "s3")
    assert spec.num_classes == 3 and model.head.cov_factor.out_channels == 2 * 3
    res = {
        n: ev.evaluate(ev.EvalConfig(model_dir=tmp_path / n, data=phantom, num_samples=4))
        for n in ("s2", "s3")
    }
    three, two = ({r["metric"]: r["value"] for r in res[n]["rows"] if r["subgroup"] == "all"}
                  for n in ("s3", "s2"))  # fmt: skip
    assert set(three) == set(two) | {"dice_lung_field"}
    # the graders' own diversity is the nodule's in both: the lung field adds no agreement
    assert three["annotator_diversity"] == pytest.approx(two["annotator_diversity"])
    assert 0 <= three["dice_lung_field"] <= 1 and 0 <= three["ged"] <= 2


def test_bad_inputs_fail_clearly(phantom, tmp_path):
    with pytest.raises(SystemExit):
        tr.main(["--model", "nope"])
    with pytest.raises(SystemExit):  # 36 px cannot pass the 3 pools of a 4-level U-Net
        tr.main(["--image-size", "36", "--data", str(phantom), "--out", str(tmp_path)])
    empty = write_phantom_fixture(tmp_path / "empty", studies=4, size=32, nodule_fraction=0)
    with pytest.raises(DataError, match="no phantom-nodules images"):
        tr.train(tr.TrainConfig(data=empty, out=tmp_path / "o", image_size=32, crop_size=32))
    with pytest.raises(ValueError, match="not a segmentation model"):
        ev.evaluate(ev.EvalConfig(model_dir=tmp_path / "missing", data=phantom))


@pytest.mark.slow
def test_demo_runs_every_task_within_budget(phantom, tmp_path):
    db = tmp_path / "f.duckdb"
    out = demo_run(phantom, tmp_path / "demo", budget_s=6, db=db, eval_images=2, num_samples=4)
    assert out["skipped"] == []
    for key in (
        "lungs_unet_dice",
        "lungs_semantic_gan_dice",
        "nodules_unet_ged",
        "nodules_ssn_ged",
        "nodules_ssn_sample_diversity",
        "nodules_annotator_diversity",
        "nodules_ssn_dice_lung_field",
    ):
        assert key in out and out[key] == out[key], key  # present and not NaN
    ssn = json.loads((tmp_path / "demo" / "nodules-ssn" / "cfg.json").read_text())
    assert ssn["lung_class"] and ssn["num_classes"] == 3  # the SSN sees the lung field
    assert "nodules_unet_dice_lung_field" not in out
    assert out["nodules_unet_sample_diversity"] == 0.0
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == out
    assert {r["dataset"] for r in read_results(db)} == {"phantom-lungs", "phantom-nodules"}
