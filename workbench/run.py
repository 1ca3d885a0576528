"""RunLayout: every artefact path of a run directory, spelled in one place.

A run is one directory that the stages fill in order (``python -m workbench demo --run DIR``)::

    DIR/phantom/              the dataset (MIMIC-CXR layout)             cxr.phantom
    DIR/model/                the model, or pointer.txt naming it         models
    DIR/activations/          the activation store + manifest.json        record
    DIR/sae/                  the SAE artefact (SAELens layout) + logs    train_sae
    DIR/features.duckdb       the notebook API                            analyse, label, steer
    DIR/feature_acts.parquet  sparse feature activations beside it        analyse
                              (a symlink to feature_acts-<run_id>.parquet: workbench.generations)
    DIR/label/                label's journal and cfg.json                label
    DIR/steering/             steer's cfg.json                            steer
    DIR/segmentation/         the segmentation demo's models and results  segmentation
    DIR/seg-latents/          a run of its own: a segmentation model's    record, train_sae,
                              latents, their SAE and features.duckdb      analyse
    DIR/image-tokens/         a run of its own: the image-token           record, train_sae,
                              embeddings (projector output), their SAE,   analyse, steer
                              features.duckdb and steering_results

Each artefact's resolved config is ``cfg.json`` inside its directory (:meth:`RunLayout.cfg`).
A stage takes ``--run DIR`` and derives its default paths from here; explicit path flags win.
This module imports nothing heavy, so the app and every stage can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DB_NAME = "features.duckdb"
ACTS_NAME = "feature_acts.parquet"
CFG_NAME = "cfg.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created or checked here)."""

    root: Path
    """The run directory."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def phantom(self) -> Path:
        """The run's dataset in MIMIC-CXR layout (the phantom benchmark in the demo)."""
        return self.root / "phantom"

    @property
    def model(self) -> Path:
        """The model directory (or a ``pointer.txt`` naming one)."""
        return self.root / "model"

    @property
    def activations(self) -> Path:
        """The activation store."""
        return self.root / "activations"

    @property
    def sae(self) -> Path:
        """The SAE artefact and its training logs and checkpoints."""
        return self.root / "sae"

    @property
    def database(self) -> Path:
        """``features.duckdb``, the notebook API."""
        return self.root / DB_NAME

    @property
    def feature_acts(self) -> Path:
        """The sparse feature activations Parquet beside the database (the documented name,
        a symlink to the analyse run's own file; readers use workbench.generations)."""
        return self.root / ACTS_NAME

    @property
    def label(self) -> Path:
        """The label stage's journal and config."""
        return self.root / "label"

    @property
    def steering(self) -> Path:
        """The steer stage's config."""
        return self.root / "steering"

    @property
    def segmentation(self) -> Path:
        """The segmentation demo's models, evaluations and summary."""
        return self.root / "segmentation"

    @property
    def image_tokens(self) -> Path:
        """A nested run directory (same layout) for an SAE on the image-token embeddings
        (the projector output), where image-side steering acts."""
        return self.root / "image-tokens"

    @property
    def seg_latents(self) -> Path:
        """A nested run directory (same layout) for an SAE on a segmentation model's latents."""
        return self.root / "seg-latents"

    @staticmethod
    def cfg(artefact: Path) -> Path:
        """The resolved config written beside (inside) an artefact directory."""
        return Path(artefact) / CFG_NAME

    def data_or_recorded(self, recorded: str | Path | None) -> Path:
        """The run's dataset when present, else the one the store says it was recorded from."""
        if self.phantom.is_dir() or not recorded:
            return self.phantom
        return Path(recorded)
