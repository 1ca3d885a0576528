"""Matryoshka BatchTopK SAE training: workbench vs SAELens, interleaved step by step.

Every step, in one process and on the same raw batch: our step, the *limit* (the one dense
product a step cannot avoid, ``B x d_in @ d_in x d_sae``, the encoder's) and each SAELens
peer's step, in an order that rotates, each timed in wall and CPU seconds. Load from other
jobs therefore falls on all of them alike, and the fraction of the limit is measured on the
same steps as our speed. Peers: ``saelens-default`` (SAELens' defaults),
``saelens-best`` (configured as well as SAELens allows; ``sae_peers.BEST_SETTINGS`` says
what and why), ``saelens-best-sparse`` (plus SAELens' sparse code path).

Quality: held-out FVU every ``--eval-every`` steps (BatchTopK at L0 = k, and each SAE's
inference threshold). Run length: ``--steps``, or a token budget ``--tokens 20e6``; with
``--until-flat`` a peer stops once its FVU improved by less than ``--flat-tol`` (relative)
over the last ``--flat-window`` evals, so the comparison is between converged SAEs. The
inference-threshold FVU is reported only once that peer's threshold has settled too.

    .venv/bin/python benchmarks/bench_sae.py --d-in 576 --d-sae 4608 --k 32 --batch 4096 \\
        --steps 200 --threads 2 [--memory] [--profile 20] [--json out.json]

``--memory`` runs each peer alone in a fresh process for a few steps (peak RSS above a
process that only draws batches; peak CUDA memory on a GPU). ``--profile N`` runs N more of
our steps under ``torch.profiler`` and splits a step into its stages. ``--estimate N`` times
N interleaved steps of the run asked for and prints its projected wall time instead of
running it (decide before committing hours to a ``--tokens 20e6`` run).

``--checkpoint DIR`` makes a long run resumable: every ``--checkpoint-every`` steps (default:
every eval) and at the end, the loop (step, curves, who stopped, per-step times) and every
peer's whole training state go to ``DIR/bench_state.pt`` (atomically); the same command
started again resumes from it and continues to the result of an uninterrupted run. It refuses
a checkpoint made with other arguments, naming them (``sae_checkpoint.py`` says what each
peer saves and which arguments count). ``--stop-after N`` stops after N steps, as if killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# On a shared machine, OpenMP threads that spin while waiting for a descheduled sibling burn
# the cores all peers need. Sleeping waiters, for every peer alike; must be set before torch
# loads its OpenMP runtime. Override from the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from sae_checkpoint import BenchCheckpoint, Loop  # noqa: E402
from sae_measure import memory_report, profile_ours  # noqa: E402
from sae_peers import BEST_SETTINGS, PEERS, Shape, StreamSource, make_peers  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """Wall and process-CPU seconds of ``fn()`` (the device synchronised on both sides)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def limit_fn(shape: Shape, device: str, dtype: str = "float32"):
    """The limit: one encoder-shaped product in ``dtype`` (ours' encoder dtype) on ``device``."""
    dt = getattr(torch, dtype)
    a = torch.randn(shape.batch, shape.d_in, device=device, dtype=dt)
    b = torch.randn(shape.d_in, shape.d_sae, device=device, dtype=dt)
    torch.mm(a, b)
    return lambda: torch.mm(a, b)


def flattened(curve: list[dict], key: str, window: int, tol: float) -> bool:
    """Whether ``key`` changed by less than ``tol`` (relative) over the last ``window`` evals."""
    if len(curve) <= window:
        return False
    now, then = curve[-1][key], curve[-1 - window][key]
    return abs(then - now) <= tol * max(abs(now), 1e-12)


def converged(curve: list[dict], args) -> bool:
    """``--until-flat``'s stop rule: the BatchTopK FVU is flat and the inference threshold has
    settled, so that the inference row of a stopped peer is a converged figure too."""
    return flattened(curve, "fvu_batchtopk", args.flat_window, args.flat_tol) and flattened(
        curve, "threshold", args.flat_window, args.thr_tol
    )


def train(peers: list, shape: Shape, held_out: torch.Tensor, args,
          ckpt: BenchCheckpoint | None = None, stop_after: int = 0) -> dict:  # fmt: skip
    """The interleaved loop: per-step times, eval curves, and who stopped when. With ``ckpt``:
    resumed from its checkpoint if there is one, saved every ``ckpt.every`` steps and at the
    end; ``stop_after``: return after that many steps, as if killed (``finished`` False)."""
    limit = limit_fn(shape, args.device, args.dtype)
    loop = (ckpt.resume(peers) if ckpt else None) or Loop.fresh([p.name for p in peers])
    ran = 0
    while loop.step < args.max_steps and not loop.done and not 0 < stop_after <= ran:
        run_step(peers, loop, limit, args)
        ran += 1
        if loop.step % args.eval_every == 0 or loop.step == args.max_steps:
            evaluate(peers, loop, shape, held_out, args)
        if ckpt and ckpt.due(loop):
            ckpt.save(loop, peers)
    if ckpt:
        ckpt.save(loop, peers)
    finished = loop.step >= args.max_steps or loop.done
    return {"times": loop.times, "curves": loop.curves, "finished": finished}


def run_step(peers: list, loop: Loop, limit, args) -> None:
    """Step ``loop.step``: every active peer and the limit (while ours runs), timed, in an
    order that rotates."""
    step, ours = loop.step, peers[0]
    x = ours.batch(step)  # drawn before timing: every peer gets it ready
    jobs = [(p.name, lambda p=p, x=x: p.step(x)) for p in peers if loop.active[p.name]]
    if loop.active["ours"]:
        jobs.append(("limit", limit))
    shift = step % len(jobs)
    for name, fn in jobs[shift:] + jobs[:shift]:
        loop.times[name][step] = timed(fn, args.device)
    loop.step += 1


def evaluate(peers: list, loop: Loop, shape: Shape, held_out: torch.Tensor, args) -> None:
    """Held-out eval of every active peer; ``--until-flat`` stops those that converged."""
    for p in peers:
        if loop.active[p.name]:
            curve = loop.curves[p.name]
            row = {"step": loop.step, "tokens": loop.step * shape.batch}
            curve.append({**row, **p.evaluate(held_out)})
            # one line per eval on stderr, so a long run's curve survives an interruption
            print(json.dumps({"peer": p.name, **curve[-1]}), file=sys.stderr, flush=True)
            if args.until_flat and converged(curve, args):
                loop.active[p.name] = False


def estimate(peers: list, shape: Shape, held_out: torch.Tensor, args) -> dict:
    """Time ``--estimate`` interleaved steps (after one untimed warm-up step) and project the
    wall time of the whole run asked for (``--tokens`` / ``--steps``, its evals included): an
    upper bound with ``--until-flat``, where a peer that flattens stops early."""
    n = args.estimate + 1
    short = argparse.Namespace(**{**vars(args), "max_steps": n, "until_flat": False,
                                  "eval_every": n})  # fmt: skip
    median = {}
    for name, per_step in train(peers, shape, held_out, short)["times"].items():
        walls = sorted(t[0] for step, t in per_step.items() if step)  # step 0: warm-up
        median[name] = walls[len(walls) // 2]
    t0 = time.perf_counter()
    for p in peers:
        p.evaluate(held_out)
    eval_s = time.perf_counter() - t0
    total = args.max_steps * sum(median.values()) + args.max_steps // args.eval_every * eval_s
    return {
        "steps_timed": args.estimate, "steps_planned": args.max_steps,
        "tokens_planned": args.max_steps * shape.batch, "median_step_s": median,
        "eval_s": eval_s, "projected_hours": total / 3600,
    }  # fmt: skip


def speed(times: dict, shape: Shape) -> dict:
    """Tokens/s of each peer, our speed-up over each SAELens peer and our fraction of the
    limit, each over the steps both sides of the ratio ran (wall and CPU)."""
    out: dict = {}
    ours = times["ours"]
    for name, per_step in times.items():
        if name == "limit" or not per_step:
            continue
        wall, cpu = (sum(t[i] for t in per_step.values()) for i in (0, 1))
        n = len(per_step) * shape.batch
        out[name] = {"steps": len(per_step), "tokens_per_s": n / wall, "cpu_tokens_per_s": n / cpu}
        if name != "ours":
            both = ours.keys() & per_step.keys()
            for i, unit in ((0, "wall"), (1, "cpu")):
                ratio = sum(per_step[s][i] for s in both) / sum(ours[s][i] for s in both)
                out[name][f"ours_speedup_{unit}"] = ratio
    lim = times["limit"]
    for i, unit in ((0, "wall"), (1, "cpu")):
        out["ours"][f"fraction_of_limit_{unit}"] = sum(lim[s][i] for s in lim) / sum(
            ours[s][i] for s in lim
        )
    out["limit_matmul_ms"] = 1000 * sorted(t[0] for t in lim.values())[len(lim) // 2]
    return out


def quality(curves: dict, peers: list, held_out: torch.Tensor, args) -> dict:
    """Last eval of each peer; the inference row only where the threshold has settled."""
    out = {}
    for p in peers:
        curve = curves[p.name]
        last = dict(curve[-1])
        last["converged"] = flattened(curve, "fvu_batchtopk", args.flat_window, args.flat_tol)
        last["threshold_settled"] = flattened(curve, "threshold", args.flat_window, args.thr_tol)
        if not last["threshold_settled"]:
            last["fvu_inference_reported"] = None  # not settled: not a converged figure
        else:
            last["fvu_inference_reported"] = last["fvu_inference"]
        if hasattr(p, "saved_inference_fvu"):
            last["fvu_inference_as_saved"] = p.saved_inference_fvu(held_out)
        out[p.name] = last
    return out


def table(figures: dict) -> str:
    """Markdown rows for RESULTS.md."""
    sp, q = figures["speed"], figures["quality"]
    lines = [
        "| peer | tokens/s | ours speed-up (wall / CPU) | FVU BatchTopK | converged | "
        "FVU inference (L0) | threshold settled |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in q.items():
        s = sp[name]
        up = (
            f"{s['ours_speedup_wall']:.2f}x / {s['ours_speedup_cpu']:.2f}x"
            if "ours_speedup_wall" in s
            else f"limit fraction {s['fraction_of_limit_wall']:.2f} / "
            f"{s['fraction_of_limit_cpu']:.2f}"
        )
        inf = row["fvu_inference_reported"]
        inf_s = f"{inf:.3f} ({row['l0_inference']:.1f})" if inf is not None else "not settled"
        lines.append(
            f"| {name} | {s['tokens_per_s']:,.0f} | {up} | {row['fvu_batchtopk']:.3f} | "
            f"{'yes' if row['converged'] else 'no'} ({row['tokens']:,} tok) | {inf_s} | "
            f"{'yes' if row['threshold_settled'] else 'no'} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=40, help="steps (unless --tokens)")
    p.add_argument("--tokens", type=float, default=0, help="token budget, e.g. 20e6")
    p.add_argument(
        "--until-flat",
        action="store_true",
        help="stop each peer once its FVU is flat and its threshold settled",
    )
    p.add_argument("--eval-every", type=int, default=20, help="steps between held-out evals")
    p.add_argument("--flat-window", type=int, default=3, help="evals the FVU must be flat for")
    p.add_argument("--flat-tol", type=float, default=0.01, help="relative FVU change = flat")
    p.add_argument("--thr-tol", type=float, default=0.02, help="relative threshold change")
    p.add_argument("--held-out", type=int, default=8192, help="held-out tokens")
    p.add_argument("--peers", default="ours,saelens-default,saelens-best",
                   help=f"comma list from {','.join(PEERS)} (ours first)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr for every peer")
    p.add_argument("--sparse-threads", type=int, default=1, help="ours: sparse_threads")
    p.add_argument("--ours-schedule", default="shared", choices=["shared", "trainer"],
                   help="ours' lr: 'shared' = every peer's constant --lr; 'trainer' = train_sae's "
                   "defaults (its lr rule, warm-up, decay over the last fifth)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="ours' encoder product (SAELens: bf16 autocast), the limit's")  # fmt: skip
    p.add_argument("--shard-tokens", type=int, default=65536, help="synthetic shard size")
    p.add_argument("--memory", action="store_true", help="peak memory of each peer alone")
    p.add_argument("--memory-steps", type=int, default=5)
    p.add_argument("--profile", type=int, default=0, help="profile this many more steps")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--estimate", type=int, default=0,
                   help="time this many steps, print the projected run time of the run asked "
                   "for (--tokens/--steps, an upper bound with --until-flat) and stop")  # fmt: skip
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint directory: resume from it, save to it (sae_checkpoint.py)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="steps between checkpoints (default: every eval) and at the end",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop after this many steps of this invocation, as if killed (tests)",
    )
    args = p.parse_args(argv)  # fmt: skip
    args.max_steps = int(args.tokens) // args.batch if args.tokens else args.steps
    args.checkpoint_every = args.checkpoint_every or args.eval_every
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = Shape(args.d_in, args.d_sae, args.k, args.batch)
    source = StreamSource(shape, args.max_steps * args.batch, args.shard_tokens)
    held_out = source.held_out(args.held_out)
    names = args.peers.split(",")
    kw = {
        "sparse_threads": args.sparse_threads,
        "dtype": args.dtype,
        "schedule": args.ours_schedule,
    }
    peers = make_peers(names, shape, source, args.max_steps, args.lr, args.device, **kw)
    if args.estimate:
        est = estimate(peers, shape, held_out, args)
        print(json.dumps(est, indent=2))
        if args.json:
            args.json.write_text(json.dumps(est, indent=2) + "\n")
        print(
            f"projected wall time of the whole run: {est['projected_hours']:.2f} h "
            f"({est['tokens_planned']:,} tokens per peer, load {os.getloadavg()[0]:.1f})"
        )
        return 0
    every = args.checkpoint_every
    ckpt = BenchCheckpoint(args.checkpoint, args, source.seed, every) if args.checkpoint else None
    run = train(peers, shape, held_out, args, ckpt, args.stop_after)
    if not run["finished"]:
        print(f"stopped after --stop-after {args.stop_after} steps; checkpoint: {args.checkpoint}")
        return 0
    figures = {
        "shape": vars(shape), "threads": args.threads, "device": args.device, "lr": args.lr,
        "ours_schedule": args.ours_schedule,
        "peers": names, "best_settings": BEST_SETTINGS,
        "load_average": os.getloadavg()[0], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "speed": speed(run["times"], shape),
        "quality": quality(run["curves"], peers, held_out, args),
        "curves": run["curves"],
    }  # fmt: skip
    if args.profile:
        figures["profile"] = profile_ours(peers[0], args.profile, args.max_steps, args.device)
    if args.memory:
        figures["memory"] = memory_report(names, args)
    print(json.dumps({k: v for k, v in figures.items() if k != "curves"}, indent=2))
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
