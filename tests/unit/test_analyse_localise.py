"""Masks on the patch grid: coverage over the central square and one-patch dilation."""

from __future__ import annotations

import numpy as np

from workbench.analyse.localise import dilate, patch_coverage


def test_coverage_uses_the_central_square_of_a_wide_image():
    mask = np.zeros((40, 60), bool)  # 60 wide: columns 10..49 are the central square
    mask[0:10, 10:20] = True  # the whole top-left patch of a 4 x 4 grid (10 px cells)
    mask[30:40, 45:50] = True  # half of the bottom-right patch
    mask[:, :10] = True  # outside the crop: ignored
    cover = patch_coverage(mask, 4, 4)
    assert cover.shape == (4, 4)
    assert cover[0, 0] == 1.0 and cover[3, 3] == 0.5
    assert cover.sum() == 1.5


def test_dilation_by_one_patch_reaches_the_eight_neighbours():
    inside = np.zeros((5, 5), bool)
    inside[2, 2] = True
    assert dilate(inside, 0).sum() == 1
    assert dilate(inside, 1).sum() == 9 and dilate(inside, 1)[1:4, 1:4].all()
    assert dilate(inside, 2).sum() == 25
