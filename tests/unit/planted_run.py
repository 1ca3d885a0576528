"""A tiny planted run for the label/steer tests: dataset, store, planted SAE, real ``analyse``.

A frozen copy of the app's first ``workbench/ui/tiny_run.py`` (which now builds from the
phantom generator and changes with it): these tests assert exact detection and steering
outcomes, so they need studies whose content is fixed here.

Builds in a few seconds on a CPU. The dataset is laid out exactly like MIMIC-CXR-JPG +
reports (images, report .txt files, metadata/split/CheXpert CSVs) plus the phantom ground
truth CSV, so ``analyse`` reads it through the same readers as real data. Activations are
planted so what each feature means is known:

- coordinate 0, *pacemaker*: on the image patch holding the drawn device (and, weaker, its
  neighbours) and on the report word " pacemaker";
- coordinate 1, *effusion*: on " effusion" / " pleural" and the lowest patch row;
- coordinate 2: every prompt token; coordinate 3: a ramp over the image patches;
- coordinate 4: the words " clear" / " normal"; coordinate 5: a weak detector of ".".

With ``negations=True`` a study without effusion reports " No pleural effusion ." instead of
" Lungs are clear .": coordinate 1 stays silent on those negated words (a *semantic*
effusion feature) while coordinate 6 fires on " effusion" either way (a *lexical* one).

The SAE reads coordinate f with feature f (and -x[f] with feature D + f, which stays dead).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from workbench.cxr.findings import CHEXPERT_LABELS, concept_names
from workbench.sae import MatryoshkaSAE, save_sae
from workbench.sae.synthetic import signed_identity_sae
from workbench.store import StoreWriter

D = 8
GRID = 4
LAYER = 1
PROMPT = ["<s>", "Describe", " the", " chest", " X-ray", ":"]


def study_id(i: int) -> int:
    return 50000000 + i


def subject_id(i: int) -> int:
    return 10000000 + i // 2


def findings_of(i: int) -> dict[str, bool]:
    """The planted ground truth of study ``i``."""
    return {"pacemaker": i % 3 == 0, "pleural_effusion": i % 2 == 0, "cardiomegaly": i % 4 == 1}


def report_words(i: int, negations: bool = False) -> tuple[list[str], list[str]]:
    """FINDINGS and IMPRESSION of study ``i`` as tokens (each word with its leading space)."""
    f = findings_of(i)
    findings = " Heart size is" + (" enlarged ." if f["cardiomegaly"] else " normal .")
    no_effusion = " No pleural effusion ." if negations else " Lungs are clear ."
    findings += " Small left pleural effusion ." if f["pleural_effusion"] else no_effusion
    if f["pacemaker"]:
        findings += " Left chest wall pacemaker with leads in place ."
    impression = " No acute process ." if not any(f.values()) else " Findings as above ."
    return findings.split(" ")[1:], impression.split(" ")[1:]


def _image(i: int, size: int) -> Image.Image:
    """A grey chest-like picture: two dark lungs, a heart, and the device when present."""
    img = Image.new("L", (size, size), 200)
    d = ImageDraw.Draw(img)
    s = size / 128
    d.ellipse([16 * s, 14 * s, 60 * s, 112 * s], fill=70)
    d.ellipse([68 * s, 14 * s, 112 * s, 112 * s], fill=70)
    d.ellipse(
        [46 * s, 50 * s, 92 * s, 100 * s], fill=150 if findings_of(i)["cardiomegaly"] else 120
    )
    if findings_of(i)["pacemaker"]:
        d.rectangle([74 * s, 20 * s, 90 * s, 30 * s], fill=255)  # patch (0, 2) of a 4x4 grid
    if findings_of(i)["pleural_effusion"]:
        d.rectangle([16 * s, 96 * s, 112 * s, 112 * s], fill=185)
    return img


def write_dataset(root: Path, n: int, size: int = 128, negations: bool = False) -> None:
    """Images, reports and the MIMIC-CXR / phantom CSVs for ``n`` studies under ``root``."""
    meta = [["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"]]
    split = [["dicom_id", "study_id", "subject_id", "split"]]
    chex = [["subject_id", "study_id", *CHEXPERT_LABELS]]
    names = concept_names()
    truth = [["subject_id", "study_id", *names]]
    for i in range(n):
        sub, sid, dicom = subject_id(i), study_id(i), f"d{i:04d}"
        folder = root / "files" / f"p{str(sub)[:2]}" / f"p{sub}"
        (folder / f"s{sid}").mkdir(parents=True, exist_ok=True)
        _image(i, size).save(folder / f"s{sid}" / f"{dicom}.jpg", quality=92)
        findings, impression = report_words(i, negations)
        (folder / f"s{sid}.txt").write_text(
            "                                 FINAL REPORT\n INDICATION:  Check.\n\n"
            f" FINDINGS:  {' '.join(findings)}\n\n IMPRESSION:  {' '.join(impression)}\n"
        )
        f = findings_of(i)
        meta.append([dicom, sub, sid, "PA", f"2150{1 + i % 12:02d}01", "120000.000"])
        split.append([dicom, sid, sub, "train" if i % 5 else "test"])
        chexpert = {
            "Pleural Effusion": f["pleural_effusion"],
            "Cardiomegaly": f["cardiomegaly"],
            "Support Devices": f["pacemaker"],
            "No Finding": not any(f.values()),
        }
        chex.append([sub, sid, *["1.0" if chexpert.get(c) else "" for c in CHEXPERT_LABELS]])
        truth.append([sub, sid, *[int(f.get(c, False)) for c in names]])
    for name, rows in (
        ("mimic-cxr-2.0.0-metadata.csv", meta),
        ("mimic-cxr-2.0.0-split.csv", split),
        ("mimic-cxr-2.0.0-chexpert.csv", chex),
        ("phantom-labels.csv", truth),
    ):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)


def _token(kind: str, text: str, pos: int, sub: int, section=None, patch=None) -> dict:
    return {
        "subject_id": sub,
        "position": pos,
        "token_id": abs(hash(text)) % 50000 if kind != "image" else 99,
        "token": text,
        "kind": kind,
        "section": section,
        "patch_row": None if patch is None else patch[0],
        "patch_col": None if patch is None else patch[1],
    }


def study_tokens(
    i: int, grid: int = GRID, negations: bool = False
) -> tuple[torch.Tensor, list[dict]]:
    """Activations [n_tokens, D] and token metadata of study ``i`` (image, prompt, report).

    The image has ``grid`` x ``grid`` patches; the device sits in patch (grid/8, 5 grid/8),
    where :func:`_image` draws it.
    """
    f, rng = findings_of(i), np.random.default_rng(i)
    rows, meta = [], []
    device = (grid // 8, 5 * grid // 8)
    for p in range(grid * grid):
        r, c = divmod(p, grid)
        x = np.zeros(D, np.float32)
        x[3] = 0.6 + 2.4 * p / (grid * grid - 1) + 0.05 * rng.random()
        if f["pacemaker"]:
            x[0] = {0: 2.2 + i / 20, 1: 1.1}.get(abs(r - device[0]) + abs(c - device[1]), 0.0)
        if f["pleural_effusion"] and r == grid - 1:
            x[1] = 0.9
        rows.append(x)
        meta.append(_token("image", "<image>", p, subject_id(i), patch=(r, c)))
    for tok in PROMPT:
        x = np.zeros(D, np.float32)
        x[2] = 1.0
        rows.append(x)
        meta.append(_token("prompt", tok, len(meta), subject_id(i), section="prompt"))
    findings, impression = report_words(i, negations)
    for section, words in (("findings", findings), ("impression", impression)):
        for w in words:
            x = np.zeros(D, np.float32)
            x[0] = 1.2 if w == "pacemaker" else 0.0
            if f["pleural_effusion"]:  # asserted: the only effusion mention of such a study
                x[1] = {"effusion": 1.5, "pleural": 0.8}.get(w, 0.0)
            x[6] = 1.4 if negations and w == "effusion" else 0.0
            x[4] = 1.3 if w in ("clear", "normal") else 0.0
            x[5] = 0.6 + 0.3 * rng.random() if w == "." else 0.0
            rows.append(x)
            meta.append(_token("report", " " + w, len(meta), subject_id(i), section=section))
    return torch.from_numpy(np.stack(rows)), meta


def planted_sae() -> MatryoshkaSAE:
    """Feature f < D reads +x[f], feature D + f reads -x[f]; threshold 0.5."""
    return signed_identity_sae(D, k=4)


def build(run: str | Path, n_studies: int = 16, negations: bool = False) -> Path:
    """Write the dataset, store and SAE under ``run`` and analyse them; returns ``run``."""
    from workbench.analyse import AnalyseConfig, analyse
    from workbench.models.hooks import resid_post_name

    run = Path(run)
    write_dataset(run / "phantom", n_studies, negations=negations)
    hook = resid_post_name(LAYER)
    w = StoreWriter(run / "activations", model="tiny", layer=LAYER, hook_name=hook, d_model=D)
    for i in range(n_studies):
        if study_id(i) not in w.completed:
            w.add(study_id(i), *study_tokens(i, negations=negations))
    w.close()
    sae = planted_sae()
    sae.hook_name = hook
    save_sae(sae, run / "sae")
    analyse(AnalyseConfig(run=run, data=run / "phantom", device="cpu", top_k=8, per_quantile=2))
    return run
