"""The vocabulary every stage shares: phantom findings, devices, CheXpert labels.

The phantom generator renders these, the report writer describes them, the labeller reads
them back from text, and analysis scores SAE features against them. One list, one place.
"""

from __future__ import annotations

# Findings the phantom renders, each with parameters recorded in the ground truth.
FINDINGS: tuple[str, ...] = (
    "cardiomegaly",  # cardiothoracic ratio > 0.5 (measured on PA)
    "pleural_effusion",  # side, size; blunted costophrenic angle and meniscus
    "pneumothorax",  # side, size; visceral pleural line, no lung markings beyond it
    "consolidation",  # location (zone and side)
    "atelectasis",  # location; linear/plate-like or lobar
    "edema",  # severity; bilateral perihilar haze, Kerley lines
    "nodule",  # size in mm, location
    "rib_fracture",  # side, rib index
)

# Support devices the phantom can place.
DEVICES: tuple[str, ...] = (
    "pacemaker",  # pacemaker / ICD generator with leads
    "endotracheal_tube",  # tip position above the carina
    "central_line",  # CVC or PICC
    "enteric_tube",  # nasogastric / orogastric tube
    "sternotomy_wires",
)

# Every concept the phantom renders into the frontal image (findings, then devices).
RENDERED: tuple[str, ...] = FINDINGS + DEVICES

# The 14 CheXpert labels, in MIMIC-CXR's column order.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

# Which CheXpert labels a phantom finding or device implies when present.
CHEXPERT_OF: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "pleural_effusion": ("Pleural Effusion",),
    "pneumothorax": ("Pneumothorax",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "atelectasis": ("Atelectasis", "Lung Opacity"),
    "edema": ("Edema", "Lung Opacity"),
    "nodule": ("Lung Lesion",),
    "rib_fracture": ("Fracture",),
    **{d: ("Support Devices",) for d in DEVICES},
}

# Longitudinal change of a finding or device against the subject's prior study.
CHANGES: tuple[str, ...] = ("new", "resolved", "increased", "decreased", "unchanged")


def concept_names() -> tuple[str, ...]:
    """Every ground-truth concept column of ``phantom-labels.csv``, in a fixed order."""
    return FINDINGS + DEVICES + tuple(f"change_{c}" for c in CHANGES)
