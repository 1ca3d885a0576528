"""Data-parallel training: 2 CPU processes (gloo, via accelerate launch) match 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_train_sae import write_store
from workbench.sae.synthetic import superposition
from workbench.train_sae import main

ARGS = [
    "--d-sae", "64", "--k", "4", "--group-sizes", "8,16,40", "--batch-size", "256",
    "--tokens", "10240", "--lr", "0.004", "--warmup-steps", "4", "--threshold-start-step", "4",
    "--threshold-beta", "0.9", "--log-every", "10", "--no-progress", "--norm-batches", "4",
    "--buffer-tokens", "2000", "--device", "cpu",
]  # fmt: skip


def _last(out: Path) -> dict:
    return json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_reach_single_process_quality(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    acts = superposition(6000, 16, n_features=48, active=3, seed=1) * 5.0
    store = write_store(tmp_path / "activations", acts)
    assert main(["--store", str(store), "--out", str(tmp_path / "one"), *ARGS]) == 0
    # on a machine without GPUs, --multi_gpu makes accelerate start torchrun; processes use gloo
    cmd = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "workbench.train_sae",
        "--store", str(store), "--out", str(tmp_path / "two"), *ARGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _last(tmp_path / "one"), _last(tmp_path / "two")
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["step"] == one["step"] == 40
    assert two["fvu"] <= one["fvu"] + 0.02
    assert abs(two["l0"] - one["l0"]) < 0.5
    assert (tmp_path / "two" / "sae_weights.safetensors").exists()
