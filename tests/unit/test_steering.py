"""Steering interventions on a tiny random MAIRA-2 with a tiny SAE at its hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.models.hooks import capture, intervene, resid_post_name
from workbench.models.registry import adapter_for
from workbench.models.tiny import tiny_maira2, tiny_tokenizer
from workbench.sae import MatryoshkaSAE
from workbench.steer.intervene import (
    SteeringError,
    SteeringHook,
    effective_scales,
    generate_steered,
    steer_once,
)

pytestmark = pytest.mark.usefixtures("single_threaded")

LAYER = 1


@pytest.fixture(scope="module")
def adapter():
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    return adapter_for(tiny_maira2(tokenizer), tokenizer, "tiny-maira2")


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(1)
    return MatryoshkaSAE(48, 16, k=4, group_sizes=(4, 12), hook_name=resid_post_name(LAYER))


def study() -> dict:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    return {
        "frontal": Image.fromarray(pixels),
        "lateral": None,
        "prior_frontal": None,
        "indication": "Cough.",
        "technique": None,
        "comparison": None,
        "prior_report": None,
    }


def residuals(adapter, hook, layer: int) -> torch.Tensor:
    """Residual after block ``layer`` of one forward over the prompt, with ``hook`` at LAYER."""
    inp = adapter.prepare(study())
    interventions = {resid_post_name(LAYER): hook} if hook is not None else {}
    with (
        torch.no_grad(),
        intervene(adapter.model, interventions),  # registered first: runs before the capture
        capture(adapter.model, resid_post_name(layer)) as cap,
    ):
        adapter.model(**adapter.device_inputs(inp))
    return cap.acts[0]


def test_scale_zero_is_the_baseline(adapter, sae):
    out = steer_once(adapter, sae, study(), {3: 0.0}, max_new_tokens=6)
    assert out.baseline_text == out.steered_text
    assert out == steer_once(adapter, sae, study(), {3: 0.0}, max_new_tokens=6)


def test_large_scale_changes_the_report(adapter, sae):
    out = steer_once(adapter, sae, study(), {3: 60.0}, max_new_tokens=6)
    assert out.steered_text != out.baseline_text
    cached = steer_once(adapter, sae, study(), {3: 60.0}, max_new_tokens=6, baseline_text="x")
    assert cached == ("x", out.steered_text)


def test_hook_adds_exactly_scale_times_direction_at_its_layer(adapter, sae):
    n_prompt = adapter.prepare(study()).prompt_length
    hook = SteeringHook(sae, {3: 2.5, 7: -1.0}, prompt_length=n_prompt)
    base, steered = residuals(adapter, None, LAYER), residuals(adapter, hook, LAYER)
    expected_D = 2.5 * sae.W_dec_FD[3] - 1.0 * sae.W_dec_FD[7]
    torch.testing.assert_close(steered - base, expected_D.expand_as(base), atol=1e-5, rtol=0)
    # the block before is untouched; the block after sees the change
    hook = SteeringHook(sae, {3: 2.5}, prompt_length=n_prompt)
    torch.testing.assert_close(residuals(adapter, hook, 0), residuals(adapter, None, 0))
    hook = SteeringHook(sae, {3: 2.5}, prompt_length=n_prompt)
    assert not torch.allclose(residuals(adapter, hook, 2), residuals(adapter, None, 2))


def test_generated_positions_only():
    sae = MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(0))
    hook = SteeringHook(sae, {2: 3.0}, positions="generated", prompt_length=5)
    step = 3.0 * sae.W_dec_FD[2]
    prefill = hook(torch.zeros(1, 5, 4))
    assert torch.equal(prefill[0, :4], torch.zeros(4, 4))  # prompt untouched ...
    torch.testing.assert_close(prefill[0, 4], step)  # ... except the position predicting token 1
    torch.testing.assert_close(hook(torch.zeros(1, 1, 4))[0, 0], step)  # cached decoding steps
    full = hook(torch.zeros(1, 7, 4))  # a pass without cache over prompt + 2 new tokens
    assert torch.equal(full[0, :4], torch.zeros(4, 4))
    torch.testing.assert_close(full[0, 4:], step.expand(3, 4))
    every = SteeringHook(sae, {2: 3.0}, positions="all", prompt_length=5)(torch.zeros(1, 5, 4))
    torch.testing.assert_close(every[0], step.expand(5, 4))


def test_clamp_sets_the_latent_and_keeps_the_error(adapter, sae):
    x_TD = residuals(adapter, None, LAYER)
    a_T = sae.encode(x_TD)[:, 5]
    hook = SteeringHook(sae, {5: 4.0}, mode="clamp", prompt_length=x_TD.shape[0])
    out_TD = hook(x_TD[None])[0]
    expected = x_TD + (4.0 - a_T)[:, None] * sae.W_dec_FD[5]
    torch.testing.assert_close(out_TD, expected, atol=1e-5, rtol=0)
    # W_enc = W_dec^T (unit rows): a firing latent now reads exactly the clamped value
    fired = a_T > 0
    assert fired.any()
    torch.testing.assert_close(sae.encode(out_TD)[fired, 5], torch.full((int(fired.sum()),), 4.0))


def test_scales_in_units_of_max_activation():
    assert effective_scales({1: 2.0}, "raw", None) == {1: 2.0}
    assert effective_scales({1: 2.0}, "max_act", {1: 1.5}) == {1: 3.0}
    with pytest.raises(SteeringError, match="feature 1: no max activation"):
        effective_scales({1: 2.0}, "max_act", {0: 1.0})
    with pytest.raises(SteeringError, match="needs the features' max"):
        effective_scales({1: 2.0}, "max_act", None)


def test_bad_requests_are_clear_errors(adapter, sae):
    inp = adapter.prepare(study())
    with pytest.raises(SteeringError, match=r"features \[16\] outside 0..15"):
        generate_steered(adapter, sae, inp, {16: 1.0})
    small = MatryoshkaSAE(8, 4, k=2, hook_name=resid_post_name(LAYER))
    with pytest.raises(SteeringError, match="d_in=8 does not match the model's d_model=48"):
        generate_steered(adapter, small, inp, {0: 1.0})
    nameless = MatryoshkaSAE(48, 4, k=2, hook_name=None)
    with pytest.raises(SteeringError, match="no hook_name"):
        generate_steered(adapter, nameless, inp, {0: 1.0})
    deep = MatryoshkaSAE(48, 4, k=2, hook_name=resid_post_name(9))
    with pytest.raises(ValueError, match="layer 9 outside"):
        generate_steered(adapter, deep, inp, {0: 1.0})


def test_low_precision_activations_keep_their_dtype():
    sae = MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(0))
    acts = torch.randn(1, 3, 4).to(torch.bfloat16)
    for mode in ("add", "clamp"):
        out = SteeringHook(sae, {1: 2.0}, mode=mode, prompt_length=3)(acts)
        assert out.dtype == torch.bfloat16 and out.shape == acts.shape
    out = SteeringHook(sae, {1: 0.0}, prompt_length=3)(acts)
    assert torch.equal(out, acts)  # a zero step is exactly the identity, also in bf16
    out = SteeringHook(sae, {1: 2.0}, prompt_length=3)(acts)
    expected = (acts.float() + 2.0 * sae.W_dec_FD[1]).to(torch.bfloat16)
    assert torch.equal(out, expected)
