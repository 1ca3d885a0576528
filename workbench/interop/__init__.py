"""Interop with the researcher's own stack: TransformerLens and SAELens, both ways.

- :mod:`~workbench.interop.lens`: ``hooked_transformer`` / ``transformer_bridge`` build
  TransformerLens models from the weights the workbench records (offline, unprocessed), so
  ``run_with_cache`` gives the recorded ``blocks.L.hook_resid_post``; ``residual_input`` feeds
  MAIRA-2's merged image + text embeddings to its language model in TransformerLens.
- :mod:`~workbench.interop.saelens`: ``store_batches`` (a store as a SAELens data provider),
  ``saelens_metadata``, ``export_saelens`` (any SAE we read -> a SAELens directory).
- :mod:`~workbench.interop.guard`: ``refuse_installs`` (TransformerLens may ``pip install``
  by itself), ``torch_install`` (the installed torch, read from disk).

Walkthrough: ``docs/interop.md``. The CE loss with an SAE spliced in is
:mod:`workbench.analyse.splice`.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "InstallRefusedError": "guard",
    "InteropError": "lens",
    "causal_lm": "lens",
    "export_saelens": "saelens",
    "hooked_transformer": "lens",
    "refuse_installs": "guard",
    "residual_input": "lens",
    "saelens_metadata": "saelens",
    "store_batches": "saelens",
    "torch_install": "guard",
    "transformer_bridge": "lens",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
