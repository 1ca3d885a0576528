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
from workbench.steer.image import (
    CURRENT_SECTIONS,
    IMAGE_HOOK,
    ImageSteering,
    image_scaling,
    image_steering,
)
from workbench.steer.intervene import (
    Steering,
    SteeringError,
    direction_steering,
    feature_steering,
    generate_many,
)
from workbench.steer.peers import Direction, prompt_indication, with_indication

log = logging.getLogger("workbench.steer")

METHODS = ("sae", "dim", "prompt", "counterfactual", "random")
"""Every method; ``random`` (site image) is the null control: a random patch map with the
norm of dim's map, or of the SAE map, at every patch (:func:`workbench.steer.maps.random_like`)."""
DEFAULT_METHODS = ("sae", "dim", "prompt", "counterfactual")
DIRECTIONS = ("add", "remove")
IMAGE_UNITS = {"sae": "adjusted_map", "dim": "adjusted_diff", "random": "matched_norm"}
"""The default unit of an image-site arm (:mod:`workbench.steer.image`): strength x patch map."""
SCALE_UNIT = "own_act"
"""The unit of an image-site SAE arm in mode clamp: strength s scales every candidate
feature's own activation at each image token by ``1 + s`` (:class:`FeatureScaling`)."""
IMAGE_ARM_UNITS = {
    "sae": ("adjusted_map", "along_dim", SCALE_UNIT),
    "dim": ("adjusted_diff",),
    "random": ("matched_norm",),
}
"""Every unit of an image-site arm (``along_dim``: :mod:`workbench.steer.maps`)."""


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
    """Generates and judges findings for arms over cases with one model and SAE.

    Work is done in batches of up to ``batch_size`` generations (:meth:`chunks`): the
    (arm, study) pairs of a batch, plus the unsteered findings of each of its studies not yet
    generated, go through one :func:`~workbench.steer.intervene.generate_many` call, so the
    baseline and the steered findings come from the same call, cache and hook; a study's
    texts are then scored in one perplexity batch.
    """

    def __init__(
        self,
        adapter,
        sae,
        max_new_tokens: int,
        typical: Mapping[int, float | None] | None,
        directions: Mapping[str, Direction] | None = None,
        judge=metrics.judge_many,
        batch_size: int = 32,
        image_maps: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        counterfactuals=None,
        image_sections: Sequence[str] = CURRENT_SECTIONS,
    ):
        self.adapter, self.sae, self.max_new_tokens = adapter, sae, max_new_tokens
        self.typical, self.judge, self.batch_size = typical, judge, max(1, batch_size)
        self.directions = dict(directions or {})
        self.image_maps = dict(image_maps or {})
        """(method, concept) -> section -> [P, D] patch map of the image-site arms."""
        self.counterfactuals = counterfactuals
        """:class:`~workbench.steer.counterfactual.Counterfactuals` of a phantom run, or None."""
        self.image_sections = tuple(image_sections)
        """The images an image-site arm in mode clamp scales its features on."""
        self.baselines: dict[int, Baseline] = {}

    def baseline(self, case: Case) -> Baseline:
        """The unsteered findings of a study and their judgement (computed once)."""
        if case.study_id not in self.baselines:
            self.run_chunk([], extra=[case])
        return self.baselines[case.study_id]

    def steering(self, arm: Arm) -> Steering | ImageSteering:
        """The intervention of an SAE or difference-of-means arm."""
        if arm.method == "sae" and arm.unit == SCALE_UNIT:
            return image_scaling(self.sae, arm.features, self.image_sections, arm.strength)
        if arm.unit in IMAGE_ARM_UNITS.get(arm.method, ()):
            key = (arm.method, arm.concept)
            maps = self.image_maps.get((*key, arm.features) if arm.method == "random" and
                                       arm.features else key)  # fmt: skip
            if maps is None:
                raise SteeringError(f"no {arm.method} patch map for {arm.concept}")
            return image_steering(maps, arm.strength)
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

    def request(
        self, arm: Arm, case: Case, prepared: dict
    ) -> tuple[Any, Steering | ImageSteering | None, dict]:
        """Prepared inputs, steering (None for the prompt method) and details of one pair;
        ``prepared`` caches each study's unsteered inputs."""
        if arm.method == "counterfactual":
            if self.counterfactuals is None:
                raise SteeringError("the counterfactual method needs a phantom run")
            edited = self.counterfactuals.study(case.record, arm.concept, arm.direction)
            return self.adapter.prepare(edited), None, {"edit": arm.direction}
        if arm.method == "prompt":
            record = case.record
            current = (record.get("indication") if isinstance(record, Mapping)
                       else getattr(record, "indication", None))  # fmt: skip
            indication = prompt_indication(current, arm.concept, arm.direction)
            inp = self.adapter.prepare(with_indication(record, indication))
            return inp, None, {"indication": indication}
        steering = self.steering(arm)
        if case.study_id not in prepared:
            prepared[case.study_id] = self.adapter.prepare(case.record)
        image = isinstance(steering, ImageSteering)
        details = {"hook_name": IMAGE_HOOK if image else self.sae.hook_name}
        if image:
            details["sections"] = sorted(steering.maps)
        elif arm.method == "sae" and arm.unit != "raw":
            details["raw_strengths"] = {
                str(f): arm.strength * float(self.typical[f]) for f in arm.features
            }
        return prepared[case.study_id], steering, details

    def chunks(self, pairs: Iterable[tuple[Arm, Case]]) -> list[list[tuple[Arm, Case]]]:
        """``pairs`` grouped by study (first-seen order), cut into generation batches that
        leave room for each new study's unsteered row."""
        by_study: dict[int, list[tuple[Arm, Case]]] = {}
        for arm, case in pairs:
            by_study.setdefault(case.study_id, []).append((arm, case))
        out: list[list[tuple[Arm, Case]]] = []
        current: list[tuple[Arm, Case]] = []
        room = self.batch_size
        for sid, group in by_study.items():
            for pair in group:
                needs_base = sid not in self.baselines
                cost = 1 + (needs_base and all(c.study_id != sid for _, c in current))
                if current and room < cost:
                    out.append(current)
                    current, room, cost = [], self.batch_size, 1 + needs_base
                current.append(pair)
                room -= cost
        return [*out, current] if current else out

    def run_chunk(
        self, pairs: Sequence[tuple[Arm, Case]], extra: Sequence[Case] = ()
    ) -> list[dict]:
        """Generate (one batch) and judge ``pairs``; also the baselines of ``extra`` studies."""
        cases = {c.study_id: c for c in [*extra, *(c for _, c in pairs)]}
        todo = [c for sid, c in cases.items() if sid not in self.baselines]
        prepared: dict[int, Any] = {}
        requests = [self.request(arm, case, prepared) for arm, case in pairs]
        for c in todo:
            if c.study_id not in prepared:
                prepared[c.study_id] = self.adapter.prepare(c.record)
        inps = [prepared[c.study_id] for c in todo]
        texts = generate_many(
            self.adapter,
            inps + [r[0] for r in requests],
            [None] * len(todo) + [r[1] for r in requests],
            max_new_tokens=self.max_new_tokens,
            sae=self.sae,
        )
        base_texts = dict(zip((c.study_id for c in todo), texts, strict=False))
        steered = texts[len(todo) :]
        judged = self._judge_by_study(cases, base_texts, pairs, steered)
        return [
            self._row(arm, case, text, judged[i], {**requests[i][2]})
            for i, ((arm, case), text) in enumerate(zip(pairs, steered, strict=True))
        ]

    def _judge_by_study(self, cases, base_texts, pairs, steered) -> list[metrics.Judgement]:
        """Judge each study's new baseline and steered texts together (one perplexity batch)."""
        out: list[metrics.Judgement | None] = [None] * len(pairs)
        for sid, case in cases.items():
            idx = [i for i, (_, c) in enumerate(pairs) if c.study_id == sid]
            new_base = [base_texts[sid]] if sid in base_texts else []
            got = self.judge(self.adapter, case.record, new_base + [steered[i] for i in idx])
            if new_base:
                self.baselines[sid] = Baseline(new_base[0], got[0])
            for i, j in zip(idx, got[len(new_base) :], strict=True):
                out[i] = j
        return out

    def run_many(self, pairs: Iterable[tuple[Arm, Case]]) -> list[dict]:
        """Rows of every (arm, case) pair, generated in batches (:meth:`chunks`)."""
        return [row for chunk in self.chunks(pairs) for row in self.run_chunk(chunk)]

    def row(self, arm: Arm, case: Case) -> dict:
        """Generate, judge and describe one (arm, study)."""
        return self.run_chunk([(arm, case)])[0]

    def _row(self, arm: Arm, case: Case, text: str, judged, details: dict) -> dict:
        """One ``steering_results`` row: the pair's steered text judged against its baseline."""
        base = self.baselines[case.study_id]
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
        return self.run_many([(arm, c) for c in cases if arm.key(c.study_id) not in done])


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
