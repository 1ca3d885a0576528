"""Which training images carry labels, and deliberately imbalanced training sets.

- :func:`labelled_indices`: the labelled part of a training set at a given fraction. The
  images are ranked by a permutation drawn from the seed, and a fraction takes a prefix of
  that ranking, so for one seed the 2 % set lies inside the 10 % set, which lies inside the
  50 % set; the U-Net and SemanticGAN trained with the same seed get the same labelled images.
- :func:`share_subset`: a training set in which one subgroup makes up a given share (e.g.
  ``sex=F:0.9``, 90 % women), as large as the available images allow, drawn from the seed.
  ``share_subset(..., share=0.5)`` of the same size is the balanced control, so a change in
  the subgroup gap comes from the imbalance and not from the smaller set.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from segmentation.io import DataError, SegSample


class SubsetSpec(NamedTuple):
    attribute: str
    """Meta key, e.g. 'sex', 'age_group', 'habitus'."""
    value: str
    """The majority value, e.g. 'F'."""
    share: float
    """Share of the training set that must have ``attribute == value``."""


def parse_subset(text: str) -> SubsetSpec:
    """``'sex=F:0.9'`` -> SubsetSpec('sex', 'F', 0.9); errors name the bad part."""
    try:
        key_value, share = text.rsplit(":", 1)
        attribute, value = key_value.split("=", 1)
        spec = SubsetSpec(attribute.strip(), value.strip(), float(share))
    except ValueError:
        raise ValueError(
            f"train_subset '{text}': expected ATTRIBUTE=VALUE:SHARE, e.g. 'sex=F:0.9'"
        ) from None
    if not spec.attribute or not spec.value or not 0 < spec.share < 1:
        raise ValueError(f"train_subset '{text}': needs a name, a value and 0 < share < 1")
    return spec


def labelled_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the labelled images: ``max(1, round(fraction * n))`` of ``n``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {fraction}")
    if n < 1:
        raise DataError("no training images to label")
    k = max(1, int(round(fraction * n)))
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return np.sort(order[:k])


def subset_size(samples: list[SegSample], spec: SubsetSpec) -> int:
    """The largest training set with ``spec.share`` of ``attribute == value`` that fits."""
    major = sum(s.meta.get(spec.attribute) == spec.value for s in samples)
    minor = sum(s.meta.get(spec.attribute) not in (None, spec.value) for s in samples)
    return int(min(major / spec.share, minor / (1 - spec.share)))


def share_subset(
    samples: list[SegSample], spec: SubsetSpec, seed: int, size: int | None = None
) -> list[SegSample]:
    """``size`` (default: the largest possible) samples, ``round(share * size)`` of them with
    ``attribute == value`` and the rest with another known value; samples whose attribute
    is unknown are left out. Order follows the input."""
    size = subset_size(samples, spec) if size is None else size
    major = [i for i, s in enumerate(samples) if s.meta.get(spec.attribute) == spec.value]
    minor = [
        i for i, s in enumerate(samples) if s.meta.get(spec.attribute) not in (None, spec.value)
    ]
    n_major = int(round(spec.share * size))
    n_minor = size - n_major
    if size < 2 or n_major > len(major) or n_minor > len(minor) or n_minor < 1:
        raise DataError(
            f"cannot draw {size} images with {spec.share:.0%} {spec.attribute}={spec.value}: "
            f"{len(major)} have it and {len(minor)} have another known value"
        )
    rng = np.random.default_rng([seed, 0x1B4A])
    keep = set(rng.choice(major, n_major, replace=False).tolist())
    keep |= set(rng.choice(minor, n_minor, replace=False).tolist())
    return [s for i, s in enumerate(samples) if i in keep]


def select_training_set(
    samples: list[SegSample], train_subset: str | None, subset_size_: int | None, seed: int
) -> list[SegSample]:
    """Apply an optional ``ATTRIBUTE=VALUE:SHARE`` restriction to a training split."""
    if not train_subset:
        return samples
    return share_subset(samples, parse_subset(train_subset), seed, subset_size_)
