"""One SAE per hook of a multi-hook store, in one pass: each equals its separate run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_train_sae import SMALL, write_store
from workbench.sae import multi
from workbench.sae.synthetic import superposition
from workbench.store import write_hook_index
from workbench.train_sae import main

HOOKS = ("blocks.2.hook_resid_post", "blocks.4.hook_resid_post")
ARGS = [*SMALL, "--tokens", "5120"]


@pytest.fixture(scope="module")
def hook_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi") / "activations"
    for seed, hook in enumerate(HOOKS):
        acts = superposition(4000, 16, n_features=48, active=3, seed=seed) * (3.0 + seed)
        write_store(root / hook, acts, layer=int(hook.split(".")[1]))
    write_hook_index(root, {h: h for h in HOOKS})
    return root


def _weights(path):
    return load_file(path / "sae_weights.safetensors")


def test_one_pass_trains_each_hook_as_a_separate_run(hook_store, tmp_path):
    assert main(["--store", str(hook_store), "--out", str(tmp_path / "both"), *ARGS]) == 0
    index = json.loads((tmp_path / "both" / "hooks.json").read_text())
    assert list(index["hooks"]) == list(HOOKS)
    for hook in HOOKS:
        alone = tmp_path / f"alone-{hook}"
        assert main(["--store", str(hook_store / hook), "--out", str(alone), *ARGS]) == 0
        both, solo = _weights(tmp_path / "both" / hook), _weights(alone)
        assert all(torch.equal(both[k], solo[k]) for k in solo)
        meta = json.loads((tmp_path / "both" / hook / "cfg.json").read_text())
        assert meta["metadata"]["hook_name"] == hook
    a, b = (_weights(tmp_path / "both" / h)["W_dec"] for h in HOOKS)
    assert not torch.equal(a, b)  # different data, different SAEs


def test_hooks_select_and_unknown_hooks_are_refused(hook_store, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["--store", str(hook_store), "--out", str(out), "--hooks", HOOKS[1], *ARGS]) == 0
    assert (out / HOOKS[1] / "sae_weights.safetensors").exists()
    assert not (out / HOOKS[0]).exists()
    bad = ["--store", str(hook_store), "--out", str(out), "--hooks", "blocks.9.hook_resid_post"]
    assert main([*bad, *ARGS]) == 2
    assert "no hook(s) ['blocks.9.hook_resid_post']" in capsys.readouterr().err
    single = ["--store", str(hook_store / HOOKS[0]), "--out", str(out), "--hooks", HOOKS[0]]
    assert main([*single, *ARGS]) == 2
    assert "holds one hook" in capsys.readouterr().err


def test_too_little_memory_is_refused_with_figures(hook_store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(multi, "free_bytes", lambda device: 100_000)
    assert main(["--store", str(hook_store), "--out", str(tmp_path / "x"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "training 2 SAEs at once needs about" in err and "--hooks" in err
    assert not (tmp_path / "x").exists()
