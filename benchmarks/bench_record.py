"""Recording throughput: stop-at-layer capture vs a naive full forward, and peak memory.

``python benchmarks/bench_record.py [--model maira2-mini] [--studies 40] [--threads 1]``

Both pipelines run on the same studies with the same model in one process, interleaved
study by study (A, B, A, B, ...) so that load from other jobs on a shared machine falls on
both alike. Each study's inputs are prepared once (read images, preprocess, tokenize; timed
on its own), then each pipeline runs the model and keeps the filtered rows of layer L:

* ``record``: :func:`workbench.record.record_item`, a forward hook that stops the forward after
  block L (no later blocks, no LM head);
* ``naive``: ``model(**inputs, output_hidden_states=True)`` and ``hidden_states[L + 1]``.

Times are process CPU seconds (single-threaded torch, robust to other jobs) and wall seconds.
The FLOP-proportional ideal is FLOPs(full forward) / FLOPs(forward to L), counted with
``torch.utils.flop_counter``. Peak memory: ``record()`` into a fresh store for N and 4N
studies in separate subprocesses (small shards, so several flushes happen), peak RSS each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def naive_forward(adapter, inp, layer: int) -> torch.Tensor:
    """The naive peer: full forward with every hidden state, then layer L's rows."""
    with torch.no_grad():
        out = adapter.model(**adapter.device_inputs(inp), output_hidden_states=True)
    return out.hidden_states[layer + 1][0]


def record_forward(adapter, inp, layer: int) -> torch.Tensor:
    """What recording runs: capture after block L and stop the forward there."""
    return adapter.residual(inp, layer)


def flops(adapter, item, layer: int) -> tuple[int, int]:
    """(FLOPs of the full forward, FLOPs of the forward stopped after block ``layer``)."""
    from torch.utils.flop_counter import FlopCounterMode

    inp = adapter.prepare(item.source, findings=item.findings)
    with FlopCounterMode(display=False) as full, torch.no_grad():
        adapter.model(**adapter.device_inputs(inp))
    with FlopCounterMode(display=False) as part:
        adapter.residual(inp, layer)
    return full.get_total_flops(), part.get_total_flops()


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def throughput(adapter, items, layer: int) -> dict:
    """Interleaved CPU and wall time of both pipelines over ``items``; checks equal rows.

    ``prepare`` (read images, preprocess, tokenize: identical for both) is timed apart from
    the forward, so the forward ratio can be set against the FLOP ideal and the end-to-end
    ratio (prepare + forward + filter) is reported beside it.
    """
    from workbench.record.run import keep_mask

    cpu = {"prepare": 0.0, "record": 0.0, "naive": 0.0}
    wall = dict.fromkeys(cpu, 0.0)
    tokens = 0
    for item in items:
        w0, c0 = _clock()
        inp = adapter.prepare(item.source, findings=item.findings)
        keep = torch.tensor(keep_mask(inp.tokens, "all", "sections"))
        w1, c1 = _clock()
        cpu["prepare"] += c1 - c0
        wall["prepare"] += w1 - w0
        rows = {}
        for name, fn in (("record", record_forward), ("naive", naive_forward)):
            w0, c0 = _clock()
            rows[name] = fn(adapter, inp, layer)[keep]
            w1, c1 = _clock()
            cpu[name] += c1 - c0
            wall[name] += w1 - w0
        torch.testing.assert_close(rows["naive"], rows["record"], rtol=1e-4, atol=1e-4)
        tokens += len(inp.tokens)
    return {"cpu_s": cpu, "wall_s": wall, "tokens": tokens, "studies": len(items)}


_CHILD = """
import resource, sys, time
from pathlib import Path
from workbench.record.run import RecordConfig, record
t = time.perf_counter()
record(RecordConfig(model=sys.argv[1], data=Path(sys.argv[2]), out=Path(sys.argv[3]),
                    limit=int(sys.argv[4]), image_tokens="all", shard_tokens=2048,
                    progress=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""


def peak_memory(model: str, data: Path, counts: list[int]) -> list[dict]:
    """Peak RSS (MiB) of ``record()`` runs over each number of studies, in fresh processes."""
    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", _CHILD, model, str(data), f"{tmp}/acts", str(n)]
            env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rss_kb, secs = done.stdout.split()[-2:]
            rows.append({"studies": n, "peak_rss_mib": int(rss_kb) / 1024, "wall_s": float(secs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="maira2-mini")
    p.add_argument("--data", type=Path, default=None, help="phantom root (default: generate 200)")
    p.add_argument("--studies", type=int, default=40)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", default="25,100", help="study counts for the memory runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from workbench.cxr.collection import load_collection
    from workbench.models.registry import load_model
    from workbench.record.run import resolve_layer

    data = args.data or ROOT / "benchmarks" / "out" / "record-phantom"
    if not (data / "phantom-summary.json").is_file():
        from workbench.cxr.phantom.run import PhantomConfig, generate

        generate(PhantomConfig(out=data, studies=200, size=256, seed=7, masks=False))
    adapter = load_model(args.model)
    layer = resolve_layer(adapter, args.layer)
    items = load_collection(data).items[: args.studies]
    throughput(adapter, items[:2], layer)  # warm-up
    res = throughput(adapter, items, layer)
    f_full, f_part = flops(adapter, items[0], layer)
    cpu, wall, ideal = res["cpu_s"], res["wall_s"], f_full / f_part
    forward_cpu = cpu["naive"] / cpu["record"]
    report = {
        "model": args.model, "layer": layer, "n_layers": adapter.n_layers, **res,
        "forward_speedup_cpu": forward_cpu,
        "forward_speedup_wall": wall["naive"] / wall["record"],
        "flop_ideal": ideal, "forward_speedup_over_ideal": forward_cpu / ideal,
        "end_to_end_speedup_cpu": (cpu["prepare"] + cpu["naive"])
        / (cpu["prepare"] + cpu["record"]),
        "record_studies_per_cpu_s": res["studies"] / (cpu["prepare"] + cpu["record"]),
        "memory": peak_memory(args.model, data, [int(n) for n in args.memory.split(",")]),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
