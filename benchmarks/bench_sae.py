"""Matryoshka BatchTopK SAE training speed: workbench vs SAELens, side by side in one run.

Same synthetic superposition activations, same configuration (d_in 576, d_sae 4608, k 32,
Matryoshka widths 288/1152/4608, batch 4096, same learning rate and number of steps, same
batches in the same order), on the CPU threads given. Reports tokens/s of each, their
ratio, each as a fraction of this machine's limit (the one dense product a step cannot avoid,
``4096x576 @ 576x4608`` fp32, timed here), and the held-out FVU of both SAEs encoding with
BatchTopK at the same L0 (and with their inference thresholds).

    .venv/bin/python benchmarks/bench_sae.py --steps 40 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# On a shared machine, OpenMP threads that spin while waiting for a descheduled sibling burn
# the cores both runs need (measured here: 3x slower steps). Sleeping waiters, for both peers
# alike; must be set before torch loads its OpenMP runtime. Override from the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from workbench.sae import load_sae  # noqa: E402
from workbench.sae.config import TrainSAEConfig  # noqa: E402
from workbench.sae.data import ShuffledBatches, TensorSource  # noqa: E402
from workbench.sae.synthetic import superposition  # noqa: E402
from workbench.sae.trainer import Trainer  # noqa: E402

D_IN, D_SAE, K, WIDTHS, BATCH = 576, 4608, 32, (288, 1152, 4608), 4096


class Clock:
    """Wall and process CPU seconds of a block (CPU time is less sensitive to a shared machine)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def limit_seconds(repeats: int = 7) -> tuple[float, float]:
    """Median wall and CPU seconds of the one dense product a step cannot avoid."""
    a, b = torch.randn(BATCH, D_IN), torch.randn(D_IN, D_SAE)
    torch.mm(a, b)
    walls, cpus = [], []
    for _ in range(repeats):
        with Clock() as c:
            torch.mm(a, b)
        walls.append(c.wall)
        cpus.append(c.cpu)
    return statistics.median(walls), statistics.median(cpus)


def fvu(x_ND: torch.Tensor, recon_ND: torch.Tensor) -> float:
    err = (x_ND - recon_ND).pow(2).sum(1).mean()
    return float(err / (x_ND - x_ND.mean(0)).pow(2).sum(1).mean())


def run_ours(
    acts: torch.Tensor, steps: int, lr: float, out: Path, sparse_threads: int
) -> tuple[Clock, Path]:
    cfg = TrainSAEConfig(
        out=out, d_sae=D_SAE, k=K, group_sizes=(288, 864, 3456), batch_size=BATCH,
        tokens=steps * BATCH, lr=lr, warmup_steps=0, decay_start=1.0, norm_batches=5,
        threshold_start_step=0, buffer_tokens=acts.shape[0], progress=False, device="cpu",
        checkpoint_every=0, resume=False, log_every=10, scan_store=False,
        sparse_threads=sparse_threads,
    )  # fmt: skip
    trainer = Trainer(cfg, TensorSource(acts, shard_tokens=acts.shape[0]))
    with Clock() as clock:
        trainer.run()
    return clock, out


def run_saelens(batches: list[torch.Tensor], steps: int, lr: float, out: Path):
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig
    from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig

    sae_cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=list(WIDTHS),
        normalize_activations="expected_average_only_in",
    )  # fmt: skip
    sae = MatryoshkaBatchTopKTrainingSAE(sae_cfg)

    def provider():
        while True:
            yield from batches

    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=lr,
        lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0, device="cpu",
        n_batches_for_norm_estimate=5, logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider(), evaluator=None)
    with Clock() as clock:
        trained = trainer.fit()
    trained.save_inference_model(str(out))
    return clock, trained


def evaluate(held_out: torch.Tensor, ours_dir: Path, saelens_trained, saelens_dir: Path) -> dict:
    """FVU of both SAEs on held-out tokens: BatchTopK at L0 = k, and inference thresholds."""
    from sae_lens import SAE

    ours = load_sae(ours_dir)
    theirs = SAE.load_from_disk(str(saelens_dir))
    with torch.no_grad():
        ours_topk = ours.decode(ours.encode_batch_topk(held_out))
        theirs_topk = saelens_trained.decode(saelens_trained.encode(held_out))
        ours_lat, theirs_lat = ours.encode(held_out), theirs.encode(held_out)
        return {
            "fvu_batchtopk_ours": fvu(held_out, ours_topk),
            "fvu_batchtopk_saelens": fvu(held_out, theirs_topk),
            "fvu_inference_ours": fvu(held_out, ours.decode(ours_lat)),
            "fvu_inference_saelens": fvu(held_out, theirs.decode(theirs_lat)),
            "l0_inference_ours": float((ours_lat > 0).sum(1).float().mean()),
            "l0_inference_saelens": float((theirs_lat > 0).sum(1).float().mean()),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps for each")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam lr for both")
    parser.add_argument(
        "--sparse-threads", type=int, default=TrainSAEConfig.sparse_threads,
        help="our TrainSAEConfig.sparse_threads (0 = all threads)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    acts = superposition((args.steps + 2) * BATCH, D_IN, n_features=4 * D_SAE, active=K, seed=0)
    train, held_out = acts[: args.steps * BATCH], acts[args.steps * BATCH :]
    order = ShuffledBatches(TensorSource(train, shard_tokens=train.shape[0]), BATCH, train.shape[0])
    batches = [order.batch(s) for s in range(args.steps)]  # the batches our trainer sees
    tokens = args.steps * BATCH
    with tempfile.TemporaryDirectory() as tmp:
        before = limit_seconds()
        ours, ours_dir = run_ours(
            train, args.steps, args.lr, Path(tmp) / "ours", args.sparse_threads
        )
        theirs, trained = run_saelens(batches, args.steps, args.lr, Path(tmp) / "sl")
        after = limit_seconds()
        mm_wall, mm_cpu = min(before[0], after[0]), min(before[1], after[1])
        figures = {
            "steps": args.steps, "threads": args.threads, "lr": args.lr,
            "sparse_threads": args.sparse_threads,
            "tokens_per_s_ours": tokens / ours.wall,
            "tokens_per_s_saelens": tokens / theirs.wall,
            "speedup": theirs.wall / ours.wall,
            "limit_tokens_per_s": BATCH / mm_wall,
            "fraction_of_limit_ours": (tokens / ours.wall) / (BATCH / mm_wall),
            "fraction_of_limit_saelens": (tokens / theirs.wall) / (BATCH / mm_wall),
            "matmul_ms": 1000 * mm_wall,
            "cpu_speedup": theirs.cpu / ours.cpu,
            "cpu_fraction_of_limit_ours": mm_cpu * args.steps / ours.cpu,
            "cpu_fraction_of_limit_saelens": mm_cpu * args.steps / theirs.cpu,
            "load_average": os.getloadavg()[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            **evaluate(held_out, ours_dir, trained, Path(tmp) / "sl"),
        }  # fmt: skip
    for key, value in figures.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
