"""Resumable training state of maira2-mini's two stages: modules + optimiser + step, atomically.

Both stages checkpoint the same way (stage 1: tower and heads; stage 2: model and auxiliary
probe), so that a killed run continues from its last checkpoint with the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from workbench.io import atomic_path


def save_state(
    path: Path, modules: Mapping[str, torch.nn.Module], optimizer, step: int, **extra
) -> None:
    """Write every module's state, the optimiser's and ``step`` to ``path`` (tmp + rename)."""
    state = {name: m.state_dict() for name, m in modules.items()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save({**state, "step": step, **extra}, tmp)


def restore_state(path: Path, modules: Mapping[str, torch.nn.Module], optimizer=None) -> int:
    """Load ``path`` into the modules (and optimiser) if it exists; the step to continue from."""
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    if optimizer is not None and "optim" in state:
        optimizer.load_state_dict(state["optim"])
    return int(state["step"])
