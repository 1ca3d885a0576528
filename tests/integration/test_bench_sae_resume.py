"""``bench_sae.py --checkpoint``: a run stopped and resumed ends exactly where an uninterrupted
run ends (curves, weights, optimiser and counters of both peers), a stopped peer stays stopped,
and a checkpoint made with other arguments is refused by name (tiny shape, CPU)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_threaded")]
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--d-in", "32", "--d-sae", "128", "--k", "4", "--batch", "256", "--steps", "12",
        "--eval-every", "3", "--threads", "1", "--shard-tokens", "1024", "--held-out", "512",
        "--peers", "ours,saelens-best"]  # fmt: skip
_RUNS = itertools.count()


def _bench():
    """bench_sae as a module (benchmarks/ is not a package; its siblings import by name)."""
    pytest.importorskip("sae_lens")
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_sae", BENCH / "bench_sae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(bench, ckpt: Path, *extra: str) -> dict | None:
    """One invocation with ``--checkpoint ckpt``; its JSON figures if it finished."""
    out = ckpt.parent / f"{ckpt.name}-{next(_RUNS)}.json"
    assert bench.main([*TINY, "--checkpoint", str(ckpt), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text()) if out.exists() else None


def _assert_same(a, b, where: str = "") -> None:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _assert_same_end(whole: Path, resumed: Path) -> dict:
    """The final checkpoints agree in everything but the timings; returns one of them."""
    import sae_checkpoint

    a, b = (sae_checkpoint.read(d / sae_checkpoint.STATE_FILE) for d in (whole, resumed))
    assert a["loop"]["times"].keys() == b["loop"]["times"].keys()
    for state in (a, b):
        del state["loop"]["times"]
    _assert_same(a, b)
    return a


def test_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    bench = _bench()
    whole = _run(bench, tmp_path / "whole")
    assert _run(bench, tmp_path / "resumed", "--stop-after", "6") is None
    import sae_checkpoint

    half = sae_checkpoint.read(tmp_path / "resumed" / sae_checkpoint.STATE_FILE)
    assert half["loop"]["step"] == 6 and len(half["loop"]["curves"]["saelens-best"]) == 2
    resumed = _run(bench, tmp_path / "resumed")
    end = _assert_same_end(tmp_path / "whole", tmp_path / "resumed")
    assert end["loop"]["step"] == 12
    assert whole["curves"] == resumed["curves"] and whole["quality"] == resumed["quality"]
    for name in ("ours", "saelens-best"):
        assert [row["step"] for row in resumed["curves"][name]] == [3, 6, 9, 12]
        assert resumed["speed"][name]["steps"] == 12  # the first session's times are kept
    sl = end["peers"]["saelens-best"]
    assert sl["n_training_steps"] == 12 and sl["activation_scaler"]["scaling_factor"] > 0
    assert float(sl["sae"]["topk_threshold"]) > 0


def test_a_peer_stopped_before_the_interruption_stays_stopped(tmp_path, monkeypatch):
    bench = _bench()
    import sae_checkpoint
    import sae_peers

    real = sae_peers.Ours.evaluate

    def flat(self, x):  # ours' curve is flat from the start: it stops at its second eval
        return {**real(self, x), "fvu_batchtopk": 0.5, "threshold": 1.0}

    monkeypatch.setattr(sae_peers.Ours, "evaluate", flat)
    until = ["--until-flat", "--flat-window", "1", "--flat-tol", "0", "--thr-tol", "0"]
    whole = _run(bench, tmp_path / "whole", *until)
    assert _run(bench, tmp_path / "resumed", *until, "--stop-after", "9") is None
    half = sae_checkpoint.read(tmp_path / "resumed" / sae_checkpoint.STATE_FILE)
    assert half["loop"]["step"] == 9 and half["loop"]["active"] == {
        "ours": False,
        "saelens-best": True,
    }
    resumed = _run(bench, tmp_path / "resumed", *until)
    _assert_same_end(tmp_path / "whole", tmp_path / "resumed")
    assert whole["curves"] == resumed["curves"]
    assert [row["step"] for row in resumed["curves"]["ours"]] == [3, 6]
    assert [row["step"] for row in resumed["curves"]["saelens-best"]] == [3, 6, 9, 12]
    assert (
        resumed["speed"]["ours"]["steps"] == 6 and resumed["speed"]["saelens-best"]["steps"] == 12
    )


def test_a_checkpoint_made_with_other_arguments_is_refused_by_name(tmp_path):
    bench = _bench()
    assert _run(bench, tmp_path / "ck", "--stop-after", "3") is None
    with pytest.raises(SystemExit, match=r"lr \(checkpoint 0\.001, now 0\.002\)"):
        _run(bench, tmp_path / "ck", "--lr", "0.002")
    with pytest.raises(SystemExit, match=r"tokens \(checkpoint 3072, now 4096\)"):
        _run(bench, tmp_path / "ck", "--steps", "16")
    # a speed-only setting may change between sessions
    assert _run(bench, tmp_path / "ck", "--sparse-threads", "2") is not None


def test_the_saelens_state_covers_what_saelens_itself_checkpoints(tmp_path):
    _bench()
    import sae_checkpoint
    import sae_peers

    shape = sae_peers.Shape(32, 128, 4, 256)
    peer = sae_peers.saelens_peer("saelens-best", shape, 4, 1e-3, "cpu", [torch.randn(256, 32)])
    peer.trainer.save_trainer_state(tmp_path)
    theirs = torch.load(tmp_path / "trainer_state.pt", weights_only=False)
    ours = sae_checkpoint.peer_state(peer)
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert {"topk_threshold", "W_enc", "W_dec", "b_enc", "b_dec"} <= set(ours["sae"])


def test_ours_schedule_is_part_of_the_fingerprint_and_old_checkpoints_mean_shared(tmp_path):
    bench = _bench()
    import sae_checkpoint
    import sae_peers

    assert _run(bench, tmp_path / "ck", "--stop-after", "3") is None
    path = tmp_path / "ck" / sae_checkpoint.STATE_FILE
    state = sae_checkpoint.read(path)
    del state["fingerprint"]["ours_schedule"]  # as written before the flag existed
    torch.save(state, path)
    with pytest.raises(SystemExit, match=r"ours_schedule \(checkpoint 'shared', now 'trainer'\)"):
        _run(bench, tmp_path / "ck", "--ours-schedule", "trainer")
    assert _run(bench, tmp_path / "ck") is not None
    shape = sae_peers.Shape(32, 128, 4, 256)
    source = sae_peers.StreamSource(shape, 256 * 12, 1024)
    own = sae_peers.Ours(shape, source, 12, 1e-3, "cpu", schedule="trainer", out=tmp_path / "o")
    assert (own.cfg.lr, own.cfg.decay_start) == (0.0, 0.8)  # 0: the trainer's lr rule
    with pytest.raises(ValueError, match="'shared' or 'trainer'"):
        sae_peers.ours_schedule(1e-3, "cosine")
