"""The record stage: residual-stream activations of a model over a collection -> a store.

The collection it reads (MIMIC-CXR layout studies, a reports tree or a table of texts) is
:mod:`workbench.cxr.collection`.

- :mod:`~workbench.record.config`: ``RecordConfig``, what to record and how to store it.
- :mod:`~workbench.record.run`: the stage itself, ``record(cfg)`` and ``main(argv)``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "RecordConfig": "config",
    "RecordError": "run",
    "main": "run",
    "record": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
