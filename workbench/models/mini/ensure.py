"""The maira2-mini a stage should use: the shipped one when trained, else a fresh training run.

:func:`ensure_mini` is what the demo calls; :func:`main` is ``python -m workbench.models.mini``
(``python -m workbench train-mini``). Training is imported only when it has to run, so asking
for the shipped model stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

from workbench.config import parse_config
from workbench.models.mini.config import SHIPPED, MiniConfig, is_trained

log = logging.getLogger("workbench.models.mini")


def ensure_mini(path: str | Path | None = None, cfg: MiniConfig | None = None) -> Path:
    """The directory of a trained maira2-mini: ``path`` or the shipped one, else train it.

    With ``path`` None the shipped ``data/maira2-mini`` is used if trained; otherwise the
    model is trained with ``cfg`` (default :class:`MiniConfig`, output to ``path`` when given).
    """
    target = Path(path) if path is not None else SHIPPED
    if is_trained(target):
        return target
    cfg = cfg or MiniConfig()
    cfg.out = target
    log.info("no trained maira2-mini in %s: training one (a few minutes)", target)
    from workbench.models.mini.train import train

    return train(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = parse_config(MiniConfig, argv, prog="python -m workbench.models.mini")
    from workbench.models.mini.train import train

    print(train(cfg))
    return 0
