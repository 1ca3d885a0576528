"""A tiny run directory with planted features, shared by the analyse integration tests.

The SAE reads one coordinate per feature: feature f < D fires with value x[f] when x[f] > 0.5,
feature D + f fires on -x[f]. Each study's tokens carry chosen coordinates, so which feature
fires where, and how strongly, is known exactly:

- coordinate 0 ("pacemaker"): 2 + study index / 10 on one image token of pacemaker studies;
- coordinate 1 ("effusion"): 1.5 on the report token " effusion" of effusion studies;
- coordinate 2: 1.0 on every prompt token (fires everywhere: AUROC 0.5);
- coordinate 3: a ramp over the image tokens (0.6..3.6), for histograms and quantiles.

Nothing in this module is a test; it is imported by the ``test_analyse*`` files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from workbench.cxr.findings import CHEXPERT_LABELS, concept_names
from workbench.sae import MatryoshkaSAE, save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import StoreWriter

D = 8
HOOK = "blocks.1.hook_resid_post"
N_STUDIES = 12
PACEMAKER = {0, 1, 2, 3, 4, 5}
EFFUSION = {0, 2, 4, 6, 8, 10}
NO_PHANTOM_LABELS = {11}  # a study missing from phantom-labels.csv
# CheXpert "Pleural Effusion": study 1 uncertain (-1), study 9 blank, others 1 or 0
REPORT = [" small", " left", " effusion", "."]


def sid(i: int) -> int:
    return 50000000 + i


def subject(i: int) -> int:
    return 10000000 + i // 2


def planted_sae(d: int = D, hook: str | None = HOOK) -> MatryoshkaSAE:
    """Feature f < d reads +x[f], feature d + f reads -x[f]; threshold 0.5."""
    return signed_identity_sae(d, k=2, hook_name=hook)


def study_tokens(i: int) -> tuple[torch.Tensor, list[dict]]:
    """4 image tokens (2x2 patches), 2 prompt tokens, 4 report tokens."""
    rows, meta = [], []
    for p in range(4):
        x = torch.zeros(D)
        x[3] = 0.6 + p + (i % 3) * 0.1
        if i in PACEMAKER and p == 1:
            x[0] = 2.0 + i / 10
        rows.append(x)
        meta.append(
            {
                "subject_id": subject(i),
                "position": p,
                "token_id": 99,
                "token": "<image>",
                "kind": "image",
                "section": None,
                "patch_row": p // 2,
                "patch_col": p % 2,
            }
        )
    for p, tok in enumerate(["Findings", ":"]):
        x = torch.zeros(D)
        x[2] = 1.0
        rows.append(x)
        meta.append(
            {
                "subject_id": subject(i),
                "position": 4 + p,
                "token_id": 10 + p,
                "token": tok,
                "kind": "prompt",
                "section": "prompt",
            }
        )
    for p, tok in enumerate(REPORT):
        x = torch.zeros(D)
        if tok == " effusion" and i in EFFUSION:
            x[1] = 1.5
        rows.append(x)
        meta.append(
            {
                "subject_id": subject(i),
                "position": 6 + p,
                "token_id": 20 + p,
                "token": tok,
                "kind": "report",
                "section": "findings",
            }
        )
    return torch.stack(rows), meta


def write_labels(data: Path) -> None:
    """phantom-labels.csv (one study left out) and a CheXpert CSV + metadata for all."""
    data.mkdir(parents=True, exist_ok=True)
    names = concept_names()
    with open(data / "phantom-labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject_id", "study_id", *names])
        for i in range(N_STUDIES):
            if i in NO_PHANTOM_LABELS:
                continue
            vals = {"pacemaker": i in PACEMAKER, "pleural_effusion": i in EFFUSION}
            w.writerow([subject(i), sid(i), *[int(vals.get(n, False)) for n in names]])
    with open(data / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject_id", "study_id", *CHEXPERT_LABELS])
        for i in range(N_STUDIES):
            eff = "1.0" if i in EFFUSION else {1: "-1.0", 9: ""}.get(i, "0.0")
            w.writerow(
                [
                    subject(i),
                    sid(i),
                    *[eff if n == "Pleural Effusion" else "" for n in CHEXPERT_LABELS],
                ]
            )
    with open(data / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"])
        for i in range(N_STUDIES):
            w.writerow([f"d{i}", subject(i), sid(i), "PA", f"215001{i + 1:02d}", "120000.000"])


def make_run(root: Path, shard_tokens: int = 40, studies: int = N_STUDIES) -> Path:
    """runs/<name> with activations/, sae/ and phantom/ (labels only, no images)."""
    run = root / "run"
    w = StoreWriter(
        run / "activations",
        model="tiny",
        layer=1,
        hook_name=HOOK,
        d_model=D,
        shard_tokens=shard_tokens,
    )
    for i in range(studies):
        w.add(sid(i), *study_tokens(i))
    w.close()
    save_sae(planted_sae(), run / "sae")
    write_labels(run / "phantom")
    return run
