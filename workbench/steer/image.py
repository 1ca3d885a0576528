"""Steering where the decoder reads the image: the image-token embeddings (the projector output).

Why here (benchmarks/RESULTS.md, *Steering*): in maira2-mini the report positions take what
they need from the image tokens in the first two decoder blocks. Writing another study's
image-token residuals over a study's own changes its findings when written at the embeddings
(cardiomegaly 7/8, effusion 7/8, edema 8/8) and hardly at all from block 1 on (0-1/8), so an
image-side intervention acts on ``vision.hook_projector_out``, before block 0: the model then
"sees" the concept and its own reading machinery writes the text.

What is added is a **patch map**: one vector per image patch and image section (current
frontal, current lateral), ``[P, D]``, because a concept looks different at each place of the
image (a bigger heart border, fluid at the bases, a line along the mediastinum). A map is
estimated from an activation store at the projector (``record --hook
vision.hook_projector_out --image-tokens all``) by per-patch least squares over the studies'
concept labels (:func:`patch_regression`): for every section and patch,
``y(study, patch) ~ b0 + sum_c b_c label_c(study)``, so ``b_c`` is the with-minus-without gap of
concept c *adjusted for the other concepts* (a plain difference of means also carries the
concepts that co-occur: the endotracheal-tube gap brings enteric tubes and lines with it).

- **difference of means** (``dim``): ``b_c`` of the residual itself, ``[P, D]``;
- **SAE features** (``sae``): ``b_c`` of the chosen features' activations ``[P, K]``,
  decoded through their decoder rows: ``map = b_c W_dec[features]``. Both use the same
  estimator, so the comparison is the basis (the SAE's chosen features vs the whole residual).

Strength ``s`` adds ``s x map``: strength 1 moves the image tokens by one adjusted gap; a
negative strength pushes away from the concept. :class:`ImageSteeringHook` adds each row's
maps to that row's images inside a batched ``generate`` (the projector runs once per call,
images row-major over the batch, each row's images in ``image_index`` order); an unsteered
row's images are returned bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from workbench.models.hooks import VISION_PROJECTOR
from workbench.steer.hook import SteeringError
from workbench.store import ActivationStore, iter_study_sums

IMAGE_HOOK = VISION_PROJECTOR
"""The hook image-side steering acts at: the projector output = image-token embeddings."""
CURRENT_SECTIONS = ("current_frontal", "current_lateral")
"""The images of the study itself (the prior frontal belongs to an earlier study)."""
IMAGE_SECTIONS = (*CURRENT_SECTIONS, "prior_frontal")
"""Every image section of the reporting prompt."""


class FeatureScaling(NamedTuple):
    """SAE features' activations scaled by ``factor`` at every token of an image (0: ablated,
    below 0: reversed), through the SAE's decoder: ``x' = x + (factor - 1) z_F W_dec[F]``.
    What the SAE does not reconstruct, and every other feature, is left as it is; a feature
    that does not fire on a patch does not move it (site image, mode clamp)."""

    sae: Any
    features: tuple[int, ...]
    factor: float

    def delta(self, acts_PD: torch.Tensor) -> torch.Tensor:
        """What is added to ``[P, D]`` image tokens (the features' code, rescaled, decoded)."""
        sae, cols = self.sae, list(self.features)
        z_PF = sae.encode(acts_PD.to(sae.W_enc_DF.device))[:, cols]  # the SAE's own encoder
        return ((self.factor - 1.0) * z_PF) @ sae.W_dec_FD[cols]


class ImageSteering(NamedTuple):
    """One row's image-side intervention: section -> ``[P, D]`` added to that image's tokens,
    or the :class:`FeatureScaling` that computes it from them."""

    maps: Mapping[str, torch.Tensor | FeatureScaling]


class PatchRegression(NamedTuple):
    """Per-patch least-squares coefficients of every covariate concept."""

    concepts: tuple[str, ...]
    """The covariates, in coefficient order."""
    coef: dict[str, torch.Tensor]
    """Section -> ``[C, P, W]``: concept c's adjusted gap at each patch (W: width)."""
    n_studies: dict[str, int]
    """Section -> studies in its fit."""
    n_pos: dict[str, dict[str, int]]
    """Section -> concept -> studies with the concept in the fit."""

    def concept_map(self, concept: str, skip_unseen: bool = False) -> dict[str, torch.Tensor]:
        """Section -> ``[P, W]`` map of ``concept``. A section where no training study has the
        concept is an error, or with ``skip_unseen`` left out (that image is not steered)."""
        if concept not in self.concepts:
            raise SteeringError(f"{concept}: not among the regression's concepts")
        c = self.concepts.index(concept)
        out = {}
        for section, coef in self.coef.items():
            if self.n_pos[section][concept] == 0:
                if skip_unseen:
                    continue
                raise SteeringError(
                    f"{concept}: no training study with it has a {section} image in the store"
                )
            out[section] = coef[c]
        if not out:
            raise SteeringError(f"{concept}: no training study with it has an image in the store")
        return out


def image_steering(maps: Mapping[str, torch.Tensor], strength: float) -> ImageSteering:
    """``strength x map`` for every section of ``maps`` (float32)."""
    return ImageSteering({s: float(strength) * m.detach().float() for s, m in maps.items()})


def image_scaling(sae, features: Sequence[int], sections: Sequence[str], strength: float):
    """Every candidate feature's activation times ``1 + strength`` at each image of
    ``sections`` (remove: strength -1 ablates, below -1 reverses; add: amplifies)."""
    scaling = FeatureScaling(sae, tuple(int(f) for f in features), 1.0 + float(strength))
    return ImageSteering(dict.fromkeys(sections, scaling))


def sae_map(latent_map: Mapping[str, torch.Tensor], sae, features: Sequence[int]) -> dict:
    """Section -> ``[P, D]``: a ``[P, K]`` map of the features' activations, decoded."""
    index = torch.tensor(list(features), dtype=torch.long, device=sae.W_dec_FD.device)
    dirs_KD = sae.W_dec_FD[index].detach().float().cpu()
    return {s: m.float() @ dirs_KD for s, m in latent_map.items()}


def latent_transform(sae, features: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``[N, D]`` tokens -> ``[N, K]`` activations of ``features`` (a :func:`patch_regression`
    transform: the SAE features' adjusted maps, in ``features`` order)."""
    device = sae.W_dec_FD.device
    index = torch.tensor(list(features), dtype=torch.long, device=device)

    def encode(y_ND: torch.Tensor) -> torch.Tensor:
        return sae.encode(y_ND.to(device))[:, index].cpu()

    return encode


def feature_maps(
    store: str | ActivationStore,
    sae,
    concept_of: Mapping[int, str],
    labels: Mapping[int, Mapping[str, int]],
    covariates: Sequence[str],
    exclude: set[int] | frozenset[int] = frozenset(),
    sections: Sequence[str] = CURRENT_SECTIONS,
) -> dict[int, dict[str, torch.Tensor]]:
    """Feature -> section -> ``[P, D]``: each SAE feature's adjusted map of its concept
    (``concept_of``; one per-patch fit over ``covariates``), decoded (:func:`sae_map`).
    Strength 1 of a feature's map moves its activation by the concept's adjusted gap; a section
    where no training study has the concept gets no map (that image is left as it is)."""
    features = sorted(concept_of)
    concepts = list(dict.fromkeys([*covariates, *concept_of.values()]))
    with torch.no_grad():
        reg = patch_regression(store, labels, concepts, exclude, sections,
                               transform=latent_transform(sae, features))  # fmt: skip
    out = {}
    for k, f in enumerate(features):
        latent = reg.concept_map(concept_of[f], skip_unseen=True)
        out[f] = sae_map({s: m[:, [k]] for s, m in latent.items()}, sae, [f])
    return out


def summed_steering(parts: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> ImageSteering:
    """``sum_i s_i x map_i`` per section over ``(map, s)`` pairs (several features at once)."""
    total: dict[str, torch.Tensor] = {}
    for maps, strength in parts:
        for section, m in image_steering(maps, strength).maps.items():
            total[section] = total[section] + m if section in total else m
    return ImageSteering(total)


def _accumulate(
    store: ActivationStore, x_of: Mapping[int, torch.Tensor], sections, transform, grid
):
    """Per section: ``X^T Y`` as ``[C + 1, P, W]`` (each study's covariate row ``x_of[sid]``
    times the sum of its tokens at each patch ``patch_row * grid + patch_col``), and the tokens
    seen per (study, section). Memory is ``C x P x W`` per section, whatever the number of
    studies (a MIMIC-size store fits)."""
    n_patches = grid * grid
    slot_of = {section: k * n_patches for k, section in enumerate(sections)}

    def select(meta):
        sid_N = np.asarray(meta.column("study_id").to_numpy(zero_copy_only=False))
        sec_N = np.asarray(meta.column("section").to_pylist(), dtype=object)
        keep_N = np.isin(sec_N, list(sections)) & np.isin(sid_N, list(x_of))
        r_M = np.asarray(meta.column("patch_row").to_pylist(), dtype=object)[keep_N]
        c_M = np.asarray(meta.column("patch_col").to_pylist(), dtype=object)[keep_N]
        base_M = np.array([slot_of[s] for s in sec_N[keep_N]], dtype=np.int64)
        return keep_N, base_M + (r_M * grid + c_M).astype(np.int64)

    xty: dict[str, torch.Tensor] = {}
    counts: dict[tuple[int, str], int] = {}
    for block in iter_study_sums(store, select, len(sections) * n_patches, transform):
        x_UC = torch.stack([x_of[int(s)] for s in block.study_ids])
        for section, first in slot_of.items():
            n_U = block.counts[:, first : first + n_patches].sum(1)
            seen_U = torch.from_numpy(n_U > 0)
            if not seen_U.any():
                continue
            part = torch.einsum(
                "uc,upw->cpw", x_UC[seen_U], block.sums[seen_U, first : first + n_patches]
            )
            xty[section] = xty[section] + part if section in xty else part
            for sid, n in zip(block.study_ids[n_U > 0].tolist(), n_U[n_U > 0].tolist()):
                counts[(int(sid), section)] = counts.get((int(sid), section), 0) + int(n)
    return xty, counts


def patch_regression(
    store: str | ActivationStore,
    labels: Mapping[int, Mapping[str, int]],
    concepts: Sequence[str],
    exclude: set[int] | frozenset[int] = frozenset(),
    sections: Sequence[str] = CURRENT_SECTIONS,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ridge: float = 1.0,
) -> PatchRegression:
    """Per-patch least squares ``y ~ 1 + labels`` over the stored studies (module docstring).

    ``labels`` maps study -> {concept: 0/1} (a study missing from it, or ``exclude``-d, is left
    out; a missing concept reads 0); ``transform`` maps ``[N, D]`` tokens to what is regressed
    (SAE feature activations), default the tokens themselves; ``ridge`` is added to the
    diagonal of the concept block of ``X^T X`` (not the intercept), which keeps a concept
    with few studies solvable and shrinks it towards 0. The fit streams the store once and
    keeps only the normal equations (``X^T X``, ``X^T Y``), not the studies' tokens.
    """
    acts = store if isinstance(store, ActivationStore) else ActivationStore(store)
    ids = sorted(s for s in labels if s not in exclude)
    if not ids:
        raise SteeringError(f"{acts.path}: no labelled study outside the held-out set")
    grid = _grid(acts)
    x_of = {s: torch.tensor([1.0] + [float(labels[s].get(c) == 1) for c in concepts]) for s in ids}
    xty, counts = _accumulate(acts, x_of, sections, transform, grid)
    coef, n_studies, n_pos = {}, {}, {}
    n_patches = grid * grid
    penalty = ridge * torch.diag(torch.tensor([0.0] + [1.0] * len(concepts)))
    for section, xty_CPW in xty.items():
        seen = sorted(sid for (sid, sec) in counts if sec == section)
        partial = [sid for sid in seen if counts[(sid, section)] != n_patches]
        if partial:
            raise SteeringError(
                f"{acts.path}: study {partial[0]} has {counts[(partial[0], section)]} of "
                f"{n_patches} {section} patches; record with --image-tokens all"
            )
        x = torch.stack([x_of[sid] for sid in seen])
        solved = torch.linalg.solve(x.T @ x + penalty, xty_CPW.reshape(len(concepts) + 1, -1))
        coef[section] = solved[1:].reshape(len(concepts), n_patches, -1)
        n_studies[section] = len(seen)
        n_pos[section] = {c: int(x[:, 1 + i].sum()) for i, c in enumerate(concepts)}
    missing = [s for s in sections if s not in coef]
    if len(missing) == len(sections):
        raise SteeringError(
            f"{acts.path}: no image tokens of sections {list(sections)} (is it a store of "
            f"{IMAGE_HOOK} recorded with --image-tokens all?)"
        )
    return PatchRegression(tuple(concepts), coef, n_studies, n_pos)


def _grid(acts: ActivationStore) -> int:
    """Patches per side of the store's images (from the largest stored patch index)."""
    meta = acts.metadata_all(["patch_row", "patch_col"])
    rows = [r for r in meta.column("patch_row").to_pylist() if r is not None]
    cols = [c for c in meta.column("patch_col").to_pylist() if c is not None]
    if not rows:
        raise SteeringError(f"{acts.path}: no image patches stored (patch_row is empty)")
    return max(max(rows), max(cols)) + 1


def image_sections(tokens: Sequence[Mapping]) -> list[str]:
    """The section of each image of a prepared input, in ``image_index`` order."""
    sections: dict[int, str] = {}
    for t in tokens:
        if t.get("kind") == "image" and t.get("image_index") is not None:
            sections.setdefault(int(t["image_index"]), str(t.get("section")))
    return [sections[k] for k in sorted(sections)]


def image_deltas(
    inps: Sequence, steerings: Sequence[ImageSteering | None]
) -> list[torch.Tensor | FeatureScaling | None]:
    """One entry per image of the batch, row-major: what is added to it (None: nothing)."""
    out: list[torch.Tensor | FeatureScaling | None] = []
    for inp, steer in zip(inps, steerings, strict=True):
        pixels = inp.model_inputs.get("pixel_values")
        n_images = 0 if pixels is None else int(pixels.shape[0])
        sections = image_sections(inp.tokens)
        if len(sections) != n_images:
            raise SteeringError(f"{len(sections)} image sections but {n_images} images")
        out += [None if steer is None else steer.maps.get(s) for s in sections]
    return out


class ImageSteeringHook:
    """Intervention at the projector output ``[n_images, P, D]``: image i gets ``deltas[i]``."""

    def __init__(self, deltas: Sequence[torch.Tensor | FeatureScaling | None]):
        self.deltas = list(deltas)

    @torch.no_grad()
    def __call__(self, acts_NPD: torch.Tensor) -> torch.Tensor | None:
        if acts_NPD.shape[0] != len(self.deltas):
            raise SteeringError(
                f"the projector made {acts_NPD.shape[0]} images, the batch has {len(self.deltas)}"
            )
        if all(d is None for d in self.deltas):
            return None
        out = acts_NPD.clone()
        for i, delta in enumerate(self.deltas):
            if delta is None:
                continue
            if isinstance(delta, FeatureScaling):
                delta = delta.delta(acts_NPD[i])
            if tuple(delta.shape) != tuple(acts_NPD.shape[1:]):
                raise SteeringError(
                    f"patch map of shape {tuple(delta.shape)} for images of "
                    f"{tuple(acts_NPD.shape[1:])} (a map from another model or image size?)"
                )
            out[i] = (acts_NPD[i].float() + delta.to(acts_NPD.device)).to(acts_NPD.dtype)
        return out
