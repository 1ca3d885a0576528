"""One study's ground truth -> frontal (and lateral) pixels plus the frontal masks.

``render_study`` is the single entry the generator calls per study. It is a pure function of
the study record and a generator seeded from ``(seed, study index)``, so a study renders to the
same bytes in any process and in any order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from workbench.cxr.phantom import lesions
from workbench.cxr.phantom.anatomy import (
    AIR,
    body_density,
    bone_density,
    frontal_geometry,
    heart_fields,
    heart_mask,
    heart_width_px,
    lung_layers,
    place_heart,
    thorax_width_px,
)
from workbench.cxr.phantom.devices import draw_devices
from workbench.cxr.phantom.draw import Frame, smooth, smooth_noise
from workbench.cxr.phantom.lateral import render_lateral

# findings whose mask hides the lung under it: a nodule is placed off them (edema, a diffuse
# haze that a nodule still shows through, is not one)
HIDING = ("consolidation", "atelectasis", "pleural_effusion", "pneumothorax")


class Rendered(NamedTuple):
    frontal: np.ndarray  # uint8 [S, S]
    lateral: np.ndarray | None  # uint8 [S, S] or None when the study has no lateral view
    masks: dict[str, np.ndarray]  # name -> bool [S, S], frontal only
    measured: dict[str, float]  # quantities measured on the masks (e.g. the CTR)


def to_grey(density: np.ndarray, acq: dict, rng: np.random.Generator) -> np.ndarray:
    """Density -> 8-bit grey: exposure and contrast, quantum noise, detector blur.

    ``acq`` may carry ``detector_blur`` (px, default 0.8) and ``display_gamma`` (default
    1.1); the cohort never sets them, a "scanner shift" test set does (segmentation.perturb).
    """
    img = 1.0 - np.exp(-2.1 * density * acq["exposure"])
    img = img / (1.0 - np.exp(-2.1 * 1.05)) + acq["brightness"]
    img = smooth(img, acq.get("detector_blur", 0.8))  # detector unsharpness
    half = max(img.shape[0] // 2, 16)
    noise = Image.fromarray(rng.standard_normal((half, half), dtype=np.float32), mode="F")
    noise = np.asarray(noise.resize(img.shape[::-1], Image.BILINEAR), dtype=np.float32)
    img = img + acq["noise"] * (0.6 + 0.6 * (1.0 - np.clip(img, 0, 1))) * noise * 0.9
    gamma = acq.get("display_gamma", 1.1)
    return np.round(np.clip(img, 0.0, 1.0) ** gamma * 255.0).astype(np.uint8)


def _apply_findings(study, g, frame, lay, masks, rng) -> tuple[float, float] | None:
    """Draw each present finding into ``lay`` and add its mask to ``masks``; return the
    ``(u, v)`` the nodule was drawn at (None without a nodule).

    The nodule comes after every finding that hides lung (consolidation, atelectasis,
    effusion, pneumothorax), so it can be placed where none of them covers it: a nodule
    under an effusion would be labelled yet invisible. Only the opacities and the nodule
    draw from ``rng``, in the same order as before, and the rest only read the layers the
    nodule does not write, so studies without a nodule render as they did.
    """
    f = study["findings"]
    drawn = None
    lungs = {k: masks[k] for k in ("left_lung", "right_lung")}
    if "cardiomegaly" in f:
        masks["cardiomegaly"] = masks["heart"].copy()
    for name, fn in (
        ("consolidation", lesions.consolidation),
        ("atelectasis", lesions.atelectasis),
        ("edema", lesions.edema),
    ):
        if name in f:
            masks[name] = fn(g, frame, lay, lungs, f[name], rng)
    if "pleural_effusion" in f:
        supine = study["acquisition"]["position"] == "supine"
        masks["pleural_effusion"] = lesions.effusion(
            g, frame, lay, lungs, f["pleural_effusion"], supine
        )
    if "pneumothorax" in f:
        masks["pneumothorax"] = lesions.pneumothorax(g, frame, lay, lungs, f["pneumothorax"])
    if "nodule" in f:
        occupied = hiding_mask(masks)
        masks["nodule"], profile, drawn = lesions.nodule(
            g, frame, lay, lungs, f["nodule"], rng, occupied
        )
        for i, m in enumerate(lesions.annotators(profile, f["nodule"]["contrast"], frame, rng)):
            masks[f"nodule_annotator_{i}"] = m
    if "rib_fracture" in f:
        masks["rib_fracture"] = lesions.fracture_mask(g, frame, f["rib_fracture"])
    return drawn


def hiding_mask(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Union of the masks of the present findings that hide the lung under them."""
    occupied = np.zeros_like(masks["heart"])
    for name in HIDING:
        if name in masks:
            occupied |= masks[name]
    return occupied


def nodule_free_frac(study: dict, masks: dict[str, np.ndarray]) -> float:
    """Share of the nodule mask over free lung: its side's lung (minus the heart) not
    covered by a hiding finding. Below 1.0 where no free place was left in its zone, or
    where a place the first generator's heart test accepted (it looks at one row) has part
    of the nodule over the heart or past the lung edge."""
    lung = masks[f"{study['findings']['nodule']['side']}_lung"] & ~hiding_mask(masks)
    nod = masks["nodule"]
    return round(float((nod & lung).sum() / max(int(nod.sum()), 1)), 3)


def render_frontal(study: dict, size: int, rng: np.random.Generator):
    """Frontal image, masks, measurements, geometry and the nodule's drawn ``(u, v)`` (None
    without a nodule) of one study."""
    acq, hab = study["acquisition"], study["subject"]["habitus"]
    # independent streams: adding a finding never changes the anatomy or the noise
    anatomy_rng, findings_rng, noise_rng = rng.spawn(3)
    frame = Frame(size, acq["rotation_deg"])
    g = frontal_geometry(study)
    masks, air, markings, texture = lung_layers(g, frame, acq["rotation_deg"], anatomy_rng)
    thorax = thorax_width_px(masks["left_lung"], masks["right_lung"])
    place_heart(g, study["ctr"], thorax, frame)
    heart = heart_mask(g, frame)
    masks["heart"] = heart
    for k in ("left_lung", "right_lung"):
        masks[k] = masks[k] & ~heart
    heart_soft = heart.astype(np.float32)
    lv, ra = heart_fields(g, frame)
    bulk = np.sqrt(np.clip(1.0 - np.minimum(lv, ra), 0.0, 1.0)) * heart_soft
    lay = lesions.Layers(
        body=body_density(g, frame, hab, acq["position"] != "supine")
        + 0.04 * heart_soft
        + 0.03 * bulk,
        bone=bone_density(g, frame, hab["bone_density"], study["findings"].get("rib_fracture")),
        air=air * (1.0 - heart_soft),
        markings=markings * (1.0 - 0.8 * heart_soft),
        extra=np.zeros_like(air),
        metal=np.zeros_like(air),
    )
    nodule_uv = _apply_findings(study, g, frame, lay, masks, findings_rng)
    lay.metal, device_masks = draw_devices(g, frame, study["devices"])
    masks.update(device_masks)
    mottle = smooth_noise(frame, anatomy_rng, max(2.0, size / 16)) * np.clip(lay.body, 0.0, 0.3)
    density = (
        0.06 * mottle  # uneven soft tissue, so the body is not a flat grey
        + lay.body
        + lay.bone
        - AIR * lay.air
        + 0.13 * lay.markings
        + 0.025 * (texture - 0.5) * lay.air
        + lay.extra
        + 0.75 * lay.metal
    )
    measured = {
        "thorax_width_px": thorax,
        "heart_width_px": heart_width_px(heart),
        "ctr_measured": round(heart_width_px(heart) / max(thorax, 1), 4),
    }
    if nodule_uv is not None:
        measured["nodule_free_frac"] = nodule_free_frac(study, masks)
        # where it was drawn; the record's findings keep the sampled u, v
        measured["nodule_drawn_u"], measured["nodule_drawn_v"] = (round(c, 4) for c in nodule_uv)
    return to_grey(density, acq, noise_rng), masks, measured, g, nodule_uv


def render_study(study: dict, size: int, rng: np.random.Generator) -> Rendered:
    """Frontal + optional lateral view of one study, with the frontal masks.

    The frontal view is rendered first; the lateral draws the nodule at the height the
    frontal drew it (it may have moved off a hiding finding), not the sampled one.
    """
    frontal_rng, lateral_rng = rng.spawn(2)
    frontal, masks, measured, g, nodule_uv = render_frontal(study, size, frontal_rng)
    lateral = None
    if study["acquisition"]["lateral"]:
        lat_rng, lat_noise = lateral_rng.spawn(2)
        nodule_v = None if nodule_uv is None else nodule_uv[1]
        density = render_lateral(study, g, size, lat_rng, nodule_v)
        lateral = to_grey(density, study["acquisition"], lat_noise)
    return Rendered(frontal, lateral, masks, measured)
