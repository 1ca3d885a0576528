"""The analyse stage's configuration: one dataclass, field docstrings as ``--help`` text.

Kept apart from :mod:`workbench.analyse.run` so that the input readers
(:mod:`workbench.analyse.inputs`) can name it without importing the stage that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class AnalyseConfig:
    """Run an SAE over an activation store and write per-feature tables to features.duckdb."""

    run: Path = Path("runs/demo")
    """Run directory; features.duckdb and feature_acts.parquet are written here."""
    store: Path | None = None
    """Activation store (default: <run>/activations)."""
    sae: Path | None = None
    """SAE artefact, SAELens dir or dictionary_learning dir (default: <run>/sae)."""
    data: Path | None = None
    """Dataset root in MIMIC-CXR layout with label CSVs (default: <run>/phantom if present,
    else the dataset the store was recorded from)."""
    model: Path | None = None
    """Model for logit effects (default: <run>/model if present; none: logit effects skipped)."""
    batch_tokens: int = 4096
    """Tokens encoded per batch."""
    top_k: int = 20
    """Top activating examples kept per feature."""
    n_quantiles: int = 10
    """Activation intervals sampled for quantile examples."""
    per_quantile: int = 5
    """Examples drawn from each interval."""
    context: int = 5
    """Tokens stored on each side of an example."""
    bins_per_octave: int = 4
    """Histogram resolution: log-spaced bins per doubling of the activation."""
    n_neighbors: int = 10
    """Nearest features (decoder cosine) stored per feature."""
    n_logits: int = 10
    """Promoted and suppressed tokens stored per feature."""
    n_ngrams: int = 3
    """Report n-grams stored per feature (and quoted in its statistical label)."""
    label_min_auroc: float = 0.7
    """A statistical label names the best concept only if its AUROC reaches this."""
    recovery_threshold: float = 0.95
    """AUROC at which a phantom concept counts as recovered by a feature."""
    block: int = 1024
    """Features per block for AUROC, neighbours and logit effects (bounds memory)."""
    device: str = "auto"
    """Torch device for encoding: auto (cuda if available), cpu, cuda, cuda:1, ..."""
    seed: int = 0
    """Seed of the quantile example draw."""
    report: bool = False
    """Print the phantom recovery table (best feature per ground-truth concept)."""
    reuse: bool = False
    """Keep the existing features.duckdb when it and its Parquet are complete (e.g. with
    --report); an incomplete pair is recomputed."""
    labels: Path | None = None
    """Your own study labels: a CSV with study_id and concept columns (1 / 0 / -1 / blank),
    scored like the dataset's labels and stored as source 'user' (never as ground truth)."""
    mention_scores: bool = True
    """Score features on each concept mention of the report tokens: asserted vs negated."""
    localise: bool = True
    """Score image features against the dataset's masks (pointing game, patch AUROC)."""
    loc_min_image: float = 0.5
    """Localise only features with at least this share of their mass on image tokens."""
    loc_dilation: int = 1
    """Patches the mask is dilated by for the pointing game."""
    probe_folds: int = 5
    """Folds (split by subject) of the residual-stream probe ceiling; 0: no probes."""
    probe_max_studies: int = 2000
    """Studies pooled for the probes at most (a seeded sample beyond; bounds memory)."""
    quality_studies: int = 32
    """Studies the SAE quality (FVU, L0, dead/dense fractions, CE loss recovered per Matryoshka
    prefix) is measured on: held-out studies through the recorded model when it is here,
    else stored studies (no CE loss); 0: not measured."""

    def torch_device(self) -> torch.device:
        """``device`` as a torch device (auto: cuda when available, else cpu)."""
        import torch  # not at import time: --help stays fast

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def validate(self) -> None:
        for name in ("batch_tokens", "top_k", "n_quantiles", "per_quantile", "block"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("context", "n_neighbors", "n_logits", "n_ngrams", "loc_dilation",
                     "quality_studies"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.loc_min_image <= 1.0:
            raise ValueError(f"loc_min_image must be in [0, 1], got {self.loc_min_image}")
        if self.probe_folds == 1 or self.probe_folds < 0 or self.probe_max_studies < 10:
            raise ValueError("probe_folds must be 0 or >= 2 and probe_max_studies >= 10")
