"""Every finding and device is visible in the pixels its mask claims, and nowhere else.

Each test renders the same study with and without one concept, from the same seed, and
compares grey levels inside and outside the concept's mask.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import ndimage

from workbench.cxr.phantom import lateral, lesions
from workbench.cxr.phantom.anatomy import frontal_geometry
from workbench.cxr.phantom.cohort import (
    ZONE_SPAN,
    rng_for,
    sample_params,
    sample_subject,
    subject_studies,
)
from workbench.cxr.phantom.draw import Frame
from workbench.cxr.phantom.lateral import render_lateral
from workbench.cxr.phantom.render import render_study

SIZE = 160


def base_study(**acq) -> dict:
    """A healthy PA study of an average subject; tests add one concept at a time."""
    subject = sample_subject(0, 0, (0.8, 0.1))
    study = copy.deepcopy(subject_studies(0, subject, 0, 1)[0])
    study["findings"], study["devices"] = {}, {}
    study["ctr"] = 0.42
    study["subject"]["habitus"].update(soft_tissue=0.4, breast=0.0, bone_density=0.9)
    study["acquisition"].update(
        view="PA",
        portable=False,
        position="erect",
        lateral=True,
        rotation_deg=0.0,
        shift_x=0.0,
        inspiration_ribs=10.0,
        exposure=1.0,
        brightness=0.0,
        noise=0.01,
        magnification=1.0,
    )
    study["acquisition"].update(acq)
    return study


def render(study: dict):
    return render_study(study, SIZE, rng_for(7, 3, 1))


def with_concept(name: str, **params) -> tuple[dict, dict]:
    study = base_study()
    p = sample_params(name, rng_for(1, 9))
    p.update(params)
    changed = copy.deepcopy(study)
    changed[
        "devices"
        if name
        in ("pacemaker", "endotracheal_tube", "central_line", "enteric_tube", "sternotomy_wires")
        else "findings"
    ][name] = p
    return study, changed


def contrast(name: str, **params):
    """(mean grey change inside the mask, mean |change| far outside it, mask, both renders)."""
    plain, changed = with_concept(name, **params)
    a, b = render(plain), render(changed)
    mask = b.masks[name]
    far = ~ndimage.binary_dilation(mask, iterations=6)
    diff = b.frontal.astype(float) - a.frontal.astype(float)
    return diff[mask].mean(), np.abs(diff[far]).mean(), mask, a, b


@pytest.mark.parametrize("name", ["consolidation", "atelectasis", "edema", "nodule"])
def test_opacities_brighten_their_region_only(name):
    inside, outside, mask, _, _ = contrast(name, severity=0.8)
    assert mask.sum() > 20
    assert inside > 12, inside
    # independent random streams: nothing changes away from the finding (edema's haze and
    # vessel blurring are wider than its mask)
    assert outside < (2.0 if name == "edema" else 0.5), outside


@pytest.mark.parametrize("side", ["left", "right", "bilateral"])
def test_effusion_fills_costophrenic_angle(side):
    inside, outside, mask, plain, _ = contrast("pleural_effusion", side=side, severity=0.6)
    assert inside > 25 and outside < 0.5
    for s in ("left", "right") if side == "bilateral" else (side,):
        lung = plain.masks[f"{s}_lung"]
        ys, xs = np.nonzero(lung)
        lateral = np.abs(xs - SIZE / 2)
        corner = np.argmax(ys + lateral)  # lowest, most lateral point: the CP angle
        assert mask[ys[corner], xs[corner]]
        assert (mask & lung).sum() > 0.08 * lung.sum()
    if side != "bilateral":
        other = "right" if side == "left" else "left"
        assert not (mask & plain.masks[f"{other}_lung"]).any()


def _detail(img: np.ndarray) -> np.ndarray:
    img = img.astype(float)
    return np.abs(img - ndimage.gaussian_filter(img, 2.0))


def test_pneumothorax_is_darker_without_markings():
    inside, outside, mask, plain, ptx = contrast("pneumothorax", side="left", severity=0.8)
    assert mask.sum() > 100 and inside < -6 and outside < 0.5
    core = ndimage.binary_erosion(mask, iterations=2)
    no_bone = core  # ribs cross both renders equally; markings are what must vanish
    assert _detail(ptx.frontal)[no_bone].mean() < 0.8 * _detail(plain.frontal)[no_bone].mean()
    assert not (mask & plain.masks["right_lung"]).any()


@pytest.mark.parametrize(
    "name", ["pacemaker", "endotracheal_tube", "central_line", "enteric_tube", "sternotomy_wires"]
)
def test_devices_are_bright_where_masked_and_absent_otherwise(name):
    inside, outside, mask, plain, dev = contrast(name)
    assert mask.sum() > 15 and inside > 30 and outside < 0.5
    assert name not in plain.masks
    assert dev.lateral is not None and not np.array_equal(dev.lateral, plain.lateral)


def test_cardiomegaly_widens_heart_and_ap_magnifies():
    plain, big = with_concept("cardiomegaly", ctr=0.6)
    big["ctr"] = 0.6
    r_plain, r_big = render(plain), render(big)
    assert r_plain.measured["ctr_measured"] == pytest.approx(0.42, abs=0.02)
    assert r_big.measured["ctr_measured"] == pytest.approx(0.6, abs=0.02)
    ap = base_study(view="AP", magnification=1.1)
    assert render(ap).measured["ctr_measured"] == pytest.approx(0.42 * 1.1, abs=0.02)


@pytest.mark.parametrize("displaced", [True, False])
def test_rib_fracture_breaks_a_rib_inside_its_mask(displaced):
    inside, outside, mask, _, _ = contrast("rib_fracture", displaced=displaced)
    assert inside > 10, inside  # the callus brightens the site on average (was a faint gap)
    assert outside < 0.5, outside
    assert mask.sum() < 0.02 * SIZE * SIZE


def test_nodule_annotators_disagree_plausibly():
    _, changed = with_concept("nodule", size_mm=24.0, contrast=0.9)
    masks = render(changed).masks
    truth = masks["nodule"]
    graders = [masks[f"nodule_annotator_{i}"] for i in range(4)]
    areas = [g.sum() for g in graders]
    assert len(set(areas)) > 1, "graders should not agree exactly"
    for g in graders:
        if g.any():
            iou = (g & truth).sum() / (g | truth).sum()
            assert 0.3 < iou < 1.0
    assert areas[0] < truth.sum() < areas[1]  # tight vs generous grader


def test_rotation_and_noise_change_pixels_not_truth():
    plain = render(base_study())
    rotated = render(base_study(rotation_deg=5.0))
    assert not np.array_equal(plain.frontal, rotated.frontal)
    assert rotated.measured["ctr_measured"] == pytest.approx(0.42, abs=0.03)


def test_nodule_lies_in_its_lung_zone():
    centres = {}
    for zone, v in (("upper", 0.2), ("lower", 0.8)):
        _, study = with_concept("nodule", side="left", zone=zone, v=v, u=0.3, size_mm=20.0)
        study["ctr"] = 0.62  # a big heart must not hide a basal nodule
        masks = render(study).masks
        nod = masks["nodule"]
        assert (nod & masks["left_lung"]).sum() > 0.9 * nod.sum()
        centres[zone] = np.nonzero(nod)[0].mean()
    assert centres["upper"] + 0.2 * SIZE < centres["lower"]


def test_supine_effusion_is_a_veil_that_still_covers_the_angle():
    ratios = {}
    for position in ("supine", "erect"):
        plain = base_study(view="AP", position=position, magnification=1.1)
        wet = copy.deepcopy(plain)
        wet["findings"]["pleural_effusion"] = {"side": "right", "severity": 0.7}
        a, b = render(plain), render(wet)
        mask = b.masks["pleural_effusion"]
        lung = a.masks["right_lung"]
        ys, xs = np.nonzero(lung)
        corner = np.argmax(ys + np.abs(xs - SIZE / 2))
        assert mask[ys[corner], xs[corner]]
        diff = b.frontal.astype(float) - a.frontal.astype(float)
        assert diff[mask].mean() > 10
        core = ndimage.binary_erosion(mask, iterations=2)
        ratios[position] = _detail(b.frontal)[core].mean() / _detail(a.frontal)[core].mean()
    assert ratios["erect"] + 0.08 < ratios["supine"]  # vessels still show through the veil


def test_rib_fracture_steps_off_the_distal_fragment():
    from workbench.cxr.phantom.anatomy import FRACTURE_STEP, Frame, _broken_rib

    pts = np.column_stack([np.linspace(0.2, 0.5, 20), np.linspace(0.4, 0.45, 20)])
    for displaced in (True, False):
        fr = {"position": 0.5, "displaced": displaced}
        (proximal, distal), callus = _broken_rib(Frame(64), pts, fr)
        k = 10  # round(0.5 * 19): points k-1..k+1 are the gap
        np.testing.assert_array_equal(proximal, pts[: k - 1])
        np.testing.assert_allclose(distal - pts[k + 2 :], [[0.0, FRACTURE_STEP[displaced]]] * 8)
        assert callus.max() > 0.3 and callus[0, 0] < 1e-6  # bright at the break only
    assert FRACTURE_STEP[True] > FRACTURE_STEP[False]


def _nodule_with(blocker: str, bp: dict, side: str, zone: str, u: float, v: float) -> dict:
    study = base_study()
    study["findings"][blocker] = bp
    study["findings"]["nodule"] = dict(side=side, zone=zone, u=u, v=v, size_mm=20.0, contrast=0.8)
    return study


def _sampled_px(study: dict) -> tuple[int, int]:
    p = study["findings"]["nodule"]
    x, y = frontal_geometry(study).lung_point(p["side"], p["u"], p["v"])
    ((px, py),) = Frame(SIZE).to_px([(x, y)])
    return int(py), int(px)


@pytest.mark.parametrize(
    "blocker, bp, side, zone, u, v",
    [
        ("pleural_effusion", {"side": "left", "severity": 0.8}, "left", "lower", 0.6, 0.8),
        ("pneumothorax", {"side": "left", "severity": 0.6}, "left", "upper", 0.7, 0.2),
        ("pneumothorax", {"side": "right", "severity": 0.8}, "right", "middle", 0.85, 0.5),
        ("consolidation", {"side": "left", "zone": "middle", "u": 0.5, "severity": 1.0},
         "left", "middle", 0.5, 0.5),
        ("atelectasis", {"side": "right", "kind": "basal", "severity": 1.0},
         "right", "lower", 0.3, 0.8),
    ],
)  # fmt: skip
def test_nodule_is_moved_off_hiding_findings_within_its_zone(blocker, bp, side, zone, u, v):
    study = _nodule_with(blocker, bp, side, zone, u, v)
    out = render(study)
    nod, hide, lung = out.masks["nodule"], out.masks[blocker], out.masks[f"{side}_lung"]
    assert hide[_sampled_px(study)], "the sampled place must be under the finding"
    assert nod.sum() > 50
    assert not (nod & hide).any()
    assert not (nod & ~lung).any()  # wholly over its own lung, off the heart
    assert out.measured["nodule_free_frac"] == 1.0
    # still in the zone the report names: between the height fractions of its band
    g = frontal_geometry(study)
    lo, hi = lesions.zone_band(zone)
    us = np.linspace(0.05, 0.95, 19)
    top = min(g.lung_point(side, a, lo)[1] for a in us) * SIZE
    bottom = max(g.lung_point(side, a, hi)[1] for a in us) * SIZE
    assert top <= np.nonzero(nod)[0].mean() <= bottom
    # and visible: the nodule brightens the film where its mask says
    plain = copy.deepcopy(study)
    del plain["findings"]["nodule"]
    diff = out.frontal.astype(float) - render(plain).frontal.astype(float)
    assert diff[nod].mean() > 10


def test_without_free_lung_the_nodule_takes_the_least_hidden_place():
    # a large pneumothorax leaves no upper-zone lung wide enough for a 2 cm nodule
    ptx_params = {"side": "left", "severity": 0.9}
    study = _nodule_with("pneumothorax", ptx_params, "left", "upper", 0.7, 0.2)
    out = render(study)
    nod, ptx, lung = out.masks["nodule"], out.masks["pneumothorax"], out.masks["left_lung"]
    row, col = _sampled_px(study)
    assert ptx[row, col]
    free = (nod & lung & ~ptx).sum() / nod.sum()
    assert out.measured["nodule_free_frac"] == pytest.approx(free, abs=1e-3)
    rows, cols = np.ogrid[:SIZE, :SIZE]
    disc = np.hypot(rows - row, cols - col) <= 10.0 / 380.0 * SIZE  # at the sampled place
    assert (disc & lung & ~ptx).sum() / disc.sum() + 0.1 < free < 1.0
    middle = frontal_geometry(study).lung_point("left", 0.5, 0.4)[1] * SIZE
    assert np.nonzero(nod)[0].mean() < middle  # still in the upper zone


def test_a_nodule_changes_nothing_but_its_own_pixels_and_masks():
    """Drawing the nodule last must not alter the other findings: their masks, the random
    draws of the opacities and every pixel away from the nodule are the same with and
    without it, so a study without a nodule renders as it did before the nodule moved
    after the effusion and pneumothorax (a wrong draw order or a finding that read the
    nodule's density would change pixels or masks here)."""
    study = base_study()
    study["findings"].update(
        consolidation={"side": "left", "zone": "lower", "u": 0.5, "severity": 0.7},
        atelectasis={"side": "bilateral", "kind": "plate", "severity": 0.5},
        edema={"severity": 0.6, "grade": "moderate"},
        pleural_effusion={"side": "bilateral", "severity": 0.5},
        pneumothorax={"side": "right", "severity": 0.5},
        rib_fracture={"side": "left", "rib": 6, "position": 0.5, "displaced": True},
    )
    plain = copy.deepcopy(study)
    study["findings"]["nodule"] = dict(
        side="right", zone="middle", u=0.7, v=0.5, size_mm=18.0, contrast=0.9
    )
    a, b = render(plain), render(study)
    nod = b.masks["nodule"]
    assert nod.any() and b.measured["nodule_free_frac"] == 1.0
    for name, mask in a.masks.items():
        np.testing.assert_array_equal(mask, b.masks[name], err_msg=name)
    assert set(b.masks) - set(a.masks) == {"nodule"} | {f"nodule_annotator_{i}" for i in range(4)}
    away = ~ndimage.binary_dilation(nod, iterations=4)
    np.testing.assert_array_equal(a.frontal[away], b.frontal[away])
    assert (a.frontal[nod] != b.frontal[nod]).mean() > 0.8
    nodule_keys = {"nodule_free_frac", "nodule_drawn_u", "nodule_drawn_v"}
    assert {k: v for k, v in b.measured.items() if k not in nodule_keys} == a.measured


def test_zone_bands_contain_their_spans_and_do_not_overlap():
    bands = [lesions.zone_band(z) for z in ZONE_SPAN]
    for (lo, hi), (slo, shi) in zip(bands, ZONE_SPAN.values()):
        assert lo <= slo < shi <= hi
    assert all(bands[i][1] <= bands[i + 1][0] for i in range(len(bands) - 1))


@pytest.mark.parametrize(
    "blocker, bp, side, zone, u, v",
    [
        ("pleural_effusion", {"side": "left", "severity": 0.8}, "left", "lower", 0.6, 0.8),
        ("pneumothorax", {"side": "left", "severity": 0.6}, "left", "upper", 0.7, 0.2),
        ("pneumothorax", {"side": "right", "severity": 0.8}, "right", "middle", 0.85, 0.5),
    ],
)  # fmt: skip
def test_moved_nodule_is_recorded_and_drawn_at_its_frontal_height_on_the_lateral(
    blocker, bp, side, zone, u, v
):
    """A nodule moved off a hiding finding: the record's measured dict holds where the
    frontal view drew it, and the lateral view draws it at that height, not the sampled one."""
    study = _nodule_with(blocker, bp, side, zone, u, v)
    out = render(study)
    du, dv = out.measured["nodule_drawn_u"], out.measured["nodule_drawn_v"]
    assert abs(dv - v) > 0.05, "the case must move the nodule up or down"
    assert study["findings"]["nodule"]["v"] == v  # the sampled values stay in the findings
    # the frontal nodule mask is centred on the recorded drawn place
    g = frontal_geometry(study)
    ((px, py),) = Frame(SIZE).to_px([g.lung_point(side, du, dv)])
    rows, cols = np.nonzero(out.masks["nodule"])
    assert abs(rows.mean() - py) < 1.5 and abs(cols.mean() - px) < 1.5
    # lateral: the nodule is what brightens the film against the same study without it
    plain = copy.deepcopy(study)
    del plain["findings"]["nodule"]
    diff = out.lateral.astype(float) - render(plain).lateral.astype(float)
    bright = diff > 0.5 * diff.max()
    assert bright.sum() > 20
    lat_u = 0.35 if zone == "upper" else 0.65
    drawn_row = lateral._point(g, lat_u, dv)[1] * SIZE
    sampled_row = lateral._point(g, lat_u, v)[1] * SIZE
    assert abs(drawn_row - sampled_row) > 5
    assert abs(np.nonzero(bright)[0].mean() - drawn_row) < 2.0


def test_unmoved_nodule_keeps_its_sampled_place_in_the_record_and_on_the_lateral():
    study = base_study()
    study["findings"]["nodule"] = dict(
        side="right", zone="middle", u=0.7, v=0.5, size_mm=18.0, contrast=0.9
    )
    out = render(study)
    assert (out.measured["nodule_drawn_u"], out.measured["nodule_drawn_v"]) == (0.7, 0.5)
    density = render_lateral(study, frontal_geometry(study), SIZE, rng_for(0, 1), None)
    again = render_lateral(study, frontal_geometry(study), SIZE, rng_for(0, 1), 0.5)
    moved = render_lateral(study, frontal_geometry(study), SIZE, rng_for(0, 1), 0.3)
    np.testing.assert_array_equal(density, again)
    assert not np.array_equal(density, moved)
