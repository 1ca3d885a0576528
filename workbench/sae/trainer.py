"""Training loop: activation store -> Matryoshka BatchTopK SAE, single process or data-parallel.

``train(cfg)`` is the library entry (``python -m workbench.train_sae`` and the demo call it).
Under ``accelerate launch`` every process takes a disjoint slice of each global batch, computes
its gradients with the sparse step of :mod:`workbench.sae.step`, and the gradients are averaged
with one all-reduce, so every process applies the same update. BatchTopK is taken per process
(each keeps k per token of its own slice on average).

A run is resumable: checkpoints hold weights, Adam state, threshold, dead-latent counters and
the normalisation factor, and the data order is a function of (seed, step), so resuming gives
the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from workbench.config import save_config, to_dict
from workbench.io import atomic_path, torch_threads
from workbench.run import RunLayout
from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import (
    DataError,
    ShardSource,
    ShuffledBatches,
    StoreSource,
    estimate_norm_factor,
    geometric_median,
    scan_source,
)
from workbench.sae.distributed import Distributed
from workbench.sae.io import save_sae
from workbench.sae.matryoshka import MatryoshkaSAE
from workbench.sae.multi import check_fits, select_hooks
from workbench.sae.plan import lr_factor, make_plan
from workbench.sae.step import Grads, StepStats, clip_grads_, forward_backward
from workbench.sae.step import project_decoder_grad_ as project_grad_
from workbench.sae.workspace import Workspace
from workbench.store import hook_stores, write_hook_index

# fields that do not change the result: a resumed run may differ in these
_VOLATILE = (
    "store", "out", "resume", "progress", "log_every", "checkpoint_every", "scan_store",
    "read_share", "hooks",
)  # fmt: skip
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOG_FILE = "train_log.jsonl"


class Trainer:
    """One training run: state, step, checkpoints, logs and the final artefact."""

    def __init__(self, cfg: TrainSAEConfig, source: ShardSource, dist: Distributed | None = None):
        self.cfg, self.source = cfg, source
        self.dist = dist or Distributed(cfg.device)
        if cfg.batch_size % self.dist.world:
            raise DataError(f"batch_size {cfg.batch_size} is not divisible by {self.dist.world}")
        gather = self.dist.world > 1 and cfg.read_share
        self.batches = ShuffledBatches(
            source, cfg.batch_size, cfg.buffer_tokens, cfg.seed, gather=gather
        )
        self.plan = make_plan(cfg, source, self.batches.n_tokens)
        if cfg.scan_store:
            self._scan()
        self.out = cfg.default_out()
        self.ckpt_dir = self.out / "checkpoints"
        torch.manual_seed(cfg.seed)
        p = self.plan
        self.sae = MatryoshkaSAE(p.d_in, p.d_sae, cfg.k, p.group_sizes, source.hook_name)
        self.sae.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        self.sae.to(self.dist.device)
        fused = {"fused": True} if self.dist.device.type in ("cpu", "cuda") else {}
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=p.lr, betas=betas, **fused)
        self.since_fired = torch.zeros(p.d_sae, dtype=torch.long, device=self.dist.device)
        self.step, self.norm_factor = 0, 1.0
        self.compute_dtype = _DTYPES[cfg.dtype]
        self.last: dict[str, Any] = {}
        self.cut_hint: float | None = None
        self.workspace = Workspace()  # the step's large buffers, reused from step to step

    def _scan(self) -> None:
        """Each process scans its share of the shards; a bad shard stops every process."""
        try:
            scan_source(self.source, self.dist.rank, self.dist.world)
            error = None
        except DataError as exc:
            error = exc
        if self.dist.max(float(error is not None)) and error is None:
            raise DataError("another process found unusable activations (see its message)")
        if error is not None:
            raise error

    # ---- state -------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k not in _VOLATILE}
        return {"config": cfg, "plan": list(self.plan), "world": self.dist.world}

    def _checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt"))

    def save_checkpoint(self) -> None:
        if self.dist.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            state = {**self.state(), "fingerprint": self._fingerprint()}
            path = self.ckpt_dir / f"step_{self.step:08d}.pt"
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
            for old in self._checkpoints()[:-2]:
                old.unlink()
        self.dist.barrier()

    def try_resume(self) -> bool:
        """Load the latest checkpoint if there is one; refuse one made with other settings."""
        found = self._checkpoints()
        if not self.cfg.resume or not found:
            return False
        state = torch.load(found[-1], map_location=self.dist.device, weights_only=False)
        if state["fingerprint"] != self._fingerprint():
            raise DataError(
                f"{found[-1]}: checkpoint was made with other settings; use another --out or "
                "--no-resume (which starts over and overwrites it)"
            )
        self.load_state(state)
        return True

    def state(self) -> dict[str, Any]:
        """What a resumed run needs: weights and threshold, Adam, dead-latent counters, step,
        normalisation factor (the batch of a step is a function of the step; ``cut_hint``
        only saves time)."""
        return {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "since_fired": self.since_fired,
            "norm_factor": self.norm_factor,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (the norm factor is the saved one, not re-estimated)."""
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["optimizer"])
        self.since_fired.copy_(state["since_fired"])
        self.step, self.norm_factor = int(state["step"]), float(state["norm_factor"])

    def initialise(self) -> None:
        """Normalisation factor and b_dec at the geometric median of the first batch."""
        self.norm_factor = (
            estimate_norm_factor(self.batches, self.cfg.norm_batches) if self.cfg.normalize else 1
        )
        first = self.batches.batch(0).to(self.dist.device) / self.norm_factor
        with torch.no_grad():
            self.sae.b_dec_D.copy_(geometric_median(first))

    # ---- one step ----------------------------------------------------------------------
    def _local_batch(self, step: int) -> torch.Tensor:
        """This process's disjoint slice of global batch ``step``, in raw units (a view of
        the loaded window on CPU: the step normalises and centres it in one pass)."""
        x = self.batches.local(step, self.dist.rank, self.dist.world)
        return x.to(self.dist.device, non_blocking=True)

    def _reduce(self, grads: Grads, stats: StepStats) -> tuple[Grads, StepStats]:
        """Average gradients and statistics over processes (one all-reduce)."""
        if self.dist.world == 1:
            return grads, stats
        scalars = torch.stack([stats.loss, stats.total_var, stats.aux]).float()
        counts = torch.tensor([stats.n_active, stats.n_above], dtype=torch.float32)
        parts = [*grads, stats.prefix_mse, scalars, stats.fired.float(), counts.to(scalars)]
        flat = self.dist.mean_(torch.cat([t.reshape(-1) for t in parts]))
        out, offset = [], 0
        for t in parts:
            out.append(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        w = self.dist.world
        stats = StepStats(
            loss=out[5][0],
            prefix_mse=out[4],
            total_var=out[5][1],
            aux=out[5][2],
            fired=(out[6] * w).round().long(),
            min_act=self.dist.min(stats.min_act),
            n_active=int(round(float(out[7][0]) * w)),
            n_above=int(round(float(out[7][1]) * w)) if stats.n_above >= 0 else -1,
        )
        return Grads(*out[:4]), stats

    def train_step(self, logging: bool) -> StepStats:
        """One step; on CPU all but the encoder product run on ``sparse_threads`` threads."""
        full = torch.get_num_threads()
        narrow = self.dist.device.type == "cpu" and 0 < self.cfg.sparse_threads < full
        with torch_threads(self.cfg.sparse_threads if narrow else None):
            return self._step(logging, dense_threads=full if narrow else None)

    def _step(self, logging: bool, dense_threads: int | None) -> StepStats:
        """Forward, backward, all-reduce, then the update (:meth:`_update`)."""
        cfg, sae = self.cfg, self.sae
        with record_function("sae.batch"):
            x = self._local_batch(self.step)
        dead = self.since_fired >= cfg.dead_tokens
        thr = float(sae.threshold) if logging else None
        grads, stats = forward_backward(
            sae, x, cfg.k, dead, self.plan.k_aux, cfg.aux_alpha, self.compute_dtype, thr,
            cut_hint=self.cut_hint, dense_threads=dense_threads,
            x_scale=1.0 / self.norm_factor, workspace=self.workspace,
        )  # fmt: skip
        # BatchTopK's cut moves slowly: 0.8 x this step's smallest kept value bounds the next
        # one from below (a wrong guess costs time, not exactness; not checkpointed)
        self.cut_hint = 0.8 * float(stats.min_act) if stats.n_active else None
        with record_function("sae.reduce"):
            grads, stats = self._reduce(grads, stats)
        with record_function("sae.update"):
            self._update(grads, stats)
        return stats

    def _update(self, grads: Grads, stats: StepStats) -> None:
        """Project, clip, Adam, renormalise the decoder, threshold and dead-latent counters."""
        cfg, sae = self.cfg, self.sae
        project_grad_(sae.W_dec_FD, grads.W_dec)
        self.last["grad_norm"] = clip_grads_(grads, cfg.max_grad_norm)
        for param, grad in zip(sae.parameters(), grads):
            param.grad = grad
        lr = self.plan.lr * lr_factor(self.step, self.plan, cfg.decay_start)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        with torch.no_grad():
            if self.step > self.plan.threshold_start and stats.n_active:
                beta = cfg.threshold_beta if float(sae.threshold) >= 0 else 0.0
                sae.threshold.mul_(beta).add_((1 - beta) * stats.min_act.float())
            self.since_fired.add_(cfg.batch_size).masked_fill_(stats.fired > 0, 0)
        self.last["lr"] = lr
        self.step += 1

    # ---- logs and the run --------------------------------------------------------------
    def metrics(self, stats: StepStats, tokens_per_s: float) -> dict[str, Any]:
        """One log record: losses, FVU overall and per prefix, L0s, dead fraction, lr, speed."""
        var = float(stats.total_var) or 1.0
        mse = [float(m) for m in stats.prefix_mse]
        thr = float(self.sae.threshold)  # < 0 until first estimated
        return {
            "step": self.step,
            "tokens": self.step * self.cfg.batch_size,
            "loss": float(stats.loss),
            "mse_prefix": mse,
            "fvu": mse[-1] / var,
            "fvu_prefix": [m / var for m in mse],
            "aux_loss": float(stats.aux),
            "l0": stats.n_active / self.cfg.batch_size,
            "l0_inference": stats.n_above / self.cfg.batch_size if stats.n_above >= 0 else None,
            "dead_fraction": float((self.since_fired >= self.cfg.dead_tokens).float().mean()),
            "threshold": thr * self.norm_factor if thr >= 0 else None,  # raw units
            "lr": self.last["lr"],
            "grad_norm": float(self.last["grad_norm"]),
            "tokens_per_s": tokens_per_s,
            "processes": self.dist.world,
            "bytes_read": int(self.dist.max(float(getattr(self.source, "bytes_read", 0)))),
        }

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            with open(self.out / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """Drop log lines beyond the step a resumed run restarts from."""
        path = self.out / LOG_FILE
        if self.dist.main and path.exists():
            lines = path.read_text().splitlines()
            keep = [ln for ln in lines if json.loads(ln)["step"] <= self.step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def begin(self) -> None:
        """Resume from the latest checkpoint or initialise; write ``train_config.json``."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.try_resume():
            if self.dist.main:
                for old in self._checkpoints():
                    old.unlink()
                (self.out / LOG_FILE).unlink(missing_ok=True)
            self.initialise()
        self._trim_log()
        if self.dist.main:
            save_config(cfg, self.out / "train_config.json")
        show = cfg.progress and self.dist.main
        self.bar = tqdm(total=self.plan.steps, initial=self.step, unit="step", disable=not show)
        self._clock = (time.perf_counter(), self.step)

    @property
    def finished(self) -> bool:
        """Whether the token budget is spent."""
        return self.step >= self.plan.steps

    def advance(self) -> None:
        """One step, with its log line and checkpoint when due."""
        cfg = self.cfg
        logging = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == self.plan.steps
        stats = self.train_step(logging)
        self.bar.update(1)
        if logging:
            t0, s0 = self._clock
            speed = (self.step - s0) * cfg.batch_size / (time.perf_counter() - t0)
            record = self.metrics(stats, speed)
            self.last["metrics"] = record
            self._log(record)
            self.bar.set_postfix(fvu=f"{record['fvu']:.3f}", l0=f"{record['l0_inference']:.1f}")
            self._clock = (time.perf_counter(), self.step)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def finish(self) -> Path:
        """Checkpoint, and save the artefact if the budget is spent."""
        self.bar.close()
        self.save_checkpoint()
        if self.finished:
            self.save_artefact()
        self.dist.barrier()
        return self.out

    def run(self, stop_after: int | None = None) -> Path:
        """Train to the token budget (or stop after ``stop_after`` steps, as if killed)."""
        self.begin()
        done_here = 0
        while not self.finished and (stop_after is None or done_here < stop_after):
            self.advance()
            done_here += 1
        return self.finish()

    def save_artefact(self) -> None:
        """The SAE in raw-activation units (normalisation folded in), SAELens-loadable."""
        if not self.dist.main:
            return
        extra = {
            "norm_factor": self.norm_factor,
            "steps": self.step,
            "tokens": self.step * self.cfg.batch_size,
            "store": str(self.cfg.store) if self.cfg.store else None,
            "model": self.source.model,
            "final_metrics": self.last.get("metrics"),
        }
        sae = self.sae.scaled(self.norm_factor).cpu()
        save_sae(sae, self.out, model_name=self.source.model, extra=extra)


def train_on(source: ShardSource, cfg: TrainSAEConfig, stop_after: int | None = None) -> Path:
    """Train on any :class:`ShardSource` (e.g. in-memory activations); returns the output dir."""
    cfg.validate()
    return Trainer(cfg, source).run(stop_after=stop_after)


def train_hooks(cfg: TrainSAEConfig, stores: dict[str, Path]) -> Path:
    """One SAE per hook of a multi-hook store, stepped in lockstep (:mod:`workbench.sae.multi`);
    returns the output directory: ``<hook>/`` per SAE and a ``hooks.json`` index."""
    root = cfg.default_out()
    chosen = select_hooks(stores, cfg.hooks, Path(cfg.store or "."))
    dist = Distributed(cfg.device)
    sources = {hook: StoreSource(path) for hook, path in chosen.items()}
    check_fits(sources, cfg, dist)
    trainers = [
        Trainer(dataclasses.replace(cfg, store=chosen[h], out=root / h, hooks=()), src, dist)
        for h, src in sources.items()
    ]
    for t in trainers:
        t.begin()
    while not all(t.finished for t in trainers):
        for t in trainers:
            if not t.finished:
                t.advance()
    for t in trainers:
        t.finish()
    if dist.main:
        write_hook_index(root, {h: h for h in chosen})
    return root


def train(cfg: TrainSAEConfig) -> Path:
    """Train an SAE on ``cfg.store`` and return the artefact directory (runs/x/sae); a
    multi-hook store gets one SAE per hook (:func:`train_hooks`)."""
    cfg.validate()
    if cfg.store is None and cfg.run is not None:
        cfg = dataclasses.replace(cfg, store=RunLayout(cfg.run).activations)
    if cfg.store is None:
        raise DataError("no activation store given (--run runs/x or --store runs/x/activations)")
    stores = hook_stores(cfg.store)
    if stores is not None:
        return train_hooks(cfg, stores)
    if cfg.hooks:
        raise DataError(f"{cfg.store} holds one hook; --hooks needs a store of record --layers")
    return train_on(StoreSource(cfg.store), dataclasses.replace(cfg))
