"""The report labeller (spaCy + negspacy: NegEx negation, uncertainty, history) and its CLI.

- :mod:`~workbench.cxr.labeller.rules`: the concept phrase patterns (data, no logic).
- :mod:`~workbench.cxr.labeller.terms`: the NegEx termsets (negation, uncertainty, history).
- :mod:`~workbench.cxr.labeller.nlp`: the spaCy pipeline, mention spans and statuses.
- :mod:`~workbench.cxr.labeller.context`: mentions per concept, CheXpert aggregation.
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
    "report_mentions": "context",
    "score_labels": "context",
    "main": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
