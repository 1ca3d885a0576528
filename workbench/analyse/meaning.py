"""Analyse's meaning step: mention scores, image localisation and the probe ceiling.

One entry point for :func:`workbench.analyse.run._build`, so the analyse pass only names it; each
part can be switched off in :class:`workbench.analyse.config.AnalyseConfig` and says in the run's
notes what it skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from workbench.analyse.localise import write_localisation
from workbench.analyse.mentions import write_feature_mentions
from workbench.analyse.probes import write_probes

if TYPE_CHECKING:
    from workbench.analyse.concepts import LabelMatrix
    from workbench.analyse.config import AnalyseConfig
    from workbench.analyse.inputs import Inputs


def _untimed(name: str) -> AbstractContextManager:
    return contextlib.nullcontext()


def write_meaning(
    con,
    inp: Inputs,
    cfg: AnalyseConfig,
    labels: LabelMatrix,
    sinks,
    timed: Callable[[str], AbstractContextManager] = _untimed,
) -> None:
    """``mentions``, ``feature_mentions``, ``feature_localisation`` and ``concept_probes``.

    ``sinks`` = (the sparse activations Parquet being written, the run's notes list);
    ``timed(name)`` wraps each part ("mentions", "localisation", "probes"), e.g. to time it.
    """
    path, notes = sinks
    acts = "read_parquet('" + str(path).replace("'", "''") + "')"
    if cfg.mention_scores:
        with timed("mentions"):
            write_feature_mentions(con, acts, inp.sae.d_sae, notes)
    if cfg.localise:
        with timed("localisation"):
            loc = (cfg.loc_min_image, cfg.loc_dilation)
            write_localisation(con, acts, inp.data_root, *loc, notes)
    if cfg.probe_folds:
        with timed("probes"):
            write_probes(con, inp.store, acts, inp.sae.d_sae, labels, cfg, notes)
