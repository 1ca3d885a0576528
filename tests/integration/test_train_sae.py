"""Train an SAE from an activation store through the CLI: artefact, logs, resume, bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from workbench.config import field_docs
from workbench.sae import load_sae
from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import StoreSource
from workbench.sae.synthetic import superposition
from workbench.sae.trainer import train_on
from workbench.store import StoreWriter
from workbench.train_sae import main

D_IN = 16
SMALL = [
    "--d-sae", "64", "--k", "4", "--group-sizes", "8,16,40", "--batch-size", "256",
    "--warmup-steps", "5", "--threshold-start-step", "5", "--threshold-beta", "0.9",
    "--log-every", "5", "--no-progress", "--device", "cpu", "--norm-batches", "4",
    "--buffer-tokens", "2000", "--lr", "0.004",
]  # fmt: skip


def write_store(path, acts_ND, per_study=500, shard_tokens=1500, layer=3):
    w = StoreWriter(
        path, model="synthetic", layer=layer, hook_name=f"blocks.{layer}.hook_resid_post",
        d_model=acts_ND.shape[1], shard_tokens=shard_tokens,
    )  # fmt: skip
    for i, start in enumerate(range(0, acts_ND.shape[0], per_study)):
        chunk = acts_ND[start : start + per_study]
        meta = {"position": list(range(len(chunk))), "kind": ["report"] * len(chunk)}
        w.add(1000 + i, chunk, meta)
    return w.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    acts = superposition(8000, D_IN, n_features=48, active=3, seed=0) * 7.0
    return write_store(tmp_path_factory.mktemp("store") / "activations", acts), acts


def test_cli_trains_saves_saelens_format_and_logs(store, tmp_path):
    path, acts = store
    out = tmp_path / "sae"
    assert main(["--store", str(path), "--out", str(out), "--tokens", "16000", *SMALL]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    keys = {"loss", "mse_prefix", "fvu", "fvu_prefix", "l0", "l0_inference", "dead_fraction"}
    assert keys | {"lr", "tokens_per_s"} <= set(log[-1])
    assert log[-1]["step"] == 62 and len(log[-1]["fvu_prefix"]) == 3
    assert log[-1]["fvu"] < 0.5 * log[0]["fvu"]
    assert log[-1]["fvu_prefix"][0] >= log[-1]["fvu_prefix"][-1]  # nested prefixes
    sae = load_sae(out)
    assert (sae.d_in, sae.d_sae, sae.k, sae.group_sizes) == (D_IN, 64, 4, (8, 16, 40))
    assert sae.hook_name == "blocks.3.hook_resid_post"
    # the saved SAE takes raw activations (normalisation folded in)
    x = acts[:2000]
    lat = sae.encode(x)
    fvu = (x - sae.decode(lat)).pow(2).sum(1).mean() / (x - x.mean(0)).pow(2).sum(1).mean()
    assert float(fvu) < 0.35
    assert 1.0 < float((lat > 0).sum(1).float().mean()) < 12.0
    meta = json.loads((out / "workbench_sae.json").read_text())
    assert meta["norm_factor"] > 1 and meta["tokens"] == 62 * 256
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(out)
    torch.testing.assert_close(theirs.encode(x), lat, rtol=1e-5, atol=1e-5)


def test_resume_after_kill_gives_identical_weights(store, tmp_path):
    path, _ = store
    base = dict(
        store=path, d_sae=64, k=4, group_sizes=(8, 16, 40), batch_size=256, tokens=256 * 12,
        warmup_steps=3, threshold_start_step=2, dead_tokens=512, norm_batches=2,
        buffer_tokens=2000, progress=False, device="cpu", checkpoint_every=3, log_every=2,
    )  # fmt: skip
    straight = train_on(StoreSource(path), TrainSAEConfig(out=tmp_path / "a", **base))
    src = StoreSource(path)
    cfg_b = TrainSAEConfig(out=tmp_path / "b", **base)
    train_on(src, cfg_b, stop_after=7)  # "killed" after step 7: last checkpoint is step 6
    assert not (tmp_path / "b" / "sae_weights.safetensors").exists()
    resumed = train_on(src, cfg_b)
    a, b = load_sae(straight), load_sae(resumed)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in log_a] == [json.loads(x)["loss"] for x in log_b]


def _assert_refused(argv, capsys, match, out):
    try:
        code = main([*SMALL, *argv, "--out", str(out)])
    except SystemExit as exc:  # refused while parsing the config (argparse exits with 2)
        code = exc.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (out / "checkpoints").exists()  # refused before any training


def test_bad_inputs_refused_before_training(store, tmp_path, capsys):
    path, acts = store
    _assert_refused(["--store", str(path), "--d-in", "17"], capsys, "d_in=17", tmp_path / "o1")
    _assert_refused(["--store", str(path), "--k", "65"], capsys, "k=65", tmp_path / "o2")
    empty = StoreWriter(
        tmp_path / "empty", model="m", layer=0, hook_name="blocks.0.hook_resid_post", d_model=D_IN
    ).close()
    _assert_refused(["--store", str(empty)], capsys, "empty", tmp_path / "o3")
    bad = write_store(tmp_path / "nan", acts[:3000])
    poisoned = acts[1500:3000].clone()
    poisoned[123, 4] = float("nan")
    save_file({"acts": poisoned}, str(bad / "shard_00001.safetensors"))
    _assert_refused(["--store", str(bad)], capsys, "shard 1", tmp_path / "o4")
    _assert_refused(["--store", str(tmp_path / "nowhere")], capsys, "store", tmp_path / "o5")


def test_help_explains_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    docs = field_docs(TrainSAEConfig)
    for f in dataclasses.fields(TrainSAEConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert docs.get(f.name), f"field {f.name} has no docstring"
