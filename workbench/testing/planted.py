"""The one planted-run builder: a run directory whose features are known by construction.

A planted run has what a real run has (a dataset in MIMIC-CXR layout under ``phantom/``, an
activation store, an SAE artefact and, unless told otherwise, the real ``analyse`` output),
but its activations are written directly instead of recorded from a model: each study's
tokens carry chosen coordinates, and the SAE (:func:`workbench.sae.synthetic.signed_identity_sae`)
reads coordinate f with feature f. What fires where, and how strongly, is therefore exact,
which is what tests, the app's tiny run and the app benchmark need.

A :class:`PlantedSpec` says which studies, how their tokens are planted and how the dataset is
written; :func:`build` does the rest. Each step is skipped when its artefact exists, so a
build is cheap to repeat. :func:`write_dataset` lays out a dataset from one
:class:`DatasetStudy` per study (picture, report, labels, masks), so the planted fixtures say
only what their studies hold.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from workbench.cxr.findings import CHEXPERT_LABELS, concept_names
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


class DatasetStudy(NamedTuple):
    """One study of a planted dataset: what :func:`write_dataset` writes for it."""

    subject_id: int
    study_id: int
    image: Image.Image
    """The one frontal (PA) image."""
    report: str
    """The whole report file (``FINAL REPORT`` header and sections)."""
    chexpert: Mapping[str, bool]
    """CheXpert label -> positive ("1.0"); labels absent or False are left blank."""
    truth: Mapping[str, bool]
    """Phantom concept -> present, for ``phantom-labels.csv`` (absent: 0)."""
    masks: Mapping[str, np.ndarray] | None = None
    """Phantom concept -> boolean mask of the image, written as PNG; None: no masks."""


def write_dataset(root: Path, studies: Sequence[DatasetStudy], jpeg_quality: int = 75) -> None:
    """The studies in MIMIC-CXR-JPG layout under ``root``: images, masks, reports, the CSVs.

    Study ``i`` of the sequence gets dicom id ``d{i:04d}``, a date in month ``1 + i % 12`` of
    2150, and the test split when ``i % 5 == 0`` (train otherwise), so the dataset's readers
    (metadata, split, CheXpert and phantom label CSVs) see what real data gives them.
    """
    meta = [["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"]]
    split = [["dicom_id", "study_id", "subject_id", "split"]]
    chex = [["subject_id", "study_id", *CHEXPERT_LABELS]]
    names = concept_names()
    truth = [["subject_id", "study_id", *names]]
    for i, st in enumerate(studies):
        sub, sid, dicom = st.subject_id, st.study_id, f"d{i:04d}"
        folder = root / "files" / f"p{str(sub)[:2]}" / f"p{sub}"
        (folder / f"s{sid}").mkdir(parents=True, exist_ok=True)
        for name, m in (st.masks or {}).items():
            mdir = root / "masks" / f"p{str(sub)[:2]}" / f"p{sub}" / f"s{sid}" / dicom
            mdir.mkdir(parents=True, exist_ok=True)
            Image.fromarray((m * 255).astype(np.uint8)).save(mdir / f"{name}.png")
        st.image.save(folder / f"s{sid}" / f"{dicom}.jpg", quality=jpeg_quality)
        (folder / f"s{sid}.txt").write_text(st.report)
        meta.append([dicom, sub, sid, "PA", f"2150{1 + i % 12:02d}01", "120000.000"])
        split.append([dicom, sid, sub, "train" if i % 5 else "test"])
        chex.append([sub, sid, *["1.0" if st.chexpert.get(c) else "" for c in CHEXPERT_LABELS]])
        truth.append([sub, sid, *[int(st.truth.get(c, False)) for c in names]])
    for name, rows in (
        ("mimic-cxr-2.0.0-metadata.csv", meta),
        ("mimic-cxr-2.0.0-split.csv", split),
        ("mimic-cxr-2.0.0-chexpert.csv", chex),
        ("phantom-labels.csv", truth),
    ):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)


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
