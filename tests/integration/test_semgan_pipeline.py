"""SemanticGAN end to end at 32 px: seg-train -> interrupt -> resume -> seg-evaluate -> DuckDB."""

import json

import pytest
import torch

from segmentation import evaluate as ev
from segmentation import train as tr
from segmentation.fixtures import write_phantom_fixture
from segmentation.models import load_model
from segmentation.results_db import read_results
from segmentation.semantic_gan import train as sg
from workbench.config import ConfigError

pytestmark = pytest.mark.usefixtures("single_threaded")

TINY = [
    "--model", "semantic-gan", "--dataset", "phantom-lungs", "--image-size", "32",
    "--latent-dim", "16", "--n-mlp", "2", "--channel-base", "256", "--channel-max", "16",
    "--dseg-ndf", "8", "--enc-width", "8", "--enc-feature-dim", "16", "--batch-size", "4",
    "--labelled-fraction", "0.5", "--tto-steps", "3", "--checkpoint-every", "2",
    "--log-every", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_fixture(tmp_path_factory.mktemp("ph"), studies=12, size=48)


def _argv(phantom, out, steps=6, enc_steps=3):
    return [*TINY, "--data", str(phantom), "--out", str(out), "--steps", str(steps),
            "--enc-steps", str(enc_steps)]  # fmt: skip


def test_interrupted_run_resumes_to_the_same_model(phantom, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert tr.main(_argv(phantom, whole)) == 0  # seg-train dispatches on --model
    real = sg.gan_iteration

    def crash_at_5(run, i):
        if i == 5:
            raise KeyboardInterrupt
        return real(run, i)

    cut = tmp_path / "cut"
    monkeypatch.setattr(sg, "gan_iteration", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        tr.main(_argv(phantom, cut))
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["counters"]["gan"] == 4
    monkeypatch.setattr(sg, "gan_iteration", real)
    assert tr.main(_argv(phantom, cut)) == 0
    a, spec, extra = load_model(whole)
    b, _, _ = load_model(cut)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert spec.kind == "semantic-gan" and extra["gan_steps"] == 6 and extra["encoder_steps"] == 3
    rows = [json.loads(ln) for ln in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert [r["phase"] for r in rows] == ["gan"] * 6 + ["encoder"] * 3
    assert {"d_img", "d_seg", "g_seg_feat", "r1_img", "path"} <= set(rows[0])
    assert (cut / "samples.png").stat().st_size > 0


def test_resume_with_another_architecture_is_refused(phantom, tmp_path):
    out = tmp_path / "run"
    assert tr.main(_argv(phantom, out, steps=2, enc_steps=1)) == 0
    assert tr.main(_argv(phantom, out, steps=2, enc_steps=1)) == 0  # same config: reuses
    with pytest.raises(ConfigError, match="latent_dim"):
        tr.main([*_argv(phantom, out, steps=4, enc_steps=1), "--latent-dim", "8"])
    with pytest.raises(SystemExit):  # a bad value is a parse error naming the flag
        tr.main([*_argv(phantom, tmp_path / "x"), "--labelled-fraction", "0"])


def test_evaluate_writes_semantic_gan_rows(phantom, tmp_path, capsys):
    out = tmp_path / "run"
    assert tr.main(_argv(phantom, out, steps=3, enc_steps=2)) == 0
    db = tmp_path / "f.duckdb"
    argv = ["--model-dir", str(out), "--data", str(phantom), "--dataset", "phantom-lungs",
            "--num-samples", "3", "--tto-steps", "2", "--db", str(db)]  # fmt: skip
    assert ev.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model"] == "semantic-gan" and 0 <= printed["dice"] <= 1
    assert printed["sample_diversity"] == 0.0  # deterministic given the seed
    rows = read_results(db, model="semantic-gan")
    groups = {r["subgroup"] for r in rows}
    assert "all" in groups and any(g.startswith("habitus=") for g in groups)
    assert ev.main([*argv[:-2]]) == 0  # evaluation is repeatable without a database
