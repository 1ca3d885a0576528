"""The record stage: residual-stream activations of a model over a collection -> a store.

- :mod:`~workbench.record.data`: the collection (MIMIC-CXR layout studies or text files).
- :mod:`~workbench.record.run`: the stage itself, ``record(cfg)`` and ``main(argv)``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "RecordConfig": "run",
    "RecordError": "run",
    "main": "run",
    "record": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
