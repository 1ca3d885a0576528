"""A module's output reshaped to tokens: the one recorder API for image models.

The activation store holds one row per token. For a language model a token is a sequence
position; for an image model it is a **spatial position** of a feature map (a pixel of a
full-resolution map, a cell of a pooled one, a patch of a vision transformer), or one entry of
a latent sequence (SemanticGAN's W+). Every recorder of an image model goes through here, so
its rows carry the store's usual metadata (``position``, ``token``, ``kind``, ``section``,
``patch_row``, ``patch_col``) plus the ground truth at that position:

- ``concept_<name>``: a value in [0, 1] per token: the fraction of the token's cell covered by
  a mask (lung, heart, a finding, a device, the annotators' disagreement), or a study
  attribute repeated on every token of the study (1 if ``sex=F``, ...). NaN: unknown.
  ``analyse`` scores features against these with a token-level AUROC (positive: >= 0.5).
- ``target_<name>``: a continuous value per token (an SSN's per-pixel sample variance, ...);
  ``analyse`` correlates features with these (Spearman).

Coverage is :func:`workbench.models.mini.dense.patch_coverage`, the same area-resampling that
gives maira2-mini its dense targets, so a coverage value means the same thing in every store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from workbench.cxr.findings import DEVICES, FINDINGS
from workbench.models.mini.dense import patch_coverage

CONCEPT_PREFIX = "concept_"
TARGET_PREFIX = "target_"
POSITIVE_COVER = 0.5  # a token is a positive of a concept when its value reaches this
STRUCTURES = ("heart", "left_lung", "right_lung", "lung")


class Tokens(NamedTuple):
    """Activations ``[n, d]`` of some tokens and their metadata columns (each of length n)."""

    acts: torch.Tensor
    meta: dict[str, list]

    def with_columns(self, columns: Mapping[str, Sequence]) -> Tokens:
        """The same tokens with more metadata columns (checked to have one value per token)."""
        n = self.acts.shape[0]
        meta = dict(self.meta)
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} tokens")
            meta[name] = list(values)
        return Tokens(self.acts, meta)


def concat(parts: Sequence[Tokens]) -> Tokens:
    """Tokens of several images (or sites) of one study, in order; missing columns are None."""
    if not parts:
        raise ValueError("no tokens to concatenate")
    keys = list(dict.fromkeys(k for p in parts for k in p.meta))
    meta = {k: [v for p in parts for v in p.meta.get(k, [None] * p.acts.shape[0])] for k in keys}
    return Tokens(torch.cat([p.acts for p in parts]), meta)


def pool_map(fmap_CHW: torch.Tensor, pool: int) -> torch.Tensor:
    """Average-pool a feature map ``pool`` x ``pool`` (1: unchanged); the sides must divide."""
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    if pool == 1:
        return fmap_CHW
    H, W = fmap_CHW.shape[-2:]
    if H % pool or W % pool:
        raise ValueError(f"feature map {H}x{W} is not divisible by pool {pool}")
    return F.avg_pool2d(fmap_CHW.unsqueeze(0), pool).squeeze(0)


def feature_map_tokens(
    fmap_CHW: torch.Tensor, *, kind: str = "image", section: str = "image", pool: int = 1
) -> Tokens:
    """One token per spatial position of a ``[C, H, W]`` map, row-major like image patches.

    ``position`` is ``row * W + col`` of the (pooled) grid and ``token`` reads ``r<row>c<col>``.
    """
    if fmap_CHW.ndim != 3:
        raise ValueError(f"feature map must be [C, H, W], got shape {tuple(fmap_CHW.shape)}")
    fmap = pool_map(fmap_CHW, pool)
    C, H, W = fmap.shape
    acts = fmap.reshape(C, H * W).T.contiguous()
    rows, cols = np.divmod(np.arange(H * W), W)
    meta = {
        "position": list(range(H * W)),
        "token_id": [None] * (H * W),
        "token": [f"r{r}c{c}" for r, c in zip(rows, cols, strict=True)],
        "kind": [kind] * (H * W),
        "section": [section] * (H * W),
        "patch_row": rows.tolist(),
        "patch_col": cols.tolist(),
    }
    return Tokens(acts, meta)


def sequence_tokens(acts_TD: torch.Tensor, names: Sequence[str], *, section: str) -> Tokens:
    """One ``latent`` token per row of a ``[T, D]`` sequence (e.g. W+, one per style input)."""
    if acts_TD.ndim != 2 or acts_TD.shape[0] != len(names):
        raise ValueError(f"{len(names)} names for a sequence of shape {tuple(acts_TD.shape)}")
    T = acts_TD.shape[0]
    meta = {
        "position": list(range(T)),
        "token_id": [None] * T,
        "token": list(names),
        "kind": ["latent"] * T,
        "section": [section] * T,
        "patch_row": [None] * T,
        "patch_col": [None] * T,
    }
    return Tokens(acts_TD.contiguous(), meta)


def cell_means(maps: Mapping[str, np.ndarray], grid: int, prefix: str) -> dict[str, list]:
    """``prefix + name`` -> the mean of each map over every cell of a ``grid`` x ``grid`` grid.

    A map is a square ``[S, S]`` array with values in [0, 1] (a boolean mask gives coverage);
    the cells are area-resampled by :func:`patch_coverage`, row-major like the tokens.
    """
    out = {}
    for name, map_HW in maps.items():
        map_HW = np.asarray(map_HW, dtype=np.float32)
        if map_HW.ndim != 2 or map_HW.shape[0] != map_HW.shape[1]:
            raise ValueError(f"map {name!r} must be square [S, S], got {map_HW.shape}")
        out[prefix + name] = patch_coverage(map_HW, grid, 1).astype(float).tolist()
    return out


def study_columns(values: Mapping[str, float | None], n: int) -> dict[str, list]:
    """``concept_<name>`` columns repeating a study-level value (None -> NaN) on n tokens."""
    return {
        CONCEPT_PREFIX + name: [float("nan") if v is None else float(v)] * n
        for name, v in values.items()
    }


def concept_columns(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The concept and target column names among metadata column names, in order."""
    concepts = [c for c in names if c.startswith(CONCEPT_PREFIX)]
    targets = [c for c in names if c.startswith(TARGET_PREFIX)]
    return concepts, targets


def concept_group(name: str) -> str:
    """The group a concept or target belongs to, as the analysis report lists them:
    structure, finding, device, annotation (graders' masks), uncertainty (``*variance``)
    or attribute (everything else: sex, age band, habitus, device present)."""
    if name in STRUCTURES:
        return "structure"
    if name in FINDINGS:
        return "finding"
    if name in DEVICES:
        return "device"
    if name.startswith(("nodule_annotator_", "annot")):
        return "annotation"
    if name.endswith("variance"):
        return "uncertainty"
    return "attribute"


def groups_of(columns: Sequence[str]) -> dict[str, str]:
    """concept/target name (prefix removed) -> its group, for the store manifest."""
    out = {}
    for c in columns:
        for prefix in (CONCEPT_PREFIX, TARGET_PREFIX):
            if c.startswith(prefix):
                out[c[len(prefix) :]] = concept_group(c[len(prefix) :])
    return out
