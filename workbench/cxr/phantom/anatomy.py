"""Normal frontal chest anatomy: geometry from the subject and acquisition, then pixels.

The image is built as a *density* map (roughly, attenuation along each ray) that is summed
layer by layer and only at the end turned into grey levels (see ``workbench.cxr.phantom.render``):
soft tissue and abdomen add, aerated lung subtracts, bone and metal add. Findings later edit
the same layers (an effusion gives back the air, a pneumothorax removes the vessels), which
is what makes every finding visible exactly where its mask says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image

from workbench.cxr.phantom.draw import Canvas, Frame, ellipse_field, smooth_noise

# patient side -> image direction on a frontal (PA/AP) view
SIGN = MappingProxyType({"right": -1, "left": 1})
AIR = 0.40  # density removed by fully aerated lung
RIB_SPACING = 0.055  # vertical distance between posterior ribs, image units
MM_PER_UNIT = 380.0  # field of view: the image width is ~38 cm at the detector


@dataclass
class Geometry:
    """Landmarks of one frontal image in patient coordinates (``workbench.cxr.phantom.draw``)."""

    xc: float
    half_width: float  # lateral extent of each lung from the midline (W)
    apex: float
    dome: dict[str, float]  # top of each hemidiaphragm
    cp: dict[str, float]  # costophrenic angle (lowest lateral lung point)
    med_half: float  # half-width of the upper mediastinum
    rib_top: float  # height of the first posterior rib at the spine
    wall: float  # chest-wall soft tissue thickness
    magnification: float
    hilum: dict[str, tuple[float, float]] = field(default_factory=dict)
    carina: tuple[float, float] = (0.5, 0.3)
    heart: dict[str, float] = field(default_factory=dict)

    def lat(self, t: np.ndarray | float) -> np.ndarray | float:
        """Distance of the lateral lung border from the midline at height fraction ``t``."""
        t = np.clip(t, 0.0, 1.0)
        u = 1.0 - t
        return self.half_width * (0.2 + 0.8 * np.sqrt(1.0 - u * u))

    def t_of(self, side: str, d: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height fraction (0 apex, 1 costophrenic angle), with a rounded apex."""
        w = self.half_width
        return (y - self.apex - 0.05 * ((d - 0.5 * w) / (0.5 * w)) ** 2) / (
            self.cp[side] - self.apex
        )

    def diaphragm(self, side: str, d: np.ndarray | float) -> np.ndarray | float:
        """Height of the hemidiaphragm at distance ``d`` from the midline (a dome)."""
        w = self.half_width
        return self.dome[side] + 4 * (self.cp[side] - self.dome[side]) * ((d - 0.5 * w) / w) ** 2

    def lung_point(self, side: str, u: float, v: float) -> tuple[float, float]:
        """Image point at lateral fraction ``u`` and height fraction ``v`` of a lung."""
        y = self.apex + v * (self.diaphragm(side, self.half_width * (0.2 + 0.6 * u)) - self.apex)
        t = (y - self.apex) / (self.cp[side] - self.apex)
        d = self.med_half + u * (float(self.lat(t)) - self.med_half)
        return self.xc + SIGN[side] * d, float(y)

    def rib_y0(self, i: int) -> float:
        """Height of posterior rib ``i`` (1-based) where it leaves the spine."""
        return self.rib_top + (i - 1) * RIB_SPACING

    def rib_curve(self, side: str, i: int, n: int = 20) -> np.ndarray:
        """Centre line of posterior rib ``i``: from the spine, slightly up, then down laterally."""
        w = self.half_width
        reach = min(1.0, 0.6 + 0.14 * (i - 1)) * (w + 0.6 * self.wall) / w
        q = np.linspace(0.05, reach, n)
        y = self.rib_y0(i) - 0.045 * q + (0.2 - 0.008 * i) * q**2.2
        return np.column_stack([self.xc + SIGN[side] * q * w, y])


def frontal_geometry(study: dict) -> Geometry:
    """Landmarks from the subject (habitus) and acquisition (inspiration, magnification)."""
    acq, hab = study["acquisition"], study["subject"]["habitus"]
    mag = float(acq["magnification"])
    w = float(study["thorax_width"])
    apex = 0.095
    rib_top = 0.135
    dome_r = rib_top + (acq["inspiration_ribs"] - 1) * RIB_SPACING + 0.012
    dome_r = apex + (dome_r - apex) * hab["lung_volume"]
    dome = {"right": dome_r, "left": dome_r + 0.022}
    cp = {s: dome[s] + 0.065 for s in dome}
    g = Geometry(
        xc=0.5 + acq.get("shift_x", 0.0),
        half_width=w,
        apex=apex,
        dome=dome,
        cp=cp,
        med_half=0.052 * mag,
        rib_top=rib_top,
        wall=0.03 + 0.055 * hab["soft_tissue"],
        magnification=mag,
    )
    h = dome_r - apex
    g.hilum = {
        s: (g.xc + SIGN[s] * 0.13 * mag, apex + 0.47 * h + 0.01 * (s == "left")) for s in SIGN
    }
    g.carina = (g.xc, apex + 0.34 * h)
    return g


def lung_field(g: Geometry, side: str, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Boolean hemithorax lung field (before the heart is cut out) on coordinates X, Y."""
    return lung_depth(g, side, X, Y) > 0


def place_heart(g: Geometry, ctr: float, thorax_px: int, frame: Frame) -> None:
    """Size the heart so its width over the measured thoracic width equals ``ctr`` x mag.

    The silhouette is the left ventricle (a tilted ellipse reaching the left border, apex
    down and to the patient's left) joined to the right atrium (a smaller ellipse forming
    the right border), so that right + left borders are exactly ``width`` apart.
    """
    width = ctr * g.magnification * thorax_px / frame.size
    right, left = g.xc - 0.33 * width, g.xc + 0.67 * width
    tilt, ratio = 35.0, 0.7
    c, s = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    hw = 0.4 * width
    a = hw / math.sqrt(c**2 + (ratio * s) ** 2)
    b = ratio * a
    vert = math.sqrt((a * s) ** 2 + (b * c) ** 2)
    ra_rx, ra_ry = 0.14 * width, 0.3 * width
    g.heart = {
        "cx": left - hw,
        "cy": g.dome["left"] - 0.9 * vert,
        "a": a,
        "b": b,
        "tilt": tilt,
        "ra_cx": right + ra_rx,
        "ra_cy": g.dome["right"] - 0.7 * ra_ry,
        "ra_rx": ra_rx,
        "ra_ry": ra_ry,
        "width": width,
    }


def heart_fields(g: Geometry, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Implicit fields (<= 1 inside) of the left-ventricle and right-atrium ellipses."""
    h = g.heart
    lv = ellipse_field(frame, (h["cx"], h["cy"]), h["a"], h["b"], h["tilt"])
    ra = ellipse_field(frame, (h["ra_cx"], h["ra_cy"]), h["ra_rx"], h["ra_ry"])
    return lv, ra


def heart_mask(g: Geometry, frame: Frame) -> np.ndarray:
    """The cardiac silhouette above the diaphragm."""
    lv, ra = heart_fields(g, frame)
    d = np.abs(frame.X - g.xc)
    floor = np.where(g.xc > frame.X, g.diaphragm("right", d), g.diaphragm("left", d))
    return ((lv <= 1.0) | (ra <= 1.0)) & (floor + 0.01 >= frame.Y)


def thorax_width_px(left: np.ndarray, right: np.ndarray) -> int:
    """Widest row extent of both lungs together, in pixels (the CTR denominator)."""
    both = left | right
    cols = np.arange(both.shape[1])
    rows = both.any(axis=1)
    lo = np.where(both, cols[None, :], both.shape[1]).min(axis=1)[rows]
    hi = np.where(both, cols[None, :], -1).max(axis=1)[rows]
    return int((hi - lo + 1).max()) if rows.any() else 0


def heart_width_px(heart: np.ndarray) -> int:
    """Horizontal extent of the heart mask in pixels (the CTR numerator)."""
    cols = np.flatnonzero(heart.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


def body_density(g: Geometry, frame: Frame, hab: dict, upright: bool = True) -> np.ndarray:
    """Soft tissue: neck, shoulders, chest wall, breasts, abdomen with the gastric bubble."""
    X, Y = frame.X, frame.Y
    w, a = g.half_width, g.apex
    ys = [0.0, a - 0.03, a + 0.04, a + 0.16, a + 0.32, 1.0]
    hw = [0.085, 0.095, w + 0.16, w + 0.14, w + g.wall, w + g.wall + 0.015]
    half = np.interp(Y, ys, hw).astype(np.float32)
    rel = np.clip(1.0 - ((X - g.xc) / half) ** 2, 0.0, 1.0)
    body = np.sqrt(rel) * (0.3 + 0.12 * hab["soft_tissue"]) + 0.1 * (rel > 0)
    d = np.abs(X - g.xc)
    under = np.where(g.xc > X, g.diaphragm("right", d), g.diaphragm("left", d)) < Y
    body = body + 0.04 * under * (rel > 0)
    # gastric air bubble under the left dome; upright, fluid settles in its lower half
    centre = (g.xc + 0.45 * g.half_width, g.dome["left"] + 0.06)
    bubble = ellipse_field(frame, centre, 0.06, 0.035) <= 1.0
    if upright:
        bubble &= centre[1] + 0.005 > Y
    body = body - 0.09 * bubble
    if hab.get("breast", 0) > 0:
        for side in SIGN:
            r = 0.11 + 0.09 * hab["breast"]
            e = ellipse_field(
                frame, (g.xc + SIGN[side] * 0.55 * w, g.dome[side] - 0.02 - 0.1 * r), r * 1.1, r
            )
            body = body + 0.09 * hab["breast"] * np.clip(3.0 * (1.0 - e), 0, 1) * (
                0.5 + 0.5 * np.clip((Y - g.dome[side] + 0.2) / 0.2, 0, 1)
            )
    return body.astype(np.float32)


def bone_density(g: Geometry, frame: Frame, bone: float, fracture: dict | None) -> np.ndarray:
    """Spine, ribs (posterior and fainter anterior), clavicles, humeral heads."""
    X, Y = frame.X, frame.Y
    band = slice(max(0, int((g.xc - 0.16) * frame.size)), int((g.xc + 0.16) * frame.size) + 1)
    d = X[:, band] - g.xc  # the spine only needs the central columns
    phase = ((Y[:, band] - g.rib_top) / RIB_SPACING) % 1.0
    spine = np.zeros_like(X)
    spine[:, band] = (np.abs(d) < 0.034) * (1.0 - 0.6 * (phase > 0.82)) * 0.07 + 0.04 * (
        ((np.abs(d) - 0.025) / 0.008) ** 2 + ((phase - 0.35) / 0.16) ** 2 < 1
    )  # vertebral bodies with disc spaces, and pedicles
    cv = Canvas(frame)
    ant = Canvas(frame)
    callus = np.zeros_like(X)
    for side in SIGN:
        s = SIGN[side]
        for i in range(1, 13):
            pts = g.rib_curve(side, i)
            if fracture and fracture["side"] == side and fracture["rib"] == i:
                parts, callus = _broken_rib(frame, pts, fracture)
            else:
                parts = [pts]
            for part in parts:
                cv.line(part, 0.026, 1.0)
                cv.line(part, 0.026 - 2.5 * frame.px, 0.6)
            y0 = g.rib_y0(i) + 0.09
            dd = np.linspace(g.half_width + 0.01, 0.28 * g.half_width, 10)
            ant.line(
                np.column_stack([g.xc + s * dd, y0 + 0.2 * (1 - dd / g.half_width)]), 0.02, 1.0
            )
        lat = g.xc + s * (g.half_width + 0.035)
        stern = g.xc + s * 0.045
        clav = [
            (stern, g.apex + 0.085),
            (0.6 * stern + 0.4 * lat, g.apex + 0.075),
            (0.25 * stern + 0.75 * lat, g.apex + 0.045),
            (lat, g.apex + 0.035),
        ]
        cv.line(clav, 0.024, 1.0)
        cv.ellipse((g.xc + s * (g.half_width + 0.095), g.apex + 0.06), 0.055, 0.06, 1.0)
    d = np.abs(X - g.xc)
    floor = np.where(g.xc > X, g.diaphragm("right", d), g.diaphragm("left", d))
    fade = 1.0 - 0.75 * (floor < Y)
    ribs = (cv.array() * 0.11 + ant.array() * 0.035) * fade + callus
    return (ribs + spine) * bone


# A rib fracture must be visible at the model's input size (256 px for maira2-mini, 518 px for
# MAIRA-2). The first phantom drew only a 3-point gap in a rib of density 0.11, which the
# thick rib strokes and the overlapping anterior ribs hid: at 192 px no crop showed a break and
# a trained encoder separated fractured from intact images at AUROC 0.47. Fractures are now
# drawn as a radiologist sees them on a frontal film: a cortical break with a step-off (larger
# when displaced) and the bright fusiform callus of a healing fracture around the break.
FRACTURE_STEP = {True: 0.03, False: 0.012}  # vertical step-off of the distal fragment
CALLUS_DENSITY = {True: 0.34, False: 0.38}  # peak density added by the callus
CALLUS_RADIUS = (0.045, 0.02)  # along and across the rib, patient units


def _broken_rib(
    frame: Frame, pts: np.ndarray, fracture: dict
) -> tuple[list[np.ndarray], np.ndarray]:
    """The rib's centre line cut at the fracture (a 3-point gap, the distal part stepped off)
    and the callus density field around the break."""
    k = int(round(fracture["position"] * (len(pts) - 1)))
    displaced = bool(fracture["displaced"])
    shift = np.array([0.0, FRACTURE_STEP[displaced]])
    centre = pts[k] + 0.5 * shift
    along = pts[k + 1] - pts[k - 1]
    along = along / np.linalg.norm(along)
    u = (frame.X - centre[0]) * along[0] + (frame.Y - centre[1]) * along[1]
    v = -(frame.X - centre[0]) * along[1] + (frame.Y - centre[1]) * along[0]
    r2 = (u / CALLUS_RADIUS[0]) ** 2 + (v / CALLUS_RADIUS[1]) ** 2
    callus = (CALLUS_DENSITY[displaced] * np.exp(-r2)).astype(np.float32)
    return [pts[: k - 1], pts[k + 2 :] + shift], callus


def vessel_markings(g: Geometry, size: int, rotation: float, rng) -> np.ndarray:
    """Lung markings: tapering vessels radiating from each hilum, wavy and of uneven weight.

    Drawn in polar coordinates around the hilum (angle picks a vessel, a radius-dependent
    phase makes it wander), on a half-resolution grid that is then upsampled: vectorised and
    cheap, yet at 64-256 px it reads as the branching vascular pattern of a normal lung.
    """
    fr = Frame(max(size // 2, 32), rotation)
    out = np.zeros((fr.size, fr.size), dtype=np.float32)
    cut = int(0.55 * fr.size)
    for side, cols in (("right", slice(0, cut)), ("left", slice(fr.size - cut, fr.size))):
        hx, hy = g.hilum[side]
        dx, dy = SIGN[side] * (fr.X[:, cols] - hx), fr.Y[:, cols] - hy
        r = np.hypot(dx, dy) + 1e-3
        theta = np.arctan2(dy, dx)
        phys = 0.011 * np.exp(-r / 0.12) + 0.0028  # vessel calibre tapers outwards
        for k, amp in ((7, 1.0), (17, 0.55)):
            ph = rng.uniform(0, 2 * np.pi, size=3)
            pos = theta * k / np.pi + 0.45 * np.sin(r * 23 + ph[0]) + 0.25 * np.sin(r * 51 + ph[1])
            pos = pos + ph[2]
            weight = rng.uniform(0.3, 1.0, size=2 * k + 4)[np.floor(pos).astype(int) % (2 * k + 4)]
            frac = np.clip(phys / (r * np.pi / k), 0.04, 0.35)
            out[:, cols] += amp * weight * np.exp(-((((pos % 1.0) - 0.5) / frac) ** 2))
    decay = np.exp(-np.hypot(fr.X - g.xc, fr.Y - g.hilum["left"][1]) / 0.3)
    img = Image.fromarray((out * decay).astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)


def lung_depth(g: Geometry, side: str, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Approximate distance inside the lung field to its nearest border (<= 0 outside)."""
    d = SIGN[side] * (X - g.xc)
    t = g.t_of(side, d, Y)
    med = g.med_half + (0.03 * g.magnification if side == "left" else 0.008) * np.exp(
        -(((Y - g.carina[1] + 0.035) / 0.035) ** 2)
    )  # aortic knob on the left, azygos/SVC contour on the right
    depth = np.minimum(g.lat(t) - d, d - med)
    depth = np.minimum(depth, g.diaphragm(side, d) - Y)
    return np.minimum(depth, t * (g.cp[side] - g.apex))


def lung_layers(g: Geometry, frame: Frame, rotation: float, rng: np.random.Generator):
    """Lung masks and the layers findings edit: air (to subtract) and vessel markings."""
    depth = {s: lung_depth(g, s, frame.X, frame.Y) for s in SIGN}
    masks = {f"{s}_lung": depth[s] > 0 for s in SIGN}
    thick = np.maximum(depth["left"], depth["right"])
    air = np.sqrt(np.clip(thick / 0.05, 0.0, 1.0))  # thicker lung away from its edges
    cv = Canvas(frame)
    cx, cy = g.carina
    cv.line([(cx + 0.004, -0.02), (cx, cy)], 0.032, 1.0)
    for side in SIGN:
        hx, hy = g.hilum[side]
        cv.line([(cx, cy - 0.005), (0.5 * (cx + hx), 0.5 * (cy + hy) - 0.01)], 0.018, 0.8)
    air = np.maximum(air, 0.4 * cv.array())  # trachea and main bronchi
    texture = 0.5 + 0.5 * smooth_noise(frame, rng, max(2.0, frame.size / 64))
    markings = vessel_markings(g, frame.size, rotation, rng) * air * (0.75 + 0.25 * texture)
    for side in SIGN:  # hilar shadows: the central pulmonary arteries
        e = ellipse_field(frame, g.hilum[side], 0.035, 0.06, reach=9.0)
        markings = markings + 0.7 * np.exp(-e) * air
    return masks, air, markings, texture
