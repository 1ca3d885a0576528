"""A feature's activation over image patches, drawn on the radiograph.

The patch grid (n_rows x n_cols activations) is upsampled smoothly to the image size, mapped
through a warm colour ramp and blended over the grey image with opacity rising with the
activation, so silent regions show the plain radiograph. The result is an inline PNG data
URI: the browser never receives a file path.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

# Colour ramp anchors (dark red -> orange -> yellow), interpolated to 256 entries.
_ANCHORS = np.array([[80, 0, 40], [190, 30, 30], [240, 120, 20], [255, 220, 60], [255, 255, 190]])


def ramp() -> np.ndarray:
    """A 256x3 uint8 colour lookup table."""
    pos = np.linspace(0, 1, len(_ANCHORS))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, pos, _ANCHORS[:, c]) for c in range(3)], 1).astype(np.uint8)


def grid_from_patches(
    patches: list[tuple[int, int, float]], n_rows: int, n_cols: int
) -> np.ndarray:
    """A dense [n_rows, n_cols] float grid from sparse (patch_row, patch_col, value) triples."""
    grid_RC = np.zeros((n_rows, n_cols), dtype=np.float32)
    for r, c, v in patches:
        if 0 <= r < n_rows and 0 <= c < n_cols:
            grid_RC[r, c] = max(grid_RC[r, c], float(v))
    return grid_RC


def overlay(image: Image.Image, grid_RC: np.ndarray, vmax: float, side: int = 448) -> Image.Image:
    """The image (longest side ``side``) with the grid over it; ``vmax`` is full colour.

    All per-pixel work is done by PIL's C code (resize, lookup tables, composite): a few
    milliseconds for a 448 px image, which keeps the feature page inside its time budget.
    """
    base = thumbnail(image, side)
    norm_RC = np.clip(grid_RC / vmax, 0, 1) if vmax > 0 else np.zeros_like(grid_RC)
    heat = Image.fromarray((norm_RC * 255).astype(np.uint8), "L").resize(base.size, Image.BILINEAR)
    lut = ramp()
    colour = Image.merge("RGB", [heat.point(lut[:, c].tolist()) for c in range(3)])
    alpha = heat.point([round(255 * 0.8 * (v / 255) ** 0.5) for v in range(256)])
    return Image.composite(colour, base.convert("RGB"), alpha)


def data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    """An inline ``data:`` URI of the image (JPEG by default: radiographs compress well)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=88)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(image: Image.Image, side: int = 448) -> Image.Image:
    """The image resized so its longest side is ``side`` (grey, for the study view)."""
    img = image.convert("L")
    scale = side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
