"""The lateral view: same patient and findings seen from the side (anterior to the left).

Simpler than the frontal view and without masks, but consistent with it: the same diaphragm
height, heart size and findings, so a model given both views sees one patient. Effusions
blunt the posterior costophrenic sulcus, the enlarged heart fills the retrosternal space,
devices appear where they lie in depth (pacemaker anterior, enteric tube posterior).
"""

from __future__ import annotations

import numpy as np

from workbench.cxr.phantom.anatomy import AIR, MM_PER_UNIT, RIB_SPACING, Geometry
from workbench.cxr.phantom.draw import Canvas, Frame, ellipse_field, smooth_noise, spline
from workbench.cxr.phantom.lesions import ZONE_V

ANTERIOR, POSTERIOR = 0.2, 0.8  # lung extent front to back


def _diaphragm(g: Geometry, x: np.ndarray) -> np.ndarray:
    """Hemidiaphragm seen side-on: dome anteriorly, deep posterior costophrenic sulcus."""
    return g.dome["right"] - 0.02 + 0.16 * np.clip((x - 0.42) / 0.38, 0, None) ** 2


def _lung_depth(g: Geometry, fr: Frame) -> np.ndarray:
    """Distance inside the lung silhouette (both lungs superimposed); <= 0 outside."""
    X, Y = fr.X[:1], fr.Y[:, :1]  # unrotated frame: a row and a column broadcast
    t = np.clip((Y - g.apex) / (g.dome["right"] - g.apex), 0.0, 1.0)
    front = 0.5 - 0.31 * np.sqrt(np.clip(t * 1.7, 0, 1)) + 0.03 * (t - 0.55) ** 2
    back = 0.56 + 0.24 * np.sqrt(np.clip(t * 2.2, 0, 1))
    depth = np.minimum(X - front, back - X)
    return np.minimum(np.minimum(depth, _diaphragm(g, X) - Y), Y - g.apex)


def _lung(g: Geometry, fr: Frame) -> np.ndarray:
    """Boolean lung silhouette of the lateral view."""
    return _lung_depth(g, fr) > 0


def _point(g: Geometry, u: float, v: float) -> tuple[float, float]:
    """Lateral-view point at front-to-back fraction ``u`` and height fraction ``v``."""
    x = ANTERIOR + 0.05 + u * (POSTERIOR - ANTERIOR - 0.1)
    return x, g.apex + v * (float(_diaphragm(g, np.float32(x))) - g.apex)


def _anatomy(g: Geometry, fr: Frame, study: dict) -> tuple[np.ndarray, np.ndarray]:
    """Body + bone density and the air layer of a normal lateral view."""
    X, Y = fr.X[:1], fr.Y[:, :1]  # unrotated frame: a row and a column broadcast
    hab = study["subject"]["habitus"]
    front = np.interp(
        Y,
        [0, g.apex, g.apex + 0.2, 1],
        [0.38, 0.3, 0.13 - 0.04 * hab["soft_tissue"], 0.08 - 0.06 * hab["soft_tissue"]],
    )
    back = np.interp(Y, [0, g.apex, g.apex + 0.15, 1], [0.74, 0.84, 0.9, 0.93])
    mid, half = (front + back) / 2, (back - front) / 2
    rel = np.clip(1.0 - ((X - mid) / half) ** 2, 0.0, 1.0)
    inside = (rel > 0).astype(np.float32)
    body = np.sqrt(rel) * (0.32 + 0.1 * hab["soft_tissue"]) + 0.12 * inside
    body += 0.05 * (_diaphragm(g, X) < Y) * inside
    arms = ellipse_field(fr, (0.47, g.apex + 0.02), 0.24, 0.13)
    body += 0.1 * np.clip(1.0 - arms, 0.0, 1.0) * inside  # arms raised, superimposed
    phase = ((Y - g.rib_top) / RIB_SPACING) % 1.0
    spine_x = 0.79 - 0.03 * np.sin(np.pi * np.clip(Y, 0, 1))
    verts = (np.abs(X - spine_x) < 0.042) * (1.0 - 0.6 * (phase > 0.8))
    rim = (np.abs(np.abs(X - spine_x) - 0.04) < 0.006) * 0.6
    cv = Canvas(fr)
    cv.line([(0.2, g.apex + 0.1), (0.175, g.apex + 0.45)], 0.025, 1.0)  # sternum
    cv.ellipse((0.5, g.apex + 0.05), 0.08, 0.065, 0.5)  # humeral heads superimposed
    bone = (verts * 0.08 + rim * 0.05 + cv.array() * 0.08) * inside * hab["bone_density"]
    air = np.sqrt(np.clip(_lung_depth(g, fr) / 0.05, 0.0, 1.0))
    trachea = Canvas(fr)
    trachea.line([(0.52, -0.02), (0.55, g.carina[1])], 0.03, 1.0)
    air = np.maximum(air, 0.5 * trachea.array() * inside)
    return body + bone, air


def _findings(
    g: Geometry, fr: Frame, study: dict, air: np.ndarray, rng, nodule_v: float | None = None
) -> np.ndarray:
    """Density added by findings (the heart counts as one) and air given back by fluid.

    The nodule sits at height fraction ``nodule_v`` (where the frontal view drew it) when
    given, else at its sampled ``v``."""
    f = study["findings"]
    lung = _lung(g, fr)
    scale = study["ctr"] / 0.42
    heart = ellipse_field(fr, (0.36, g.dome["right"] - 0.07), 0.14 * scale, 0.12 * scale, -25) <= 1
    extra = 0.1 * (heart & (_diaphragm(g, fr.X) + 0.01 > fr.Y)) * air
    if "pleural_effusion" in f:
        sev = f["pleural_effusion"]["severity"]
        level = (
            g.dome["right"]
            + 0.04
            - (0.06 + 0.25 * sev)
            + 0.1 * np.clip((0.75 - fr.X) / 0.5, 0, 1) ** 2
        )
        fluid = lung & (level < fr.Y)
        air *= 1 - fluid
    for name in ("consolidation", "nodule"):
        if name in f:
            p = f[name]
            u = 0.35 if p["zone"] == "upper" else 0.65
            v = nodule_v if name == "nodule" and nodule_v is not None else p.get("v")
            c = _point(g, u, ZONE_V[p["zone"]] if v is None else v)
            r = p["size_mm"] / 2 / MM_PER_UNIT if name == "nodule" else 0.05 + 0.04 * p["severity"]
            e = ellipse_field(fr, c, r, r) + (
                0.3 * smooth_noise(fr, rng, 6) if name != "nodule" else 0
            )
            extra += 0.22 * ((e < 1) & lung)
    if "edema" in f:
        extra += (
            0.18
            * f["edema"]["severity"]
            * np.exp(-ellipse_field(fr, (0.5, g.hilum["right"][1]), 0.2, 0.22, reach=9.0))
            * air
        )
    if "atelectasis" in f:
        cv = Canvas(fr)
        a = _point(g, 0.4, 0.8)
        cv.line([a, (a[0] + 0.2, a[1] + 0.03)], 0.012, 1.0)
        extra += 0.2 * cv.array() * lung
    return extra


def _devices(g: Geometry, fr: Frame, devices: dict) -> np.ndarray:
    """Metal layer of the devices as seen from the side."""
    cv = Canvas(fr)
    ra = (0.42, g.dome["right"] - 0.1)
    if "pacemaker" in devices:
        cv.polygon(
            [
                (0.12, g.apex + 0.12),
                (0.17, g.apex + 0.1),
                (0.19, g.apex + 0.17),
                (0.14, g.apex + 0.19),
            ],
            1.0,
        )
        cv.line(
            spline(
                [
                    (0.17, g.apex + 0.12),
                    (0.4, g.apex + 0.1),
                    (0.45, g.carina[1]),
                    ra,
                    (0.3, g.dome["right"] - 0.04),
                ],
                10,
            ),
            0.007,
            1.0,
        )
    if "endotracheal_tube" in devices:
        tip = g.carina[1] - devices["endotracheal_tube"]["tip_cm_above_carina"] / MM_PER_UNIT * 10
        cv.line([(0.49, -0.02), (0.535, tip)], 0.007, 1.0)
    if "central_line" in devices:
        cv.line(
            spline([(0.45, g.apex), (0.45, g.carina[1]), (0.44, g.carina[1] + 0.06)], 8), 0.007, 1.0
        )
    if "enteric_tube" in devices:
        pts = [(0.6, -0.02), (0.62, g.carina[1]), (0.6, g.dome["right"] - 0.02)]
        if devices["enteric_tube"]["tip"] == "stomach":
            pts += [(0.5, g.dome["right"] + 0.07), (0.38, g.dome["right"] + 0.09)]
        cv.line(spline(pts, 10), 0.008, 1.0)
    if "sternotomy_wires" in devices:
        for y in np.linspace(g.apex + 0.14, g.apex + 0.42, devices["sternotomy_wires"]["count"]):
            cv.line([(0.155, y), (0.2, y + 0.006)], 0.008, 1.0)
    return cv.array()


def render_lateral(
    study: dict,
    g: Geometry,
    size: int,
    rng: np.random.Generator,
    nodule_v: float | None = None,
) -> np.ndarray:
    """Density map of the lateral view (grey conversion is the caller's); ``nodule_v``: the
    height fraction the frontal view drew the nodule at (None: the sampled ``v``)."""
    fr = Frame(size, 0.0)
    base, air = _anatomy(g, fr, study)
    extra = _findings(g, fr, study, air, rng, nodule_v)
    metal = _devices(g, fr, study["devices"])
    tex = smooth_noise(fr, rng, max(2.0, size / 64))
    return base - AIR * 0.85 * air + 0.02 * tex * air + extra + 0.75 * metal
