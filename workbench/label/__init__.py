"""The label stage: explain features in words and score the explanations.

- :mod:`~workbench.label.data`: which features, which examples (from features.duckdb).
- :mod:`~workbench.label.prompts`: the explainer and detection prompts and their parsing.
- :mod:`~workbench.label.backends`: an OpenAI-compatible endpoint (local only unless opted in;
  no environment proxies or redirects for a local one), retries and Retry-After.
- :mod:`~workbench.label.offline`: the offline rule-based explainer and judge.
- :mod:`~workbench.label.text`: whole words from subword tokens, label cleaning, concept names.
- :mod:`~workbench.label.feature`: one feature: explain, then every scorer's example sets.
- :mod:`~workbench.label.scoring`: detection, fuzzing and simulation metrics.
- :mod:`~workbench.label.truth`: the phantom ground-truth metric (do labels name the concept?).
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
