"""The token API for image models: feature maps, sequences, coverage, concept columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.record import tokens as T


def test_feature_map_tokens_are_row_major_cells_with_their_position():
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    toks = T.feature_map_tokens(fmap, kind="latent", section="crop")
    assert toks.acts.shape == (12, 2)
    for i in range(12):
        r, c = toks.meta["patch_row"][i], toks.meta["patch_col"][i]
        assert (r, c) == divmod(i, 4)
        assert torch.equal(toks.acts[i], fmap[:, r, c])
        assert toks.meta["token"][i] == f"r{r}c{c}" and toks.meta["position"][i] == i
    assert set(toks.meta["kind"]) == {"latent"} and set(toks.meta["section"]) == {"crop"}


def test_pooling_averages_cells_and_refuses_uneven_maps():
    fmap = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    toks = T.feature_map_tokens(fmap, pool=2)
    assert toks.acts[:, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert toks.meta["patch_row"] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="not divisible by pool 3"):
        T.feature_map_tokens(fmap, pool=3)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        T.feature_map_tokens(fmap[0])


def test_sequence_tokens_are_latent_without_a_patch():
    toks = T.sequence_tokens(torch.ones(3, 5), ["w0", "w1", "w2"], section="w_plus")
    assert toks.meta["kind"] == ["latent"] * 3 and toks.meta["patch_row"] == [None] * 3
    with pytest.raises(ValueError, match="2 names"):
        T.sequence_tokens(torch.ones(3, 5), ["a", "b"], section="x")


def test_cell_means_is_the_covered_share_of_each_cell():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # top-left quarter
    mask[4:6, 4:8] = True  # half of the bottom-right cell
    got = T.cell_means({"m": mask}, 2, T.CONCEPT_PREFIX)["concept_m"]
    assert got == pytest.approx([1.0, 0.0, 0.0, 0.5])
    fine = T.cell_means({"m": mask}, 8, T.TARGET_PREFIX)["target_m"]
    assert fine == pytest.approx(mask.reshape(-1).astype(float).tolist())
    with pytest.raises(ValueError, match="square"):
        T.cell_means({"m": np.zeros((4, 6))}, 2, "x_")


def test_columns_concat_and_groups():
    cols = T.study_columns({"sex=F": 1.0, "device_present": None}, 3)
    assert cols["concept_sex=F"] == [1.0] * 3
    assert all(math.isnan(v) for v in cols["concept_device_present"])
    a = T.feature_map_tokens(torch.zeros(2, 1, 2)).with_columns({"concept_x": [1, 0]})
    b = T.feature_map_tokens(torch.ones(2, 1, 1))
    both = T.concat([a, b])
    assert both.acts.shape == (3, 2) and both.meta["concept_x"] == [1, 0, None]
    with pytest.raises(ValueError, match="3 values for 2 tokens"):
        a.with_columns({"y": [1, 2, 3]})
    assert T.concept_columns(["row", "concept_a", "target_b"]) == (["concept_a"], ["target_b"])
    names = ["lung", "nodule", "pacemaker", "nodule_annotator_2", "sex=F"]
    groups = T.groups_of([f"concept_{n}" for n in names] + ["target_sample_variance"])
    assert groups == {
        "lung": "structure", "nodule": "finding", "pacemaker": "device",
        "nodule_annotator_2": "annotation", "sex=F": "attribute",
        "sample_variance": "uncertainty",
    }  # fmt: skip
