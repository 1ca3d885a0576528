"""The analyse stage: an SAE over the activation store -> features.duckdb.

- :mod:`~workbench.analyse.config`: ``AnalyseConfig``, the stage's flags.
- :mod:`~workbench.analyse.inputs`: what it reads (store, SAE, labels, unembedding), checked.
- :mod:`~workbench.analyse.carry`: what a rerun keeps of the other stages' rows (by SAE).
- :mod:`~workbench.analyse.stats`: streaming per-feature accumulators over the one pass.
- :mod:`~workbench.analyse.tables`: SQL over the activations Parquet (examples, n-grams, ...).
- :mod:`~workbench.analyse.concepts`: concept AUROCs (:mod:`workbench.stats`) and the phantom
  recovery table.
- :mod:`~workbench.analyse.directions`: decoder geometry (neighbours, logit effects, groups).
- :mod:`~workbench.analyse.meaning`: mention scores (:mod:`~workbench.analyse.mentions`),
  image localisation (:mod:`~workbench.analyse.localise`), the probe ceiling
  (:mod:`~workbench.analyse.probes`); :mod:`~workbench.analyse.report` prints them.
- :mod:`~workbench.analyse.user_labels`: ``--labels FILE.csv``, a researcher's own labels.
- :mod:`~workbench.analyse.splice`: CE loss recovered with the SAE spliced into the model.
- :mod:`~workbench.analyse.run`: the stage itself, ``analyse(cfg)`` and ``main(argv)``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "AnalyseConfig": "config",
    "AnalyseError": "inputs",
    "analyse": "run",
    "main": "run",
    "recovery_report": "concepts",
    "SpliceLosses": "splice",
    "splice_losses": "splice",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
