"""``python -m workbench.train_sae --store runs/x/activations``: train a Matryoshka SAE.

Thin on purpose: parse :class:`workbench.sae.config.TrainSAEConfig` (flags, ``--preset`` TOML,
``--help`` from the field docstrings) and call :func:`workbench.sae.trainer.train`. Runs
data-parallel unchanged under ``accelerate launch -m workbench.train_sae ...``.
"""

from __future__ import annotations

import sys

from workbench.config import ConfigError, parse_config
from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import DataError
from workbench.sae.matryoshka import SAEShapeError


def main(argv: list[str] | None = None) -> int:
    """Train and print the artefact directory; exit code 2 with a clear message on bad input."""
    cfg = parse_config(TrainSAEConfig, argv, prog="python -m workbench.train_sae")
    from workbench.sae.trainer import train  # after parsing: --help stays fast

    try:
        out = train(cfg)
    except (DataError, SAEShapeError, ConfigError) as exc:
        print(f"train_sae: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
