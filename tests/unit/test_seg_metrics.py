"""Segmentation metrics on cases small enough to compute by hand."""

import numpy as np
import pytest
import torch

from segmentation import metrics as M


def mask(rows):
    return np.array(rows, dtype=np.int64)


A = mask([[1, 1, 0], [0, 0, 0]])  # 2 fg pixels
B = mask([[0, 1, 1], [0, 0, 0]])  # 2 fg pixels, 1 shared
EMPTY = np.zeros((2, 3), dtype=np.int64)


def test_dice_and_iou_by_hand():
    # |A n B| = 1, |A u B| = 3, |A| + |B| = 4
    assert M.iou(A, B) == pytest.approx(1 / 3)
    assert M.dice(A, B) == pytest.approx(2 / 4)
    assert M.iou(A, A) == 1.0 and M.dice(A, A) == 1.0
    assert M.iou(A, EMPTY) == 0.0 and M.dice(A, EMPTY) == 0.0


def test_two_empty_masks_agree_perfectly():
    assert M.iou(EMPTY, EMPTY) == 1.0
    assert M.dice(EMPTY, EMPTY) == 1.0
    assert M.generalised_energy_distance(EMPTY[None], EMPTY[None]).ged == 0.0


def test_multiclass_averages_foreground_classes_only():
    a = mask([[1, 2, 0, 0]])
    b = mask([[1, 0, 0, 2]])
    # class 1: IoU 1; class 2: IoU 0 -> mean 0.5. Background agrees on 1 pixel, ignored.
    assert M.iou(a, b, num_classes=3) == pytest.approx(0.5)
    # class absent from both counts as 1: only class 1 present in either
    c = mask([[1, 0, 0, 0]])
    assert M.iou(c, c, num_classes=3) == 1.0
    assert M.iou(c, mask([[0, 1, 0, 0]]), num_classes=3) == pytest.approx(0.5)


def test_ged_by_hand():
    # samples {A, A}, annotations {A, B}; d(A,A)=0, d(A,B)=2/3
    s = np.stack([A, A])
    y = np.stack([A, B])
    r = M.generalised_energy_distance(s, y)
    assert r.d_sy == pytest.approx((0 + 2 / 3) / 2)
    assert r.d_ss == pytest.approx(0.0)
    assert r.d_yy == pytest.approx((0 + 2 / 3 + 2 / 3 + 0) / 4)
    assert r.ged == pytest.approx(2 * (1 / 3) - 0 - 1 / 3)
    # identical distributions give zero GED
    assert M.generalised_energy_distance(y, y).ged == pytest.approx(0.0, abs=1e-7)


def test_sample_diversity_includes_self_pairs():
    s = np.stack([A, B])
    assert M.sample_diversity(s) == pytest.approx(2 * (2 / 3) / 4)
    assert M.sample_diversity(np.stack([A, A, A])) == 0.0


def test_hungarian_matching_finds_best_assignment():
    s = np.stack([B, A])  # matched to annotations [A, B] crosswise -> IoU 1 each
    assert M.hungarian_matched_iou(s, np.stack([A, B])) == pytest.approx(1.0)
    # 4 samples vs 2 annotations: annotations tiled twice; 3 A's and one B
    s4 = np.stack([A, A, A, B])
    # best: A-A, A-A, B-B, A-B -> (1 + 1 + 1 + 1/3) / 4
    assert M.hungarian_matched_iou(s4, np.stack([A, B])) == pytest.approx((3 + 1 / 3) / 4)


def test_per_annotator_dice():
    out = M.per_annotator_dice(A, np.stack([A, B, EMPTY]))
    assert out == pytest.approx([1.0, 0.5, 0.0])


def test_ece_by_hand():
    # 4 pixels, binary. Top-class confidences 0.9, 0.9, 0.6, 0.6; correct: yes, no, yes, yes
    p1 = np.array([[0.9, 0.1, 0.6, 0.4]])
    probs = np.stack([1 - p1, p1])  # [2, 1, 4]
    target = mask([[1, 1, 1, 0]])
    r = M.calibration(probs, target, n_bins=10)
    # bin (0.8,0.9]: conf 0.9, acc 0.5; bin (0.5,0.6]: conf 0.6, acc 1.0
    assert r.ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert r.count.sum() == 4 and r.count[8] == 2 and r.count[5] == 2
    assert np.isnan(r.accuracy[0])
    perfect = np.stack([1 - target, target]).astype(float)
    assert M.expected_calibration_error(perfect, target) == 0.0


def test_bad_input_is_refused():
    with pytest.raises(TypeError):
        M.iou(A.astype(float), B)
    with pytest.raises(ValueError, match="labels must lie"):
        M.iou(A * 3, B, num_classes=2)
    with pytest.raises(ValueError, match="finite"):
        M.calibration(np.full((2, 1, 2), np.nan), mask([[0, 1]]))


def test_accepts_torch_tensors():
    assert M.dice(torch.as_tensor(A), torch.as_tensor(B)) == pytest.approx(0.5)
