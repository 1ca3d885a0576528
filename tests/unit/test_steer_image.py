"""Steering at the image-token embeddings (workbench.steer.image) on a tiny MAIRA-2: only the
steered images' embeddings move, by exactly the map; an unsteered row or a zero map is the
baseline bit for bit; batched rows equal their one-row runs; the per-patch least squares
recovers a planted concept gap that a plain difference of means confounds."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_steer_batch import N_NEW, studies
from workbench.models.hooks import VISION_PROJECTOR, decoder_layers, intervene
from workbench.sae import MatryoshkaSAE
from workbench.steer.hook import SteeringError
from workbench.steer.image import (
    ImageSteering,
    ImageSteeringHook,
    image_deltas,
    image_sections,
    image_steering,
    patch_regression,
    sae_map,
)
from workbench.steer.intervene import generate_many
from workbench.store import StoreWriter

pytestmark = pytest.mark.usefixtures("single_threaded")
GRID, WIDTH = 2, 3


def maps(adapter, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random [P, D] map for each current image section of the tiny model."""
    n_patches = adapter.model.config.image_tokens_per_image
    gen = torch.Generator().manual_seed(seed)
    return {s: scale * torch.randn(n_patches, adapter.d_model, generator=gen)
            for s in ("current_frontal", "current_lateral")}  # fmt: skip


def block0_input(adapter, inp, hooks) -> torch.Tensor:
    """The residual entering decoder block 0 (the embeddings, image features scattered in)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = decoder_layers(adapter.model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), intervene(adapter.model, hooks):
            logits = adapter.model(**adapter.device_inputs(inp)).logits[0]
    finally:
        handle.remove()
    return seen["x"][0], logits


def test_only_the_steered_images_move_by_exactly_the_map(adapter):
    inp = adapter.prepare(studies()[1])  # a frontal and a lateral image
    assert image_sections(inp.tokens) == ["current_frontal", "current_lateral"]
    frontal_only = image_steering({"current_frontal": maps(adapter, 0)["current_frontal"]}, 2.0)
    hook = ImageSteeringHook(image_deltas([inp], [frontal_only]))
    base, base_logits = block0_input(adapter, inp, {})
    steered, logits = block0_input(adapter, inp, {VISION_PROJECTOR: hook})
    frontal = [i for i, t in enumerate(inp.tokens) if t.get("section") == "current_frontal"]
    rest = [i for i in range(len(inp.tokens)) if i not in frontal]
    torch.testing.assert_close(steered[frontal] - base[frontal],
                               frontal_only.maps["current_frontal"], rtol=0, atol=1e-5)  # fmt: skip
    assert torch.equal(steered[rest], base[rest])  # the lateral image and every text token
    before = frontal[0]  # causal: nothing before the first steered position can change
    assert torch.equal(logits[:before], base_logits[:before])
    assert not torch.allclose(logits[frontal[-1] + 1 :], base_logits[frontal[-1] + 1 :])


def test_unsteered_rows_and_zero_maps_are_the_baseline(adapter):
    inps = [adapter.prepare(s) for s in studies()]
    baseline = generate_many(adapter, inps, [None] * 3, max_new_tokens=N_NEW)
    zero = image_steering(maps(adapter, 1, scale=0.0), 5.0)
    strong = image_steering(maps(adapter, 2), 40.0)
    rows = [inps[0], inps[1], inps[2], inps[1]]
    texts = generate_many(adapter, rows, [zero, None, strong, strong], max_new_tokens=N_NEW)
    assert texts[:2] == baseline[:2]
    assert texts[2] != baseline[2] and texts[3] != baseline[1]
    alone = [generate_many(adapter, [row], [s], max_new_tokens=N_NEW)[0]
             for row, s in ((inps[2], strong), (inps[1], strong))]  # fmt: skip
    assert texts[2:] == alone  # a batched row equals its one-row generation


def test_the_hook_checks_what_it_is_given(adapter):
    acts = torch.randn(3, 4, 5)
    hook = ImageSteeringHook([None, torch.ones(4, 5), None])
    out = hook(acts)
    assert torch.equal(out[0], acts[0]) and torch.equal(out[2], acts[2])
    assert torch.equal(out[1], acts[1] + 1)
    assert ImageSteeringHook([None, None, None])(acts) is None
    with pytest.raises(SteeringError, match="made 3 images, the batch has 2"):
        ImageSteeringHook([None, None])(acts)
    with pytest.raises(SteeringError, match=r"patch map of shape \(4, 6\)"):
        ImageSteeringHook([torch.ones(4, 6), None, None])(acts)
    inp = adapter.prepare(studies()[0])
    ok = image_deltas([inp], [ImageSteering({"current_lateral": torch.ones(1)})])
    assert ok == [None]  # the study has no lateral image: nothing to steer


def write_store(path, studies_: dict[int, torch.Tensor], partial: int | None = None) -> None:
    """``studies_[sid]``: [GRID*GRID, WIDTH] frontal tokens (and the same lateral, halved)."""
    writer = StoreWriter(path, model="m", layer=-1, hook_name=VISION_PROJECTOR, d_model=WIDTH)
    for sid, x in studies_.items():
        rows, meta = [], []
        for section, scale in (("current_frontal", 1.0), ("current_lateral", 0.5)):
            for p in range(GRID * GRID):
                if sid == partial and section == "current_lateral" and p == 0:
                    continue
                rows.append(scale * x[p])
                meta.append({"subject_id": 1, "position": len(meta), "token_id": 0,
                             "token": "<image>", "kind": "image", "section": section,
                             "patch_row": p // GRID, "patch_col": p % GRID})  # fmt: skip
        writer.add(sid, torch.stack(rows), meta)
    writer.close()


def planted(n: int = 40):
    """Concept a (gap ``gap_a`` per patch) and b (``gap_b``), b present in most a-studies."""
    gen = torch.Generator().manual_seed(0)
    gap_a = torch.randn(GRID * GRID, WIDTH, generator=gen)
    gap_b = 3.0 * torch.randn(GRID * GRID, WIDTH, generator=gen)
    labels, acts = {}, {}
    for i in range(n):
        a = int(i % 2 == 0)
        b = int((i % 4 in (0, 2, 3)) if a else i % 5 == 0)
        labels[100 + i] = {"a": a, "b": b}
        noise = 0.01 * torch.randn(GRID * GRID, WIDTH, generator=gen)
        acts[100 + i] = 2.0 + a * gap_a + b * gap_b + noise
    return labels, acts, gap_a


def test_least_squares_recovers_the_planted_gap_a_mean_difference_confounds(tmp_path):
    labels, acts, gap_a = planted()
    write_store(tmp_path / "s", acts)
    reg = patch_regression(tmp_path / "s", labels, ["a", "b"], ridge=1e-6)
    got = reg.concept_map("a")
    torch.testing.assert_close(got["current_frontal"], gap_a, atol=0.02, rtol=0)
    torch.testing.assert_close(got["current_lateral"], 0.5 * gap_a, atol=0.02, rtol=0)
    pos = torch.stack([acts[s] for s in acts if labels[s]["a"]]).mean(0)
    neg = torch.stack([acts[s] for s in acts if not labels[s]["a"]]).mean(0)
    assert (pos - neg - gap_a).abs().max() > 0.5  # the plain difference carries b along
    held = {s for s in labels if s % 3 == 0}
    fewer = patch_regression(tmp_path / "s", labels, ["a", "b"], exclude=held, ridge=1e-6)
    assert fewer.n_studies["current_frontal"] == len(labels) - len(held)
    torch.testing.assert_close(fewer.concept_map("a")["current_frontal"], gap_a, atol=0.03,
                               rtol=0)  # fmt: skip
    features = patch_regression(tmp_path / "s", labels, ["a", "b"], ridge=1e-6,
                                transform=lambda y: 2 * y[:, :1])  # fmt: skip
    torch.testing.assert_close(features.concept_map("a")["current_frontal"], 2 * gap_a[:, :1],
                               atol=0.04, rtol=0)  # fmt: skip


def test_bad_stores_and_concepts_are_named(tmp_path):
    labels, acts, _ = planted(8)
    write_store(tmp_path / "p", acts, partial=104)
    with pytest.raises(SteeringError, match="study 104 has 3 of 4 current_lateral patches"):
        patch_regression(tmp_path / "p", labels, ["a", "b"])
    write_store(tmp_path / "s", acts)
    with pytest.raises(SteeringError, match="no image tokens of sections"):
        patch_regression(tmp_path / "s", labels, ["a"], sections=("prior_frontal",))
    with pytest.raises(SteeringError, match="no labelled study outside"):
        patch_regression(tmp_path / "s", labels, ["a"], exclude=set(labels))
    reg = patch_regression(tmp_path / "s", {s: {"a": 0} for s in labels}, ["a"])
    with pytest.raises(SteeringError, match="a: no training study with it"):
        reg.concept_map("a")
    with pytest.raises(SteeringError, match="nodule: not among"):
        reg.concept_map("nodule")


def test_an_sae_map_is_the_latent_map_through_the_decoder():
    sae = MatryoshkaSAE(WIDTH, 6, k=2)
    latent = {"current_frontal": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}
    got = sae_map(latent, sae, [4, 1])
    want = torch.stack([sae.W_dec_FD[4], 2 * sae.W_dec_FD[1]]).detach()
    torch.testing.assert_close(got["current_frontal"], want)


@pytest.mark.parametrize("per_latent", [False, True])
def test_feature_scaling_rescales_only_the_chosen_features_code(per_latent):
    from workbench.steer.image import FeatureScaling, image_scaling

    gen = torch.Generator().manual_seed(6)
    sae = MatryoshkaSAE(WIDTH, 8, k=3)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.randn(WIDTH, 8, generator=gen))
        sae.b_enc_F.copy_(0.1 * torch.randn(8, generator=gen))
        if per_latent:  # a per-latent threshold, as trained SAEs have
            sae.threshold = torch.linspace(0.0, 0.7, 8)
    x_PD = torch.randn(5, WIDTH, generator=gen)
    z_PF = sae.encode(x_PD).detach()
    chosen = (1, 4, 6)
    assert z_PF[:, list(chosen)].abs().sum() > 0  # the chosen features fire somewhere
    for factor in (0.0, -1.0, 2.5):
        scaled = z_PF.clone()
        scaled[:, list(chosen)] *= factor
        want = (sae.decode(scaled) - sae.decode(z_PF)).detach()
        got = FeatureScaling(sae, chosen, factor).delta(x_PD).detach()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert FeatureScaling(sae, chosen, 1.0).delta(x_PD).abs().max() == 0  # unchanged: no-op
    steering = image_scaling(sae, chosen, ["current_frontal"], -1.0)  # remove 1 = ablate
    assert set(steering.maps) == {"current_frontal"}
    assert steering.maps["current_frontal"].factor == 0.0


def test_the_hook_scales_features_on_the_images_it_is_given():
    from workbench.steer.image import FeatureScaling

    gen = torch.Generator().manual_seed(8)
    sae = MatryoshkaSAE(WIDTH, 8, k=3)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.randn(WIDTH, 8, generator=gen))
    acts_NPD = torch.randn(2, 4, WIDTH, generator=gen)
    scaling = FeatureScaling(sae, (0, 3), 0.0)
    out = ImageSteeringHook([None, scaling])(acts_NPD)
    assert torch.equal(out[0], acts_NPD[0])  # an image it does not steer: bit for bit
    torch.testing.assert_close(out[1], acts_NPD[1] + scaling.delta(acts_NPD[1]))
    assert ImageSteeringHook([None, FeatureScaling(sae, (0, 3), 1.0)])(acts_NPD).equal(acts_NPD)
