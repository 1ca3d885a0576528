"""Pictures and tables of the Segmentation tab: pure functions from arrays and rows to HTML.

Every picture is an inline PNG data URI of one sample's frame (the model input: the whole
image resized, or a nodule crop), enlarged with nearest-neighbour resampling so pixels stay
pixels. Masks are drawn as a translucent fill over the grey image, the per-pixel variance and
latent feature activations through the heat ramp of :mod:`workbench.ui.heatmap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
from PIL import Image

from workbench.ui import heatmap, render
from workbench.ui.charts import fmt

SIDE = 192  # px of a panel picture
MASK_RGB = (40, 170, 255)
METRICS = ("dice", "iou", "ged", "sample_diversity", "annotator_diversity", "hm_iou", "ece",
           "dice_lung_field")  # fmt: skip


def grey(image_HW: np.ndarray, side: int = SIDE) -> Image.Image:
    """The [0, 1] image as an 8-bit grey picture ``side`` px wide (nearest neighbour)."""
    arr = (np.clip(np.asarray(image_HW, np.float32), 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(arr, "L").resize((side, side), Image.Resampling.NEAREST)


def mask_overlay(image_HW: np.ndarray, mask_HW: np.ndarray, side: int = SIDE) -> str:
    """Data URI of the image with ``mask`` (bool or a [0, 1] share) filled over it."""
    base = grey(image_HW, side).convert("RGB")
    share = np.clip(np.asarray(mask_HW, np.float32), 0, 1)
    alpha = Image.fromarray((share * 150).astype(np.uint8), "L").resize(
        (side, side), Image.Resampling.NEAREST
    )
    colour = Image.new("RGB", base.size, MASK_RGB)
    return heatmap.data_uri(Image.composite(colour, base, alpha), fmt="PNG")


def heat_overlay(image_HW: np.ndarray, grid_RC: np.ndarray, vmax: float, side: int = SIDE) -> str:
    """Data URI of the image with a value grid (any resolution) as heat over it."""
    return heatmap.data_uri(heatmap.overlay(grey(image_HW, side), grid_RC, vmax, side), fmt="PNG")


def figure(uri: str, caption: str, extra: str = "") -> str:
    """One captioned picture (``extra``: HTML after the caption, e.g. a feature chip)."""
    return (
        f'<figure class="wb-fig wb-segfig"><img src="{uri}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}{extra}</figcaption></figure>"
    )


def gallery(figures: Sequence[str]) -> str:
    """Pictures side by side, wrapping."""
    return (
        '<div class="wb-seggrid" style="display:flex;flex-wrap:wrap;gap:8px">'
        + "".join(figures)
        + "</div>"
    )


def metrics_table(rows: Sequence[dict], metrics: Sequence[str] = METRICS) -> str:
    """``segmentation_results`` rows (model, subgroup, metric, value, n_images) as one table:
    a row per model and subgroup, a column per metric present."""
    present = [m for m in metrics if any(r["metric"] == m for r in rows)]
    table: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["metric"] not in present:
            continue
        key = (r["model"], r["subgroup"])
        cell = table.setdefault(key, {"model": r["model"], "subgroup": r["subgroup"],
                                      "images": r["n_images"]})  # fmt: skip
        cell[r["metric"]] = r["value"]
    order = sorted(table, key=lambda k: (k[0], k[1] != "all", k[1]))
    return render.table([table[k] for k in order], ["model", "subgroup", "images", *present])


def latent_caption(feature: int, label: str | None, peak: float) -> str:
    """Caption text of a latent feature heatmap."""
    name = f"#{feature}" + (f" {label}" if label else "")
    return f"{name} (peak {fmt(peak)})"
