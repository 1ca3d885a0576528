"""The parts of ``steer``'s evaluation: target concept, study choice, rows, summaries.

A concept is anything the rule-based report labeller reads back from text: the phantom
findings/devices (``pacemaker``, ``pleural_effusion``, ...) and the 14 CheXpert labels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from workbench import db
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.cxr.labeller.context import PHANTOM_CONCEPTS, label_report
from workbench.steer.intervene import SteeringError, effective_scales, generate_steered

READABLE: tuple[str, ...] = PHANTOM_CONCEPTS + CHEXPERT_LABELS


class StudyCase(NamedTuple):
    study_id: int
    record: Any
    """What ``adapter.prepare`` takes: a StudyRecord (or a mapping in tests)."""


def concept_value(text: str | None, concept: str) -> int | None:
    """The labeller's reading of ``concept`` in ``text``: 1, 0, -1 or None (not mentioned)."""
    labels = label_report(text or "")
    if concept in PHANTOM_CONCEPTS:
        return labels.concepts.get(concept)
    value = labels.chexpert.get(concept)
    return None if value is None else int(value)


def target_concept(con: duckdb.DuckDBPyConnection, feature: int, given: str | None) -> str:
    """``given`` (checked), else the feature's best-AUROC concept the labeller can read."""
    if given:
        if given not in READABLE:
            raise SteeringError(
                f"concept {given!r} cannot be read from report text; choose one of {READABLE}"
            )
        return given
    rows = con.execute(
        "SELECT concept FROM feature_concepts WHERE feature = ? AND auroc IS NOT NULL "
        "ORDER BY rank",
        [feature],
    ).fetchall()
    for (concept,) in rows:
        if concept in READABLE:
            return concept
    raise SteeringError(f"feature {feature}: no best concept readable from text; pass --concept")


def _known_present(con: duckdb.DuckDBPyConnection, concept: str) -> set[int] | None:
    """Studies labelled positive/uncertain for ``concept``; None when no study is labelled."""
    rows = con.execute(
        "SELECT study_id, value FROM study_labels WHERE concept = ?", [concept]
    ).fetchall()
    if not rows:
        return None
    return {s for s, v in rows if v in (1, -1)}


def pick_studies(
    con: duckdb.DuckDBPyConnection,
    data: Path,
    concept: str,
    n: int,
    select: str,
    split: str | None,
) -> list[StudyCase]:
    """The first ``n`` studies of ``data`` (in reader order), without the concept if 'absent'.

    Presence comes from ``study_labels`` (phantom truth or CheXpert), else from the
    labeller's reading of the study's own findings.
    """
    from workbench.cxr.studies import iter_studies

    present = _known_present(con, concept) if select == "absent" else set()
    out = []
    for record in iter_studies(data, split=split, require_findings=False):
        if select == "absent":
            if present is None:
                if concept_value(record.findings, concept) in (1, -1):
                    continue
            elif record.study_id in present:
                continue
        out.append(StudyCase(record.study_id, record))
        if len(out) == n:
            break
    return out


def _key(row: Mapping[str, Any]) -> tuple:
    d = json.loads(row["details"]) if isinstance(row["details"], str) else row["details"]
    return (
        int(row["feature"]),
        float(row["strength"]),
        int(row["study_id"]),
        row["concept"],
        d.get("mode"),
        d.get("unit"),
        d.get("positions"),
    )


def existing_keys(con: duckdb.DuckDBPyConnection) -> set[tuple]:
    """Keys of the steering results already stored (for resume)."""
    cols = ["feature", "strength", "study_id", "concept", "details"]
    rows = con.execute(f"SELECT {', '.join(cols)} FROM steering_results").fetchall()
    return {_key(dict(zip(cols, r))) for r in rows}


def evaluate_feature(
    adapter, sae, cfg, feature: int, scale: float, concept: str, cases, max_acts, baselines, done
) -> list[dict]:
    """Rows for one (feature, scale) over ``cases``; ``baselines`` caches unsteered reports."""
    raw = effective_scales({feature: scale}, cfg.unit, max_acts)
    rows = []
    for case in cases:
        details = {"mode": cfg.mode, "unit": cfg.unit, "positions": cfg.positions}
        key = (feature, float(scale), case.study_id, concept, cfg.mode, cfg.unit, cfg.positions)
        if key in done:
            continue
        inp = adapter.prepare(case.record)
        if case.study_id not in baselines:
            baselines[case.study_id] = adapter.generate(inp, max_new_tokens=cfg.max_new_tokens)
        base = baselines[case.study_id]
        steered = generate_steered(
            adapter,
            sae,
            inp,
            raw,
            max_new_tokens=cfg.max_new_tokens,
            mode=cfg.mode,
            positions=cfg.positions,
        )
        b, s = concept_value(base, concept), concept_value(steered, concept)
        details |= {
            "raw_scale": raw[feature],
            "hook_name": sae.hook_name,
            "model": adapter.name,
            "max_new_tokens": cfg.max_new_tokens,
            "baseline_label": b,
            "steered_label": s,
        }
        rows.append(
            {
                "feature": feature,
                "strength": float(scale),
                "study_id": case.study_id,
                "concept": concept,
                "baseline_text": base,
                "steered_text": steered,
                "baseline_mentions": b is not None,
                "steered_mentions": s is not None,
                "details": json.dumps(details),
            }
        )
    return rows


_COLUMNS = (
    "feature",
    "strength",
    "study_id",
    "concept",
    "baseline_text",
    "steered_text",
    "baseline_mentions",
    "steered_mentions",
    "details",
)


def write_rows(run: Path, rows: list[dict], replace: bool) -> None:
    """Insert ``rows`` into ``steering_results`` (replacing same-key rows when ``replace``)."""
    if not rows:
        return
    now = db.utc_now()
    with db.rewrite(run) as con:
        if replace:
            keys = {_key(r) for r in rows}
            old = existing_keys(con) & keys
            for k in old:
                con.execute(
                    "DELETE FROM steering_results WHERE feature = ? AND strength = ? AND "
                    "study_id = ? AND concept = ? AND json_extract_string(details, '$.mode') = ? "
                    "AND json_extract_string(details, '$.unit') = ? "
                    "AND json_extract_string(details, '$.positions') = ?",
                    list(k),
                )
        con.executemany(
            f"INSERT INTO steering_results VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
            [[r[c] for c in _COLUMNS] + [now] for r in rows],
        )


def stored_rows(
    con: duckdb.DuckDBPyConnection, feature: int, scale: float, concept: str, cfg, studies
) -> list[dict]:
    """Stored rows of one (feature, scale, concept) and settings over ``studies``."""
    cur = con.execute(
        "SELECT * FROM steering_results WHERE feature = ? AND strength = ? AND concept = ? "
        "AND study_id IN (SELECT unnest(?::BIGINT[]))",
        [feature, float(scale), concept, list(studies)],
    )
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    want = (cfg.mode, cfg.unit, cfg.positions)
    return [r for r in rows if _key(r)[4:] == want]


def _rate(rows: list[dict], fn) -> float | None:
    return sum(1 for r in rows if fn(r)) / len(rows) if rows else None


def summarise(feature: int, scale: float, concept: str, rows: list[dict]) -> dict:
    """Rates over the studies of one (feature, scale): mentions, positives, changed texts."""

    def label(r: dict, which: str) -> int | None:
        return json.loads(r["details"])[f"{which}_label"]

    return {
        "feature": feature,
        "scale": scale,
        "concept": concept,
        "n": len(rows),
        "base_mention": _rate(rows, lambda r: r["baseline_mentions"]),
        "steer_mention": _rate(rows, lambda r: r["steered_mentions"]),
        "base_pos": _rate(rows, lambda r: label(r, "baseline") == 1),
        "steer_pos": _rate(rows, lambda r: label(r, "steered") == 1),
        "changed": _rate(rows, lambda r: r["baseline_text"] != r["steered_text"]),
    }
