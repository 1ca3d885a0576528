"""The steer stage's configuration (``python -m workbench steer --help`` prints it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workbench.run import RunLayout
from workbench.steer.evaluate import DEFAULT_METHODS, DIRECTIONS, METHODS, SCALE_UNIT
from workbench.steer.image import CURRENT_SECTIONS, IMAGE_HOOK, IMAGE_SECTIONS
from workbench.steer.intervene import parse_positions, positions_name
from workbench.steer.report import Limits
from workbench.store import KINDS


@dataclass
class SteerConfig:
    """Steer findings generation towards / away from concepts and measure it against peers."""

    run: Path = Path("runs/demo")
    """Run directory (features.duckdb, model/, sae/, activations/, phantom/)."""
    site: Literal["image", "layer"] = "image"
    """Where steering acts. image: the image-token embeddings (projector output), with patch
    maps (docs/steering.md); the SAE, store and database are the run's nested image-token
    run <run>/image-tokens, which also receives the results. layer: the residual stream at
    the SAE's hook of <run> (the recorded block), at --positions."""
    image_sections: tuple[str, ...] = CURRENT_SECTIONS
    """site image: the images steered (current_frontal, current_lateral, prior_frontal)."""
    concepts: tuple[str, ...] = ()
    """Target concepts (comma-separated); empty: every phantom finding and device analysed."""
    feature: tuple[int, ...] = ()
    """SAE features steered together instead of the chosen candidates (one concept only)."""
    n_candidates: int = 8
    """Candidate features per concept, steered together (see the printed candidate rule)."""
    min_auroc: float = 0.75
    """A candidate feature's least study-level AUROC for its concept."""
    candidate_rule: Literal["meaning", "exclusive", "gap"] = "meaning"
    """How candidates are chosen. meaning: from the analysis (AUROC >= --min-auroc, features
    that mean the concept first, then by AUROC). exclusive: the same, keeping only features
    whose AUROC is highest for this concept among the judged findings and devices. gap (site
    image only): the features carrying the largest share of the concept's adjusted image gap
    (docs/steering.md)."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """sae (SAE features), dim (difference of means), prompt (concept named in INDICATION),
    counterfactual (the concept drawn into the phantom image: a phantom run's reference),
    random (site image: random patch maps of dim's and of the SAE map's norm at every patch,
    the null control that measures how often any push of that size flips other concepts)."""
    directions: tuple[str, ...] = DIRECTIONS
    """add: studies without the concept, make it appear; remove: studies with it, remove it."""
    strengths: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    """Strength magnitudes swept (remove uses them negated). site image: in adjusted gaps (the
    patch map); site layer: sae in --unit, dim in mean differences."""
    image_unit: Literal["adjusted_map", "along_dim"] = "adjusted_map"
    """site image: unit of SAE strengths. adjusted_map: 1 moves each feature by its own
    adjusted gap; along_dim: that map rescaled to push as far along the concept's
    difference-of-means map as dim's strength 1 (equal push; workbench/steer/maps.py)."""
    orthogonal: bool = False
    """site image: steer along the part of each concept's map (dim, SAE and their null
    control) orthogonal to every other concept's difference-of-means map, the steered images'
    patches taken as one vector: the push then moves no other concept's mean gap
    (workbench/steer/maps.py)."""
    unit: Literal["max_act", "mean_act", "raw"] = "max_act"
    """site layer: unit of SAE strengths: the feature's largest or mean (when firing)
    activation, or raw."""
    mode: Literal["add", "clamp"] = "add"
    """SAE method: add strength x unit x W_dec[f], or clamp the feature to strength x unit
    (remove then also tries 0: ablation). site image: add the SAE map, or clamp: scale each
    candidate feature's own activation at every image token by 1 + strength (remove: 1
    ablates, above 1 reverses; unit own_act)."""
    positions: str = "image"
    """site layer: steered positions: all, image, prompt, generated, or kinds joined by '+'
    (site image: the image tokens of --image-sections)."""
    dim_tokens: tuple[str, ...] = ()
    """Token kinds pooled per study for the difference of means (empty: every stored kind)."""
    n_studies: int = 10
    """Held-out studies per concept and direction."""
    split: str | None = "test"
    """Split the held-out studies come from (empty: every study of --data; the difference of
    means never uses the evaluated studies)."""
    model: str | None = None
    """Model directory or name; empty: <run>/model."""
    sae: Path | None = None
    """SAE artefact; empty: <run>/sae."""
    store: Path | None = None
    """Activation store for the difference of means; empty: <run>/activations."""
    data: Path | None = None
    """Dataset root in MIMIC-CXR layout; empty: <run>/phantom."""
    max_new_tokens: int = 120
    """Tokens generated per report."""
    batch_size: int = 32
    """Reports generated together in one batched call (a study's baseline and its steered
    reports share it); 1: one at a time. The texts do not depend on it."""
    device: str = "cpu"
    """torch device of the model and SAE."""
    overwrite: bool = False
    """Recompute results already stored for the same arm and study."""
    write_every_s: float = 60.0
    """Store the rows generated so far at most this often (each write rewrites the database
    file; an interrupted run keeps what it made and a rerun resumes)."""
    report: bool = False
    """Only print the comparison table from the stored results (nothing is generated)."""
    max_side_effects: float = 0.10
    """Operating point: largest share of studies where another finding/device flipped."""
    max_ppl_ratio: float = 1.5
    """Operating point: largest steered/baseline perplexity ratio (unsteered model)."""
    max_degenerate: float = 0.0
    """Operating point: largest share of reports that repeat themselves or stop parsing."""
    side_effects_over_null: bool = False
    """Operating point: count SAE and dim side effects above those of the null control (method
    random: a random map of the same norm and strength), where it was run."""

    def validate(self) -> None:
        if min(self.n_studies, self.max_new_tokens, self.n_candidates, self.batch_size) <= 0:
            raise ValueError(
                "n_studies, max_new_tokens, n_candidates and batch_size must be positive"
            )
        for name, values, allowed in (
            ("methods", self.methods, METHODS),
            ("directions", self.directions, DIRECTIONS),
            ("dim_tokens", self.dim_tokens, KINDS),
        ):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"{name}: {bad} not in {allowed}")
        if any(s < 0 for s in self.strengths):
            raise ValueError("strengths are magnitudes (>= 0); direction 'remove' negates them")
        if self.feature and len(self.concepts) != 1:
            raise ValueError("--feature steers one concept: give exactly one --concepts")
        parse_positions(self.positions)
        if self.candidate_rule == "gap" and (self.site != "image" or self.feature):
            raise ValueError("candidate_rule gap needs site image and no --feature")
        if "random" in self.methods and self.site != "image":
            raise ValueError("method random is a site-image control (random patch maps)")
        if self.image_unit != "adjusted_map" and self.site != "image":
            raise ValueError("image_unit applies at site image (site layer: --unit)")
        if self.orthogonal and self.site != "image":
            raise ValueError("orthogonal applies to site image's patch maps")
        if self.site == "image":
            if positions_name(self.positions) != "image":
                raise ValueError(
                    "site image steers the image tokens: positions must be image (other "
                    "positions need --site layer)"
                )
            if self.mode == "clamp" and self.image_unit != "adjusted_map":
                raise ValueError("site image, mode clamp has its own unit (own_act): no image_unit")
            bad = [s for s in self.image_sections if s not in IMAGE_SECTIONS]
            if bad or not self.image_sections:
                raise ValueError(f"image_sections: {bad or '(none)'} not in {IMAGE_SECTIONS}")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_side_effects, self.max_ppl_ratio, self.max_degenerate,
                      self.side_effects_over_null)  # fmt: skip

    @property
    def variant(self) -> str:
        """Settings that change the text but are not columns of ``steering_results``."""
        if self.site == "image":
            return (f"max_new_tokens={self.max_new_tokens};site={IMAGE_HOOK};"
                    f"sections={'+'.join(self.image_sections)}")  # fmt: skip
        return f"max_new_tokens={self.max_new_tokens}"

    @property
    def map_variant(self) -> str:
        """The variant of arms that steer with patch maps (sae, dim, random): ``variant`` and,
        with ``orthogonal``, ``maps=orthogonal`` (other maps, other arms)."""
        return f"{self.variant};maps=orthogonal" if self.orthogonal else self.variant

    @property
    def sae_variant(self) -> str:
        """The variant of SAE arms: ``map_variant`` and, under the gap rule, the rule (its
        feature sets are other arms than the meaning rule's, even where the features
        coincide)."""
        if self.candidate_rule == "gap":
            return f"{self.map_variant};candidates=gap"
        return self.map_variant

    @property
    def sae_unit(self) -> str:
        """The unit column of SAE arms."""
        if self.site == "image":
            return SCALE_UNIT if self.mode == "clamp" else self.image_unit
        return self.unit

    @property
    def site_run(self) -> Path:
        """The run whose SAE, store and database steering uses (and writes results to)."""
        return RunLayout(self.run).image_tokens if self.site == "image" else Path(self.run)

    @property
    def dim_variant(self) -> str:
        if self.site == "image":
            return self.map_variant
        return f"{self.variant};dim_tokens={'+'.join(self.dim_tokens) or 'all'}"
