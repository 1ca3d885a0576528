"""Sample grids: generated images beside their generated masks, as one small PNG.

Row pairs: the top row shows images from the EMA generator, the row below the same images
with the ToSEG mask outlined in red (sigmoid > 0.5, or the argmax's foreground), so a reader
sees at once whether image and mask agree. Written by training (``samples.png`` in the run
directory) and by ``benchmarks/bench_semgan.py`` into ``docs/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segmentation.semantic_gan.generator import SegGenerator, seg_to_class_logits


def _outline(mask_HW: np.ndarray) -> np.ndarray:
    """Pixels of the mask whose 4-neighbourhood leaves the mask."""
    m = np.pad(mask_HW, 1)
    inner = m[1:-1, :-2] & m[1:-1, 2:] & m[:-2, 1:-1] & m[2:, 1:-1]
    return mask_HW & ~inner


def render_grid(images_BHW: np.ndarray, masks_BHW: np.ndarray, cols: int = 8) -> np.ndarray:
    """uint8 RGB grid ``[2 * rows * H, cols * W, 3]``: image rows over outlined-mask rows."""
    B, H, W = images_BHW.shape
    rows = -(-B // cols)
    grid = np.zeros((2 * rows * H, cols * W, 3), np.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        grey = (np.clip(images_BHW[i], 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        grid[2 * r * H : (2 * r + 1) * H, c * W : (c + 1) * W] = rgb
        over = rgb.copy()
        over[_outline(masks_BHW[i].astype(bool))] = (255, 40, 40)
        grid[(2 * r + 1) * H : (2 * r + 2) * H, c * W : (c + 1) * W] = over
    return grid


@torch.no_grad()
def save_sample_grid(generator: SegGenerator, path: Path, n: int = 16, seed: int = 0) -> Path:
    """Draw ``n`` samples (fixed seed) from ``generator`` and write the grid PNG."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.cfg.latent_dim, generator=gen)
    noise = generator.make_noise(n, gen)
    out = generator([z], noise=noise)
    images = ((out.image[:, 0].clamp(-1, 1) + 1) / 2).numpy()
    masks = (seg_to_class_logits(out.seg).argmax(1) > 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_grid(images, masks, cols=min(8, n))).save(path)
    return path
