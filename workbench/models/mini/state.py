"""Resumable training state of maira2-mini's two stages: modules + optimiser + step, atomically.

Both stages checkpoint the same way (stage 1: tower and heads; stage 2: model and auxiliary
probe), so that a killed run continues from its last checkpoint with the same batches. Files
hold CPU tensors and are read onto the CPU, then copied into the modules wherever they live, so
a run killed on a GPU machine resumes on a CPU one and the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from workbench.io import atomic_path


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) on the CPU; CPU tensors
    are returned as they are, not copied."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_state(
    path: Path, modules: Mapping[str, torch.nn.Module], optimizer, step: int, **extra
) -> None:
    """Write every module's state, the optimiser's and ``step`` to ``path`` (tmp + rename),
    as CPU tensors."""
    state = {name: m.state_dict() for name, m in modules.items()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(to_cpu({**state, "step": step, **extra}), tmp)


def restore_state(path: Path, modules: Mapping[str, torch.nn.Module], optimizer=None) -> int:
    """Load ``path`` into the modules (and optimiser) if it exists; the step to continue from.

    The file is read onto the CPU (whatever device wrote it); ``load_state_dict`` copies each
    tensor onto its module's device, and the optimiser's state onto its parameters' device.
    """
    if not path.is_file():
        return 0
    state = load_state_file(path)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    if optimizer is not None and "optim" in state:
        optimizer.load_state_dict(state["optim"])
    return int(state["step"])


def load_state_file(path: Path) -> dict:
    """The checkpoint at ``path`` with every tensor on the CPU (``map_location``)."""
    return torch.load(path, weights_only=True, map_location="cpu")
