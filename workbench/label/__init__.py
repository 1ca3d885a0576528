"""The label stage: explain features in words and score the explanations.

- :mod:`~workbench.label.data`: which features, which examples (from features.duckdb).
- :mod:`~workbench.label.prompts`: the explainer and detection prompts and their parsing.
- :mod:`~workbench.label.backends`: offline rules or an OpenAI-compatible endpoint (local only
  unless opted in).
- :mod:`~workbench.label.scoring`: detection and fuzzing metrics.
- :mod:`~workbench.label.journal`: the resume journal and the rows written to the database.
- :mod:`~workbench.label.run`: the stage itself, ``run_label(cfg)`` and ``main(argv)``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "LabelConfig": "run",
    "LabelSummary": "run",
    "demo_step": "run",
    "main": "run",
    "run_label": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
