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


def test_pointing_game_tolerance_is_one_patch_of_the_grid_in_eight_directions():
    cover = torch.zeros(4, 16, 1)  # a 4 x 4 grid; each image's mask is patch (1, 1) = 5
    cover[:, 5, 0] = 1.0
    dense = torch.zeros(4, 16, 1)
    dense[0, 5, 0] = 1.0  # on the mask
    dense[1, 10, 0] = 1.0  # (2, 2): diagonal neighbour
    dense[2, 4, 0] = 1.0  # (1, 0): side neighbour
    dense[3, 15, 0] = 1.0  # (3, 3): two patches away
    assert pointing_game(dense, cover, 0) == (0.25, 4)
    assert pointing_game(dense, cover, 0, tolerance=1) == (0.75, 4)
    assert pointing_game(dense, cover, 0, tolerance=2) == (1.0, 4)


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


def _labelled(n: int, positive: set[int], concept: str = "nodule") -> list[VisionExample]:
    from workbench.cxr.findings import RENDERED

    out = []
    for i in range(n):
        concepts = torch.zeros(len(RENDERED))
        concepts[RENDERED.index(concept)] = float(i in positive)
        cover = torch.zeros(4, len(DENSE_CHANNELS))
        out.append(VisionExample(i, torch.randn(32, 32).half(), cover.half(), concepts))
    return out


def test_stage1_draws_with_the_default_config_are_todays_uniform_draws():
    from workbench.models.mini.config import MiniConfig
    from workbench.models.mini.vision import oversample_weights, stage1_batch, stage1_sampling

    examples = _labelled(50, {1, 2, 3})
    assert stage1_sampling(MiniConfig(), examples) is None
    assert oversample_weights(examples, (), 4) is None
    assert oversample_weights(examples, ("nodule",), 1) is None
    assert oversample_weights(examples, ("rib_fracture",), 4) is None  # no positives
    for seed, step in [(0, 0), (0, 17), (5, 3999)]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)  # the pre-oversampling draw
        expected = torch.randint(0, 50, (32,), generator=gen).tolist()
        assert stage1_batch(50, 32, seed, step) == expected


def test_weighted_stage1_draws_depend_only_on_seed_and_step():
    from workbench.models.mini.vision import oversample_weights, stage1_batch

    weights = oversample_weights(_labelled(50, {1, 2, 3}), ("nodule",), 4)
    assert weights.tolist() == [4.0 if i in {1, 2, 3} else 1.0 for i in range(50)]
    a = stage1_batch(50, 32, 0, 7, weights)
    assert a == stage1_batch(50, 32, 0, 7, weights.clone())  # a resumed run: the same batch
    assert a != stage1_batch(50, 32, 0, 8, weights)
    assert a != stage1_batch(50, 32, 1, 7, weights)
    with pytest.raises(ValueError, match="49 sampling weights for 50"):
        stage1_batch(50, 32, 0, 7, weights[:49])


def test_positive_images_are_drawn_factor_times_as_often():
    from workbench.models.mini.vision import oversample_weights, stage1_batch

    positive = set(range(0, 100, 10))  # 10 of 100 images
    examples = _labelled(100, positive)

    def rate_ratio(weights) -> float:
        draws = [i for step in range(200) for i in stage1_batch(100, 32, 3, step, weights)]
        hits = sum(i in positive for i in draws)
        return (hits / 10) / ((len(draws) - hits) / 90)

    # 6,400 draws: the ratio's standard error is ~3 %, so these bounds are ~5 sigma wide
    assert 3.5 < rate_ratio(oversample_weights(examples, ("nodule",), 4)) < 4.5
    assert 0.85 < rate_ratio(None) < 1.15


def test_stage1_sampling_and_pos_weight_cap_fields_are_checked():
    from workbench.models.mini.config import MiniConfig

    with pytest.raises(ValueError, match="'vision_oversample'.*nodules"):
        MiniConfig(vision_oversample=("nodule", "nodules")).validate()
    with pytest.raises(ValueError, match="vision_oversample_factor"):
        MiniConfig(vision_oversample_factor=0).validate()
    for cap in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="dense_pos_weight_cap"):
            MiniConfig(dense_pos_weight_cap=cap).validate()
    MiniConfig(vision_oversample=("nodule",), vision_oversample_factor=3).validate()


def test_pretrain_encoder_uses_the_cap_and_the_oversampling_weights(tmp_path, monkeypatch, caplog):
    from transformers import Dinov2Backbone, Dinov2Config

    from workbench.models.mini import vision
    from workbench.models.mini.config import MiniConfig

    tower_cfg = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=1, mlp_ratio=2, patch_size=16,
        image_size=32, out_features=["stage1"], reshape_hidden_states=False,
    )  # fmt: skip
    torch.manual_seed(0)
    tower = Dinov2Backbone(tower_cfg)
    seen: dict[str, list] = {"pos_weight": [], "weights": []}
    real_loss, real_batch = vision.stage1_loss, vision.stage1_batch

    def spy_loss(tokens, heads, cover, concepts, pos_weight_K, dense_weight):
        seen["pos_weight"].append(pos_weight_K)
        return real_loss(tokens, heads, cover, concepts, pos_weight_K, dense_weight)

    def spy_batch(n, batch, seed, step, weights=None):
        seen["weights"].append(weights)
        return real_batch(n, batch, seed, step, weights)

    monkeypatch.setattr(vision, "stage1_loss", spy_loss)
    monkeypatch.setattr(vision, "stage1_batch", spy_batch)
    cfg = MiniConfig(
        vision_steps=2, vision_batch=4, dense_pos_weight_cap=7.5,
        vision_oversample=("nodule",), vision_oversample_factor=3,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="workbench.models.mini"):
        vision.pretrain_encoder(cfg, tower, _labelled(12, {0, 5, 9}), tmp_path)
    # nothing is ever covered, so every channel's weight is the configured cap
    assert len(seen["pos_weight"]) == 2
    assert torch.equal(seen["pos_weight"][0], torch.full((len(DENSE_CHANNELS),), 7.5))
    expected = [3.0 if i in {0, 5, 9} else 1.0 for i in range(12)]
    assert [w.tolist() for w in seen["weights"]] == [expected, expected]
    logged = [r.getMessage() for r in caplog.records if "oversamples" in r.getMessage()]
    assert len(logged) == 1 and "3 of 12 images" in logged[0] and "x3" in logged[0]
