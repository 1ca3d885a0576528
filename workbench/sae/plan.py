"""What a training config resolves to once the data is known: sizes, steps, schedule."""

from __future__ import annotations

from typing import NamedTuple

from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import DataError, ShardSource
from workbench.sae.matryoshka import check_group_sizes, group_sizes_from_fractions


class Plan(NamedTuple):
    """What a config resolves to once the data's width is known."""

    d_in: int
    d_sae: int
    group_sizes: tuple[int, ...]
    lr: float
    steps: int
    k_aux: int
    warmup: int
    threshold_start: int


def make_plan(cfg: TrainSAEConfig, source: ShardSource, n_tokens: int) -> Plan:
    """Resolve defaults and refuse impossible settings before any training."""
    if cfg.d_in and cfg.d_in != source.d_in:
        raise DataError(f"activations have width {source.d_in}, config says d_in={cfg.d_in}")
    d_in = source.d_in
    d_sae = cfg.resolved_d_sae(d_in)
    if cfg.k > d_sae:
        raise DataError(f"k={cfg.k} is larger than d_sae={d_sae}")
    if cfg.group_sizes:
        sizes = check_group_sizes(d_sae, cfg.group_sizes)
    else:
        sizes = group_sizes_from_fractions(d_sae, cfg.group_fractions)
    steps = (cfg.tokens or n_tokens) // cfg.batch_size
    if steps < 1:
        raise DataError(
            f"token budget {cfg.tokens or n_tokens} is smaller than one batch ({cfg.batch_size})"
        )
    return Plan(
        d_in=d_in,
        d_sae=d_sae,
        group_sizes=sizes,
        lr=cfg.resolved_lr(d_sae),
        steps=steps,
        k_aux=cfg.k_aux or max(1, d_in // 2),
        warmup=min(cfg.warmup_steps, steps // 10),
        threshold_start=min(cfg.threshold_start_step, steps // 4),
    )


def lr_factor(step: int, plan: Plan, decay_start: float) -> float:
    """Linear warm-up, constant, then linear decay to 0 from ``decay_start`` of the run."""
    warm = (step + 1) / plan.warmup if plan.warmup and step < plan.warmup else 1.0
    start = int(decay_start * plan.steps)
    if decay_start < 1 and step >= start:
        return warm * max(0.0, (plan.steps - step) / max(1, plan.steps - start))
    return warm
