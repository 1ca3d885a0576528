"""A planted run where one feature means "effusion present" and another the word "effusion".

Dataset in MIMIC-CXR-JPG layout (images, reports, metadata/split/CheXpert CSVs, phantom
ground truth and masks), a store with planted activations and the signed-identity SAE
(feature f < D reads coordinate f above 0.5). Studies i = 0..N-1, two per subject:

- effusion present when i is even ("Small left pleural effusion."); of the others, i % 4 == 1
  say "No pleural effusion." and i % 4 == 3 "Lungs are clear.";
- pacemaker present when i % 3 == 0 ("Left chest wall pacemaker in place."), i % 3 == 1 say
  "No pacemaker.", drawn in patch (0, 2) of the 4 x 4 frontal grid with its mask there.

Coordinates (= features):

- 0 ``LEXICAL``: 1.5 on the token " effusion" whatever the sentence says;
- 1 ``SEMANTIC``: 1.5 on " effusion" and 1.0 on " pleural" only in asserted mentions;
- 2 ``PACER_IMAGE``: 2.0 on the pacemaker's patch, 1.0 on the patch below (pacemaker studies);
- 3 ``CORNER``: 3.0 on patch (0, 0) of every image (fires, but not on any finding);
- 4 ``EFFUSION_IMAGE``: 1.2 on the bottom patch row of effusion studies (the effusion mask);
- 5: every prompt token.

Nothing here is a test; the ``test_analyse_meaning*`` files import it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workbench.cxr.findings import CHEXPERT_LABELS, concept_names
from workbench.sae import save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import StoreWriter

D, GRID, SIZE, N = 8, 4, 64, 40
LEXICAL, SEMANTIC, PACER_IMAGE, CORNER, EFFUSION_IMAGE = 0, 1, 2, 3, 4
HOOK = "blocks.1.hook_resid_post"
PACER_PATCH = (0, 2)


def sid(i: int) -> int:
    return 56000000 + i


def subject(i: int) -> int:
    return 12000000 + i // 2


def effusion(i: int) -> bool:
    return i % 2 == 0


def pacemaker(i: int) -> bool:
    return i % 3 == 0


def findings_text(i: int) -> str:
    """The FINDINGS section of study ``i`` (words separated by single spaces)."""
    text = "Small left pleural effusion ." if effusion(i) else (
        "No pleural effusion ." if i % 4 == 1 else "Lungs are clear .")  # fmt: skip
    if pacemaker(i):
        text += " Left chest wall pacemaker in place ."
    elif i % 3 == 1:
        text += " No pacemaker ."
    return text


def _masks(i: int) -> dict[str, np.ndarray]:
    masks = {}
    cell = SIZE // GRID
    if pacemaker(i):
        m = np.zeros((SIZE, SIZE), bool)
        r, c = PACER_PATCH
        m[r * cell + 3 : r * cell + 12, c * cell + 3 : c * cell + 13] = True
        masks["pacemaker"] = m
    if effusion(i):
        m = np.zeros((SIZE, SIZE), bool)
        m[SIZE - cell + 2 :, 4 : SIZE - 4] = True
        masks["pleural_effusion"] = m
    return masks


def write_dataset(root: Path) -> None:
    """Images, masks, reports and the CSVs of the N studies under ``root``."""
    meta = [["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"]]
    split = [["dicom_id", "study_id", "subject_id", "split"]]
    chex = [["subject_id", "study_id", *CHEXPERT_LABELS]]
    names = concept_names()
    truth = [["subject_id", "study_id", *names]]
    for i in range(N):
        sub, study, dicom = subject(i), sid(i), f"d{i:04d}"
        folder = root / "files" / f"p{str(sub)[:2]}" / f"p{sub}"
        (folder / f"s{study}").mkdir(parents=True, exist_ok=True)
        img = Image.new("L", (SIZE, SIZE), 90)
        for name, m in _masks(i).items():
            mdir = root / "masks" / f"p{str(sub)[:2]}" / f"p{sub}" / f"s{study}" / dicom
            mdir.mkdir(parents=True, exist_ok=True)
            Image.fromarray((m * 255).astype(np.uint8)).save(mdir / f"{name}.png")
        img.save(folder / f"s{study}" / f"{dicom}.jpg")
        (folder / f"s{study}.txt").write_text(
            f"                                 FINAL REPORT\n FINDINGS:  {findings_text(i)}\n"
        )
        meta.append([dicom, sub, study, "PA", f"2150{1 + i % 12:02d}01", "120000.000"])
        split.append([dicom, study, sub, "train" if i % 5 else "test"])
        labels = {"Pleural Effusion": effusion(i), "Support Devices": pacemaker(i)}
        chex.append([sub, study, *["1.0" if labels.get(c) else "" for c in CHEXPERT_LABELS]])
        gt = {"pleural_effusion": effusion(i), "pacemaker": pacemaker(i)}
        truth.append([sub, study, *[int(gt.get(c, False)) for c in names]])
    for name, rows in (
        ("mimic-cxr-2.0.0-metadata.csv", meta),
        ("mimic-cxr-2.0.0-split.csv", split),
        ("mimic-cxr-2.0.0-chexpert.csv", chex),
        ("phantom-labels.csv", truth),
    ):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)


def _row(kind: str, text: str, pos: int, i: int, section=None, patch=None) -> dict:
    return {
        "subject_id": subject(i), "position": pos, "token_id": 7 if kind == "image" else pos,
        "token": text, "kind": kind, "section": section,
        "patch_row": None if patch is None else patch[0],
        "patch_col": None if patch is None else patch[1],
    }  # fmt: skip


def study_tokens(i: int) -> tuple[torch.Tensor, list[dict]]:
    """Activations [tokens, D] and metadata: 16 frontal patches, 2 prompt tokens, the report."""
    rows, meta = [], []
    below = (PACER_PATCH[0] + 1, PACER_PATCH[1])
    for p in range(GRID * GRID):
        r, c = divmod(p, GRID)
        x = np.zeros(D, np.float32)
        x[CORNER] = 3.0 if (r, c) == (0, 0) else 0.0
        if pacemaker(i):
            x[PACER_IMAGE] = {PACER_PATCH: 2.0, below: 1.0}.get((r, c), 0.0)
        if effusion(i) and r == GRID - 1:
            x[EFFUSION_IMAGE] = 1.2
        rows.append(x)
        meta.append(_row("image", "<image>", p, i, "current_frontal", (r, c)))
    for tok in (" Findings", ":"):
        x = np.zeros(D, np.float32)
        x[5] = 1.0
        rows.append(x)
        meta.append(_row("prompt", tok, len(meta), i, "indication"))
    words = findings_text(i).split(" ")
    asserted = effusion(i)
    for w in [*words, "</s>"]:
        x = np.zeros(D, np.float32)
        x[LEXICAL] = 1.5 if w == "effusion" else 0.0
        if asserted:
            x[SEMANTIC] = {"effusion": 1.5, "pleural": 1.0}.get(w, 0.0)
        rows.append(x)
        meta.append(_row("report", w if w == "</s>" else " " + w, len(meta), i, "findings"))
    return torch.from_numpy(np.stack(rows)), meta


def make_run(root: Path) -> Path:
    """``root/run`` with phantom/ (dataset), activations/ and sae/ (not yet analysed)."""
    run = root / "run"
    write_dataset(run / "phantom")
    w = StoreWriter(run / "activations", model="tiny", layer=1, hook_name=HOOK, d_model=D,
                    shard_tokens=200)  # fmt: skip
    for i in range(N):
        w.add(sid(i), *study_tokens(i))
    w.close()
    save_sae(signed_identity_sae(D, k=4, hook_name=HOOK), run / "sae")
    return run
