"""What the training CLIs share: the result tuple, the resume check, the training set.

``segmentation.train`` (U-Net, SSN) and ``segmentation.semantic_gan.train`` both use these, so
they live below both and neither training module imports the other at load time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from segmentation.data import load_dataset
from segmentation.io import DataError, SegSample
from segmentation.subsets import select_training_set
from workbench.config import ConfigError, to_dict


class TrainResult(NamedTuple):
    out: Path
    steps: int
    """Optimiser steps completed (may be < cfg.steps when max_time_s stopped training)."""
    last_loss: float
    elapsed_s: float


# Fields that may change between a run and its resumption without changing the model.
RESUMABLE_CHANGES = frozenset(
    {"out", "steps", "max_time_s", "resume", "progress", "threads", "log_every", "checkpoint_every"}
)


def check_resumable(cfg, allowed: frozenset[str] = RESUMABLE_CHANGES) -> None:
    """Refuse to resume a run directory whose saved cfg.json describes a different model.

    ``allowed`` names the fields that may differ (run length, logging, threads...)."""
    path = cfg.out / "cfg.json"
    if not (cfg.resume and (cfg.out / "checkpoint.pt").exists() and path.exists()):
        return
    old, new = json.loads(path.read_text()), to_dict(cfg)
    defaults = _defaults(cfg)  # a field added since the run was saved: its default then held
    changed = sorted(k for k in new if k not in allowed and old.get(k, defaults.get(k)) != new[k])
    if changed:
        raise ConfigError(
            f"{cfg.out} holds a checkpoint of a different configuration (fields {changed}); "
            "use another --out or --no-resume"
        )


def _defaults(cfg) -> dict:
    """The JSON view of the config class's defaults ({} if a field has none)."""
    try:
        return to_dict(type(cfg)())
    except TypeError:
        return {}


def load_training_samples(cfg) -> list[SegSample]:
    """The train split of ``cfg.dataset``, restricted by ``cfg.train_subset`` if set."""
    samples = load_dataset(
        cfg.dataset, cfg.data, "train", cfg.image_size, cfg.crop_size,
        lung_class=getattr(cfg, "lung_class", False),
    )  # fmt: skip
    if not samples:
        raise DataError(f"{cfg.data}: no {cfg.dataset} images in split 'train'")
    return select_training_set(samples, cfg.train_subset, cfg.train_subset_size, cfg.seed)
