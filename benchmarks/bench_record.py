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

``--layers 2,4`` adds the many-layers comparison: recording those blocks in one pass
(``record --layers``, one forward stopped after the deepest) against recording the deepest
alone and against k separate single-layer runs (the peer), both as forwards interleaved study
by study in this process and as whole ``record()`` runs (store writing included) in fresh
processes, timed by their CPU seconds. Target: one pass <= 1.2x the deepest alone.
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
layers = tuple(int(x) for x in sys.argv[5].split(",")) if len(sys.argv) > 5 else ()
t, c = time.perf_counter(), time.process_time()
record(RecordConfig(model=sys.argv[1], data=Path(sys.argv[2]), out=Path(sys.argv[3]),
                    limit=int(sys.argv[4]), image_tokens="all", shard_tokens=2048,
                    progress=False, layer=layers[0] if len(layers) == 1 else -1,
                    layers=layers if len(layers) > 1 else ()))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t,
      time.process_time() - c)
"""


def _child(model: str, data: Path, n: int, layers: str = "") -> dict:
    """One ``record()`` run in a fresh single-threaded process: peak RSS, wall and CPU s."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", _CHILD, model, str(data), f"{tmp}/acts", str(n)]
        cmd += [layers] if layers else []
        env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    rss_kb, wall, cpu = done.stdout.split()[-3:]
    return {"peak_rss_mib": int(rss_kb) / 1024, "wall_s": float(wall), "cpu_s": float(cpu)}


def layers_forward(adapter, items, layers: tuple[int, ...]) -> dict:
    """Interleaved per study: one pass over ``layers``, the deepest alone, k separate runs
    (each preparing its own inputs, as separate runs do). CPU and wall seconds each."""
    from workbench.record.run import keep_mask

    cpu = {"one_pass": 0.0, "deepest": 0.0, "separate": 0.0}
    wall = dict.fromkeys(cpu, 0.0)

    def run(item, *runs: tuple[int, ...]) -> None:
        for ls in runs:
            inp = adapter.prepare(item.source, findings=item.findings)
            keep = torch.tensor(keep_mask(inp.tokens, "all", "sections"))
            [v[keep] for v in adapter.residuals(inp, ls).values()]

    for item in items:
        for name, runs in (
            ("one_pass", [layers]),
            ("deepest", [(max(layers),)]),
            ("separate", [(layer,) for layer in layers]),
        ):
            w0, c0 = _clock()
            run(item, *runs)
            w1, c1 = _clock()
            cpu[name] += c1 - c0
            wall[name] += w1 - w0
    return {"cpu_s": cpu, "wall_s": wall}


def layers_report(adapter, model: str, data: Path, items, layers: tuple[int, ...]) -> dict:
    """The many-layers figures: forwards in this process, whole runs in fresh processes."""
    layers_forward(adapter, items[:2], layers)  # warm-up
    fwd = layers_forward(adapter, items, layers)
    n, spec = len(items), ",".join(map(str, layers))
    runs = {
        "one_pass": _child(model, data, n, spec),
        "deepest": _child(model, data, n, str(max(layers))),
    }
    runs["separate"] = [_child(model, data, n, str(layer)) for layer in layers]
    sep_cpu = sum(r["cpu_s"] for r in runs["separate"])
    c = fwd["cpu_s"]
    return {
        "layers": list(layers), "forward": fwd,
        "forward_one_pass_over_deepest_cpu": c["one_pass"] / c["deepest"],
        "forward_separate_over_one_pass_cpu": c["separate"] / c["one_pass"],
        "runs": runs,
        "run_one_pass_over_deepest_cpu": runs["one_pass"]["cpu_s"] / runs["deepest"]["cpu_s"],
        "run_separate_over_one_pass_cpu": sep_cpu / runs["one_pass"]["cpu_s"],
    }  # fmt: skip


def peak_memory(model: str, data: Path, counts: list[int]) -> list[dict]:
    """Peak RSS (MiB) of ``record()`` runs over each number of studies, in fresh processes."""
    return [{"studies": n, **_child(model, data, n)} for n in counts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="maira2-mini")
    p.add_argument("--data", type=Path, default=None, help="phantom root (default: generate 200)")
    p.add_argument("--studies", type=int, default=40)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", default="25,100", help="study counts for the memory runs")
    p.add_argument("--layers", default="", help="e.g. 2,4: also the many-layers comparison")
    p.add_argument("--skip-single", action="store_true", help="only the --layers comparison")
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
    report = {}
    if args.layers:
        layers = tuple(resolve_layer(adapter, int(x)) for x in args.layers.split(","))
        report["many_layers"] = layers_report(adapter, args.model, data, items, layers)
    if args.skip_single:
        print(json.dumps(report, indent=2))
        return 0
    throughput(adapter, items[:2], layer)  # warm-up
    res = throughput(adapter, items, layer)
    f_full, f_part = flops(adapter, items[0], layer)
    cpu, wall, ideal = res["cpu_s"], res["wall_s"], f_full / f_part
    forward_cpu = cpu["naive"] / cpu["record"]
    report = {
        **report,
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
