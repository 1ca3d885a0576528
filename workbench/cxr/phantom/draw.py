"""Drawing primitives for the phantom: a rotated coordinate frame, vector strokes, blur.

Anatomy is described in normalised *patient* coordinates (x to the image's right, which is the
patient's left on a frontal view; y down; both in [0, 1]). A :class:`Frame` holds, for every
pixel, the patient coordinate it shows, so implicit shapes (``x**2 + y**2 < r**2``) are
evaluated on whole arrays at once, and patient rotation on the table is a change of frame
rather than a resampling of the finished image. Thin curved things (ribs, tubes, leads,
vessels) are stroked with PIL, whose C rasteriser is far faster than distance fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Point = tuple[float, float]
FAR = 1.0e4  # ellipse_field value outside its evaluated window


class Frame:
    """Pixel grid of a square image and the patient coordinates each pixel shows."""

    def __init__(self, size: int, rotation_deg: float = 0.0, centre: Point = (0.5, 0.5)):
        self.size = size
        self.centre = centre
        self.cos = math.cos(math.radians(rotation_deg))
        self.sin = math.sin(math.radians(rotation_deg))
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        a = c[None, :] - centre[0]
        b = c[:, None] - centre[1]
        self.X = (centre[0] + a * self.cos + b * self.sin).astype(np.float32)
        self.Y = (centre[1] - a * self.sin + b * self.cos).astype(np.float32)

    @property
    def px(self) -> float:
        """One pixel in normalised units (for widths that must not vanish when small)."""
        return 1.0 / self.size

    def to_px(self, pts: Sequence[Point] | np.ndarray) -> list[Point]:
        """Patient coordinates -> pixel coordinates (PIL's, origin at the top-left corner)."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        dx, dy = p[:, 0] - self.centre[0], p[:, 1] - self.centre[1]
        xs = (self.centre[0] + dx * self.cos - dy * self.sin) * self.size
        ys = (self.centre[1] + dx * self.sin + dy * self.cos) * self.size
        return list(zip(xs.tolist(), ys.tolist()))


class Canvas:
    """A float layer to stroke on with PIL; ``array()`` returns it as float32 numpy."""

    def __init__(self, frame: Frame):
        self.frame = frame
        self.image = Image.new("F", (frame.size, frame.size), 0.0)
        self.draw = ImageDraw.Draw(self.image)

    def width_px(self, width: float) -> int:
        """A stroke width in whole pixels, never below one."""
        return max(1, int(round(width * self.frame.size)))

    def line(self, pts: Sequence[Point] | np.ndarray, width: float, value: float = 1.0) -> None:
        """Stroke a polyline of patient points ``width`` units thick."""
        xy = self.frame.to_px(pts)
        if len(xy) >= 2:
            self.draw.line(xy, fill=float(value), width=self.width_px(width))

    def polygon(self, pts: Sequence[Point] | np.ndarray, value: float = 1.0) -> None:
        """Fill a polygon given in patient coordinates."""
        self.draw.polygon(self.frame.to_px(pts), fill=float(value))

    def ellipse(
        self,
        centre: Point,
        rx: float,
        ry: float,
        value: float = 1.0,
        outline_width: float | None = None,
    ) -> None:
        """Filled ellipse, or only its outline when ``outline_width`` is given (unrotated)."""
        ((cx, cy),) = self.frame.to_px([centre])
        s = self.frame.size
        box = (cx - rx * s, cy - ry * s, cx + rx * s, cy + ry * s)
        if outline_width is None:
            self.draw.ellipse(box, fill=float(value))
        else:
            self.draw.ellipse(box, outline=float(value), width=self.width_px(outline_width))

    def array(self) -> np.ndarray:
        """The layer as float32 numpy."""
        return np.asarray(self.image, dtype=np.float32)


def smooth(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur in pixels (float32 in, float32 out); soft edges for hard shapes."""
    if sigma_px <= 0:
        return a.astype(np.float32, copy=False)
    return ndimage.gaussian_filter(a.astype(np.float32, copy=False), sigma_px, truncate=3.0)


def spline(points: Sequence[Point], n: int = 24) -> np.ndarray:
    """A smooth curve through control points (Catmull-Rom), ``n`` samples per segment."""
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (
                (2 * p1)
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(p[-2][None, :])
    return np.vstack(out)


def ellipse_field(
    frame: Frame,
    centre: Point,
    rx: float,
    ry: float,
    tilt_deg: float = 0.0,
    reach: float = 1.0,
) -> np.ndarray:
    """``((x'/rx)**2 + (y'/ry)**2)`` in a tilted ellipse frame: <= 1 inside.

    Only a window around the ellipse, out to field value ``reach``, is evaluated (most
    ellipses are small); beyond it the field is ``FAR``. Pass ``reach=9`` when the caller
    takes ``exp(-field)``, so the window edge falls where the value is already ~1e-4.
    """
    c, s = math.cos(math.radians(tilt_deg)), math.sin(math.radians(tilt_deg))
    out = np.full((frame.size, frame.size), FAR, dtype=np.float32)
    ((px, py),) = frame.to_px([centre])
    r = max(rx, ry) * math.sqrt(reach) * frame.size + 2
    x0, x1 = max(0, int(px - r)), min(frame.size, int(px + r) + 1)
    y0, y1 = max(0, int(py - r)), min(frame.size, int(py + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return out
    dx = frame.X[y0:y1, x0:x1] - centre[0]
    dy = frame.Y[y0:y1, x0:x1] - centre[1]
    u = dx * c + dy * s
    v = -dx * s + dy * c
    out[y0:y1, x0:x1] = (u / rx) ** 2 + (v / ry) ** 2
    return out


def smooth_noise(frame: Frame, rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std correlated noise, e.g. for blob outlines and parenchymal texture.

    A coarse random grid upsampled bicubically: cheap, and correlated over ~``sigma_px``.
    """
    coarse = max(4, int(frame.size / max(sigma_px, 1.0)) + 2)
    low = rng.standard_normal((coarse, coarse), dtype=np.float32)
    img = Image.fromarray(low, mode="F").resize((frame.size, frame.size), Image.BICUBIC)
    up = np.asarray(img, dtype=np.float32)
    return (up - up.mean()) / (up.std() + 1e-6)
