"""Peak memory and a profile of SAE training, for ``bench_sae.py`` and ``gpu_scale.py``.

* :func:`memory_report`: each peer trains alone for a few steps in a fresh process (this file
  run as a script); its peak RSS above a process that only draws the same batches (CPU), and
  its peak CUDA allocation (GPU).
* :func:`profile_ours`: our steps under ``torch.profiler``; the step splits into the ranges
  of ``workbench.sae.step`` and the trainer (``sae.select`` = the normalised, centred input,
  the encoder product and BatchTopK, ``sae.decode``, ``sae.decoder_backward``, ``sae.aux``,
  ``sae.encoder_backward``, ``sae.reduce``, ``sae.update`` = projection, clipping, Adam,
  renormalisation, threshold; ``sae.batch`` = taking the batch's rows from the loaded
  window), plus the costliest operators (of the whole loop, batch draws included).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_ours(ours, n_steps: int, start_hint: int, device: str) -> dict:
    """Per-step milliseconds of each stage of our step (profiler ranges) and the top ops."""
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    trainer = ours.trainer
    for _ in range(2):  # warm-up outside the profile
        ours.batch(trainer.step)
        ours.step(None)
    _sync(device)
    step_s = 0.0
    with profile(activities=acts) as prof:
        for _ in range(n_steps):
            # the window holding this step's batch is loaded (for the synthetic source:
            # generated) outside the step, as in the timed loop of bench_sae.py; drawing all
            # batches first would evict it and put shard generation into ``sae.batch``
            with record_function("bench.draw"):
                ours.batch(trainer.step)
            t0 = time.perf_counter()
            ours.step(None)
            _sync(device)
            step_s += time.perf_counter() - t0
    step_ms = 1000 * step_s / n_steps
    events = prof.key_averages()

    def per_step(e, attr: str) -> float:
        return float(getattr(e, attr, 0.0) or 0.0) / 1000 / n_steps

    stages = {
        e.key: {
            "cpu_ms": per_step(e, "cpu_time_total"),
            "device_ms": per_step(e, "device_time_total"),
        }  # fmt: skip
        for e in events
        if e.key.startswith("sae.")
    }
    draw = next((e for e in events if e.key == "bench.draw"), None)
    covered = sum(s["cpu_ms"] for s in stages.values())
    ops = sorted(
        (e for e in events if not e.key.startswith(("sae.", "bench."))),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[:12]
    return {
        "steps": n_steps, "step_ms_profiled": step_ms, "stages": stages,
        "unlabelled_cpu_ms": max(0.0, step_ms - covered),
        "draw_cpu_ms_not_in_step": per_step(draw, "cpu_time_total") if draw else 0.0,
        "top_ops_self_cpu_ms": {e.key: per_step(e, "self_cpu_time_total") for e in ops},
    }  # fmt: skip


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) so imports and setup drop out of it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib(reset: bool) -> float:
    """Peak RSS since the reset (``VmHWM``), else since the process started."""
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_report(names: list[str], args) -> dict:
    """Peak memory of each peer trained alone (fresh processes), net of batch drawing."""
    rows = {}
    for name in ["none", *names]:
        cmd = [
            sys.executable, str(Path(__file__)), name, "--d-in", str(args.d_in),
            "--d-sae", str(args.d_sae), "--k", str(args.k), "--batch", str(args.batch),
            "--steps", str(args.memory_steps), "--device", args.device,
            "--threads", str(args.threads), "--shard-tokens", str(args.shard_tokens),
            "--dtype", args.dtype,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows.pop("none")
    for row in rows.values():
        row["rss_above_baseline_mib"] = row["peak_rss_mib"] - base["peak_rss_mib"]
    return {"baseline": base, "peers": rows}


def _child(argv: list[str] | None = None) -> int:
    """Train one peer alone for a few steps; print its peak memory as one JSON line.

    Every child imports the same packages and draws the same batches before the peak-RSS mark
    is reset, so the difference from the ``none`` child is what the peer itself holds.
    """
    import sae_lens  # noqa: F401  (imported by every child alike)
    from sae_peers import Ours, Shape, StreamSource, saelens_peer

    from workbench.sae.data import ShuffledBatches

    p = argparse.ArgumentParser(description="one peer's peak memory")
    p.add_argument("peer")
    for flag in ("--d-in", "--d-sae", "--k", "--batch", "--steps", "--threads", "--shard-tokens"):
        p.add_argument(flag, type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    shape = Shape(a.d_in, a.d_sae, a.k, a.batch)
    source = StreamSource(shape, (a.steps + 10) * a.batch, a.shard_tokens)
    batches = ShuffledBatches(source, a.batch, a.shard_tokens, seed=0)
    first = [batches.batch(s) for s in range(5)]
    reset = _reset_peak_rss()
    if a.peer == "ours":
        peer = Ours(shape, source, a.steps, 1e-3, a.device, dtype=a.dtype)
        for s in range(a.steps):
            peer.step(peer.batch(s))
    elif a.peer != "none":
        peer = saelens_peer(a.peer, shape, a.steps, 1e-3, a.device, first, a.dtype != "float32")
        for s in range(a.steps):
            peer.step(batches.batch(s))
    _sync(a.device)
    cuda = a.device.startswith("cuda")
    print(json.dumps({
        "peak_rss_mib": _peak_rss_mib(reset),
        "peak_since": "setup" if reset else "process start",
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(_child())
