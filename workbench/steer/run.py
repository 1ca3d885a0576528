"""``python -m workbench steer``: does steering make the findings say what it should, at what cost?

For every target concept with a candidate feature (:mod:`workbench.steer.candidates`), on
held-out studies *without* the concept (``add``) and *with* it (``remove``), the unsteered and
the steered findings are generated for a sweep of strengths and judged
(:mod:`workbench.steer.metrics`): success, side effects, fluency (repeated n-grams, perplexity
under the unsteered model) and whether the findings still parse. The same studies are steered
by the peers (:mod:`workbench.steer.peers`): the difference-of-means direction and the concept
named in the INDICATION. Rows go to ``steering_results`` (at most every ``--write-every-s``
and when the run ends or is interrupted; a rerun resumes); the
command prints the candidates, every arm's rates and the comparison at each method's operating
point (:mod:`workbench.steer.report`). ``--report`` prints the comparison from stored rows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

from workbench import db
from workbench.config import ConfigError, parse_config, save_config
from workbench.run import RunLayout
from workbench.steer import candidates as cand
from workbench.steer import gap
from workbench.steer.config import SteerConfig
from workbench.steer.counterfactual import Counterfactuals
from workbench.steer.evaluate import (
    IMAGE_UNITS,
    Arm,
    Case,
    Evaluator,
    existing_keys,
    pick_cases,
    write_rows,
)
from workbench.steer.held import format_held_back
from workbench.steer.intervene import SteeringError, positions_name
from workbench.steer.maps import image_maps_for
from workbench.steer.peers import Direction, dim_direction, study_means
from workbench.steer.report import (
    format_null,
    format_report,
    format_side_effects,
    format_side_effects_by_study,
    format_sweep,
    latest_feature_sets,
    load_rows,
)
from workbench.steer.report import summarise as summarise_rows
from workbench.store import KINDS

log = logging.getLogger("workbench.steer")


class Plan(NamedTuple):
    """What steer reads before generating anything."""

    candidates: list[cand.Candidate]
    notes: list[str]
    typical: dict[int, float | None]
    cases: dict[tuple[str, str], list[Case]]
    labels: dict[str, dict[int, int]]
    """concept -> study -> 0/1, the stored studies outside the held-out split."""
    done: set
    covariates: tuple[str, ...] = ()
    """The concepts a patch map is adjusted for (site image): every labelled target concept."""
    counterfactuals: Counterfactuals | None = None
    """The phantom re-renderer of the data, when it is a phantom root."""


def _candidates(con, cfg: SteerConfig) -> tuple[list[cand.Candidate], list[str]]:
    concepts = list(cfg.concepts) or cand.default_concepts(con)
    if cfg.feature:
        (concept,) = concepts
        return [cand.Candidate(concept, tuple(cfg.feature), float("nan"), None, None, False)], []
    exclusive = cfg.candidate_rule == "exclusive"
    return cand.choose(con, concepts, cfg.n_candidates, cfg.min_auroc, exclusive=exclusive)


def _records(cfg: SteerConfig, data: Path) -> tuple[list, dict | None]:
    """The held-out studies (reader order) and the phantom ground truth when there is one."""
    from workbench.cxr.studies import iter_studies
    from workbench.models.mini.eval import read_phantom_labels

    records = list(iter_studies(data, split=cfg.split, require_findings=False))
    phantom = read_phantom_labels(data) if (data / "phantom-labels.csv").is_file() else None
    return records, phantom


def training_labels(con, concept: str, split: str | None) -> dict[int, int]:
    """Stored studies' 0/1 labels of ``concept``, outside the held-out split."""
    sql = (
        "SELECT l.study_id, l.value FROM study_labels l LEFT JOIN studies s USING (study_id) "
        "WHERE l.concept = ? AND l.value IN (0, 1)"
    )
    params: list = [concept]
    if split is not None:
        sql += " AND (s.split IS NULL OR s.split <> ?)"
        params.append(split)
    return {int(sid): int(v) for sid, v in con.execute(sql, params).fetchall()}


def _require_site_run(cfg: SteerConfig) -> None:
    """A clear error when the image-token run that site image needs was never made."""
    if cfg.site == "image" and not db.db_path(cfg.site_run).is_file():
        raise FileNotFoundError(
            f"{cfg.site_run}: no image-token run (site image steers with its SAE and store); "
            f"`python -m workbench demo --run {cfg.run}` makes it, or record --hook "
            f"vision.hook_projector_out --image-tokens all --run {cfg.site_run}, then "
            f"train-sae and analyse there; --site layer steers the recorded block instead"
        )


def make_plan(cfg: SteerConfig, data: Path) -> Plan:
    """Candidates, typical activations, held-out cases and training labels per concept."""
    _require_site_run(cfg)
    con = db.connect(cfg.site_run)
    try:
        db.require_tables(con, ("feature_stats", "feature_concepts", "concepts"), cfg.site_run)
        chosen, notes = _candidates(con, cfg)
        column = "max_act" if cfg.unit == "raw" else cfg.unit
        typical = dict(con.execute(f"SELECT feature, {column} FROM feature_stats").fetchall())
        covariates = tuple(dict.fromkeys([*cand.default_concepts(con),
                                          *(c.concept for c in chosen)]))  # fmt: skip
        wanted = covariates if cfg.site == "image" else [c.concept for c in chosen]
        labels = {c: training_labels(con, c, cfg.split) for c in wanted}
        done = set() if cfg.overwrite else existing_keys(con)
    finally:
        con.close()
    records, phantom = _records(cfg, data)
    cases = {
        (c.concept, d): pick_cases(records, c.concept, d, cfg.n_studies, phantom)
        for c in chosen
        for d in cfg.directions
    }
    counterfactuals = None
    if "counterfactual" in cfg.methods:
        if Counterfactuals.available(data):
            counterfactuals = Counterfactuals(data)
        else:
            notes.append(f"counterfactual skipped: {data} is not a phantom root")
    return Plan(chosen, notes, typical, cases, labels, done, covariates, counterfactuals)


def directions_for(
    cfg: SteerConfig, plan: Plan, d_model: int | None
) -> tuple[dict[str, Direction], list[str]]:
    """Difference-of-means directions of the concepts (held-out studies excluded)."""
    if "dim" not in cfg.methods or not plan.candidates:
        return {}, []
    store = Path(cfg.store or RunLayout(cfg.run).activations)
    means = study_means(store, cfg.dim_tokens or KINDS)
    if d_model is not None and means.means.shape[1] != d_model:
        return {}, [
            f"difference of means skipped: the store {store} is {means.means.shape[1]} wide, "
            f"the model's residual stream {d_model}"
        ]
    out, notes = {}, []
    for c in plan.candidates:
        held_out = {case.study_id for d in cfg.directions for case in plan.cases[(c.concept, d)]}
        try:
            out[c.concept] = dim_direction(means, plan.labels[c.concept], held_out, c.concept)
        except SteeringError as err:
            notes.append(str(err))
    return out, notes


def arms(cfg: SteerConfig, plan: Plan, directions: dict[str, Direction]) -> list[Arm]:
    """Every arm of the evaluation, concept by concept (site image: ``directions`` holds the
    concepts that have a difference-of-means patch map)."""
    where = positions_name(cfg.positions)
    image = cfg.site == "image"
    sae_unit = cfg.sae_unit
    dim_unit = IMAGE_UNITS["dim"] if image else "mean_diff"
    out = []
    for c in plan.candidates:
        for d in cfg.directions:
            sign = 1.0 if d == "add" else -1.0
            strengths = [sign * s for s in cfg.strengths]
            ablation = cfg.mode == "clamp" and cfg.site == "layer"  # image: strength 1 ablates
            if d == "remove" and ablation and 0.0 not in strengths:
                strengths.insert(0, 0.0)  # clamp to zero: ablation
            if "sae" in cfg.methods:
                arm = Arm("sae", c.concept, d, c.features, 0.0, sae_unit, cfg.mode, where,
                          cfg.sae_variant)  # fmt: skip
                out += [arm._replace(strength=s) for s in strengths]
            if "dim" in cfg.methods and c.concept in directions:
                out += [
                    Arm("dim", c.concept, d, (), sign * s, dim_unit, "add", where,
                        cfg.dim_variant)
                    for s in cfg.strengths
                ]  # fmt: skip
            if "random" in cfg.methods and c.concept in directions:
                out += _null_arms(cfg, c, d, where)
            if "prompt" in cfg.methods:
                out.append(Arm("prompt", c.concept, d, (), sign, "prompt", "prompt", "prompt",
                               cfg.variant))  # fmt: skip
            if "counterfactual" in cfg.methods and plan.counterfactuals is not None:
                out.append(Arm("counterfactual", c.concept, d, (), sign, "image", "render",
                               "image", cfg.variant))  # fmt: skip
    return out


def _null_arms(cfg: SteerConfig, c: cand.Candidate, d: str, where: str) -> list[Arm]:
    """The null control's arms: a random map of dim's norm (no features) and, with the SAE
    method, one of the SAE map's norm (its features; variant ``null_of=<sae unit>``)."""
    sign, unit = (1.0 if d == "add" else -1.0), IMAGE_UNITS["random"]
    out = [Arm("random", c.concept, d, (), sign * s, unit, "add", where, cfg.map_variant)
           for s in cfg.strengths]  # fmt: skip
    if "sae" in cfg.methods and cfg.mode == "add":  # clamp at site image has no SAE map
        out += [Arm("random", c.concept, d, c.features, sign * s, unit, "add", where,
                    null_variant(cfg)) for s in cfg.strengths]  # fmt: skip
    return out


def null_variant(cfg: SteerConfig) -> str:
    """The variant of the null arms matched to the SAE maps (their unit changes their norm)."""
    return f"{cfg.sae_variant};null_of={cfg.sae_unit}"


def _load(cfg: SteerConfig):
    from workbench.models.registry import load_model
    from workbench.sae import load_sae

    adapter = load_model(cfg.model or RunLayout(cfg.run).model, device=cfg.device)
    sae = load_sae(cfg.sae or RunLayout(cfg.site_run).sae, device=cfg.device)
    return adapter, sae


def run_steer(cfg: SteerConfig) -> str:
    """Evaluate every arm of ``cfg`` (resuming), record the run; returns the printed text."""
    started = db.utc_now()
    data = Path(cfg.data or RunLayout(cfg.run).phantom)
    plan = make_plan(cfg, data)
    save_config(cfg, RunLayout.cfg(RunLayout(cfg.site_run).steering))
    adapter, sae = _load(cfg) if plan.candidates else (None, None)
    maps, map_notes, candidates = image_maps_for(cfg, plan, sae)
    plan = plan._replace(candidates=candidates)
    if cfg.site == "image":
        directions = {key[1]: None for key in maps if key[0] in ("dim", "random")}
        dim_notes = map_notes
    else:
        directions, dim_notes = directions_for(cfg, plan, adapter.d_model if adapter else None)
    notes = plan.notes + dim_notes
    todo = arms(cfg, plan, directions)
    evaluator = Evaluator(adapter, sae, cfg.max_new_tokens, plan.typical, directions,
                          batch_size=cfg.batch_size, image_maps=maps,
                          counterfactuals=plan.counterfactuals,
                          image_sections=cfg.image_sections)  # fmt: skip
    pairs = [(arm, case) for arm in todo for case in plan.cases[(arm.concept, arm.direction)]
             if arm.key(case.study_id) not in plan.done]  # fmt: skip
    chunks = evaluator.chunks(pairs)
    pending: list[dict] = []
    last_write, made = time.monotonic(), 0
    try:
        for chunk in chunks:
            pending += evaluator.run_chunk(chunk)
            made += len(chunk)
            log.info("%d/%d steered reports", made, len(pairs))
            if time.monotonic() - last_write >= cfg.write_every_s:
                write_rows(cfg.site_run, pending, replace=cfg.overwrite)
                pending, last_write = [], time.monotonic()
    finally:  # an interrupted run keeps what it generated; a rerun resumes from there
        write_rows(cfg.site_run, pending, replace=cfg.overwrite)
    for (concept, direction), cases in plan.cases.items():
        if not cases:
            notes.append(f"{concept} ({direction}): no held-out study in split {cfg.split}")
    with db.rewrite(cfg.site_run) as con:
        db.insert_run_row(con, db.run_row("steer", started, cfg, notes))
    rule = (gap.RULE if cfg.candidate_rule == "gap" else cand.RULE).format(
        min_auroc=cfg.min_auroc, min_selectivity=0.9, min_pointing=0.8, n=cfg.n_candidates
    ) + (cand.EXCLUSIVE if cfg.candidate_rule == "exclusive" else "")
    head = [rule, cand.describe(plan.candidates), *(f"note: {n}" for n in notes)]
    studies = {key: {c.study_id for c in cases} for key, cases in plan.cases.items()}
    return "\n".join([*head, "", summary_text(cfg, todo, studies)])


def summary_text(
    cfg: SteerConfig,
    todo: list[Arm] | None = None,
    studies: dict[tuple[str, str], set[int]] | None = None,
) -> str:
    """The sweep and the comparison table from stored rows: of ``todo``'s arms (and, given
    ``studies``, only their (concept, direction)'s held-out studies: rows an earlier, larger
    run stored are left out) when given, else of every stored row made with ``cfg``'s
    settings (``--report``)."""
    con = db.connect(cfg.site_run)
    try:
        rows = load_rows(con)
    finally:
        con.close()
    older = 0
    if todo is not None:
        wanted = {(a.method, a.concept, a.direction, a.features, a.unit, a.mode, a.positions,
                   a.variant, float(a.strength)) for a in todo}  # fmt: skip
        rows = [r for r in rows if _arm_of(r) in wanted]
        if studies is not None:
            held = {(c, d, sid) for (c, d), ids in studies.items() for sid in ids}
            rows = [r for r in rows if (r["concept"], r["direction"], r["study_id"]) in held]
    else:
        rows, older = latest_feature_sets([r for r in rows if _same_settings(cfg, r)])
    if not rows:
        return "no steering results stored yet"
    summaries = summarise_rows(rows)
    parts = [f"left out: {older} rows of SAE feature sets stored before the last"] if older else []
    parts += [format_sweep(summaries), "", format_report(summaries, cfg.limits)]
    held = format_held_back(rows, summaries, cfg.limits)
    parts += ["", held] if held else []
    null = format_null(summaries)
    parts += ["", null] if null else []
    by_study = format_side_effects_by_study(rows)
    return "\n".join([*parts, "", format_side_effects(rows), "", by_study])


def _same_settings(cfg: SteerConfig, r: dict) -> bool:
    """Whether a stored row was made with ``cfg``'s unit, mode, positions and variant."""
    if cfg.concepts and r["concept"] not in cfg.concepts:
        return False
    if r["method"] not in cfg.methods or r["direction"] not in cfg.directions:
        return False
    where = positions_name(cfg.positions)
    if r["method"] == "sae":
        feats_ok = not cfg.feature or tuple(r["features"] or ()) == tuple(cfg.feature)
        return feats_ok and (r["unit"], r["mode"], r["positions"], r["variant"]) == (
            cfg.sae_unit, cfg.mode, where, cfg.sae_variant)  # fmt: skip
    if r["method"] == "dim":
        return (r["positions"], r["variant"]) == (where, cfg.dim_variant)
    if r["method"] == "random":
        return r["variant"] == (null_variant(cfg) if r["features"] else cfg.map_variant)
    return r["variant"] == cfg.variant


def _arm_of(r: dict) -> tuple:
    return (r["method"], r["concept"], r["direction"], tuple(r["features"] or ()), r["unit"],
            r["mode"], r["positions"], r["variant"], float(r["strength"]))  # fmt: skip


def demo_step(run: Path, n_studies: int = 3, top: int = 2, max_new_tokens: int = 80) -> str:
    """The demo's steering step at the default site (the image tokens): the ``top``
    best-recovered finding/device concepts of the image-token run, all peers."""
    cfg = SteerConfig(run=Path(run), strengths=(1.0, 2.0))
    con = db.connect(cfg.site_run)
    try:
        picks = con.execute(
            "SELECT concept FROM concept_recovery WHERE recovered "
            "AND category IN ('finding', 'device') ORDER BY auroc DESC, concept LIMIT ?",
            [top],
        ).fetchall()
    finally:
        con.close()
    if not picks:
        return "no recovered finding/device concept to steer"
    cfg.concepts = tuple(c for (c,) in picks)
    cfg.n_studies, cfg.max_new_tokens = n_studies, max_new_tokens
    return run_steer(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(SteerConfig, argv, prog="python -m workbench.steer")
        print(summary_text(cfg) if cfg.report else run_steer(cfg))
    except (SteeringError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"steer: error: {err}")
        return 1
    return 0


__all__ = ["SteerConfig", "demo_step", "main", "run_steer", "summary_text"]

if __name__ == "__main__":
    raise SystemExit(main())
