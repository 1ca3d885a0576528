"""The Steering tab's two sites; at the image site, SAE features' patch maps on the image tokens.

Site **image tokens (embeddings)** (the default when the run has ``<run>/image-tokens``) steers
where the decoder reads the image (docs/steering.md): each feature's slider adds strength x
its per-patch map to the image-token embeddings (``vision.hook_projector_out``) of the chosen
study while the findings are written. The features are those of the image-token SAE
(``<run>/image-tokens/sae``). A feature's map is the per-patch least-squares map of its concept
(the feature's best-AUROC concept among the run's concepts in that run's ``feature_concepts``),
fitted on the image-token store's labelled studies outside the test split and decoded through
the feature's decoder row (:func:`workbench.steer.image.feature_maps`, as ``steer --site
image`` does), so strength 1 moves the image tokens by one adjusted concept gap per patch.

Site **recorded block** is the run's SAE at its hook, at the chosen positions, add or clamp
(:mod:`workbench.ui.handlers_steer`). Pure functions over plain data; no Gradio import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

from workbench import db
from workbench.models.hooks import VISION_PROJECTOR
from workbench.run import RunLayout
from workbench.sae import load_sae
from workbench.steer.candidates import default_concepts
from workbench.steer.image import feature_maps, summed_steering
from workbench.steer.intervene import SteerOutput
from workbench.steer.maps import labels_by_study
from workbench.steer.run import training_labels
from workbench.ui.context import AppContext, open_context
from workbench.ui.live import LiveModel, baseline_and_steered

IMAGE_SITE = "image tokens (embeddings)"
BLOCK_SITE = "recorded block"
SITES = (IMAGE_SITE, BLOCK_SITE)
HELD_OUT_SPLIT = "test"
"""The split left out of the patch-map fit (``steer``'s default evaluation split)."""
STRENGTH_LABEL = {IMAGE_SITE: "strength (x adjusted map)", BLOCK_SITE: "strength (x max act)"}
"""The sliders' unit at each site."""


class SiteOptions(NamedTuple):
    """The site radio at tab start: its value, whether the image site can be chosen, why not."""

    value: str
    image_available: bool
    problem: str | None


class ImagePlan(NamedTuple):
    """What the image site's patch maps are fitted from (read from ``<run>/image-tokens``)."""

    concept_of: dict[int, str]
    """Feature of the image-token SAE -> the concept whose adjusted map it adds."""
    covariates: tuple[str, ...]
    """The concepts each map is adjusted for."""
    labels: dict[int, dict[str, int]]
    """Study -> concept -> 0/1, outside :data:`HELD_OUT_SPLIT`."""


def image_site_problem(run_dir: Path) -> str | None:
    """Why the image site cannot steer this run (None when ``<run>/image-tokens`` is whole)."""
    nested = RunLayout(run_dir).image_tokens
    parts = RunLayout(nested)
    missing = [
        what
        for what, there in (
            (f"an activation store of {VISION_PROJECTOR}", parts.activations / "manifest.json"),
            ("an SAE", parts.sae / "cfg.json"),
            ("an analysis (features.duckdb)", db.db_path(nested)),
        )
        if not there.is_file()
    ]
    if not missing:
        return None
    return (
        f"Steering at the image tokens needs {nested} (an activation store of the image-token "
        f"embeddings, its SAE and its analysis); it lacks {', '.join(missing)}. "
        f'`python -m workbench demo --run {run_dir}` builds it (step "image-token SAE"); by '
        f"hand: `python -m workbench record --hook {VISION_PROJECTOR} --image-tokens all "
        f"--data {RunLayout(run_dir).phantom} --run {nested}`, then `train-sae` and "
        f"`analyse` with `--run {nested}` (docs/steering.md). Until then the tab steers at "
        "the recorded block."
    )


def site_options(run_dir: Path) -> SiteOptions:
    """The image site by default when the run has ``<run>/image-tokens``, else the block only."""
    problem = image_site_problem(run_dir)
    return SiteOptions(BLOCK_SITE if problem else IMAGE_SITE, problem is None, problem)


def site_note(site: str, hook: str | None, problem: str | None = None) -> str:
    """Where the tab steers at ``site``, and what the site's controls mean."""
    if site == IMAGE_SITE:
        text = (
            f"This tab steers at the <b>image tokens</b> (<code>{VISION_PROJECTOR}</code>, the "
            "embeddings decoder block 0 reads, where the decoder reads the image): each feature "
            "of the image-token SAE (<code>&lt;run&gt;/image-tokens</code>) adds strength x its "
            "per-patch map (its concept's adjusted gap, fitted on the image-token store) to the "
            "study's image tokens. Positions and add/clamp apply to the recorded block only."
        )
        return f'<div class="wb-msg wb-info">{text}</div>'
    where = f"<code>{escape(hook)}</code>" if hook else "the SAE's hook"
    text = (
        f"This tab steers at the <b>recorded block</b> ({where}) with the run's SAE, at the "
        "positions chosen below. The decoder reads the image at the embeddings and block 0, "
        "so the image-token site is where adding a concept works (docs/steering.md)."
    )
    note = f'<div class="wb-msg wb-info">{text}</div>'
    if problem:
        note += f'<div class="wb-msg wb-warn">{escape(problem)}</div>'
    return note


def image_context(ctx: AppContext) -> AppContext:
    """The image-token run opened like the run (close it after use)."""
    return open_context(RunLayout(ctx.run_dir).image_tokens, limits=ctx.limits)


def image_plan(ctx: AppContext, features: Sequence[int]) -> ImagePlan:
    """Each feature's concept, the covariates and the training labels; ValueError naming the
    feature when it has no concept to map."""
    nested = RunLayout(ctx.run_dir).image_tokens
    con = db.connect(nested, True, ctx.limits.memory_limit, ctx.limits.threads)
    try:
        db.require_tables(con, ("feature_concepts", "concepts", "study_labels"), nested)
        covariates = tuple(default_concepts(con))
        rows = con.execute(
            "SELECT feature, arg_max(concept, auroc) FROM feature_concepts "
            "WHERE feature IN (SELECT unnest(?)) AND concept IN (SELECT unnest(?)) "
            "GROUP BY feature",
            [list(features), list(covariates)],
        ).fetchall()
        by_concept = {c: training_labels(con, c, HELD_OUT_SPLIT) for c in covariates}
    finally:
        con.close()
    concept_of = {int(f): str(c) for f, c in rows}
    for f in features:
        if f not in concept_of:
            raise ValueError(
                f"Feature {f} of the image-token SAE has no concept among "
                f"{list(covariates)} in {db.db_path(nested)} (feature_concepts), so it has no "
                "patch map."
            )
    return ImagePlan(concept_of, covariates, labels_by_study(by_concept))


def image_work(
    live: LiveModel,
    study: Any,
    strengths: Mapping[int, float],
    plan: ImagePlan,
    max_new_tokens: int,
    baseline: str | None,
):
    """The job at the image site: fit (once) and add the features' patch maps."""
    nested = RunLayout(RunLayout(live.run_dir).image_tokens)

    def work(adapter, _sae, monitor_for) -> SteerOutput:
        monitor_for("fitting the features' patch maps (once per feature set)", 0)
        sae = live.memo(("image-sae",), lambda: load_sae(nested.sae, device=live.device))
        key = ("image-maps", tuple(sorted(plan.concept_of.items())))
        maps = live.memo(key, lambda: feature_maps(nested.activations, sae, plan.concept_of,
                                                   plan.labels, plan.covariates))  # fmt: skip
        steering = summed_steering([(maps[f], s) for f, s in strengths.items()])
        return baseline_and_steered(adapter, study, steering, monitor_for,
                                    max_new_tokens=max_new_tokens, baseline=baseline)  # fmt: skip

    return work
