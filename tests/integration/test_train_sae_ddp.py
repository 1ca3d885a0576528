"""Data-parallel training: 2 CPU processes (gloo, via accelerate launch) match 1 process, and
each reads about half the bytes (row gathers) for the same weights as whole-window reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.launch import launch_two
from tests.integration.test_train_sae import write_store
from workbench.sae.synthetic import superposition
from workbench.train_sae import main

ARGS = [
    "--d-sae", "64", "--k", "4", "--group-sizes", "8,16,40", "--batch-size", "256",
    "--tokens", "10240", "--lr", "0.004", "--warmup-steps", "4", "--threshold-start-step", "4",
    "--threshold-beta", "0.9", "--log-every", "10", "--no-progress", "--norm-batches", "1",
    "--buffer-tokens", "2000", "--device", "cpu",
]  # fmt: skip


def _last(out: Path) -> dict:
    return json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])


def _launch(store: Path, out: Path, *extra: str) -> None:
    args = ["--store", str(store), "--out", str(out), *ARGS, *extra]
    launch_two("workbench.train_sae", args, env={"CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.slow
def test_two_processes_reach_single_process_quality_reading_half(tmp_path):
    pytest.importorskip("accelerate", reason="accelerate launcher not installed")
    acts = superposition(6000, 16, n_features=48, active=3, seed=1) * 5.0
    store = write_store(tmp_path / "activations", acts)
    assert main(["--store", str(store), "--out", str(tmp_path / "one"), *ARGS]) == 0
    _launch(store, tmp_path / "two")  # each process gathers its rows
    _launch(store, tmp_path / "whole", "--no-read-share")  # whole windows each
    one, two = _last(tmp_path / "one"), _last(tmp_path / "two")
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["step"] == one["step"] == 40
    assert two["fvu"] <= one["fvu"] + 0.02
    assert abs(two["l0"] - one["l0"]) < 0.5
    # the same training as whole-window reads, bit for bit, for about half the bytes
    weights = [load_file(tmp_path / run / "sae_weights.safetensors") for run in ("two", "whole")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    whole = _last(tmp_path / "whole")
    # whole windows: every process reads every window (only the up-front scan is split)
    assert whole["bytes_read"] > 0.8 * one["bytes_read"]
    assert 0.45 < two["bytes_read"] / one["bytes_read"] < 0.55
