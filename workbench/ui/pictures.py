"""The app's pictures of a study: its radiograph, a feature drawn over it, crops of patches.

The server reads an image only when its resolved path lies inside the run directory or the
configured image roots (:func:`resolve_image`); the browser receives inline data URIs, never
a path. A study whose image file is missing still shows where the feature fires: the heat
layer over a black square, said so in the caption.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from workbench.cxr.images import CXRDataError
from workbench.ui import heatmap, queries, queries_feature
from workbench.ui.context import AppContext
from workbench.ui.safety import inside

log = logging.getLogger("workbench.ui")


class StudyHeat(NamedTuple):
    """A study's frontal image and one feature's heat layer over it (both data URIs)."""

    base: str
    layer: str
    vmax: float
    """The largest activation on this image's patches: the top of the colour scale."""
    n_fired: int
    """Patches where the feature fires."""
    has_image: bool
    """False when the image file was not found (the base is then a black square)."""


def resolve_image(ctx: AppContext, path: str | None) -> Path | None:
    """The study image path if it exists inside the allowed roots (relative: to the run dir)."""
    if not path:
        return None
    p = Path(path)
    candidates = [p] if p.is_absolute() else [ctx.run_dir / p, Path.cwd() / p]
    # a run that was moved, or analysed from another working directory: the same file at
    # the same place below the run dir (e.g. .../old/run/phantom/files/... -> phantom/files/...)
    candidates += [ctx.run_dir.joinpath(*p.parts[i:]) for i in range(1, len(p.parts))]
    for c in candidates:
        safe = inside(c, ctx.image_roots)
        if safe is not None and safe.is_file():
            return safe
    return None


def load(ctx: AppContext, path: str | None) -> Image.Image | None:
    """The greyscale radiograph at a stored path (decoded at reduced size, cached), or None."""
    safe = resolve_image(ctx, path)
    if safe is None:
        return None
    try:
        return heatmap.radiograph(safe)
    except (CXRDataError, OSError) as exc:
        log.warning("cannot read %s: %s", safe, exc)
        return None


def frontal(ctx: AppContext, study_id: int) -> Image.Image | None:
    """The study's frontal radiograph, or None when unknown or not readable."""
    st = queries.study(ctx, study_id)
    return load(ctx, st.get("frontal_path") if st else None)


class Painted(NamedTuple):
    """A study's patch activations of one feature and its radiograph."""

    grid: np.ndarray
    """[n_rows, n_cols] activations on the patches of the study's first image."""
    image: Image.Image | None
    """The frontal radiograph (None: not found or not readable)."""


def paint(ctx: AppContext, study_ids: Sequence[int], feature: int) -> dict[int, Painted]:
    """Each study's patch grid of ``feature`` and frontal image (studies without image tokens
    are left out); grids and paths are read for all studies at once."""
    grids = queries_feature.image_grids(ctx, list(study_ids))
    paths = queries_feature.study_frontals(ctx, list(grids))
    out = {}
    for sid in study_ids:
        grid = grids.get(sid)
        if grid is None:
            continue
        acts = queries.patch_acts(ctx, sid, feature, grid)
        triples = [(a["patch_row"], a["patch_col"], a["value"]) for a in acts]
        grid_RC = heatmap.grid_from_patches(triples, grid["n_rows"], grid["n_cols"])
        out[sid] = Painted(grid_RC, load(ctx, paths.get(sid)))
    return out


def heat_of(p: Painted, side: int = 448) -> StudyHeat:
    """The radiograph and the heat layer, scaled to this image's own maximum."""
    vmax = float(p.grid.max())
    base = heatmap.thumbnail(p.image, side) if p.image is not None else Image.new("L", (side, side))
    layer = heatmap.heat_layer(base.size, p.grid, vmax)
    return StudyHeat(
        base=heatmap.data_uri(base),
        layer=heatmap.data_uri(layer, "PNG"),
        vmax=vmax,
        n_fired=int((p.grid > 0).sum()),
        has_image=p.image is not None,
    )


def overlay_of(p: Painted, vmax: float | None = None, side: int = 448) -> str:
    """One JPEG of the radiograph with the feature composited, scaled to ``vmax`` (default:
    this image's maximum); the grid alone on black when the image is not readable."""
    scale = float(p.grid.max()) if vmax is None else vmax
    if p.image is None:
        return heatmap.data_uri(heatmap.grid_only(p.grid, scale, side))
    return heatmap.data_uri(heatmap.overlay(p.image, p.grid, scale, side))


def study_heat(ctx: AppContext, study_id: int, feature: int, side: int = 448) -> StudyHeat | None:
    """:func:`heat_of` one study (None when it has no image tokens)."""
    got = paint(ctx, [study_id], feature).get(study_id)
    return None if got is None else heat_of(got, side)


def study_overlay_uri(
    ctx: AppContext, study_id: int, feature: int, vmax: float | None = None, side: int = 448
) -> str | None:
    """:func:`overlay_of` one study (None when it has no image tokens)."""
    got = paint(ctx, [study_id], feature).get(study_id)
    return None if got is None else overlay_of(got, vmax, side)


def patch_crops(
    ctx: AppContext, rows: Sequence[dict], grid: tuple[int, int] | None, side: int = 112
) -> dict[int, str | None]:
    """A crop of the radiograph around each image example's patch, keyed by row index."""
    wanted = {
        i: r
        for i, r in enumerate(rows)
        if r.get("kind") == "image" and r.get("patch_row") is not None
    }
    if not wanted or grid is None:
        return {}
    paths = queries_feature.study_frontals(
        ctx, sorted({int(r["study_id"]) for r in wanted.values()})
    )
    images: dict[int, Image.Image | None] = {}
    out: dict[int, str | None] = {}
    for i, r in wanted.items():
        sid = int(r["study_id"])
        if sid not in images:
            images[sid] = load(ctx, paths.get(sid))
        img = images[sid]
        out[i] = (
            None
            if img is None
            else heatmap.data_uri(
                heatmap.patch_crop(img, grid, int(r["patch_row"]), int(r["patch_col"]), side=side)
            )
        )
    return out


def frontal_uri(ctx: AppContext, study_id: int, side: int = 448) -> str | None:
    """The study's frontal radiograph alone as a JPEG data URI (None: not available)."""
    image = frontal(ctx, study_id)
    return None if image is None else heatmap.data_uri(heatmap.thumbnail(image, side))
