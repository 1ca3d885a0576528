"""Robustness perturbations, the phantom scanner shift, and Hausdorff-95."""

import json

import numpy as np
import pytest

from segmentation.data import load_dataset
from segmentation.io import SegSample
from segmentation.metrics import hausdorff95
from segmentation.perturb import PERTURBATIONS, SCANNER_SHIFT, perturb, scanner_shift


def _sample() -> SegSample:
    rng = np.random.default_rng(0)
    image = np.clip(0.5 + 0.1 * rng.standard_normal((32, 32)), 0, 1).astype(np.float32)
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 4:14, 18:28] = 1  # off-centre, so a rotation moves it
    return SegSample(image, mask, None, {"id": "a"})


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_identity_strength_changes_nothing_and_others_do(name):
    s, p = _sample(), PERTURBATIONS[name]
    same = perturb(s, name, p.identity)
    assert np.array_equal(same.image, s.image) and np.array_equal(same.masks, s.masks)
    out = perturb(s, name, p.strengths[-1])
    assert out.image.shape == s.image.shape and out.image.dtype == np.float32
    assert out.image.min() >= 0 and out.image.max() <= 1
    assert not np.allclose(out.image, s.image)
    assert np.array_equal(perturb(s, name, p.strengths[-1]).image, out.image)  # deterministic


def test_perturbations_move_image_statistics_the_expected_way():
    s = _sample()
    assert (
        perturb(s, "gamma", 2.0).image.mean()
        < s.image.mean()
        < perturb(s, "gamma", 0.5).image.mean()
    )
    assert (
        perturb(s, "contrast", 2.0).image.std()
        > s.image.std()
        > perturb(s, "contrast", 0.5).image.std()
    )
    assert perturb(s, "blur", 2.0).image.std() < s.image.std()
    assert perturb(s, "noise", 0.2).image.std() > s.image.std()


def test_rotation_moves_the_mask_with_the_image():
    s = _sample()
    s = SegSample(s.masks[0].astype(np.float32), s.masks, None, s.meta)  # image == mask
    r = perturb(s, "rotation", 20.0)
    assert not np.array_equal(r.masks, s.masks)
    assert abs(int(r.masks.sum()) - int(s.masks.sum())) < 0.1 * s.masks.sum()
    assert ((r.image > 0.5) == (r.masks[0] > 0)).mean() > 0.97


def test_unknown_perturbation_is_named():
    with pytest.raises(ValueError, match="unknown perturbation 'fog'"):
        perturb(_sample(), "fog", 1.0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from workbench.cxr.phantom.run import PhantomConfig, generate

    root = tmp_path_factory.mktemp("ph")
    generate(PhantomConfig(out=root, studies=6, size=64, seed=3))
    return root


def test_scanner_shift_rerenders_the_same_anatomy(phantom):
    clean = load_dataset("phantom-lungs", phantom, None, 64)
    same = scanner_shift(phantom, clean, 64, 0.0)
    shifted = scanner_shift(phantom, clean, 64, 1.0)
    for c, s0, s1 in zip(clean, same, shifted, strict=True):
        assert s0.meta is c.meta and np.array_equal(s0.masks, c.masks)  # the masks on disk
        assert np.abs(s0.image - c.image).mean() < 0.01  # only JPEG compression differs
        assert np.array_equal(s1.masks, c.masks)
        assert np.abs(s1.image - c.image).mean() > 0.03
    rec = json.loads((phantom / "phantom-studies.jsonl").read_text().splitlines()[0])
    assert rec["acquisition"]["exposure"] < SCANNER_SHIFT["exposure"]  # outside the cohort


def test_scanner_shift_needs_the_generator_records(tmp_path, phantom):
    from segmentation.io import DataError

    clean = load_dataset("phantom-lungs", phantom, None, 64)[:1]
    with pytest.raises(DataError, match="cfg.json"):
        scanner_shift(tmp_path, clean, 64, 1.0)


def test_hausdorff95_anchors():
    a = np.zeros((40, 40), np.int64)
    a[10:20, 10:20] = 1
    assert hausdorff95(a, a) == 0.0
    b = np.roll(a, 3, axis=1)
    assert hausdorff95(a, b) == pytest.approx(3.0)
    empty = np.zeros_like(a)
    assert hausdorff95(empty, empty) == 0.0
    assert hausdorff95(a, empty) == pytest.approx(np.hypot(40, 40))
    with pytest.raises(ValueError, match="hausdorff95"):
        hausdorff95(a, a[:10])
