"""Hierarchical bootstrap intervals, paired differences and subgroup gaps on synthetic data."""

import numpy as np
import pytest

from segmentation import study_stats as B
from segmentation.study_tables import cells, fraction_rows, robustness_rows, subgroup_rows


def test_mean_interval_covers_the_truth_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    small = B.mean_ci(0.8 + 0.1 * rng.standard_normal((1, 30)), n_boot=500)
    large = B.mean_ci(0.8 + 0.1 * rng.standard_normal((1, 600)), n_boot=500)
    assert small.low < 0.8 < small.high and large.low < 0.8 < large.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    assert small.n_images == 30 and small.n_seeds == 1


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(1)
    images = 0.1 * rng.standard_normal(100)
    same = np.stack([0.8 + images] * 3)
    spread = same + np.array([[-0.1], [0.0], [0.1]])  # training runs that disagree
    assert B.mean_ci(spread, 500).high - B.mean_ci(spread, 500).low > 2 * (
        B.mean_ci(same, 500).high - B.mean_ci(same, 500).low
    )


def test_paired_difference_detects_a_shift_that_unpaired_noise_hides():
    rng = np.random.default_rng(2)
    hard = rng.uniform(0.3, 0.95, (2, 80))  # image difficulty dominates the spread
    better = hard + 0.02
    diff = B.paired_difference_ci(better, hard, n_boot=500)
    assert diff.value == pytest.approx(0.02) and diff.low > 0
    assert B.verdict(diff) == "helps"
    assert B.verdict(B.paired_difference_ci(hard, better, 500)) == "hurts"
    noise = B.paired_difference_ci(hard + rng.normal(0, 0.05, hard.shape), hard, 500)
    assert B.verdict(noise) == "no difference shown"
    with pytest.raises(ValueError, match="shape"):
        B.paired_difference_ci(hard, hard[:, :10])


def test_gap_interval_finds_a_planted_disparity():
    rng = np.random.default_rng(3)
    groups = np.array(["F", "M"] * 60 + [None] * 4, dtype=object)
    values = 0.85 + 0.03 * rng.standard_normal((1, 124))
    values[0, groups == "M"] -= 0.1
    gap = B.gap_ci(values, groups, n_boot=500)
    assert gap.value == pytest.approx(0.1, abs=0.02) and gap.low > 0.05
    widened = values.copy()
    widened[0, groups == "M"] -= 0.1
    change = B.gap_difference_ci(widened, values, groups, n_boot=500)
    assert change.value == pytest.approx(0.1, abs=1e-9) and change.low > 0.05
    with pytest.raises(ValueError, match="two subgroups"):
        B.gap_ci(values, ["F"] * 124)


def test_nonfinite_or_empty_input_is_refused():
    with pytest.raises(ValueError, match="finite"):
        B.mean_ci([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="finite"):
        B.mean_ci([])


def _rows():
    """Two models, two seeds, 40 images; SemanticGAN better by 0.05 for women only."""
    rng = np.random.default_rng(4)
    base = rng.uniform(0.7, 0.9, 40)
    rows = []
    for model, seed, cond, strength in [
        (m, s, c, st)
        for m in ("unet", "semantic-gan")
        for s in (0, 1)
        for c, st in (("clean", 0.0), ("noise", 0.1))
    ]:
        for i in range(40):
            sex = "F" if i % 2 else "M"
            dice = base[i] - (0.2 if cond == "noise" else 0.0)
            dice += 0.05 if (model == "semantic-gan" and sex == "F") else 0.0
            rows.append(
                {"model": model, "fraction": 0.1, "seed": seed, "train_set": "full",
                 "dataset": "phantom-lungs", "condition": cond, "strength": strength,
                 "id": f"i{i}", "sex": sex, "age_group": None, "habitus": None,
                 "dice": dice, "iou": dice * 0.9, "hd95": 2.0}
            )  # fmt: skip
    return rows


def test_tables_from_per_image_rows():
    cs = cells(_rows())
    frac, verdicts = fraction_rows(cs, n_boot=300)
    diff = next(r for r in frac if r["analysis"] == "fraction_difference")
    assert diff["value"] == pytest.approx(0.025) and verdicts == {"0.1": "helps"}
    rob = robustness_rows(cs, n_boot=300)
    drops = [r for r in rob if r["analysis"] == "robustness_drop"]
    assert len(drops) == 2 and all(r["value"] == pytest.approx(0.2) for r in drops)
    assert {r["model"] for r in rob if r["analysis"] == "robustness_clean"} == {
        "unet",
        "semantic-gan",
    }
    gaps = {
        (r["model"], r["condition"]): r
        for r in subgroup_rows(cs, n_boot=300)
        if r["analysis"] == "subgroup_gap"
    }
    assert gaps[("semantic-gan", "clean")]["value"] > gaps[("unet", "clean")]["value"]


def test_robustness_clean_point_uses_the_perturbed_images_only():
    """Perturbed sets on the first 10 of 40 images: the clean point and the drop use those
    10 (here easier images, so the clean point differs from the all-image mean)."""
    rows = [r for r in _rows() if r["condition"] == "clean" or int(r["id"][1:]) < 10]
    for r in rows:
        if r["condition"] == "clean" and int(r["id"][1:]) < 10:
            r["dice"] += 0.1
    rob = robustness_rows(cells(rows), n_boot=200)
    clean = {r["model"]: r for r in rob if r["analysis"] == "robustness_clean"}
    assert {r["n_images"] for r in rob} == {10}
    ten = [r["dice"] for r in rows if r["model"] == "unet" and r["condition"] == "clean"
           and int(r["id"][1:]) < 10]  # fmt: skip
    assert clean["unet"]["value"] == pytest.approx(np.mean(ten))
    drops = [r for r in rob if r["analysis"] == "robustness_drop"]
    assert all(r["value"] == pytest.approx(0.3) for r in drops)
