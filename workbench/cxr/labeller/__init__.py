"""The rule-based report labeller (ConText-style negation and uncertainty) and its CLI.

- :mod:`~workbench.cxr.labeller.rules`: the phrase patterns and cues (data, no logic).
- :mod:`~workbench.cxr.labeller.context`: mentions, negation/uncertainty, CheXpert aggregation.
- :mod:`~workbench.cxr.labeller.run`: ``python -m workbench label-reports``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "BinaryScores": "context",
    "Mention": "context",
    "PHANTOM_CONCEPTS": "context",
    "ReportLabels": "context",
    "label_report": "context",
    "label_reports": "context",
    "score_labels": "context",
    "main": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
