"""Steering interventions on a tiny random MAIRA-2 with a tiny SAE at its hook."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.models.hooks import capture, intervene, resid_post_name
from workbench.sae import MatryoshkaSAE
from workbench.sae.synthetic import signed_identity_sae
from workbench.steer.intervene import (
    GenerationCancelledError,
    GenerationMonitor,
    Steering,
    SteeringError,
    SteeringHook,
    direction_steering,
    effective_scales,
    feature_steering,
    generate,
    parse_positions,
    positions_name,
    prompt_mask,
    steer_once,
)

pytestmark = pytest.mark.usefixtures("single_threaded")

LAYER = 1


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


def hook_for(adapter, steering, sae=None) -> SteeringHook:
    inp = adapter.prepare(study())
    return SteeringHook(
        steering, prompt_mask(inp.tokens, inp.prompt_length, steering.positions), sae
    )


def test_strength_zero_is_the_baseline(adapter, sae):
    out = steer_once(adapter, sae, study(), {3: 0.0}, max_new_tokens=6)
    assert out.baseline_text == out.steered_text
    assert out == steer_once(adapter, sae, study(), {3: 0.0}, max_new_tokens=6)


def test_large_strength_changes_the_report(adapter, sae):
    out = steer_once(adapter, sae, study(), {3: 60.0}, max_new_tokens=6)
    assert out.steered_text != out.baseline_text
    cached = steer_once(adapter, sae, study(), {3: 60.0}, max_new_tokens=6, baseline_text="x")
    assert cached == ("x", out.steered_text)


def test_several_features_add_their_sum_at_the_layer(adapter, sae):
    steering = feature_steering(sae, {3: 2.5, 7: -1.0})
    base = residuals(adapter, None, LAYER)
    steered = residuals(adapter, hook_for(adapter, steering), LAYER)
    expected_D = 2.5 * sae.W_dec_FD[3] - 1.0 * sae.W_dec_FD[7]
    torch.testing.assert_close(steered - base, expected_D.expand_as(base), atol=1e-5, rtol=0)
    # the block before is untouched; the block after sees the change
    torch.testing.assert_close(
        residuals(adapter, hook_for(adapter, steering), 0), residuals(adapter, None, 0)
    )
    assert not torch.allclose(
        residuals(adapter, hook_for(adapter, steering), 2), residuals(adapter, None, 2)
    )


def test_image_and_prompt_positions(adapter, sae):
    inp = adapter.prepare(study())
    is_image = torch.tensor([t["kind"] == "image" for t in inp.tokens])
    assert is_image.any() and not is_image.all()
    base = residuals(adapter, None, LAYER)
    step_D = 2.0 * sae.W_dec_FD[5]
    for where, expect in (("image", is_image), ("prompt", ~is_image)):
        steering = feature_steering(sae, {5: 2.0}, positions=where)
        diff = residuals(adapter, hook_for(adapter, steering), LAYER) - base
        torch.testing.assert_close(diff[expect], step_D.expand(int(expect.sum()), -1))
        assert torch.equal(diff[~expect], torch.zeros_like(diff[~expect]))


def test_generated_positions_through_the_kv_cache():
    sae = MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(0))
    steering = feature_steering(sae, {2: 3.0}, positions="generated")
    mask = prompt_mask([{"kind": "prompt"}] * 5, 5, steering.positions)
    hook = SteeringHook(steering, mask)
    step = 3.0 * sae.W_dec_FD[2]
    prefill = hook(torch.zeros(1, 5, 4))
    assert torch.equal(prefill[0, :4], torch.zeros(4, 4))  # prompt untouched ...
    torch.testing.assert_close(prefill[0, 4], step)  # ... except the position predicting token 1
    torch.testing.assert_close(hook(torch.zeros(1, 1, 4))[0, 0], step)  # cached decoding steps
    full = hook(torch.zeros(1, 7, 4))  # a pass without cache over prompt + 2 new tokens
    assert torch.equal(full[0, :4], torch.zeros(4, 4))
    torch.testing.assert_close(full[0, 4:], step.expand(3, 4))
    every = feature_steering(sae, {2: 3.0}, positions="all")
    out = SteeringHook(every, prompt_mask([{"kind": "image"}] * 5, 5, every.positions))
    torch.testing.assert_close(out(torch.zeros(1, 5, 4))[0], step.expand(5, 4))
    image_only = feature_steering(sae, {2: 3.0}, positions="image")
    cached = SteeringHook(image_only, prompt_mask([{"kind": "image"}] * 5, 5, {"image"}))
    cached(torch.zeros(1, 5, 4))
    assert cached(torch.zeros(1, 1, 4)) is None  # generated tokens are not image tokens


def test_positions_are_parsed_and_named():
    assert parse_positions("all") == {"image", "prompt", "generated"}
    assert positions_name("generated+image") == "image+generated"
    assert positions_name("image+prompt+generated") == "all"
    with pytest.raises(SteeringError, match="'tokens' is not one of"):
        parse_positions("image+tokens")


def test_clamp_sets_the_latent_and_keeps_the_error(adapter, sae):
    x_TD = residuals(adapter, None, LAYER)
    a_T = sae.encode(x_TD)[:, 5]
    steering = feature_steering(sae, {5: 4.0}, mode="clamp")
    out_TD = SteeringHook(steering, torch.ones(len(x_TD), dtype=torch.bool), sae)(x_TD[None])[0]
    expected = x_TD + (4.0 - a_T)[:, None] * sae.W_dec_FD[5]
    torch.testing.assert_close(out_TD, expected, atol=1e-5, rtol=0)
    fired = a_T > 0  # W_enc = W_dec^T (unit rows): a firing latent now reads exactly 4
    assert fired.any()
    torch.testing.assert_close(sae.encode(out_TD)[fired, 5], torch.full((int(fired.sum()),), 4.0))


def test_an_unchanged_clamp_is_exactly_a_no_op():
    sae = signed_identity_sae(6, k=3, hook_name=resid_post_name(0))
    x = torch.randn(1, 9, 6) * 0.3
    x[..., 2] = 1.75  # feature 2 reads exactly 1.75 everywhere
    hook = SteeringHook(
        feature_steering(sae, {2: 1.75}, mode="clamp"), torch.ones(9, dtype=torch.bool), sae
    )
    assert torch.equal(hook(x), x)
    x[..., 4] = 0.0  # a silent feature clamped to zero (ablation of nothing)
    silent = SteeringHook(
        feature_steering(sae, {4: 0.0}, mode="clamp"), torch.ones(9, dtype=torch.bool), sae
    )
    assert torch.equal(silent(x), x)
    ablate = SteeringHook(
        feature_steering(sae, {2: 0.0}, mode="clamp"), torch.ones(9, dtype=torch.bool), sae
    )
    out = ablate(x)
    assert torch.equal(out[..., 2], torch.zeros(1, 9)) and torch.equal(out[..., :2], x[..., :2])


def test_a_direction_is_added_as_given(adapter):
    d_D = torch.linspace(-1, 1, 48)
    steering = direction_steering(d_D, -1.5, "prompt")
    inp = adapter.prepare(study())
    mask = prompt_mask(inp.tokens, inp.prompt_length, steering.positions)
    diff = residuals(adapter, SteeringHook(steering, mask), LAYER) - residuals(adapter, None, LAYER)
    torch.testing.assert_close(
        diff[mask], (-1.5 * d_D).expand(int(mask.sum()), -1), atol=1e-5, rtol=0
    )
    text = generate(
        adapter, inp, max_new_tokens=4, steering=steering, hook_name=resid_post_name(LAYER)
    )
    assert isinstance(text, str)
    with pytest.raises(SteeringError, match="needs the SAE or an explicit hook_name"):
        generate(adapter, inp, max_new_tokens=2, steering=steering)


def test_monitor_counts_steps_and_cancels(adapter, sae):
    inp = adapter.prepare(study())
    steps: list[int] = []
    generate(adapter, inp, max_new_tokens=5, monitor=GenerationMonitor(steps.append))
    assert steps and steps[-1] <= 5 and steps == list(range(1, len(steps) + 1))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelledError):
        generate(adapter, inp, max_new_tokens=5, monitor=GenerationMonitor(cancel=cancel))
    steering = feature_steering(sae, {1: 1.0})
    with pytest.raises(GenerationCancelledError):
        generate(adapter, inp, max_new_tokens=5, steering=steering, sae=sae,
                 monitor=GenerationMonitor(cancel=cancel))  # fmt: skip


def test_strengths_in_units_of_typical_activation():
    assert effective_scales({1: 2.0}, "raw", None) == {1: 2.0}
    assert effective_scales({1: 2.0}, "max_act", {1: 1.5}) == {1: 3.0}
    assert effective_scales({1: -2.0}, "mean_act", {1: 0.5}) == {1: -1.0}
    with pytest.raises(SteeringError, match="feature 1: no max_act known"):
        effective_scales({1: 2.0}, "max_act", {0: 1.0})
    with pytest.raises(SteeringError, match="feature 1: no mean_act known"):
        effective_scales({1: 2.0}, "mean_act", {1: None})
    with pytest.raises(SteeringError, match="needs the features' max_act"):
        effective_scales({1: 2.0}, "max_act", None)


def test_bad_requests_are_clear_errors(adapter, sae):
    inp = adapter.prepare(study())
    with pytest.raises(SteeringError, match=r"features \[16\] outside 0..15"):
        feature_steering(sae, {16: 1.0})
    with pytest.raises(SteeringError, match="unknown mode 'scale'"):
        feature_steering(sae, {1: 1.0}, mode="scale")
    with pytest.raises(SteeringError, match="clamping needs the SAE"):
        SteeringHook(
            Steering(None, {1: 0.0}, frozenset({"image"})), torch.ones(3, dtype=torch.bool)
        )
    small = MatryoshkaSAE(8, 4, k=2, hook_name=resid_post_name(LAYER))
    steering = feature_steering(small, {0: 1.0})
    with pytest.raises(SteeringError, match="d_in=8 does not match the model's d_model=48"):
        generate(adapter, inp, steering=steering, sae=small)
    nameless = MatryoshkaSAE(48, 4, k=2, hook_name=None)
    with pytest.raises(SteeringError, match="no hook_name"):
        generate(adapter, inp, steering=feature_steering(nameless, {0: 1.0}), sae=nameless)
    deep = MatryoshkaSAE(48, 4, k=2, hook_name=resid_post_name(9))
    with pytest.raises(ValueError, match="layer 9 outside"):
        generate(adapter, inp, steering=feature_steering(deep, {0: 1.0}), sae=deep)


def test_low_precision_activations_keep_their_dtype():
    sae = MatryoshkaSAE(4, 6, k=2, hook_name=resid_post_name(0))
    acts = torch.randn(1, 3, 4).to(torch.bfloat16)
    every = torch.ones(3, dtype=torch.bool)
    for mode in ("add", "clamp"):
        out = SteeringHook(feature_steering(sae, {1: 2.0}, mode=mode), every, sae)(acts)
        assert out.dtype == torch.bfloat16 and out.shape == acts.shape
    out = SteeringHook(feature_steering(sae, {1: 0.0}), every)(acts)
    assert torch.equal(out, acts)  # a zero step is exactly the identity, also in bf16
    out = SteeringHook(feature_steering(sae, {1: 2.0}), every)(acts)
    expected = (acts.float() + 2.0 * sae.W_dec_FD[1]).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_the_steering_benchmark_measures_every_intervention(adapter, sae):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "bench_steer.py"
    spec = importlib.util.spec_from_file_location("bench_steer", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    timings = bench.measure(adapter, sae, study(), max_new_tokens=3, repeats=1)
    names = [t.name for t in timings]
    assert names[0] == "unsteered" and len(timings) == 5 and "site image" in names[1]
    assert all(t.seconds > 0 and 1 <= t.tokens <= 3 for t in timings)
    lines = bench.table(timings).splitlines()
    assert len(lines) == 7 and lines[2].startswith("| unsteered |") and "| 1.00 |" in lines[2]
