"""MIMIC-CXR-style free-text reports written from a study's ground truth.

The wording comes from phrase families in ``data/phantom_phrases.json`` (documented in
docs/phantom.md), drawn with a per-study generator so that one finding is described many
ways: plain statements, hedged ones (CheXpert uncertain, -1), negations (0), normal
statements, and comparison language against the prior study. Every sentence carries the
CheXpert labels it implies, so ``-chexpert.csv`` says exactly what the text says.
"""

from __future__ import annotations

import functools
import json
import textwrap
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from workbench.cxr.findings import CHEXPERT_LABELS, CHEXPERT_OF, DEVICES, FINDINGS

PHRASES_PATH = Path(__file__).resolve().parents[3] / "data" / "phantom_phrases.json"
HEDGEABLE = ("pleural_effusion", "pneumothorax", "consolidation", "atelectasis", "edema", "nodule")
LOBES = MappingProxyType(
    {
        ("right", "upper"): "right upper lobe",
        ("right", "middle"): "right middle lobe",
        ("right", "lower"): "right lower lobe",
        ("left", "upper"): "left upper lobe",
        ("left", "middle"): "lingula",
        ("left", "lower"): "left lower lobe",
    }
)
ORDINAL = MappingProxyType({4: "4th", 5: "5th", 6: "6th", 7: "7th", 8: "8th", 9: "9th"})
MAX_WORDS = 80


class Report(NamedTuple):
    text: str  # the whole .txt file
    sections: dict[str, str]  # indication, technique, comparison, findings, impression
    labels: dict[str, float | None]  # CheXpert: 1.0 / 0.0 / -1.0 / None (not mentioned)
    hedged: tuple[str, ...]  # concepts described with uncertainty


@functools.lru_cache(maxsize=4)
def phrases(path: str = str(PHRASES_PATH)) -> dict[str, Any]:
    """The phrase families (cached); a clear error if the data file is missing or broken."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot read phantom phrase file: {exc}") from None


def _vars(name: str, p: dict) -> dict[str, str]:
    """Placeholder values of one concept from its parameters."""
    v: dict[str, str] = {
        "side": p.get("side", ""),
        "size": p.get("size", ""),
        "s": "",
        "a": "a ",
        "is": "is",
        "has": "has",
    }
    if p.get("side") == "bilateral":
        v.update(s="s", a="", **{"is": "are", "has": "have"})
    if "zone" in p:
        v["lobe"] = LOBES.get((p["side"], p["zone"]), f"{p['side']} lung base")
    v.update(_device_vars(name, p) if name in DEVICES else _finding_vars(name, p))
    return v


def _finding_vars(name: str, p: dict) -> dict[str, str]:
    """Placeholders specific to a finding."""
    v: dict[str, str] = {}
    if name == "cardiomegaly":
        ctr = p["ctr"]
        v["degree"] = "mild" if ctr < 0.58 else ("moderate" if ctr < 0.63 else "severe")
        v["degree_adv"] = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}[
            v["degree"]
        ]
    elif name == "atelectasis":
        v["loc"] = "bibasilar" if p["side"] == "bilateral" else f"{p['side']} basilar"
        v["locn"] = "lung bases" if p["side"] == "bilateral" else f"{p['side']} lung base"
        v["kind"] = "plate-like" if p["kind"] == "plate" else "subsegmental"
    elif name == "edema":
        v["grade"] = p["grade"]
    elif name == "nodule":
        v["size_cm"] = f"{p['size_mm'] / 10:.1f}"
    elif name == "rib_fracture":
        v["rib"] = ORDINAL[p["rib"]]
        v["displaced"] = "displaced " if p["displaced"] else ""
    return v


def _device_vars(name: str, p: dict) -> dict[str, str]:
    """Placeholders specific to a device."""
    v: dict[str, str] = {}
    if name == "pacemaker":
        dev = (
            "ICD"
            if p["kind"] == "icd"
            else ("dual-chamber pacemaker" if p["leads"] == 2 else "pacemaker")
        )
        v["dev"] = dev
        v["leads"] = {
            1: "a single lead in the right ventricle",
            2: "leads in the right atrium and right ventricle",
            3: "three leads",
        }[p["leads"]]
    elif name == "endotracheal_tube":
        v["tip_cm"] = f"{p['tip_cm_above_carina']:.1f}"
    elif name == "central_line":
        v["line"] = {
            "ij": f"{p['side']} internal jugular central venous catheter",
            "subclavian": f"{p['side']} subclavian central line",
            "picc": f"{p['side']} PICC line",
        }[p["kind"]]
        v["tip_loc"] = {
            "svc": "the mid SVC",
            "cavoatrial junction": "the cavoatrial junction",
            "right atrium": "the right atrium",
        }[p["tip"]]
    elif name == "enteric_tube":
        v["tube"] = f"{p['kind']} tube"
    return v


def _fill(template: str, v: dict[str, str]) -> str:
    """Fill a template; ``{Key}`` gives the capitalised value of ``{key}``."""
    full = dict(v)
    for key in list(v):
        full[key[:1].upper() + key[1:]] = v[key][:1].upper() + v[key][1:]
    text = " ".join(template.format_map(full).split())
    return text[:1].upper() + text[1:]


def _choose(rng: np.random.Generator, options: list) -> Any:
    """One option, drawn with the report's generator."""
    return options[int(rng.integers(len(options)))]


def _sentence(rng, family: list, name: str, p: dict, value: float | None) -> tuple[str, dict]:
    """One sentence of ``family`` about ``name`` and the CheXpert labels it implies."""
    v = _vars(name, p)
    v["desc"] = (
        _fill(_choose(rng, phrases()["desc"][name]), v).lower() if name in phrases()["desc"] else ""
    )
    v["desc"] = (
        v["desc"]
        .replace("icd", "ICD")
        .replace("picc", "PICC")
        .replace("svc", "SVC")
        .replace("et tube", "ET tube")
    )
    entry = _choose(rng, family)
    text = entry["text"] if isinstance(entry, dict) else entry
    labels = {} if value is None else dict.fromkeys(CHEXPERT_OF[name], value)
    if value == 0.0:
        labels = {CHEXPERT_OF[name][0]: 0.0}
    if isinstance(entry, dict):  # e.g. "Opacity ... may represent X": the opacity is certain
        labels.update(entry["labels"])
    return _fill(text, v), labels


def _family_of(name: str, p: dict, change: str | None, has_prior: bool, rng) -> list:
    """Templates for a present concept: comparison wording when there is a prior study."""
    ph = phrases()
    key = name
    if name == "endotracheal_tube" and p["tip_cm_above_carina"] < 2.0:
        key = "endotracheal_tube_low"
    if name == "enteric_tube" and p["tip"] != "stomach":
        key = "enteric_tube_high"
    changed = ph["change"].get(change or "", {})
    if has_prior and key in changed and (change == "new" or rng.random() < 0.75):
        return changed[key]
    return ph["present"][key]


def findings_sentences(study: dict, hedged: set, rng) -> list[tuple[str, dict, int]]:
    """(text, labels, rank) for FINDINGS, positives first; rank 0 = must stay, else the
    higher the rank the longer the sentence survives trimming to ``MAX_WORDS``."""
    ph, out = phrases(), []
    has_prior = study["prior_study_id"] is not None
    changes = study["changes"]
    present = {**study["devices"], **study["findings"]}
    for name in DEVICES + FINDINGS:
        if name not in present:
            continue
        if name in hedged:
            text, labels = _sentence(rng, ph["hedged"][name], name, present[name], -1.0)
        else:
            family = _family_of(name, present[name], changes.get(name), has_prior, rng)
            text, labels = _sentence(rng, family, name, present[name], 1.0)
        out.append((text, labels, 0))
    for name, change in changes.items():
        if change == "resolved" and name in ph["change"]["resolved"]:
            text, labels = _sentence(
                rng,
                ph["change"]["resolved"][name],
                name,
                study["resolved"].get(name, {}),
                0.0,
            )
            out.append((text, labels, 6))
    out.extend(_negatives(study, present, rng))
    return out


def _negatives(study: dict, present: dict, rng) -> list[tuple[str, dict, int]]:
    """Normal statements and negations for what is absent."""
    ph, out = phrases(), []
    mentioned = {n for n, c in study["changes"].items() if c == "resolved"}
    absent = [
        n
        for n in ("consolidation", "pleural_effusion", "pneumothorax", "edema")
        if n not in present and n not in mentioned
    ]
    if study["acquisition"]["inspiration_ribs"] < 8.5:
        out.append((_choose(rng, ph["low_volumes"]), {}, 2))
    if "cardiomegaly" not in present:
        fam = ph["absent"][
            "cardiomegaly_ap"
            if study["acquisition"]["view"] == "AP" and rng.random() < 0.5
            else "cardiomegaly"
        ]
        out.append((_choose(rng, fam), {"Cardiomegaly": 0.0}, 4))
    lung_clear = not any(n in present for n in ("consolidation", "atelectasis", "edema", "nodule"))
    if lung_clear and rng.random() < 0.6:
        out.append((_choose(rng, ph["clear_lungs"]), {}, 2))
    for combo in sorted(ph["absent_combined"], key=lambda c: -len(c["covers"])):
        if all(n in absent for n in combo["covers"]) and rng.random() < 0.7:
            labels = {CHEXPERT_OF[n][0]: 0.0 for n in combo["covers"]}
            out.append((_choose(rng, combo["text"]), labels, 5))
            absent = [n for n in absent if n not in combo["covers"]]
    for n in absent:
        if n in ("pleural_effusion", "pneumothorax") or rng.random() < 0.4:
            rank = 5 if n in ("pleural_effusion", "pneumothorax") else 3
            out.append((_choose(rng, ph["absent"][n]), {CHEXPERT_OF[n][0]: 0.0}, rank))
    if "cardiomegaly" not in present and rng.random() < 0.3:
        out.append((_choose(rng, ph["normal_mediastinum"]), {}, 1))
    if "rib_fracture" not in present and rng.random() < 0.35:
        use_fx = rng.random() < 0.4
        fam = ph["absent"]["rib_fracture"] if use_fx else ph["normal_bones"]
        out.append((_choose(rng, fam), {"Fracture": 0.0} if use_fx else {}, 1))
    return out


IMPORTANCE = (
    "pneumothorax",
    "endotracheal_tube",
    "consolidation",
    "edema",
    "pleural_effusion",
    "cardiomegaly",
    "nodule",
    "atelectasis",
    "rib_fracture",
    "enteric_tube",
    "central_line",
    "pacemaker",
    "sternotomy_wires",
)


def impression_sentences(study: dict, hedged: set, rng) -> list[tuple[str, dict]]:
    """At most three key statements, re-worded from the findings, or a normal impression."""
    ph, out = phrases(), []
    present = {**study["devices"], **study["findings"]}
    has_prior = study["prior_study_id"] is not None
    changes = study["changes"]
    for name in IMPORTANCE:
        if len(out) == 3:
            break
        if name not in present:
            continue
        if (
            name in DEVICES
            and changes.get(name) != "new"
            and not (name == "endotracheal_tube" and present[name]["tip_cm_above_carina"] < 2.0)
        ):
            continue
        if name in hedged:
            out.append(_sentence(rng, ph["hedged"][name], name, present[name], -1.0))
        else:
            family = _family_of(name, present[name], changes.get(name), has_prior, rng)
            out.append(_sentence(rng, family, name, present[name], 1.0))
        if name == "consolidation" and rng.random() < 0.5:
            entry = _choose(rng, ph["impression_pneumonia"])
            out.append((entry["text"], dict(entry["labels"])))
    if not out:
        quiet = has_prior and all(c == "unchanged" for c in changes.values())
        family = ph["impression_unchanged"] if quiet else ph["impression_normal"]
        out.append((_choose(rng, family), {}))
    return out


def merge_labels(label_sets: list[dict]) -> dict[str, float | None]:
    """CheXpert aggregation: positive beats uncertain beats negative; None = not mentioned."""
    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    merged: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    for labels in label_sets:
        for k, v in labels.items():
            v = float(v)
            if merged[k] is None or rank[v] > rank[merged[k]]:
                merged[k] = v
    pathology = [k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")]
    if not any(merged[k] in (1.0, -1.0) for k in pathology):
        merged["No Finding"] = 1.0
    return merged


def _header(study: dict, rng) -> dict[str, str]:
    """EXAMINATION, INDICATION, TECHNIQUE and COMPARISON lines.

    The indication names a present or just-resolved concept only half the time, so the text
    prompt hints at, but does not give away, what the image shows.
    """
    ph, acq = phrases(), study["acquisition"]
    known = {**study["devices"], **study["findings"], **study["resolved"]}
    keys = [k for k in ph["indication"] if k in known and k != "default"]
    family = (
        ph["indication"][_choose(rng, keys)]
        if keys and rng.random() < 0.5
        else ph["indication"]["default"]
    )
    gender = {"F": "woman", "M": "man"}[study["subject"]["sex"]]
    tech = "portable" if acq["portable"] else acq["view"]
    comparison = (
        _choose(rng, ph["comparison_prior"]).format(date=study["prior_date"])
        if study["prior_study_id"] is not None
        else _choose(rng, ph["comparison_none"])
    )
    return {
        "examination": examination(acq),
        "indication": _choose(rng, family).format(age=study["subject"]["age"], gender=gender),
        "technique": _choose(rng, ph["technique"][tech]),
        "comparison": comparison,
    }


def examination(acq: dict) -> str:
    """MIMIC's PerformedProcedureStepDescription of a study."""
    if acq["portable"]:
        return "CHEST (PORTABLE AP)"
    return "CHEST (PA AND LAT)" if acq["view"] == "PA" else "CHEST (AP AND LAT)"


def _wrap(text: str) -> str:
    """Wrap a section body at 76 columns with MIMIC's one-space indent."""
    return "\n".join(
        textwrap.wrap(text, 76, initial_indent=" ", subsequent_indent=" ", break_on_hyphens=False)
    )


def write_report(study: dict, rng: np.random.Generator) -> Report:
    """The report of one study: text in MIMIC-CXR layout, sections, CheXpert labels."""
    hedged = {
        n
        for n in HEDGEABLE
        if n in study["findings"]
        and study["findings"][n].get("severity", 1.0) < 0.5
        and rng.random() < 0.4
    }
    head = _header(study, rng)
    sents = findings_sentences(study, hedged, rng)
    while sum(len(t.split()) for t, _, _ in sents) > MAX_WORDS and any(k for *_, k in sents):
        # drop the least informative optional statement first (normal bones before effusion)
        sents.pop(min((k, -i) for i, (_, _, k) in enumerate(sents) if k)[1] * -1)
    impression = impression_sentences(study, hedged, rng)
    findings_text = " ".join(t for t, _, _ in sents)
    impression_text = " ".join(t for t, _ in impression)
    labels = merge_labels([lab for _, lab, _ in sents] + [lab for _, lab in impression])
    body = [
        "                                 FINAL REPORT",
        f" EXAMINATION:  {head['examination']}",
        " ",
        f" INDICATION:  {head['indication']}",
        " ",
        f" TECHNIQUE:  {head['technique']}",
        " ",
        f" COMPARISON:  {head['comparison']}",
        " ",
        " FINDINGS:",
        " ",
        _wrap(findings_text),
        " ",
        " IMPRESSION:",
        " ",
        _wrap(impression_text),
        "",
    ]
    sections = {k: head[k] for k in ("indication", "technique", "comparison")}
    sections.update(findings=findings_text, impression=impression_text)
    return Report("\n".join(body), sections, labels, tuple(sorted(hedged)))
