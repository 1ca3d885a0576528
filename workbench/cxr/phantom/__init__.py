"""The phantom benchmark: synthetic chest radiographs with ground truth, in MIMIC-CXR layout.

- :mod:`~workbench.cxr.phantom.cohort`: subjects, studies and their findings and devices.
- :mod:`~workbench.cxr.phantom.draw`, :mod:`~workbench.cxr.phantom.anatomy`,
  :mod:`~workbench.cxr.phantom.lesions`, :mod:`~workbench.cxr.phantom.devices`,
  :mod:`~workbench.cxr.phantom.lateral`, :mod:`~workbench.cxr.phantom.render`: the pixels.
- :mod:`~workbench.cxr.phantom.reports`: the report text and its labels.
- :mod:`~workbench.cxr.phantom.run`: the generator, ``generate(cfg)`` and ``main(argv)``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "PhantomConfig": "run",
    "generate": "run",
    "main": "run",
    "summarize": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
