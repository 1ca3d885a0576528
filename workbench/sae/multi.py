"""One SAE per hook of a multi-hook store (``record --layers``): which hooks, and whether
they fit in memory together.

``record --layers 2,4`` writes one store per hook (``<store>/<hook>/``, listed in
``hooks.json``). :func:`workbench.sae.trainer.train_hooks` trains one SAE per selected hook in
one process (or one ``accelerate launch``): the trainers step in lockstep, step s of every
SAE before step s + 1 of any, each on its own hook's data in the same shuffled order (hooks
recorded together have the same shards, so every SAE sees the same tokens at every step).
Every hook's shards are read once per epoch, as k separate runs would read them: what one
pass saves is k launches, k normalisation passes and, on a GPU, the idle time between small
SAEs' kernels. Each SAE is the one a separate run with the same settings gives (tested bit for
bit), in ``<out>/<hook>``.

All SAEs live in memory at once. Before anything is allocated the footprint (weights,
gradients, Adam state, shuffle window and step buffers, per SAE) is set against the memory
free on the device; if it does not fit, training is refused with the figures and the way out
(``--hooks`` to train fewer at once).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import DataError, StoreSource
from workbench.sae.distributed import Distributed

_GIB = 1024**3
HEADROOM = 0.8  # use at most this fraction of the free memory


def footprint_bytes(d_in: int, cfg: TrainSAEConfig, world: int = 1) -> int:
    """Memory one SAE's training holds: weights, gradients and Adam's two moments (float32),
    the shuffle window (float32, plus the permuted copy) and the step's buffers."""
    d_sae = cfg.resolved_d_sae(d_in)
    params = 2 * d_in * d_sae + d_sae + d_in
    window = 2 * cfg.buffer_tokens * d_in * 4 // (world if cfg.read_share else 1)
    local = cfg.batch_size // world
    n_groups = max(len(cfg.group_sizes), len(cfg.group_fractions))
    step = local * d_in * 4 * (2 * n_groups + 4) + (1 << 24) + local * d_in * 4 // 2
    return 4 * params * 4 + window + step


def free_bytes(device: torch.device) -> int:
    """Memory free for new allocations on ``device`` (CUDA: the driver's figure; CPU: the
    kernel's MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(sources: dict[str, StoreSource], cfg: TrainSAEConfig, dist: Distributed) -> None:
    """Refuse, with the figures, a set of SAEs whose training does not fit in free memory."""
    each = {hook: footprint_bytes(src.d_in, cfg, dist.world) for hook, src in sources.items()}
    need, free = sum(each.values()), free_bytes(dist.device)
    if need > HEADROOM * free:
        largest = max(each.values())
        raise DataError(
            f"training {len(each)} SAEs at once needs about {need / _GIB:.1f} GiB "
            f"({largest / _GIB:.2f} GiB for the largest: weights, gradients, Adam state, shuffle "
            f"window), but {free / _GIB:.1f} GiB is free on {dist.device} (at most "
            f"{HEADROOM:.0%} is used); train fewer at once with --hooks (e.g. --hooks "
            f"{next(iter(each))}), or lower --buffer-tokens"
        )


def select_hooks(stores: dict[str, Path], wanted: tuple[str, ...], where: Path) -> dict:
    """The hooks to train: ``wanted`` (all if empty), each checked against the store's index."""
    unknown = [h for h in wanted if h not in stores]
    if unknown:
        raise DataError(f"{where}: no hook(s) {unknown}; the store holds {sorted(stores)}")
    return {h: stores[h] for h in (wanted or tuple(stores))}
