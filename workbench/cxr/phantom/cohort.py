"""Subjects and their longitudinal series of studies: the ground truth before any pixel.

Everything here is a pure function of ``(seed, subject index)``: a subject's attributes, the
number and dates of its studies, and for each study the findings and devices present, their
parameters and how they changed since the prior study. The renderer and the report writer
only ever read these records, so the same seed always yields the same benchmark, whatever
the number of worker processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from types import MappingProxyType
from typing import Any

import numpy as np

from workbench.cxr.findings import DEVICES, FINDINGS

# Target share of studies showing each concept (all in the 10-35 % band asked for), used as
# the presence probability at a subject's first study, scaled by the subject's frailty.
PREVALENCE = MappingProxyType(
    {
        "cardiomegaly": 0.22,
        "pleural_effusion": 0.24,
        "pneumothorax": 0.12,
        "consolidation": 0.18,
        "atelectasis": 0.20,
        "edema": 0.14,
        "nodule": 0.15,
        "rib_fracture": 0.12,
        "pacemaker": 0.14,
        "endotracheal_tube": 0.13,
        "central_line": 0.17,
        "enteric_tube": 0.13,
        "sternotomy_wires": 0.13,
    }
)
# Probability that a concept present at one study is gone at the next.
RESOLVE = MappingProxyType(
    {
        "cardiomegaly": 0.08,
        "pleural_effusion": 0.35,
        "pneumothorax": 0.55,
        "consolidation": 0.45,
        "atelectasis": 0.45,
        "edema": 0.5,
        "nodule": 0.06,
        "rib_fracture": 0.1,
        "pacemaker": 0.03,
        "endotracheal_tube": 0.55,
        "central_line": 0.4,
        "enteric_tube": 0.5,
        "sternotomy_wires": 0.0,
    }
)
SIDES = ("left", "right")
ZONES = ("upper", "middle", "lower")
# Subjects are "well" (few findings) or "ill"; the mixture gives ~20 % normal studies.
WELL_SHARE, WELL_SCALE, ILL_SCALE = 0.22, 0.15, 1.3
ZONE_SPAN = MappingProxyType(  # height fraction in the lung (0 apex, 1 base) of each zone
    {"upper": (0.14, 0.33), "middle": (0.4, 0.6), "lower": (0.66, 0.84)}
)
SIZE_STEPS = (0.4, 0.72)  # severity thresholds between small / moderate / large


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for one purpose, e.g. ``rng_for(seed, STREAM, subject, k)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)])


def _feistel24(x: int, key: int) -> int:
    """Four-round balanced Feistel permutation of a 24-bit integer."""
    left, right = x >> 12, x & 0xFFF
    for r in range(4):
        mix = ((right * 0x9E3779B1 + key + r * 0x7F4A7C15) ^ (right << 5)) & 0xFFFFFFFF
        left, right = right, left ^ ((mix >> 11) & 0xFFF)
    return (left << 12) | right


def permuted_id(index: int, seed: int, salt: int, base: int) -> int:
    """A random-looking yet unique 8-digit id: a keyed permutation of ``index`` in [0, 1e7).

    A Feistel network on 24 bits with cycle walking is a bijection on [0, 10**7), so ids never
    collide and need no global bookkeeping; consecutive indices map to unrelated ids (MIMIC's
    study ids are random, not chronological).
    """
    if not 0 <= index < 10**7:
        raise ValueError(f"index {index} out of range for 8-digit ids")
    key = int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:4], "little")
    x = index
    while True:
        x = _feistel24(x, key)
        if x < 10**7:
            return base + x


def dicom_id(seed: int, study_id: int, view: str) -> str:
    """MIMIC-style image id: 40 hex digits in five dash-separated groups of eight."""
    h = hashlib.sha1(f"{seed}:{study_id}:{view}".encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def size_class(severity: float) -> str:
    """small / moderate / large from a severity in [0, 1]."""
    if severity < SIZE_STEPS[0]:
        return "small"
    return "moderate" if severity < SIZE_STEPS[1] else "large"


def sample_subject(seed: int, index: int, split_fracs: tuple[float, float]) -> dict[str, Any]:
    """Attributes fixed for a subject: sex, age, habitus, frailty, split, number of studies."""
    rng = rng_for(seed, 1, index)
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(22 + rng.beta(2.2, 1.6) * 70)
    bmi = float(np.clip(rng.normal(26.5, 5.0), 16.5, 44.0))
    soft = (bmi - 16.5) / 27.5
    bone = float(np.clip(1.05 - 0.45 * max(age - 45, 0) / 50 - (0.1 * (sex == "F")), 0.45, 1.1))
    habitus = {
        "bmi": round(bmi, 1),
        "build": "thin" if bmi < 20 else ("obese" if bmi >= 30 else "average"),
        "soft_tissue": round(float(soft), 3),
        "bone_density": round(bone + float(rng.normal(0, 0.04)), 3),
        "lung_volume": round(
            float(np.clip(rng.normal(1.0, 0.04) + 0.04 * (sex == "M") - 0.06 * soft, 0.85, 1.12)), 3
        ),
        "breast": round(
            float((0.35 + 0.65 * soft) * rng.uniform(0.6, 1.0)) if sex == "F" else 0.0, 3
        ),
    }
    u = rng.random()
    split = (
        "train"
        if u < split_fracs[0]
        else ("validate" if u < split_fracs[0] + split_fracs[1] else "test")
    )
    return {
        "index": index,
        "subject_id": permuted_id(index, seed, 1, 10_000_000),
        "sex": sex,
        "age": age,
        "habitus": habitus,
        "well": bool(rng.random() < WELL_SHARE),
        "split": split,
        "n_studies": int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.22, 0.18])),
        "normal_ctr": round(float(rng.uniform(0.36, 0.435)), 3),
        "thorax_width": round(float(rng.uniform(0.33, 0.36) + 0.025 * (sex == "M")), 3),
    }


def sample_params(name: str, rng: np.random.Generator) -> dict[str, Any]:
    """Parameters of a newly present finding or device (location, size, type...)."""
    sev = float(rng.uniform(0.15, 1.0))
    side = SIDES[int(rng.integers(2))]
    if name in DEVICES:
        return _device_params(name, rng)
    return _finding_params(name, rng, sev, side)


def _finding_params(name: str, rng: np.random.Generator, sev: float, side: str) -> dict:
    """Parameters of a finding (see docs/phantom.md for their ranges)."""
    if name == "cardiomegaly":
        return {"ctr": round(float(rng.uniform(0.54, 0.68)), 3)}
    if name == "pleural_effusion":
        side = str(rng.choice(["left", "right", "bilateral"], p=[0.35, 0.35, 0.3]))
        return {"side": side, "severity": round(sev, 3), "size": size_class(sev)}
    if name == "pneumothorax":
        return {"side": side, "severity": round(sev, 3), "size": size_class(sev)}
    if name == "consolidation":
        zone = ZONES[int(rng.choice(3, p=[0.25, 0.3, 0.45]))]
        return {
            "side": side,
            "zone": zone,
            "severity": round(0.3 + 0.7 * sev, 3),
            "u": round(float(rng.uniform(0.35, 0.7)), 3),
        }
    if name == "atelectasis":
        kind = "plate" if rng.random() < 0.5 else "basal"
        side = str(rng.choice(["left", "right", "bilateral"], p=[0.4, 0.3, 0.3]))
        return {"side": side, "zone": "lower", "kind": kind, "severity": round(sev, 3)}
    if name == "edema":
        return {
            "severity": round(sev, 3),
            "grade": {"small": "mild", "moderate": "moderate", "large": "severe"}[size_class(sev)],
        }
    if name == "nodule":
        zone = ZONES[int(rng.integers(3))]
        return {
            "side": side,
            "zone": zone,
            "size_mm": round(float(rng.uniform(12, 30)), 1),
            "u": round(float(rng.uniform(0.3, 0.75)), 3),
            "v": round(float(rng.uniform(*ZONE_SPAN[zone])), 3),
            "contrast": round(float(rng.uniform(0.45, 1.0)), 3),
        }
    if name == "rib_fracture":
        return {
            "side": side,
            "rib": int(rng.integers(4, 9)),
            "position": round(float(rng.uniform(0.45, 0.7)), 3),
            "displaced": bool(rng.random() < 0.6),
        }
    raise KeyError(f"unknown concept {name!r}")


def _device_params(name: str, rng: np.random.Generator) -> dict:
    """Parameters of a support device."""
    if name == "pacemaker":
        return {
            "kind": "icd" if rng.random() < 0.35 else "pacemaker",
            "side": "left" if rng.random() < 0.85 else "right",
            "leads": int(rng.choice([1, 2, 3], p=[0.3, 0.55, 0.15])),
        }
    if name == "endotracheal_tube":
        return {
            "tip_cm_above_carina": round(
                float(rng.choice([rng.uniform(2.5, 6.5), rng.uniform(0.5, 1.5)], p=[0.85, 0.15])), 1
            )
        }
    if name == "central_line":
        kind = str(rng.choice(["ij", "subclavian", "picc"], p=[0.45, 0.2, 0.35]))
        return {
            "kind": kind,
            "side": "right" if rng.random() < 0.7 else "left",
            "tip": str(
                rng.choice(["svc", "cavoatrial junction", "right atrium"], p=[0.55, 0.3, 0.15])
            ),
        }
    if name == "enteric_tube":
        return {
            "kind": "nasogastric" if rng.random() < 0.75 else "orogastric",
            "tip": "stomach" if rng.random() < 0.88 else "distal esophagus",
        }
    if name == "sternotomy_wires":
        return {"count": int(rng.integers(5, 8))}
    raise KeyError(f"unknown concept {name!r}")


def evolve(name: str, params: dict, rng: np.random.Generator) -> tuple[dict, str]:
    """The next study's parameters of a persisting concept and its change label."""
    new = dict(params)
    if name in DEVICES or name == "rib_fracture":
        return new, "unchanged"
    u = rng.random()
    step = float(rng.uniform(0.22, 0.4))
    direction = 0 if u < 0.5 else (1 if u < 0.75 else -1)
    if name == "cardiomegaly":
        ctr = float(np.clip(params["ctr"] + direction * step * 0.15, 0.54, 0.7))
        new["ctr"] = round(ctr, 3)
        return new, _change(ctr - params["ctr"], 0.025)
    if name == "nodule":
        size = float(np.clip(params["size_mm"] * (1 + direction * step), 10, 30))
        new["size_mm"] = round(size, 1)
        return new, _change(size - params["size_mm"], 2.0)
    sev = float(np.clip(params["severity"] + direction * step, 0.15, 1.0))
    new["severity"] = round(sev, 3)
    if "size" in new:
        new["size"] = size_class(sev)
    if "grade" in new:
        new["grade"] = {"small": "mild", "moderate": "moderate", "large": "severe"}[size_class(sev)]
    return new, _change(sev - params["severity"], 0.15)


def _change(delta: float, tol: float) -> str:
    """increased / decreased / unchanged from a difference and its tolerance."""
    return "increased" if delta > tol else ("decreased" if delta < -tol else "unchanged")


def _next_state(prior: dict, subject: dict, rng: np.random.Generator, first: bool):
    """Concepts present at the next study (name -> params) and their changes vs ``prior``."""
    scale = WELL_SCALE if subject["well"] else ILL_SCALE
    state: dict[str, dict] = {}
    changes: dict[str, str] = {}
    for name in FINDINGS + DEVICES:
        pi = min(PREVALENCE[name] * scale, 0.9)
        if name in prior:
            if rng.random() < RESOLVE[name]:
                changes[name] = "resolved"
            else:
                state[name], changes[name] = evolve(name, prior[name], rng)
        else:
            appear = (
                pi
                if first
                else RESOLVE[name] * pi / (1 - pi) + 0.02 * (name == "sternotomy_wires") * scale
            )
            if rng.random() < appear:
                state[name] = sample_params(name, rng)
                if not first:
                    changes[name] = "new"
    # Intensive-care bundle: an intubated patient usually has an enteric tube and a line.
    if "endotracheal_tube" in state and "endotracheal_tube" not in prior:
        for dev, p in (("enteric_tube", 0.7), ("central_line", 0.6)):
            if dev not in state and rng.random() < p:
                state[dev] = sample_params(dev, rng)
                if not first:
                    changes[dev] = "new"
    return state, changes


def acquisition(state: dict, subject: dict, rng: np.random.Generator) -> dict[str, Any]:
    """View, position, exposure and geometry of one study, given what the patient has."""
    icu = any(d in state for d in ("endotracheal_tube", "enteric_tube")) or (
        "central_line" in state and rng.random() < 0.4
    )
    portable = bool(rng.random() < (0.85 if icu else 0.12))
    if portable:
        view, position = "AP", ("supine" if rng.random() < 0.55 else "semi-erect")
    else:
        view, position = ("PA" if rng.random() < 0.92 else "AP"), "erect"
    ribs = (
        rng.uniform(9.0, 11.0) - (1.2 if portable else 0) - 0.8 * subject["habitus"]["soft_tissue"]
    )
    return {
        "view": view,
        "portable": portable,
        "position": position,
        "lateral": not portable,
        "rotation_deg": round(float(np.clip(rng.normal(0, 2.2), -7, 7)), 2),
        "shift_x": round(float(rng.uniform(-0.025, 0.025)), 3),
        "inspiration_ribs": round(float(np.clip(ribs, 7.5, 11.0)), 2),
        "exposure": round(float(rng.uniform(0.88, 1.12)), 3),
        "brightness": round(float(rng.uniform(-0.04, 0.04)), 3),
        "noise": round(float(rng.uniform(0.008, 0.02) + 0.012 * portable), 4),
        "magnification": 1.1 if view == "AP" else 1.0,
    }


def subject_studies(seed: int, subject: dict, first_index: int, n: int) -> list[dict]:
    """Ground-truth records of a subject's ``n`` studies, in chronological order."""
    rng = rng_for(seed, 2, subject["index"])
    when = dt.datetime(2110, 1, 1) + dt.timedelta(
        days=int(rng.integers(0, 365 * 70)), seconds=int(rng.integers(6 * 3600, 23 * 3600))
    )
    prior_state: dict = {}
    studies: list[dict] = []
    for k in range(n):
        if k:
            icu = "endotracheal_tube" in prior_state
            days = (
                int(rng.integers(1, 4))
                if icu
                else int(rng.choice([1, 7, 30, 120, 400]) * rng.uniform(0.5, 1.5)) + 1
            )
            when += dt.timedelta(days=days, seconds=int(rng.integers(-3 * 3600, 3 * 3600)))
        state, changes = _next_state(prior_state, subject, rng, first=k == 0)
        study_index = first_index + k
        studies.append(
            {
                "study_index": study_index,
                "subject_id": subject["subject_id"],
                "study_id": permuted_id(study_index, seed, 2, 50_000_000),
                "split": subject["split"],
                "order": k,
                "prior_study_id": studies[-1]["study_id"] if studies else None,
                "prior_date": studies[-1]["date"] if studies else None,
                "date": when.strftime("%Y-%m-%d"),
                "time": when.strftime("%H:%M:%S"),
                "subject": {
                    "sex": subject["sex"],
                    "age": subject["age"]
                    + (when.year - int(studies[0]["date"][:4]) if studies else 0),
                    "habitus": subject["habitus"],
                },
                "acquisition": acquisition(state, subject, rng),
                "findings": {f: state[f] for f in FINDINGS if f in state},
                "devices": {d: state[d] for d in DEVICES if d in state},
                "changes": changes,
                "resolved": {n: prior_state[n] for n, c in changes.items() if c == "resolved"},
                "ctr": state["cardiomegaly"]["ctr"]
                if "cardiomegaly" in state
                else subject["normal_ctr"],
                "thorax_width": subject["thorax_width"],
            }
        )
        prior_state = state
    return studies


def plan_subjects(seed: int, n_studies: int, split_fracs: tuple[float, float]):
    """Yield ``(subject, first_study_index, n)`` until exactly ``n_studies`` are planned."""
    done, index = 0, 0
    while done < n_studies:
        subject = sample_subject(seed, index, split_fracs)
        n = min(subject["n_studies"], n_studies - done)
        yield subject, done, n
        done += n
        index += 1
