"""maira2-mini: MAIRA-2's architecture and code path at a size 2 CPU cores can train.

- :mod:`~workbench.models.mini.config`: ``MiniConfig``, the architecture, ``is_trained``.
- :mod:`~workbench.models.mini.tokenizer`: its byte-level BPE tokenizer with MAIRA-2's tokens.
- :mod:`~workbench.models.mini.data`: phantom studies -> training examples.
- :mod:`~workbench.models.mini.eval`: findings F1 against the phantom ground truth.
- :mod:`~workbench.models.mini.dense`: stage-1 data: frontal images, per-patch mask coverage.
- :mod:`~workbench.models.mini.vision`: stage 1, the vision tower pretrained alone, then frozen.
- :mod:`~workbench.models.mini.probe`: the stage-1 gate (probe AUROC, pointing game).
- :mod:`~workbench.models.mini.train`: the training run.
- :mod:`~workbench.models.mini.ensure`: the shipped model when trained, else train one.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "MiniConfig": "config",
    "SHIPPED": "config",
    "build_mini": "config",
    "is_trained": "config",
    "mini_config": "config",
    "ensure_mini": "ensure",
    "main": "ensure",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
