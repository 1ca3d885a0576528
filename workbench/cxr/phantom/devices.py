"""Support devices on a frontal image: metal and radiopaque plastic, each with its mask.

Paths follow real anatomy: leads and central lines travel through the subclavian or jugular
vein into the superior vena cava (right of midline) and on to the right atrium or ventricle;
the endotracheal tube sits in the trachea with its tip above the carina; the enteric tube runs
down the oesophagus, crosses the left hemidiaphragm and ends in the stomach. Devices are drawn
large and dense enough to stay visible when the image is shrunk to ~64 px.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np

from workbench.cxr.phantom.anatomy import MM_PER_UNIT, SIGN, Geometry
from workbench.cxr.phantom.draw import Canvas, Frame, spline

LINE = 0.007  # width of a lead / catheter, image units


def _svc(g: Geometry) -> tuple[float, float]:
    """Where the superior vena cava meets the level of the carina."""
    return g.xc - 0.045 * g.magnification, g.carina[1]


def _heart_point(g: Geometry, along: float, across: float = 0.0) -> tuple[float, float]:
    """A point inside the heart, ``along`` its long axis towards the apex (-1..1)."""
    h = g.heart
    c, s = math.cos(math.radians(h["tilt"])), math.sin(math.radians(h["tilt"]))
    u, v = along * h["a"], across * h["b"]
    return h["cx"] + u * c - v * s, h["cy"] + u * s + v * c


def _superellipse(centre, rx: float, ry: float, n: int = 32) -> np.ndarray:
    """Polygon of a rounded rectangle (the pacemaker can)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.column_stack(
        [
            centre[0] + rx * np.sign(c) * np.abs(c) ** 0.35,
            centre[1] + ry * np.sign(s) * np.abs(s) ** 0.35,
        ]
    )


def pacemaker(g: Geometry, cv: Canvas, p: dict) -> None:
    """Generator in the infraclavicular pocket, transvenous leads to the right heart."""
    s = SIGN[p["side"]]
    gen = (g.xc + s * (0.55 * g.half_width + 0.03), g.apex + 0.15)
    rx, ry = (0.05, 0.037) if p["kind"] == "icd" else (0.042, 0.032)
    cv.polygon(_superellipse(gen, rx, ry), 1.0)
    cv.polygon(_superellipse((gen[0], gen[1] - ry * 0.75), rx * 0.6, ry * 0.3), 0.75)
    svc = _svc(g)
    entry = [
        (gen[0] - s * rx * 0.8, gen[1] - ry * 0.6),
        (g.xc + s * 0.2, g.apex + 0.095),
        (g.xc + s * 0.09, g.apex + 0.11),
        (svc[0], svc[1] - 0.07),
        svc,
    ]
    ra = _heart_point(g, -0.75, -0.15)
    targets = [
        [ra, _heart_point(g, 0.1, 0.35), _heart_point(g, 0.75, 0.2)],
        [ra, _heart_point(g, -0.55, -0.75), _heart_point(g, -0.35, -0.85)],
        [ra, _heart_point(g, 0.2, -0.7), _heart_point(g, 0.85, -0.55)],
    ]
    for i in range(p["leads"]):
        path = spline(entry + targets[i], 10)
        cv.line(path, LINE, 1.0)
        if p["kind"] == "icd" and i == 0:  # shock coils in the SVC and right ventricle
            cv.line(path[-14:-3], 2.3 * LINE, 1.0)
            cv.line(path[38:50], 2.0 * LINE, 1.0)


def endotracheal_tube(g: Geometry, cv: Canvas, p: dict) -> None:
    """Tube in the trachea, radiopaque stripe, tip ``tip_cm_above_carina`` above the carina."""
    tip = g.carina[1] - p["tip_cm_above_carina"] * 10.0 / MM_PER_UNIT * g.magnification
    pts = [(g.xc + 0.004, -0.02), (g.xc, g.apex + 0.02), (g.xc, tip)]
    cv.line(pts, 0.026, 0.45)
    cv.line([(x - 0.007, y) for x, y in pts], max(LINE, 2.0 / cv.frame.size), 1.0)


def central_line(g: Geometry, cv: Canvas, p: dict) -> None:
    """CVC from the internal jugular or subclavian vein, or a PICC from the arm, into the SVC."""
    s = SIGN[p["side"]]
    svc = _svc(g)
    if p["kind"] == "ij":
        start = [
            (g.xc + s * 0.1, -0.02),
            (g.xc + s * 0.08, g.apex + 0.04),
            (g.xc + s * 0.06, g.apex + 0.11),
        ]
    elif p["kind"] == "subclavian":
        start = [(g.xc + s * 0.75 * g.half_width, g.apex + 0.085), (g.xc + s * 0.12, g.apex + 0.11)]
    else:
        start = [
            (g.xc + s * (g.half_width + 0.2), g.apex + 0.24),
            (g.xc + s * (g.half_width + 0.02), g.apex + 0.11),
            (g.xc + s * 0.45 * g.half_width, g.apex + 0.1),
            (g.xc + s * 0.1, g.apex + 0.12),
        ]
    drop = {"svc": 0.015, "cavoatrial junction": 0.07, "right atrium": 0.125}[p["tip"]]
    tip = (svc[0] - 0.01 * (p["tip"] == "right atrium"), svc[1] + drop)
    path = spline([*start, (svc[0] + 0.006, svc[1] - 0.06), (svc[0], svc[1] - 0.02), tip], 10)
    cv.line(path, 1.4 * LINE, 1.0)


def enteric_tube(g: Geometry, cv: Canvas, p: dict) -> None:
    """Naso/orogastric tube down the oesophagus, across the left hemidiaphragm."""
    dome = g.dome["left"]
    pts = [(g.xc + 0.003, -0.02), (g.xc + 0.01, g.carina[1]), (g.xc + 0.025, dome - 0.05)]
    if p["tip"] == "stomach":
        pts += [
            (g.xc + 0.06, dome + 0.045),
            (g.xc + 0.4 * g.half_width, dome + 0.09),
            (g.xc + 0.62 * g.half_width, dome + 0.06),
        ]
    path = spline(pts, 12)
    cv.line(path, 1.2 * LINE, 1.0)


def sternotomy_wires(g: Geometry, cv: Canvas, p: dict) -> None:
    """Twisted median sternotomy wire loops stacked along the sternum."""
    top, bottom = g.carina[1] - 0.07, g.heart["cy"] + 0.02
    for y in np.linspace(top, bottom, p["count"]):
        cv.ellipse((g.xc, float(y)), 0.02, 0.011, 1.0, outline_width=2.2 / cv.frame.size)
        cv.line([(g.xc - 0.003, y - 0.014), (g.xc + 0.003, y + 0.014)], 1.5 / cv.frame.size, 1.0)


DRAWERS = MappingProxyType(
    {
        "pacemaker": pacemaker,
        "endotracheal_tube": endotracheal_tube,
        "central_line": central_line,
        "enteric_tube": enteric_tube,
        "sternotomy_wires": sternotomy_wires,
    }
)


def draw_devices(g: Geometry, frame: Frame, devices: dict) -> tuple[np.ndarray, dict]:
    """Metal layer (0..1) of all devices and one boolean mask per device present."""
    metal = np.zeros((frame.size, frame.size), dtype=np.float32)
    masks = {}
    for name, params in devices.items():
        cv = Canvas(frame)
        DRAWERS[name](g, cv, params)
        layer = cv.array()
        masks[name] = layer > 0.2
        metal = np.maximum(metal, layer)
    return metal, masks
