"""CE loss recovered: exact reconstructions recover 1, empty ones 0, masks count tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.analyse.splice import (
    LOSS_MASK,
    SPLICE_MASK,
    SpliceLosses,
    next_token_ce,
    predicting_positions,
    splice_losses,
    splice_losses_by_prefix,
    takes_logits_to_keep,
)
from workbench.models.tiny import tiny_llama, tiny_llava, tiny_maira2, tiny_tokenizer
from workbench.sae.synthetic import signed_identity_sae

pytestmark = pytest.mark.usefixtures("single_threaded")
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    return tiny_llama(tok, n_layers=3), tok


def _batches(tok):
    ids = tok(["The heart size is normal. No pneumothorax.", "Lungs are clear."])["input_ids"]
    return [{"input_ids": torch.tensor([x]), "attention_mask": torch.ones(1, len(x))} for x in ids]


def test_exact_reconstruction_recovers_everything(lm):
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    sae.threshold.fill_(-1.0)  # plain ReLU: relu(x) - relu(-x) == x, an exact reconstruction
    out = splice_losses(model, sae, _batches(tok))
    assert out.spliced == pytest.approx(out.clean, abs=1e-5)
    assert abs(out.zero_ablated - out.clean) > 1e-3  # ablation changes the loss (random model)
    assert out.recovered == pytest.approx(1.0, abs=1e-3)
    partial = splice_losses(model, sae, _batches(tok), n_groups=1)  # only +x[:24] survives
    assert partial.clean == out.clean and partial.spliced != pytest.approx(out.clean, abs=1e-5)


def test_empty_reconstruction_recovers_nothing(lm):
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    sae.threshold.fill_(1e6)  # nothing fires, b_dec = 0: the reconstruction is zero
    out = splice_losses(model, sae, _batches(tok))
    assert out.spliced == pytest.approx(out.zero_ablated, abs=1e-6)
    assert out.recovered == pytest.approx(0.0, abs=1e-6)


def test_losses_are_token_weighted_means_of_next_token_ce(lm):
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    batches = _batches(tok)
    out = splice_losses(model, sae, batches)
    per_token = []
    with torch.no_grad():
        for b in batches:
            logits = model(**b).logits[0, :-1]
            per_token.append(F.cross_entropy(logits, b["input_ids"][0, 1:], reduction="none"))
    flat = torch.cat(per_token)
    assert out.n_tokens == flat.numel()
    assert out.clean == pytest.approx(float(flat.mean()), rel=1e-5)


def test_masks_choose_the_counted_targets():
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    total, n = next_token_ce(logits, ids)
    assert n == 4
    _, n_att = next_token_ce(logits, ids, attention_mask_BT=torch.tensor([[1, 1, 1, 0, 0]]))
    assert n_att == 2
    total_m, n_m = next_token_ce(logits, ids, loss_mask_BT=torch.tensor([[0, 0, 0, 1, 1]]))
    full = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    assert n_m == 2 and total_m == pytest.approx(float(full[2:].sum()), rel=1e-6)
    assert total == pytest.approx(float(full.sum()), rel=1e-6)


def test_logits_of_the_predicting_positions_give_the_same_ce():
    logits = torch.randn(2, 6, 7)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    loss = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 1]])
    pos = predicting_positions(ids, loss_mask_BT=loss)
    assert pos.tolist() == [1, 2, 3, 4]  # t - 1 for every counted t of either row
    assert next_token_ce(logits[:, pos], ids, None, loss, pos) == pytest.approx(
        next_token_ce(logits, ids, None, loss)
    )
    with pytest.raises(ValueError, match="leaves out"):
        next_token_ce(logits[:, pos[1:]], ids, None, loss, pos[1:])


def _masked_from_3(plain: list[dict]) -> list[dict]:
    """``plain`` with a loss mask counting the targets from position 3 on."""
    return [{**b, LOSS_MASK: torch.arange(b["input_ids"].shape[1])[None] >= 3} for b in plain]


def _losses_and_head_widths(model, sae, batches) -> tuple[SpliceLosses, list[int]]:
    """``splice_losses`` and the number of positions the output head saw in each forward."""
    widths: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: widths.append(args[0].shape[1])
    )
    try:
        return splice_losses(model, sae, batches), widths
    finally:
        handle.remove()


def test_a_loss_mask_runs_the_output_head_on_its_positions_only(lm):
    """The same losses as from every position's logits; the head sees the counted ones."""
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    plain = _batches(tok)
    out, widths = _losses_and_head_widths(model, sae, _masked_from_3(plain))
    lengths = [b["input_ids"].shape[1] for b in plain]
    assert widths == [n - 3 for n in lengths for _ in range(3)]  # clean, spliced, zero
    clean = 0.0
    with torch.no_grad():
        for b in plain:
            logits = model(**b).logits[0, 2:-1]
            clean += float(F.cross_entropy(logits, b["input_ids"][0, 3:], reduction="sum"))
    assert out.n_tokens == sum(n - 3 for n in lengths)
    assert out.clean == pytest.approx(clean / out.n_tokens, rel=1e-5)


def test_models_without_logits_to_keep_give_the_same_losses(lm, monkeypatch):
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    plain = _batches(tok)
    kept = splice_losses(model, sae, _masked_from_3(plain))
    original = model.forward

    def forward(input_ids, attention_mask=None, use_cache=False):  # an older or custom class
        return original(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    monkeypatch.setattr(model, "forward", forward)
    assert not takes_logits_to_keep(model)
    every, widths = _losses_and_head_widths(model, sae, _masked_from_3(plain))
    assert widths == [b["input_ids"].shape[1] for b in plain for _ in range(3)]
    assert every.n_tokens == kept.n_tokens
    assert every.clean == pytest.approx(kept.clean, rel=1e-6)
    assert every.zero_ablated == pytest.approx(kept.zero_ablated, rel=1e-6)


def test_vision_language_models_take_logits_to_keep():
    tok = tiny_tokenizer()
    assert takes_logits_to_keep(tiny_maira2(tok, n_layers=1))  # through its language_model
    assert takes_logits_to_keep(tiny_llava(tok, n_layers=1))


def test_bad_inputs_are_refused(lm):
    model, tok = lm
    sae = signed_identity_sae(48, k=4)
    with pytest.raises(ValueError, match="no hook name"):
        splice_losses(model, sae, _batches(tok))
    with pytest.raises(ValueError, match="n_groups=3"):
        splice_losses(model, sae, _batches(tok), hook_name=HOOK, n_groups=3)
    with pytest.raises(ValueError, match="no predicted tokens"):
        splice_losses(model, sae, [], hook_name=HOOK)
    assert math.isnan(SpliceLosses(1.0, 2.0, 1.0, 3).recovered)


def test_splice_mask_replaces_only_the_marked_positions(lm):
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    sae.threshold.fill_(1e6)  # reconstruction = zeros: spliced positions are ablated
    plain = _batches(tok)
    none = [{**b, SPLICE_MASK: torch.zeros_like(b["input_ids"])} for b in plain]
    out = splice_losses(model, sae, none)
    assert out.spliced == pytest.approx(out.clean) and out.zero_ablated == pytest.approx(out.clean)
    assert math.isnan(out.recovered)
    some = [{**b, SPLICE_MASK: torch.arange(b["input_ids"].shape[1])[None] < 3} for b in plain]
    part, full = splice_losses(model, sae, some), splice_losses(model, sae, plain)
    assert part.zero_ablated != pytest.approx(full.zero_ablated, abs=1e-4)
    assert part.zero_ablated != pytest.approx(part.clean, abs=1e-4)
    # by hand: zero the first three positions of block 1's output
    from workbench.models.hooks import intervene

    total = 0.0
    with torch.no_grad():
        for b in plain:

            def first_three(h):
                h = h.clone()
                h[:, :3] = 0
                return h

            with intervene(model, {HOOK: first_three}):
                logits = model(**b).logits
            total += next_token_ce(logits, b["input_ids"])[0]
    assert part.zero_ablated == pytest.approx(total / part.n_tokens, rel=1e-5)


def test_all_prefixes_in_one_pass_equal_separate_calls(lm):
    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    together = splice_losses_by_prefix(model, sae, iter(_batches(tok)), prefixes=(1, 2, None))
    for n in (1, 2, None):
        alone = splice_losses(model, sae, _batches(tok), n_groups=n)
        assert together[n].spliced == pytest.approx(alone.spliced, rel=1e-6)
        assert together[n].clean == pytest.approx(alone.clean, rel=1e-6)
        assert together[n].zero_ablated == pytest.approx(alone.zero_ablated, rel=1e-6)
    assert together[2].spliced == pytest.approx(together[None].spliced, rel=1e-6)


def test_one_encode_per_batch_and_its_clean_activation_to_on_clean(lm, monkeypatch):
    """2 + prefixes forwards per batch, one SAE encode per batch (shared by every prefix), and
    ``on_clean`` gets exactly the activation a capture at the hook sees, with its code."""
    from workbench.models.hooks import capture

    model, tok = lm
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)
    encodes, forwards, seen = [], [], []
    real_encode = sae.encode
    monkeypatch.setattr(sae, "encode", lambda x: encodes.append(1) or real_encode(x))
    handle = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        got = splice_losses_by_prefix(
            model, sae, iter(_batches(tok)), prefixes=(1, 2),
            on_clean=lambda batch, x, lat: seen.append((batch, x, lat)),
        )  # fmt: skip
    finally:
        handle.remove()
    assert len(encodes) == 2 and len(forwards) == 2 * (2 + 2) and len(seen) == 2
    for batch, x_BTD, lat_BTF in seen:
        with torch.no_grad(), capture(model, HOOK) as cap:
            model(**batch)
        assert torch.equal(x_BTD, cap.acts)
        assert torch.equal(lat_BTF, real_encode(cap.acts))
    monkeypatch.undo()
    from workbench.models.hooks import intervene

    for n in (1, 2):  # the shared code splices what encoding inside each spliced run would
        total = 0.0
        with torch.no_grad(), intervene(model, {HOOK: lambda h, n=n: sae.decode(sae.encode(h), n)}):
            for b in _batches(tok):
                total += next_token_ce(model(**b).logits, b["input_ids"])[0]
        assert got[n].spliced == pytest.approx(total / got[n].n_tokens, rel=1e-6)


def _count_calls(modules) -> tuple[list[int], list]:
    counts = [0] * len(modules)

    def hook(i):
        def fn(module, args, output):
            counts[i] += 1

        return fn

    return counts, [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]


@pytest.mark.parametrize("build", ["tiny_maira2", "tiny_llava"])
def test_edited_runs_replay_vision_and_blocks_up_to_the_hook(monkeypatch, build):
    """Vision tower, projector and blocks 0..L run once per study; the losses are unchanged."""
    from workbench.analyse import splice
    from workbench.models import tiny
    from workbench.models.hooks import decoder_layers, projector, vision_layers

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = getattr(tiny, build)(tok, n_layers=3)
    image, n_img = model.config.image_token_index, model.config.image_seq_length
    ids = tok(["The heart size is normal.", "Lungs are clear."])["input_ids"]
    pixels = [torch.randn(1, 3, 56, 56) for _ in ids]
    batches = [
        {"input_ids": torch.tensor([[image] * n_img + x]), "pixel_values": px}
        for x, px in zip(ids, pixels)
    ]
    sae = signed_identity_sae(48, k=4, hook_name=HOOK)  # block 1 of 3
    sae.threshold.fill_(-1.0)  # exact with every group, partial with the first only
    layers = decoder_layers(model)
    # children: a replayed module's own forward hooks still run, its children do not
    first_linear = next(m for m in projector(model).modules() if isinstance(m, torch.nn.Linear))
    watched = [vision_layers(model)[0], first_linear, *(b.mlp for b in layers)]
    counts, handles = _count_calls(watched)
    fast = splice_losses_by_prefix(model, sae, batches, prefixes=(1, 2, None))
    for handle in handles:
        handle.remove()
    runs = 1 + 1 + 3  # clean, zero-ablated, three prefixes
    assert counts == [2, 2, 2, 2, 2 * runs]  # per study: once up to the hook, every run after
    monkeypatch.setattr(splice, "modules_up_to", lambda model, hook: [])
    slow = splice_losses_by_prefix(model, sae, batches, prefixes=(1, 2, None))
    assert fast == slow  # bit for bit: the blocks after the hook see the same inputs
    assert fast[None].spliced == pytest.approx(fast[None].clean, abs=1e-5)
    assert fast[1].spliced != pytest.approx(fast[None].spliced, abs=1e-4)  # runs differ
    assert "forward" not in layers[0].__dict__  # the class's forward is back
