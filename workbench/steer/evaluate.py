"""Generate and judge: one arm (method, concept, direction, strength, ...) over held-out studies.

An :class:`Arm` is one setting of one method for one concept. :class:`Evaluator` generates
the unsteered findings of each study once (cached across arms and concepts), then the
steered findings of each arm, judges both (:mod:`workbench.steer.metrics`) and makes one
``steering_results`` row per (arm, study). Rows already stored for the same arm and study
are skipped (resume); :func:`write_rows` stores a batch atomically through :mod:`workbench.db`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from workbench import db
from workbench.cxr.findings import CHEXPERT_LABELS
from workbench.steer import metrics
from workbench.steer.intervene import (
    Steering,
    SteeringError,
    direction_steering,
    feature_steering,
    generate,
)
from workbench.steer.peers import Direction, prompt_indication, with_indication

log = logging.getLogger("workbench.steer")

METHODS = ("sae", "dim", "prompt")
DIRECTIONS = ("add", "remove")


class Case(NamedTuple):
    """A held-out study: its id and what ``adapter.prepare`` takes (StudyRecord or mapping)."""

    study_id: int
    record: Any


class Arm(NamedTuple):
    """One setting of one method for one concept (the unit a result is reported for)."""

    method: str
    concept: str
    direction: str
    features: tuple[int, ...]
    strength: float
    """Signed: negative removes; the prompt method uses +1 / -1."""
    unit: str
    mode: str
    positions: str
    variant: str
    """Settings that change the generated text but are not columns (max_new_tokens, ...)."""

    def key(self, study_id: int) -> tuple:
        return (*self[:4], float(self.strength), *self[5:], int(study_id))


class Baseline(NamedTuple):
    text: str
    judgement: metrics.Judgement


def truth(record: Any, concept: str, phantom: Mapping[int, Mapping[str, int]] | None) -> int | None:
    """Ground truth of ``concept`` for a study: phantom table, CheXpert label, else its report."""
    if phantom is not None and record.study_id in phantom and concept in phantom[record.study_id]:
        return int(phantom[record.study_id][concept])
    if concept in CHEXPERT_LABELS:
        value = (record.labels or {}).get(concept)
        return None if value is None else int(value)
    return metrics.concept_value(record.findings, concept)


def pick_cases(
    records: Sequence[Any],
    concept: str,
    direction: str,
    n: int,
    phantom: Mapping[int, Mapping[str, int]] | None,
) -> list[Case]:
    """The first ``n`` studies (reader order) without the concept ('add') or with it ('remove')."""
    out = []
    for rec in records:
        value = truth(rec, concept, phantom)
        if (direction == "add" and value in (0, None)) or (direction == "remove" and value == 1):
            out.append(Case(rec.study_id, rec))
            if len(out) == n:
                break
    return out


class Evaluator:
    """Generates and judges findings for arms over cases with one model and SAE."""

    def __init__(
        self,
        adapter,
        sae,
        max_new_tokens: int,
        typical: Mapping[int, float | None] | None,
        directions: Mapping[str, Direction] | None = None,
        judge=metrics.judge,
    ):
        self.adapter, self.sae, self.max_new_tokens = adapter, sae, max_new_tokens
        self.typical, self.judge = typical, judge
        self.directions = dict(directions or {})
        self.baselines: dict[int, Baseline] = {}

    def baseline(self, case: Case) -> Baseline:
        """The unsteered findings of a study and their judgement (computed once)."""
        if case.study_id not in self.baselines:
            inp = self.adapter.prepare(case.record)
            text = generate(self.adapter, inp, max_new_tokens=self.max_new_tokens)
            judged = self.judge(self.adapter, case.record, text)
            self.baselines[case.study_id] = Baseline(text, judged)
        return self.baselines[case.study_id]

    def steering(self, arm: Arm) -> Steering:
        """The intervention of an SAE or difference-of-means arm."""
        if arm.method == "sae":
            strengths = {f: arm.strength for f in arm.features}
            return feature_steering(
                self.sae,
                strengths,
                mode=arm.mode,
                unit=arm.unit,
                typical=self.typical,
                positions=arm.positions,
            )
        if arm.method == "dim":
            if arm.concept not in self.directions:
                raise SteeringError(f"no difference-of-means direction for {arm.concept}")
            vector = self.directions[arm.concept].vector
            return direction_steering(vector, arm.strength, arm.positions)
        raise SteeringError(f"method {arm.method!r} has no steering vector")

    def steered_text(self, arm: Arm, case: Case) -> tuple[str, dict]:
        """The findings under ``arm`` and the details worth keeping about how they were made."""
        if arm.method == "prompt":
            indication = prompt_indication(
                getattr(case.record, "indication", None)
                if not isinstance(case.record, Mapping)
                else case.record.get("indication"),
                arm.concept,
                arm.direction,
            )
            inp = self.adapter.prepare(with_indication(case.record, indication))
            text = generate(self.adapter, inp, max_new_tokens=self.max_new_tokens)
            return text, {"indication": indication}
        inp = self.adapter.prepare(case.record)
        text = generate(
            self.adapter,
            inp,
            max_new_tokens=self.max_new_tokens,
            steering=self.steering(arm),
            sae=self.sae,
        )
        details = {"hook_name": self.sae.hook_name}
        if arm.method == "sae" and arm.unit != "raw":
            details["raw_strengths"] = {
                str(f): arm.strength * float(self.typical[f]) for f in arm.features
            }
        return text, details

    def row(self, arm: Arm, case: Case) -> dict:
        """Generate, judge and describe one (arm, study)."""
        base = self.baseline(case)
        text, details = self.steered_text(arm, case)
        judged = self.judge(self.adapter, case.record, text)
        b = base.judgement.readings.get(arm.concept)
        s = judged.readings.get(arm.concept)
        eligible, success = metrics.flip(b, s, arm.direction)
        details |= {
            "variant": arm.variant,
            "model": self.adapter.name,
            "max_new_tokens": self.max_new_tokens,
            "baseline_readings": base.judgement.readings,
            "steered_readings": judged.readings,
        }
        return {
            "feature": arm.features[0] if arm.features else None,
            "strength": float(arm.strength),
            "study_id": case.study_id,
            "concept": arm.concept,
            "baseline_text": base.text,
            "steered_text": text,
            "baseline_mentions": b is not None,
            "steered_mentions": s is not None,
            "details": json.dumps(details),
            "method": arm.method,
            "direction": arm.direction,
            "features": list(arm.features),
            "unit": arm.unit,
            "mode": arm.mode,
            "positions": arm.positions,
            "baseline_value": b,
            "steered_value": s,
            "eligible": eligible,
            "success": success,
            "side_effects": metrics.side_effects(
                base.judgement.readings, judged.readings, arm.concept
            ),
            "baseline_ppl": base.judgement.perplexity,
            "steered_ppl": judged.perplexity,
            "repeat_rate": judged.repeat_rate,
            "parses": judged.parses,
        }

    def run_arm(self, arm: Arm, cases: Iterable[Case], done: set) -> list[dict]:
        """Rows of ``arm`` for every case whose key is not in ``done``."""
        return [self.row(arm, c) for c in cases if arm.key(c.study_id) not in done]


_KEY_SQL = (
    "method, concept, direction, features, strength, unit, mode, positions, "
    "json_extract_string(details, '$.variant'), study_id"
)


def _key_of(row: Sequence) -> tuple:
    method, concept, direction, feats, strength, unit, mode, positions, variant, sid = row
    feats = tuple(int(f) for f in feats or ())
    return (method, concept, direction, feats, float(strength), unit, mode, positions, variant,
            int(sid))  # fmt: skip


def existing_keys(con: duckdb.DuckDBPyConnection) -> set[tuple]:
    """Keys (:meth:`Arm.key`) of the rows already stored, for resume."""
    if not metrics_columns_present(con):
        return set()
    rows = con.execute(
        f"SELECT {_KEY_SQL} FROM steering_results WHERE method IS NOT NULL"
    ).fetchall()
    return {_key_of(r) for r in rows}


def metrics_columns_present(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``steering_results`` has this version's columns (older databases lack them)."""
    row = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'steering_results' "
        "AND column_name = 'method'"
    ).fetchone()
    return row[0] > 0


COLUMNS = tuple(c.name for c in db.TABLE["steering_results"].columns if c.name != "created_at")


def write_rows(run: Path, rows: list[dict], replace: bool) -> None:
    """Insert ``rows`` into ``steering_results``, first deleting same-key rows if ``replace``."""
    if not rows:
        return
    now = db.utc_now()
    with db.rewrite(run) as con:
        if replace:
            for r in rows:
                con.execute(
                    f"DELETE FROM steering_results WHERE ({_KEY_SQL}) = "
                    "(?, ?, ?, ?::INTEGER[], ?, ?, ?, ?, ?, ?)",
                    [r["method"], r["concept"], r["direction"], r["features"], r["strength"],
                     r["unit"], r["mode"], r["positions"], json.loads(r["details"])["variant"],
                     r["study_id"]],
                )  # fmt: skip
        names = ", ".join(f'"{c}"' for c in (*COLUMNS, "created_at"))
        marks = ", ".join("?" * (len(COLUMNS) + 1))
        con.executemany(
            f"INSERT INTO steering_results ({names}) VALUES ({marks})",
            [[r[c] for c in COLUMNS] + [now] for r in rows],
        )
