"""Findings drawn into the density layers, each returning the mask of the region it changed.

Every finding edits the layers of :class:`Layers` in the region its mask names and nowhere
else, so the ground truth and the pixels cannot disagree: an effusion returns the air of the
lung base (it turns white and hides the vessels), a pneumothorax removes the vessels beyond
a visceral pleural line, an opacity adds density over the lung. Cardiomegaly is the heart
size itself (see ``anatomy.place_heart``) and a rib fracture is drawn with the ribs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from workbench.cxr.phantom.anatomy import MM_PER_UNIT, SIGN, Geometry, lung_field
from workbench.cxr.phantom.cohort import ZONE_SPAN
from workbench.cxr.phantom.draw import Canvas, Frame, ellipse_field, smooth, smooth_noise

ZONE_V = MappingProxyType({"upper": 0.24, "middle": 0.5, "lower": 0.76})


@dataclass
class Layers:
    """Density components of a frontal image; the renderer sums them at the end."""

    body: np.ndarray
    bone: np.ndarray
    air: np.ndarray  # 0..1 aeration, multiplied by anatomy.AIR and subtracted
    markings: np.ndarray  # vessels, 0..~1
    extra: np.ndarray  # added density from opacities
    metal: np.ndarray  # devices, 0..1


def sides_of(side: str) -> tuple[str, ...]:
    """('left', 'right') for bilateral findings, else the one side."""
    return ("left", "right") if side == "bilateral" else (side,)


def effusion(
    g: Geometry, fr: Frame, lay: Layers, lungs: dict, p: dict, supine: bool = False
) -> np.ndarray:
    """Fluid in the dependent pleural space.

    Upright: the lung base turns white below a meniscus that rises laterally and the
    costophrenic angle is blunted. Supine: the fluid layers behind the lung, a veil that
    thickens towards the base with vessels still seen through it; the mask is where the
    veil is at least a third of its full density (always including the angle).
    """
    veil = np.zeros_like(lay.air)
    for side in sides_of(p["side"]):
        sev = p["severity"] * (0.85 if p["side"] == "bilateral" and side == "left" else 1.0)
        d = SIGN[side] * (fr.X - g.xc)
        h = g.cp[side] - g.apex
        frac = 0.14 + 0.42 * sev
        lung = lungs[f"{side}_lung"]
        if supine:
            top = g.cp[side] - 1.6 * frac * h
            veil = np.maximum(veil, np.clip((fr.Y - top) / (1.3 * frac * h), 0, 1) * lung)
        else:
            lateral = np.clip((d - g.med_half) / (g.half_width - g.med_half), 0.0, 1.0)
            meniscus = g.cp[side] - 0.75 * frac * h - 0.45 * frac * h * lateral**3
            veil = np.maximum(veil, lung & (meniscus < fr.Y))
    depth = 0.75 if supine else 1.0
    lay.air *= 1.0 - depth * veil
    lay.markings *= 1.0 - (0.25 if supine else 1.0) * veil
    lay.extra += 0.05 * veil
    return veil > (1 / 3 if supine else 0.5)


def pneumothorax(g: Geometry, fr: Frame, lay: Layers, lungs: dict, p: dict) -> np.ndarray:
    """Air outside the collapsed lung: darker, no vessels, a thin visceral pleural line."""
    side = p["side"]
    h = g.cp[side] - g.apex
    cx, cy = g.xc + SIGN[side] * 0.3 * g.half_width, g.cp[side] - 0.22 * h
    k = 1.0 - (0.13 + 0.33 * p["severity"])
    collapsed = lung_field(g, side, cx + (fr.X - cx) / k, cy + (fr.Y - cy) / k)
    lung = lungs[f"{side}_lung"]
    mask = lung & ~collapsed
    line = collapsed & ndimage.binary_dilation(mask, iterations=1)
    soft = mask.astype(np.float32)
    lay.markings *= 1.0 - soft
    lay.air += 0.3 * soft * lay.air
    lay.extra += 0.09 * line
    return mask


def opacity_blob(
    g: Geometry, fr: Frame, lungs: dict, side: str, centre, r: float, rng: np.random.Generator
) -> np.ndarray:
    """An irregular patch of airspace opacity clipped to one lung."""
    e = ellipse_field(fr, centre, r * 1.25, r, rng.uniform(-20, 20))
    n = smooth_noise(fr, rng, max(2.0, fr.size / 28))
    return (e + 0.35 * n < 1.0) & lungs[f"{side}_lung"]


def consolidation(
    g: Geometry, fr: Frame, lay: Layers, lungs: dict, p: dict, rng: np.random.Generator
) -> np.ndarray:
    """Dense airspace opacity with air bronchograms in a lung zone."""
    centre = g.lung_point(p["side"], p["u"], ZONE_V[p["zone"]])
    mask = opacity_blob(g, fr, lungs, p["side"], centre, 0.045 + 0.045 * p["severity"], rng)
    soft = smooth(mask.astype(np.float32), 1.5)
    cv = Canvas(fr)
    for _ in range(3):
        a = rng.uniform(0, 2 * math.pi)
        tip = (centre[0] + 0.06 * math.cos(a), centre[1] + 0.06 * math.sin(a))
        cv.line([centre, tip], 1.5 / fr.size, 1.0)
    bronchi = cv.array() * ndimage.binary_erosion(mask, iterations=2)
    lay.extra += (0.2 + 0.1 * p["severity"]) * soft - 0.08 * bronchi
    lay.markings *= 1.0 - 0.7 * soft
    return mask


def atelectasis(
    g: Geometry, fr: Frame, lay: Layers, lungs: dict, p: dict, rng: np.random.Generator
) -> np.ndarray:
    """Plate-like (linear) or basal wedge-shaped opacity at the lung base(s)."""
    cv = Canvas(fr)
    for side in sides_of(p["side"]):
        s = SIGN[side]
        if p["kind"] == "plate":
            cx, cy = g.lung_point(side, 0.5, 0.74 + rng.uniform(-0.05, 0.05))
            tilt = rng.uniform(-0.02, 0.03)
            cv.line(
                [(cx - s * 0.1, cy - tilt), (cx + s * 0.1, cy + tilt)],
                0.013 + 0.012 * p["severity"],
                1.0,
            )
        else:
            top = g.lung_point(side, 0.08, 0.58 - 0.15 * p["severity"])
            cv.polygon(
                [
                    top,
                    g.lung_point(side, 0.55 + 0.2 * p["severity"], 0.96),
                    g.lung_point(side, 0.02, 0.99),
                ],
                1.0,
            )
    mask = (cv.array() > 0.5) & (lungs["left_lung"] | lungs["right_lung"])
    soft = mask.astype(np.float32)
    lay.extra += 0.24 * soft
    lay.markings *= 1.0 - 0.5 * soft
    return mask


def edema(
    g: Geometry, fr: Frame, lay: Layers, lungs: dict, p: dict, rng: np.random.Generator
) -> np.ndarray:
    """Bilateral perihilar haze, indistinct vessels, Kerley B lines when not mild."""
    sev = p["severity"]
    lung = lungs["left_lung"] | lungs["right_lung"]
    haze = np.zeros_like(lay.air)
    cv = Canvas(fr)
    for side in SIGN:
        e = ellipse_field(fr, g.hilum[side], 0.13 + 0.08 * sev, 0.17 + 0.08 * sev, reach=9.0)
        haze = np.maximum(haze, np.exp(-e))
        if sev >= 0.4:
            for _ in range(8):
                v = rng.uniform(0.62, 0.92)
                x, y = g.lung_point(side, 0.97, v)
                cv.line([(x, y), (x - SIGN[side] * 0.028, y)], 1.2 / fr.size, 1.0)
    haze *= lay.air
    lay.markings = smooth(lay.markings, 1.0 + 1.5 * sev)
    lay.extra += (0.12 + 0.2 * sev) * haze + 0.07 * cv.array() * lay.air
    return lung & (haze > 0.35)


def nodule(
    g: Geometry,
    fr: Frame,
    lay: Layers,
    lungs: dict,
    p: dict,
    rng: np.random.Generator,
    occupied: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A round, slightly lobulated nodule; returns its mask, the soft profile and the
    ``(u, v)`` it was drawn at (the sampled ``p['u'], p['v']`` unless it had to move).

    The nodule sits in free aerated lung of its side and zone (see :func:`place_nodule`):
    off the heart and off ``occupied``, the masks of the findings that hide the lung under
    them (consolidation, atelectasis, pleural effusion, pneumothorax). Edema is a diffuse
    bilateral haze that a nodule still shows through, so it does not count as occupied.
    """
    r = p["size_mm"] / 2 / MM_PER_UNIT * g.magnification
    ph = rng.uniform(0, 2 * math.pi, size=2)
    if occupied is None:
        occupied = np.zeros_like(lungs["left_lung"])
    cx, cy, u, v = place_nodule(g, fr, lungs[f"{p['side']}_lung"], occupied, p, r, ph)
    window = _window(fr, cx, cy, 1.12 * r)
    rho = np.full((fr.size, fr.size), np.inf, dtype=np.float32)
    rho[window] = _nodule_rho(fr, cx, cy, r, ph, window)  # as place_nodule judged it
    profile = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0)).astype(np.float32)
    lay.extra += (0.1 + 0.18 * p["contrast"]) * profile
    return rho <= 1.0, profile, (u, v)


def _nodule_rho(fr: Frame, cx: float, cy: float, r: float, ph: np.ndarray, window=None):
    """Distance from the centre over the local radius of the lobulated outline (<= 1 inside),
    on the whole grid or on ``window`` (a pair of slices)."""
    X, Y = (fr.X, fr.Y) if window is None else (fr.X[window], fr.Y[window])
    theta = np.arctan2(Y - cy, X - cx)
    radius = r * (1 + 0.07 * np.sin(3 * theta + ph[0]) + 0.04 * np.sin(5 * theta + ph[1]))
    return np.hypot(X - cx, Y - cy) / radius


def place_nodule(
    g: Geometry,
    fr: Frame,
    lung: np.ndarray,
    occupied: np.ndarray,
    p: dict,
    r: float,
    ph: np.ndarray,
) -> tuple[float, float, float, float]:
    """Centre ``(x, y, u, v)`` of a nodule of radius ``r`` in free lung of its side and zone.

    First the sampled ``g.lung_point(side, u, v)`` and lateral steps of 0.06 in ``u`` (the
    first generator's search, to clear the heart): the first whose centre and the two ends
    of its horizontal diameter lie in ``lung`` (the side's lung field minus the heart) and
    whose lobulated outline touches no ``occupied`` pixel is taken, so a nodule that was
    already free stays where it was. Then a grid over the zone's band (:func:`zone_band`,
    ``u`` 0.05-0.95), nearest to the sampled point first: the first whose outline lies
    wholly in free lung (``lung`` and not ``occupied``). When none is free (a large effusion
    over the whole lower zone, a large pneumothorax over the apex), the candidate with the
    fewest outline pixels outside free lung is taken: the nodule is then partly or wholly
    hidden, as it would be on a real film (``measured['nodule_free_frac']`` says how much).
    """
    lateral, grid = _candidates(g, p)
    best, best_hidden = None, None
    for legacy, (u, v) in [(True, c) for c in lateral] + [(False, c) for c in grid]:
        x, y = g.lung_point(p["side"], u, v)
        window = _window(fr, x, y, 1.12 * r)
        if window is None:
            continue
        inside = _nodule_rho(fr, x, y, r, ph, window) <= 1.0
        hidden = int((inside & ~(lung[window] & ~occupied[window])).sum())
        if hidden == 0 or (
            legacy and _straddles_lung(fr, lung, x, y, r) and not (inside & occupied[window]).any()
        ):
            return x, y, u, v
        if best_hidden is None or hidden < best_hidden:
            best, best_hidden = (x, y, u, v), hidden
    if best is None:
        raise ValueError(f"nodule {dict(p)}: no candidate position inside the image")
    return best


def zone_band(zone: str) -> tuple[float, float]:
    """Height fractions a nodule of ``zone`` may take: the zone's sampling span
    (``cohort.ZONE_SPAN``) widened halfway into the gaps to its neighbours, and to 0.05 / 0.97
    at the apex / base, so a moved nodule is still nearer its own zone than any other."""
    spans = list(ZONE_SPAN.values())  # apex to base
    k = list(ZONE_SPAN).index(zone)
    lo = 0.05 if k == 0 else (spans[k - 1][1] + spans[k][0]) / 2
    hi = 0.97 if k == len(spans) - 1 else (spans[k][1] + spans[k + 1][0]) / 2
    return lo, hi


def _candidates(g: Geometry, p: dict) -> tuple[list, list]:
    """(u, v) positions to try: the sampled one and its lateral steps; the zone grid."""
    u0, v0 = p["u"], p["v"]
    lateral = [(u0, v0)]
    for _ in range(11):  # summed step by step, as before, so the same points come out
        lateral.append((min(lateral[-1][0] + 0.06, 0.9), v0))
    lo, hi = zone_band(p["zone"])
    n = max(2, int(round((hi - lo) / 0.015)))
    vs = lo + (np.arange(n) + 0.5) * (hi - lo) / n  # cell centres: never on a band edge
    grid = [(round(float(u), 3), float(v)) for v in vs for u in np.arange(0.05, 0.951, 0.025)]
    start = g.lung_point(p["side"], u0, v0)
    grid.sort(key=lambda uv: math.dist(g.lung_point(p["side"], *uv), start))
    return list(dict.fromkeys(lateral)), grid


def _window(fr: Frame, x: float, y: float, reach: float):
    """Slices of the pixels within ``reach`` (units) of ``(x, y)``; None if it is off-image."""
    ((px, py),) = fr.to_px([(x, y)])
    h = reach * fr.size + 2
    x0, x1 = max(0, int(px - h)), min(fr.size, int(px + h) + 1)
    y0, y1 = max(0, int(py - h)), min(fr.size, int(py + h) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _straddles_lung(fr: Frame, lung: np.ndarray, x: float, y: float, r: float) -> bool:
    """Whether the centre and both ends of the horizontal diameter are in ``lung`` (the test
    the first generator used to keep nodules off the heart)."""
    reach = max(1, int(r * fr.size))
    ((px, py),) = fr.to_px([(x, y)])
    col, row = int(px), int(py)
    cols = np.clip([col - reach, col, col + reach], 0, fr.size - 1)
    return bool(0 <= row < fr.size and lung[row, cols].all())


def annotators(
    profile: np.ndarray, contrast: float, frame: Frame, rng: np.random.Generator
) -> list[np.ndarray]:
    """Four simulated graders of one nodule, disagreeing the way human graders do.

    0 draws tight (high threshold, eroded), 1 generous (low threshold, dilated), 2 follows a
    wobbly hand-drawn outline, 3 is conservative and often misses faint nodules.
    """
    seen = smooth(profile, 1.0)
    wobble = smooth_noise(frame, rng, max(2.0, frame.size / 48))
    t = rng.uniform(-0.05, 0.05, size=4)
    g0 = ndimage.binary_erosion(seen > 0.4 + t[0], iterations=1)
    g1 = ndimage.binary_dilation(seen > 0.12 + t[1], iterations=1)
    g2 = seen + 0.12 * wobble > 0.3 + t[2]
    missed = contrast < 0.55 and rng.random() < 0.7
    g3 = np.zeros_like(g2) if missed else seen > 0.38 + t[3]
    return [g0, g1, g2 & (seen > 0.02), g3]


def fracture_mask(g: Geometry, fr: Frame, p: dict) -> np.ndarray:
    """Region around the cortical break of the fractured rib."""
    pts = g.rib_curve(p["side"], p["rib"])
    cx, cy = pts[int(round(p["position"] * (len(pts) - 1)))]
    return ellipse_field(fr, (cx, cy), 0.03, 0.03) <= 1.0
