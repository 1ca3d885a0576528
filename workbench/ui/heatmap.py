"""A feature's activation over image patches, drawn on the radiograph; crops around a patch.

Geometry: MAIRA-2's processor (and maira2-mini's) resizes the shortest edge and centre-crops a
square, so the n_rows x n_cols patch grid covers the centred square of the image's short side,
not the whole image (:func:`grid_box`). The grid is upsampled smoothly over that square,
mapped through a warm colour ramp, and given an opacity that rises with the activation, so
silent regions show the plain radiograph. The app sends the radiograph and the heat layer as
two inline images (the page can change the layer's opacity or hide it without a round trip);
:func:`overlay` composites them for thumbnails. Nothing here names a file path to the browser.

Decoding a full-size MIMIC JPEG costs tens of milliseconds, so :func:`radiograph` decodes at
reduced size (JPEG draft mode) and keeps the last few images, keyed by path and mtime.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from workbench.cxr.images import load_image

# Colour ramp anchors (dark red -> orange -> yellow), interpolated to 256 entries.
ANCHORS = np.array([[80, 0, 40], [190, 30, 30], [240, 120, 20], [255, 220, 60], [255, 255, 190]])
DECODE_SIDE = 768
"""Longest side radiographs are decoded to (enough for a 448 px view and patch crops)."""


def ramp() -> np.ndarray:
    """A 256x3 uint8 colour lookup table."""
    pos = np.linspace(0, 1, len(ANCHORS))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, pos, ANCHORS[:, c]) for c in range(3)], 1).astype(np.uint8)


_LUT = ramp()
_ALPHA = [round(255 * (v / 255) ** 0.5) for v in range(256)]


def grid_from_patches(
    patches: list[tuple[int, int, float]], n_rows: int, n_cols: int
) -> np.ndarray:
    """A dense [n_rows, n_cols] float grid from sparse (patch_row, patch_col, value) triples."""
    grid_RC = np.zeros((n_rows, n_cols), dtype=np.float32)
    for r, c, v in patches:
        if 0 <= r < n_rows and 0 <= c < n_cols:
            grid_RC[r, c] = max(grid_RC[r, c], float(v))
    return grid_RC


def grid_box(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the centred square the patch grid covers (processor centre crop)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def heat_layer(size: tuple[int, int], grid_RC: np.ndarray, vmax: float) -> Image.Image:
    """An RGBA layer of ``size`` with the grid over its centred square; ``vmax`` = full colour.

    All per-pixel work is PIL's C code (resize, lookup tables): a few milliseconds at 448 px.
    """
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    left, top, side = grid_box(*size)
    norm_RC = np.clip(grid_RC / vmax, 0, 1) if vmax > 0 else np.zeros_like(grid_RC)
    heat = Image.fromarray((norm_RC * 255).astype(np.uint8), "L")
    heat = heat.resize((side, side), Image.BILINEAR)
    bands = [heat.point(_LUT[:, c].tolist()) for c in range(3)]
    layer.paste(Image.merge("RGBA", [*bands, heat.point(_ALPHA)]), (left, top))
    return layer


def overlay(
    image: Image.Image, grid_RC: np.ndarray, vmax: float, side: int = 448, opacity: float = 0.8
) -> Image.Image:
    """The image (longest side ``side``) with the heat layer composited at ``opacity``."""
    base = thumbnail(image, side).convert("RGBA")
    layer = heat_layer(base.size, grid_RC, vmax)
    if opacity < 1:
        layer.putalpha(layer.getchannel("A").point(lambda a: round(a * opacity)))
    return Image.alpha_composite(base, layer).convert("RGB")


def grid_only(grid_RC: np.ndarray, vmax: float, side: int = 448) -> Image.Image:
    """The heat layer on black, for a study whose image file is not available."""
    return overlay(Image.new("L", (side, side), 0), grid_RC, vmax, side, opacity=1.0)


def patch_crop(
    image: Image.Image,
    grid: tuple[int, int],
    row: int,
    col: int,
    reach: int | None = None,
    side: int = 112,
) -> Image.Image:
    """The radiograph around one patch (``reach`` patches each side), the patch outlined.

    ``reach`` defaults to about a tenth of the grid, so a crop shows the same anatomy context
    whether the model has 16 or 37 patches a side.
    """
    n_rows, n_cols = grid
    reach = max(1, round(max(n_rows, n_cols) / 10)) if reach is None else reach
    left, top, sq = grid_box(*image.size)
    ch, cw = sq / n_rows, sq / n_cols
    r0, r1 = max(0, row - reach), min(n_rows, row + reach + 1)
    c0, c1 = max(0, col - reach), min(n_cols, col + reach + 1)
    box = (left + c0 * cw, top + r0 * ch, left + c1 * cw, top + r1 * ch)
    crop = image.convert("RGB").crop(tuple(round(v) for v in box))
    scale = side / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    x0, y0 = (col - c0) * cw * scale, (row - r0) * ch * scale
    draw = ImageDraw.Draw(crop)
    draw.rectangle(
        (x0, y0, x0 + cw * scale - 1, y0 + ch * scale - 1), outline=(255, 140, 0), width=2
    )
    return crop


def data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    """An inline ``data:`` URI (JPEG for radiographs; PNG keeps a heat layer's alpha)."""
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG", compress_level=1)
    else:
        rgb = image if image.mode in ("L", "RGB") else image.convert("RGB")
        rgb.save(buf, format="JPEG", quality=88)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(image: Image.Image, side: int = 448) -> Image.Image:
    """The image resized so its longest side is ``side`` (grey)."""
    img = image.convert("L")
    scale = side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))


def radiograph(path: Path) -> Image.Image:
    """The greyscale image at ``path``, longest side at most :data:`DECODE_SIDE` (cached)."""
    stat = path.stat()
    return _decode(str(path), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=48)
def _decode(path: str, mtime_ns: int, size: int) -> Image.Image:
    """Decode once per (path, mtime, size); JPEGs at a reduced scale (draft mode)."""
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        with Image.open(path) as img:
            img.draft("L", (DECODE_SIDE, DECODE_SIDE))
            img.load()
            image = img.convert("L")
    else:
        image = load_image(path)
    if max(image.size) > DECODE_SIDE:
        image = thumbnail(image, DECODE_SIDE)
    return image
