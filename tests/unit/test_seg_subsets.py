"""Labelled fractions and deliberately imbalanced training sets."""

import numpy as np
import pytest

from segmentation.io import DataError, SegSample
from segmentation.subsets import (
    labelled_indices,
    parse_subset,
    select_training_set,
    share_subset,
    subset_size,
)


def _samples(n_f: int, n_m: int, n_unknown: int = 0) -> list[SegSample]:
    sexes = ["F"] * n_f + ["M"] * n_m + [None] * n_unknown
    z = np.zeros((4, 4), np.float32)
    return [
        SegSample(z, z[None].astype(np.uint8), None, {"id": f"i{k}", "sex": s})
        for k, s in enumerate(sexes)
    ]


def test_labelled_subsets_are_nested_seeded_and_never_empty():
    small, mid, full = (set(labelled_indices(200, f, seed=3)) for f in (0.02, 0.1, 1.0))
    assert len(small) == 4 and len(mid) == 20 and full == set(range(200))
    assert small <= mid <= full
    assert np.array_equal(labelled_indices(200, 0.1, 3), labelled_indices(200, 0.1, 3))
    assert set(labelled_indices(200, 0.1, 4)) != mid
    assert len(labelled_indices(10, 0.001, 0)) == 1
    with pytest.raises(ValueError, match="labelled_fraction"):
        labelled_indices(10, 0.0, 0)


def test_parse_subset_names_the_bad_text():
    assert parse_subset("sex=F:0.9") == ("sex", "F", 0.9)
    for bad in ("sex:0.9", "sex=F", "sex=F:1.5", "=F:0.5"):
        with pytest.raises(ValueError, match="train_subset"):
            parse_subset(bad)


def test_share_subset_has_the_share_and_a_balanced_control_of_the_same_size():
    samples = _samples(100, 60, n_unknown=5)
    spec = parse_subset("sex=F:0.9")
    n = subset_size(samples, spec)
    assert n == 111  # all 100 women are 90 %: 100 / 0.9
    imbalanced = share_subset(samples, spec, seed=0)
    assert len(imbalanced) == n
    assert sum(s.meta["sex"] == "F" for s in imbalanced) == round(0.9 * n)
    balanced = select_training_set(samples, "sex=F:0.5", n, seed=0)
    assert len(balanced) == n and sum(s.meta["sex"] == "F" for s in balanced) == round(0.5 * n)
    assert all(s.meta["sex"] is not None for s in balanced)
    assert select_training_set(samples, None, None, 0) is samples


def test_share_subset_refuses_what_the_data_cannot_give():
    with pytest.raises(DataError, match="cannot draw"):
        share_subset(_samples(10, 10), parse_subset("sex=F:0.9"), seed=0, size=40)
