"""Hook names, module resolution, capture-and-stop, and interventions across architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.models.hooks import (
    capture,
    capture_many,
    decoder_layers,
    final_norm,
    intervene,
    parse_hook_name,
    resid_post_name,
    resolve_module,
)
from workbench.models.tiny import tiny_llama, tiny_llava, tiny_maira2

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def models(tokenizer):
    torch.manual_seed(0)
    return {
        "maira2": tiny_maira2(tokenizer),
        "llava": tiny_llava(tokenizer),
        "llama": tiny_llama(tokenizer),
    }


def _forward_kwargs(name, model, tokenizer):
    ids = [1, 40, 41, 42]
    kwargs = {}
    if name != "llama":
        ids = ids + [model.config.image_token_index] * 16 + [50, 51]
        kwargs["pixel_values"] = torch.randn(1, 3, 56, 56)
    return {"input_ids": torch.tensor([ids]), **kwargs}


def test_name_round_trip():
    assert resid_post_name(7) == "blocks.7.hook_resid_post"
    assert parse_hook_name(resid_post_name(12)) == 12


@pytest.mark.parametrize(
    "bad", ["blocks.x.hook_resid_post", "blocks.1.hook_resid_pre", "resid", ""]
)
def test_bad_names_are_rejected(bad):
    with pytest.raises(ValueError, match="unsupported hook name"):
        parse_hook_name(bad)


def test_negative_layer_is_rejected():
    with pytest.raises(ValueError):
        resid_post_name(-1)


def test_modules_resolve_per_architecture(models):
    assert (
        resolve_module(models["maira2"], resid_post_name(1))
        is models["maira2"].language_model.model.layers[1]
    )
    assert (
        resolve_module(models["llava"], resid_post_name(2))
        is models["llava"].model.language_model.layers[2]
    )
    assert resolve_module(models["llama"], resid_post_name(0)) is models["llama"].model.layers[0]
    assert final_norm(models["llava"]) is models["llava"].model.language_model.norm
    with pytest.raises(ValueError, match="3 decoder layers"):
        resolve_module(models["llama"], resid_post_name(3))
    with pytest.raises(ValueError, match="cannot find decoder layers"):
        decoder_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["maira2", "llava", "llama"])
def test_capture_equals_hidden_states_and_stops(name, models, tokenizer):
    model = models[name]
    kwargs = _forward_kwargs(name, model, tokenizer)
    with torch.no_grad():
        hidden = model(**kwargs, output_hidden_states=True).hidden_states
    layers = decoder_layers(model)
    n_hooks = len(layers[1]._forward_hooks)
    calls = []
    handles = [layers[2].register_forward_hook(lambda *a: calls.append("layer2"))]
    handles.append(
        model.get_output_embeddings().register_forward_hook(lambda *a: calls.append("head"))
    )
    try:
        with torch.no_grad(), capture(model, resid_post_name(1)) as cap:
            model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    torch.testing.assert_close(cap.acts, hidden[2])
    assert len(layers[1]._forward_hooks) == n_hooks


def test_capture_many_takes_every_hook_and_stops_after_the_deepest(models, tokenizer):
    model = models["llama"]  # 3 blocks
    kwargs = _forward_kwargs("llama", model, tokenizer)
    with torch.no_grad():
        hidden = model(**kwargs, output_hidden_states=True).hidden_states
    calls = []
    before = [len(layer._forward_hooks) for layer in decoder_layers(model)]
    handle = decoder_layers(model)[2].register_forward_hook(lambda *a: calls.append("layer2"))
    try:
        names = [resid_post_name(1), resid_post_name(0), resid_post_name(1)]
        with torch.no_grad(), capture_many(model, names) as caps:
            model(**kwargs)
    finally:
        handle.remove()
    assert calls == [] and list(caps) == [resid_post_name(1), resid_post_name(0)]
    torch.testing.assert_close(caps[resid_post_name(0)].acts, hidden[1])
    torch.testing.assert_close(caps[resid_post_name(1)].acts, hidden[2])
    assert [len(layer._forward_hooks) for layer in decoder_layers(model)] == before
    with pytest.raises(ValueError, match="at least one"), capture_many(model, []):
        pass


def test_capture_without_stop_runs_everything(models, tokenizer):
    model = models["llama"]
    kwargs = _forward_kwargs("llama", model, tokenizer)
    with torch.no_grad(), capture(model, resid_post_name(0), stop=False) as cap:
        out = model(**kwargs)
    assert out.logits.shape[-1] == len(tokenizer)
    assert cap.acts.shape == (1, 4, 48)


def test_acts_unavailable_when_hook_never_ran(models):
    with capture(models["llama"], resid_post_name(0)) as cap:
        pass
    with pytest.raises(RuntimeError, match="was not reached"):
        _ = cap.acts


def test_intervention_changes_downstream_and_is_removed(models, tokenizer):
    model = models["maira2"]
    kwargs = _forward_kwargs("maira2", model, tokenizer)
    with torch.no_grad():
        base = model(**kwargs).logits
        with intervene(model, {resid_post_name(0): lambda acts: acts + 5.0}):
            steered = model(**kwargs).logits
        after = model(**kwargs).logits
    assert not torch.allclose(base, steered)
    torch.testing.assert_close(base, after)


def test_intervention_during_generate_sees_prompt_then_single_tokens(models, tokenizer):
    model = models["llava"]
    kwargs = _forward_kwargs("llava", model, tokenizer)
    lengths = []

    def record(acts):
        lengths.append(acts.shape[1])

    with torch.no_grad(), intervene(model, {resid_post_name(1): record}):
        model.generate(**kwargs, max_new_tokens=3, do_sample=False)
    assert lengths == [kwargs["input_ids"].shape[1], 1, 1]


def test_tuple_outputs_are_handled():
    class TupleLayer(nn.Module):
        def forward(self, x):
            return (x * 2, "aux")

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([TupleLayer(), TupleLayer()])

        def forward(self, x):
            for layer in self.model.layers:
                x = layer(x)[0]
            return x

    net = Wrapper()
    x = torch.ones(1, 2, 3)
    with capture(net, resid_post_name(0)) as cap:
        net(x)
    torch.testing.assert_close(cap.acts, x * 2)
    with intervene(net, {resid_post_name(0): lambda a: a * 0}):
        assert not net(x).any()


# ----------------------------------------------------------------------------- other sites


def test_hook_site_reads_every_form_and_names_the_known_ones():
    from workbench.models import hooks as H

    assert H.hook_site("blocks.3.hook_resid_post") == ("resid_post", 3)
    assert H.hook_site(H.vision_resid_post_name(1)) == ("vision_resid_post", 1)
    assert H.hook_site(H.VISION_PROJECTOR) == ("projector", None)
    assert H.hook_site(H.generator_block_name(2)) == ("generator_block", 2)
    for name in (H.SEG_BOTTLENECK, H.SEG_FEATURES, H.SEG_COV_FACTOR, H.GAN_W_PLUS):
        assert H.hook_site(name).layer is None
    with pytest.raises(ValueError, match="vision.blocks.<L>.hook_resid_post"):
        H.hook_site("vision.blocks.x.hook_resid_post")
    assert H.is_language_residual("blocks.0.hook_resid_post")
    assert not H.is_language_residual(H.VISION_PROJECTOR)
    with pytest.raises(ValueError, match="segmentation-model hook"):
        resolve_module(nn.Linear(2, 2), H.SEG_FEATURES)


@pytest.mark.parametrize("name", ["maira2", "llava"])
def test_vision_hooks_capture_the_tower_and_projector_and_stop(models, tokenizer, name):
    from workbench.models.hooks import VISION_PROJECTOR, vision_resid_post_name

    model = models[name]
    kwargs = _forward_kwargs(name, model, tokenizer)
    lm_ran = []
    handle = decoder_layers(model)[0].register_forward_hook(lambda *a: lm_ran.append(1))
    try:
        with capture(model, vision_resid_post_name(1)) as cap:
            model(**kwargs)
        with capture(model, VISION_PROJECTOR) as proj:
            model(**kwargs)
    finally:
        handle.remove()
    assert lm_ran == []  # the language model never ran
    tower = resolve_module(model, vision_resid_post_name(0))
    assert type(tower).__name__ == "Dinov2Layer"
    assert cap.acts.shape == (1, 17, 32)  # CLS + 16 patches, vision width
    with torch.no_grad():
        feats = model.get_image_features(kwargs["pixel_values"])
    if not isinstance(feats, torch.Tensor):  # transformers 5 LLaVA: projected features pooled
        feats = feats.pooler_output[0]
    torch.testing.assert_close(proj.acts.reshape(feats.shape), feats)
    with pytest.raises(ValueError, match="0..1"):
        resolve_module(model, vision_resid_post_name(2))
