"""``python -m workbench.steer``: does steering a feature make the report mention its concept?

For each feature and scale, greedy reports are generated for N studies with and without the
intervention (:mod:`workbench.steer.intervene`), both are read by the rule-based report labeller
(:mod:`workbench.cxr.labeller`), and the rows go to ``steering_results``: the texts, whether
each mentions the target concept (any mention, positive, negated or uncertain) and, in
``details``, the labeller's value (1/0/-1/null) of each. The target concept is ``--concept``
or the feature's best concept in ``feature_concepts`` that the labeller can read. By default
only studies *without* the concept (ground truth) are used, so a positive steered report is
the concept appearing where it was absent, as in the MAIRA-2 SAE paper's steering study.

Rows are written after every (feature, scale); a rerun skips the (feature, scale, study,
concept, mode, unit, positions) already stored unless ``--overwrite``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from workbench import db
from workbench.config import parse_config, save_config
from workbench.run import RunLayout
from workbench.steer.evaluate import (
    StudyCase,
    concept_value,
    evaluate_feature,
    existing_keys,
    pick_studies,
    stored_rows,
    summarise,
    target_concept,
    write_rows,
)
from workbench.steer.intervene import SteeringError

log = logging.getLogger("workbench.steer")


@dataclass
class SteerConfig:
    """Steer report generation with SAE features and measure whether the concept appears."""

    run: Path = Path("runs/demo")
    """Run directory (features.duckdb, model/, sae/, phantom/)."""
    feature: tuple[int, ...] = ()
    """Feature(s) to steer, each on its own (comma-separated)."""
    scale: tuple[float, ...] = (4.0,)
    """Steering scale(s) to evaluate (comma-separated); see --unit."""
    unit: Literal["max_act", "raw"] = "max_act"
    """max_act: scale times the feature's largest activation in the store; raw: as given."""
    mode: Literal["add", "clamp"] = "add"
    """add: x + scale * W_dec[f]; clamp: set the feature's activation to scale."""
    positions: Literal["all", "generated"] = "all"
    """Steer every position, or only those that produce generated tokens."""
    concept: str | None = None
    """Target concept (phantom name or CheXpert label); empty: the feature's best concept."""
    n_studies: int = 8
    """Studies evaluated per feature and scale."""
    select: Literal["absent", "any"] = "absent"
    """absent: only studies whose ground truth lacks the concept; any: the first N studies."""
    split: str | None = None
    """Only studies of this split (train/validate/test)."""
    model: str | None = None
    """Model directory or name; empty: <run>/model."""
    sae: Path | None = None
    """SAE artefact; empty: <run>/sae."""
    data: Path | None = None
    """Dataset root in MIMIC-CXR layout; empty: <run>/phantom."""
    max_new_tokens: int = 120
    """Tokens generated per report."""
    device: str = "cpu"
    """torch device of the model and SAE."""
    overwrite: bool = False
    """Recompute results already stored for the same settings."""

    def validate(self) -> None:
        if self.n_studies <= 0 or self.max_new_tokens <= 0:
            raise ValueError("n_studies and max_new_tokens must be positive")


def _inputs(cfg: SteerConfig):
    from workbench.models.registry import load_model
    from workbench.sae import load_sae

    run = RunLayout(cfg.run)
    adapter = load_model(cfg.model or run.model, device=cfg.device)
    sae = load_sae(cfg.sae or run.sae, device=cfg.device)
    return adapter, sae, Path(cfg.data or run.phantom)


def run_steer(cfg: SteerConfig) -> list[dict]:
    """Evaluate every (feature, scale) of ``cfg``; returns one summary dict per pair."""
    if not cfg.feature:
        raise SteeringError("no --feature given")
    started = db.utc_now()
    save_config(cfg, RunLayout.cfg(RunLayout(cfg.run).steering))
    adapter, sae, data = _inputs(cfg)
    plan = _plan(cfg, data)
    baselines: dict[int, str] = {}
    for feature in cfg.feature:
        concept = plan.targets[feature]
        for scale in cfg.scale:
            rows = evaluate_feature(
                adapter,
                sae,
                cfg,
                feature,
                scale,
                concept,
                plan.cases[concept],
                plan.max_acts,
                baselines,
                plan.done,
            )
            write_rows(cfg.run, rows, replace=cfg.overwrite)
            log.info("feature %d scale %g: %d new rows", feature, scale, len(rows))
    notes = [] if any(plan.cases.values()) else ["no study matched the selection"]
    return _record_and_summarise(cfg, plan, started, notes)


class _Plan(NamedTuple):
    """What steer reads from features.duckdb before generating anything."""

    max_acts: dict[int, float]
    targets: dict[int, str]
    cases: dict[str, list[StudyCase]]
    done: set


def _plan(cfg: SteerConfig, data: Path) -> _Plan:
    """Each feature's target concept, the studies to steer per concept, the rows already done."""
    con = db.connect(cfg.run)
    try:
        db.require_tables(con, ("feature_stats", "feature_concepts", "study_labels"), cfg.run)
        max_acts = dict(con.execute("SELECT feature, max_act FROM feature_stats").fetchall())
        targets = {f: target_concept(con, f, cfg.concept) for f in cfg.feature}
        cases = {
            concept: pick_studies(con, data, concept, cfg.n_studies, cfg.select, cfg.split)
            for concept in set(targets.values())
        }
        done = set() if cfg.overwrite else existing_keys(con)
    finally:
        con.close()
    return _Plan(max_acts, targets, cases, done)


def _record_and_summarise(cfg: SteerConfig, plan: _Plan, started, notes: list[str]) -> list[dict]:
    """Write steer's runs row, then summarise the stored rows of every (feature, scale)."""
    summaries = []
    with db.rewrite(cfg.run) as con:
        db.insert_run_row(con, db.run_row("steer", started, cfg, notes))
        for feature in cfg.feature:
            concept = plan.targets[feature]
            ids = [c.study_id for c in plan.cases[concept]]
            for scale in cfg.scale:
                rows = stored_rows(con, feature, scale, concept, cfg, ids)
                summaries.append(summarise(feature, scale, concept, rows))
    return summaries


def format_summaries(summaries: list[dict]) -> str:
    """The per-(feature, scale) rates as an aligned text table."""
    head = ("feature", "scale", "concept", "n", "base_mention", "steer_mention", "base_pos")
    head += ("steer_pos", "changed")
    cells = [list(head)]
    for s in summaries:
        cells.append([f"{s[k]:.2f}" if isinstance(s[k], float) else str(s[k]) for k in head])
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def demo_step(
    run: Path,
    scales: tuple[float, ...] = (0.0, 4.0, 8.0),
    n_studies: int = 4,
    top: int = 2,
    max_new_tokens: int = 80,
) -> str:
    """The demo's steering step: the best feature of the ``top`` recovered phantom concepts.

    Uses ``concept_recovery`` (analyse), so each steered feature has a known meaning; the
    summary says how often steering made an absent concept appear.
    """
    con = db.connect(run)
    try:
        picks = con.execute(
            "SELECT concept, best_feature FROM concept_recovery WHERE recovered "
            "AND category IN ('finding', 'device') ORDER BY auroc DESC, concept LIMIT ?",
            [top],
        ).fetchall()
    finally:
        con.close()
    if not picks:
        return "no recovered finding/device feature to steer"
    summaries = []
    for concept, feature in picks:
        cfg = SteerConfig(run=Path(run), feature=(int(feature),), scale=scales, concept=concept)
        cfg.n_studies, cfg.max_new_tokens = n_studies, max_new_tokens
        summaries += run_steer(cfg)
    return format_summaries(summaries)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(SteerConfig, argv, prog="python -m workbench.steer")
    try:
        summaries = run_steer(cfg)
    except (SteeringError, FileNotFoundError, ValueError) as err:
        print(f"steer: error: {err}")
        return 1
    print(format_summaries(summaries))
    return 0


__all__ = ["SteerConfig", "concept_value", "demo_step", "format_summaries", "main", "run_steer"]

if __name__ == "__main__":
    raise SystemExit(main())
