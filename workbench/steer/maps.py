"""The patch maps a site-image evaluation steers with, fitted once per run.

Both methods' maps come from one estimator (:func:`workbench.steer.image.patch_regression`)
on the stored studies outside the evaluated ones: the difference of means regresses the
residual, the SAE method its candidate features' activations, decoded. Two SAE strength units:

- ``adjusted_map``: strength 1 moves each candidate feature by its own adjusted gap, so the
  map carries only the part of the concept's gap the candidates span (their *share*,
  :mod:`workbench.steer.gap`; 0.18-0.59 for the 32 best by AUROC on the shipped demo);
- ``along_dim``: the same map divided by that share, so strength 1 moves the image tokens as
  far along the difference-of-means map ``D`` as dim's strength 1 does:
  ``<s x map, D> / |D|^2 = s``. The two methods then push equally hard along the concept and
  differ only in the direction the push takes (equal push, a fair comparison of bases).

The null control ``random`` (:func:`random_like`) has, per concept, one map with dim's norm
at every patch and one with the SAE map's: random directions, the same size of push.

With ``orthogonal`` every map keeps only its part orthogonal to the other concepts'
difference-of-means maps (:func:`orthogonal_to`, the steered images' patches as one vector).
On the demo the concepts' maps overlap (cosine 0.45-0.63 between consolidation, nodule and rib
fracture), so pushing one concept pushes the others' mean gaps along with it; the orthogonal
part moves none of them. Measured on maira2-mini it steered fewer concepts at no lower side
effects (benchmarks/RESULTS.md, "Ablation, exclusive features, orthogonal maps").
"""

from __future__ import annotations

import zlib
from functools import partial

import torch

from workbench.run import RunLayout
from workbench.steer import gap
from workbench.steer.image import IMAGE_HOOK, latent_transform, patch_regression, sae_map
from workbench.steer.intervene import SteeringError
from workbench.store import ActivationStore


def projection(maps: dict[str, torch.Tensor], onto: dict[str, torch.Tensor]) -> float:
    """``<maps, onto> / |onto|^2`` over the sections both have (0 when ``onto`` is zero)."""
    norm2 = sum(float((m.float() ** 2).sum()) for m in onto.values())
    dot = sum(float((maps[s].float() * m.float()).sum()) for s, m in onto.items() if s in maps)
    return dot / norm2 if norm2 > 0 else 0.0


def along(maps: dict[str, torch.Tensor], dim_maps: dict[str, torch.Tensor], concept: str) -> dict:
    """``maps`` rescaled so that their projection on ``dim_maps`` is 1 (unit ``along_dim``)."""
    share = projection(maps, dim_maps)
    if share <= 0:
        raise SteeringError(
            f"{concept}: the features' map does not point along the concept's gap "
            f"(share {share:.3g}); no along_dim map"
        )
    return {s: m / share for s, m in maps.items()}


def orthogonal_to(
    maps: dict[str, torch.Tensor], others: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``maps`` minus its projection on the span of ``others``, every section of ``maps``
    flattened into one vector (a section missing from another map counts as zero there)."""
    sections = sorted(maps)

    def flat(m: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [m[s] if s in m else torch.zeros_like(maps[s]) for s in sections]
        return torch.cat([p.float().flatten() for p in parts])

    v = flat(maps)
    basis = [flat(o) for o in others if any(s in o for s in sections)]
    if basis:  # an orthonormal basis of their span (SVD: a zero or repeated map adds nothing)
        u, sv, _ = torch.linalg.svd(torch.stack(basis, dim=1), full_matrices=False)
        q = u[:, sv > sv.max() * 1e-6] if sv.max() > 0 else u[:, :0]
        v = v - q @ (q.T @ v)
    out, start = {}, 0
    for s in sections:
        n = maps[s].numel()
        out[s] = v[start : start + n].reshape(maps[s].shape)
        start += n
    return out


def _orthogonal(dim, concept: str, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``maps`` of ``concept`` orthogonal to every other covariate's dim map (``dim``: the
    residual's patch regression)."""
    others = []
    for other in dim.concepts:
        if other != concept:
            try:
                others.append(dim.concept_map(other, skip_unseen=True))
            except SteeringError:  # no study with it in the fit: it has no map
                continue
    return orthogonal_to(maps, others)


def random_like(maps: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random map with the norm of ``maps`` at every patch (the null control ``random``):
    each patch's vector a Gaussian direction, scaled to that patch's norm in ``maps``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for section in sorted(maps):
        m = maps[section].float()
        r = torch.randn(m.shape, generator=gen)
        out[section] = r * (m.norm(dim=-1, keepdim=True) / r.norm(dim=-1, keepdim=True))
    return out


def _seed(concept: str, offset: int = 0) -> int:
    """The null control's seed: from the concept's name, so a rerun draws the same maps."""
    return zlib.crc32(concept.encode()) + offset


def labels_by_study(by_concept: dict[str, dict[int, int]]) -> dict[int, dict[str, int]]:
    """concept -> study -> label, turned into study -> concept -> label (the patch regression's
    input: each study's covariates)."""
    out: dict[int, dict[str, int]] = {}
    for concept, values in by_concept.items():
        for sid, value in values.items():
            out.setdefault(sid, {})[concept] = value
    return out


def _fits(cfg, plan):
    """``fit(transform=None)``: the per-patch regression of the run's image-token store on the
    studies outside every evaluated case."""
    store = ActivationStore(cfg.store or RunLayout(cfg.site_run).activations)
    if store.hook_name != IMAGE_HOOK:
        raise SteeringError(f"{store.path} holds {store.hook_name}; site image needs {IMAGE_HOOK}")
    held_out = {case.study_id for cases in plan.cases.values() for case in cases}
    studies = labels_by_study(plan.labels)
    return partial(patch_regression, store, studies, plan.covariates, held_out, cfg.image_sections)


def image_maps_for(cfg, plan, sae) -> tuple[dict, list[str], list]:
    """Site image: (method, concept) -> section -> ``[P, D]`` patch map, the notes, and the SAE
    candidates steered (the gap rule re-chooses them from the same fits). The null control
    has one map matched to dim's, ``("random", concept)``, and one to the SAE map's norm,
    ``("random", concept, features)``."""
    if cfg.site != "image" or not plan.candidates:
        return {}, [], plan.candidates
    fit = _fits(cfg, plan)
    by_gap, along_dim = cfg.candidate_rule == "gap", cfg.image_unit == "along_dim"
    out, notes, candidates = {}, [], plan.candidates
    null = "random" in cfg.methods
    needs_dim = "dim" in cfg.methods or by_gap or along_dim or null or cfg.orthogonal
    dim = fit() if needs_dim else None
    final = partial(_orthogonal, dim) if cfg.orthogonal else lambda c, m: m
    if "dim" in cfg.methods or null:
        dim_maps = _maps_of(dim, candidates, "dim", lambda c, m: final(c.concept, m), notes)
        out |= dim_maps if "dim" in cfg.methods else {}
        if null:
            for (_, concept), maps in dim_maps.items():
                out[("random", concept)] = random_like(maps, _seed(concept))
    if "sae" in cfg.methods and (cfg.mode == "add" or by_gap):  # clamp scales, no SAE map
        every = range(sae.W_dec_FD.shape[0])
        union = list(every) if by_gap else sorted({f for c in candidates for f in c.features})

        def decode(c, latent):
            cols = [union.index(f) for f in c.features]
            maps = sae_map({s: m[:, cols] for s, m in latent.items()}, sae, c.features)
            if along_dim:
                maps = along(maps, dim.concept_map(c.concept, skip_unseen=True), c.concept)
            return final(c.concept, maps)

        with torch.no_grad():
            latent = fit(transform=latent_transform(sae, union))
        if by_gap:
            concepts = [c.concept for c in candidates]
            candidates = gap.choose_by_gap(dim, latent, sae.W_dec_FD, concepts, cfg.n_candidates)
        if cfg.mode == "add":
            out |= _maps_of(latent, candidates, "sae", decode, notes)
        if null:  # the SAE maps' own null: their norm at every patch
            for c in candidates:
                if ("sae", c.concept) in out:
                    sae_maps = out[("sae", c.concept)]
                    seed = _seed(c.concept, 1)
                    out[("random", c.concept, c.features)] = random_like(sae_maps, seed)
    return out, notes, candidates


def _maps_of(reg, candidates, method: str, make, notes: list[str]) -> dict:
    out = {}
    for c in candidates:
        try:
            out[(method, c.concept)] = make(c, reg.concept_map(c.concept))
        except SteeringError as err:
            notes.append(f"{method}: {err}")
    return out
