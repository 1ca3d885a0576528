"""maira2-mini stage 1: per-patch mask coverage, class balance, the gate's probe and pointing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.models.mini.data import pick_variants
from workbench.models.mini.dense import (
    DENSE_CHANNELS,
    VisionExample,
    channel_pos_weight,
    patch_coverage,
)
from workbench.models.mini.probe import fit_logistic, pointing_game


def test_patch_coverage_of_a_hand_made_mask():
    mask = np.zeros((64, 64), dtype=bool)
    mask[:16, :16] = True  # exactly the top-left patch at 64 px / patch 16
    mask[16:24, 48:64] = True  # the top half of patch (row 1, col 3)
    cover = patch_coverage(mask, image_size=64, patch_size=16).reshape(4, 4)
    expected = np.zeros((4, 4))
    expected[0, 0], expected[1, 3] = 1.0, 0.5
    np.testing.assert_allclose(cover, expected, atol=1e-6)


def test_patch_coverage_follows_the_processor_resize_and_centre_crop():
    # 128 x 64 (tall): the short edge becomes 32, the long 64, and the centre 32 rows are kept
    mask = np.zeros((128, 64), dtype=bool)
    mask[32:64, :] = True  # rows 32..63 of 128 -> rows 16..31 of 64 -> rows 0..15 of the crop
    cover = patch_coverage(mask, image_size=32, patch_size=16).reshape(2, 2)
    np.testing.assert_allclose(cover, [[1.0, 1.0], [0.0, 0.0]], atol=1e-6)
    # downsampling averages the area: a 1-pixel-wide line still counts, at its share
    line = np.zeros((64, 64), dtype=bool)
    line[:, 0] = True
    assert patch_coverage(line, 16, 8).reshape(2, 2)[0, 0] == pytest.approx(1 / 32)
    with pytest.raises(ValueError, match="2-D"):
        patch_coverage(np.zeros((4, 4, 3)), 16, 8)


def _example(cover_pk: np.ndarray) -> VisionExample:
    return VisionExample(0, torch.zeros(4, 4), torch.from_numpy(cover_pk).half(), torch.zeros(13))


def test_pos_weight_grows_for_rare_channels_and_is_capped():
    cover = np.zeros((16, len(DENSE_CHANNELS)), dtype=np.float32)
    cover[:8, 0] = 1.0  # half the patches: weight 1
    cover[0, 1] = 0.5  # a sliver: (16 - 0.5) / 0.5 = 31
    weight = channel_pos_weight([_example(cover)], cap=50.0)
    assert weight[0] == pytest.approx(1.0)
    assert weight[1] == pytest.approx(31.0)
    assert weight[2] == pytest.approx(50.0)  # never covered: the cap
    assert channel_pos_weight([_example(cover)], cap=10.0)[1] == pytest.approx(10.0)


def test_pointing_game_counts_hits_only_on_images_with_a_mask():
    cover = torch.zeros(3, 4, 1)
    cover[0, 2, 0] = 0.3
    cover[1, 1, 0] = 1.0
    dense = torch.zeros(3, 4, 1)
    dense[0, 2, 0] = 5.0  # hit
    dense[1, 3, 0] = 5.0  # miss: the top patch is outside the mask
    dense[2, 0, 0] = 9.0  # no mask on image 2: not counted
    assert pointing_game(dense, cover, 0) == (0.5, 2)
    assert pointing_game(dense, torch.zeros(3, 4, 1), 0) == (None, 0)


def test_logistic_probe_separates_a_linearly_separable_concept_on_raw_features():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen) * torch.tensor([1.0, 100.0, 1.0, 1.0, 1.0]) + 50.0
    y = torch.stack([(x[:, 0] > 50.0), (x[:, 1] < 50.0)], dim=1).float()
    probe = fit_logistic(x, y)
    with torch.no_grad():
        pred = probe(x) > 0  # the standardisation is folded into the weights
    assert (pred == y.bool()).float().mean() > 0.97


def test_prompt_variants_are_drawn_deterministically():
    variants = [("full", "image-only")] * 50
    ids = list(range(50))
    a = pick_variants(variants, ids, prob=0.3, seed=0, step=5)
    assert a == pick_variants(variants, ids, prob=0.3, seed=0, step=5)
    assert a != pick_variants(variants, ids, prob=0.3, seed=0, step=6)
    assert 5 <= a.count("image-only") <= 25
    assert set(pick_variants(variants, ids, prob=0.0, seed=0, step=5)) == {"full"}
    assert pick_variants([("full",)] * 3, [0, 1, 2], prob=1.0, seed=0, step=0) == ["full"] * 3


def test_oversampled_epoch_repeats_only_studies_positive_for_the_chosen_concepts():
    from workbench.cxr.findings import RENDERED
    from workbench.models.mini.data import epoch_studies

    concepts_SC = torch.zeros(4, len(RENDERED))
    concepts_SC[1, RENDERED.index("nodule")] = 1
    concepts_SC[2, RENDERED.index("rib_fracture")] = 1
    concepts_SC[3, RENDERED.index("cardiomegaly")] = 1
    assert epoch_studies(concepts_SC, (), 3) == [0, 1, 2, 3]
    assert epoch_studies(concepts_SC, ("nodule",), 1) == [0, 1, 2, 3]
    assert epoch_studies(concepts_SC, ("nodule", "rib_fracture"), 3) == [0, 1, 1, 1, 2, 2, 2, 3]


def test_oversample_names_are_checked():
    from workbench.models.mini.config import MiniConfig

    with pytest.raises(ValueError, match="oversample.*nodules"):
        MiniConfig(oversample=("nodules",)).validate()
    with pytest.raises(ValueError, match="oversample_factor"):
        MiniConfig(oversample_factor=0).validate()


def test_gate_table_scores_every_concept_of_a_tiny_encoder():
    from transformers import Dinov2Backbone, Dinov2Config

    from workbench.cxr.findings import RENDERED
    from workbench.models.mini.probe import gate_markdown, gate_table
    from workbench.models.mini.vision import VisionHeads

    cfg = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=1, mlp_ratio=2, patch_size=16,
        image_size=32, out_features=["stage1"], reshape_hidden_states=False,
    )  # fmt: skip
    torch.manual_seed(0)
    tower, heads = Dinov2Backbone(cfg), VisionHeads(16)
    examples = []
    for i in range(12):
        concepts = torch.zeros(len(RENDERED))
        concepts[0] = float(i % 2)  # cardiomegaly in half the images, the rest never
        cover = torch.zeros(4, len(DENSE_CHANNELS))
        cover[i % 4, 0] = concepts[0]
        pixels = torch.randn(32, 32) + 3.0 * concepts[0]  # brighter when present
        examples.append(VisionExample(i, pixels.half(), cover.half(), concepts))
    rows = gate_table(tower, heads, examples[:8], examples[8:])
    assert [r.concept for r in rows] == list(RENDERED)
    assert rows[0].positives == 2 and rows[0].auroc is not None and rows[0].pointed == 2
    assert rows[1].auroc is None and rows[1].dense_auroc is None and rows[1].pointing is None
    table = gate_markdown(rows)
    assert "dense-max AUROC" in table and "of 13 >= 0.95" in table
