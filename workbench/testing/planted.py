"""The one planted-run builder: a run directory whose features are known by construction.

A planted run has what a real run has (a dataset in MIMIC-CXR layout under ``phantom/``, an
activation store, an SAE artefact and, unless told otherwise, the real ``analyse`` output),
but its activations are written directly instead of recorded from a model: each study's
tokens carry chosen coordinates, and the SAE (:func:`workbench.sae.synthetic.signed_identity_sae`)
reads coordinate f with feature f. What fires where, and how strongly, is therefore exact,
which is what tests, the app's tiny run and the app benchmark need.

A :class:`PlantedSpec` says which studies, how their tokens are planted and how the dataset is
written; :func:`build` does the rest. Each step is skipped when its artefact exists, so a
build is cheap to repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.models.hooks import resid_post_name
from workbench.run import RunLayout
from workbench.sae import save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import StoreWriter

PROMPT = ("<s>", "Describe", " the", " chest", " X-ray", ":")
"""The prompt tokens the planted runs put between the image and the report."""


@dataclass(frozen=True)
class PlantedSpec:
    """What a planted run holds and how it is made."""

    study_ids: Sequence[int]
    """Study ids, in the order they go into the store."""
    tokens: Callable[[int], tuple[torch.Tensor, list[dict]]]
    """Study id -> planted activations [n_tokens, d] and one metadata dict per token."""
    write_dataset: Callable[[Path], object] | None = None
    """Writes the dataset into the directory it is given (<run>/phantom); None: already there."""
    d: int = 8
    """Width of the planted activations (the SAE has 2 d features)."""
    k: int = 4
    """Top-k of the planted SAE."""
    layer: int = 1
    """Decoder block the store claims to have recorded (sets the hook name)."""
    shard_tokens: int = 65536
    """Tokens per store shard (small values make several shards)."""
    analyse: bool = True
    """Run the real ``analyse`` at the end (writes features.duckdb)."""


def token(kind: str, text: str, pos: int, subject: int, section=None, patch=None) -> dict:
    """The store metadata of one planted token (``patch`` = (row, col) for image tokens)."""
    return {
        "subject_id": subject,
        "position": pos,
        "token_id": 99 if kind == "image" else sum(map(ord, text)) % 50000,
        "token": text,
        "kind": kind,
        "section": section,
        "patch_row": None if patch is None else patch[0],
        "patch_col": None if patch is None else patch[1],
    }


def build(run: str | Path, spec: PlantedSpec) -> Path:
    """Dataset, store, SAE and (``spec.analyse``) features.duckdb under ``run``; returns it."""
    layout = RunLayout(Path(run))
    if spec.write_dataset is not None:
        spec.write_dataset(layout.phantom)
    hook = resid_post_name(spec.layer)
    writer = StoreWriter(
        layout.activations,
        model="tiny",
        layer=spec.layer,
        hook_name=hook,
        d_model=spec.d,
        shard_tokens=spec.shard_tokens,
    )
    for sid in spec.study_ids:
        if sid not in writer.completed:
            writer.add(sid, *spec.tokens(sid))
    writer.close()
    save_sae(signed_identity_sae(spec.d, k=spec.k, hook_name=hook), layout.sae)
    if spec.analyse:
        from workbench.analyse.run import AnalyseConfig, analyse

        analyse(AnalyseConfig(run=layout.root, data=layout.phantom, device="cpu", top_k=8,
                              per_quantile=2))  # fmt: skip
    return layout.root
