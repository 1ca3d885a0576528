"""Batched generation and scoring on a tiny MAIRA-2: every row equals its one-row run, and an
unsteered or zero-strength row is exactly the baseline (differences come only from steering)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.models.batch import collate
from workbench.steer.evaluate import Arm, Case, Evaluator
from workbench.steer.hook import SteeringHook, left_padded
from workbench.steer.intervene import (
    direction_steering,
    feature_steering,
    generate,
    generate_many,
)
from workbench.steer.metrics import perplexities, perplexity
from workbench.steer.peers import Direction

pytestmark = pytest.mark.usefixtures("single_threaded")

N_NEW = 8


def study(seed: int, indication: str | None, lateral: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (64, 64)).astype(np.uint8))
    other = Image.fromarray(rng.integers(0, 256, (64, 64)).astype(np.uint8)) if lateral else None
    return {"frontal": image, "lateral": other, "prior_frontal": None, "indication": indication,
            "technique": None, "comparison": None, "prior_report": None}  # fmt: skip


def studies() -> list[dict]:
    """Prompts of different lengths (indication words, a second image): real left padding."""
    return [
        study(0, "Cough."),
        study(1, "Shortness of breath after a fall, evaluate for rib fracture.", lateral=True),
        study(2, None),
    ]


def test_left_padding_puts_every_prompt_end_in_the_last_column(adapter):
    inps = [adapter.prepare(s) for s in studies()]
    batch = collate([i.model_inputs for i in inps], pad_id=3)
    widths = [i.prompt_length for i in inps]
    assert len(set(widths)) == 3 and batch.inputs["input_ids"].shape == (3, max(widths))
    for b, inp in enumerate(inps):
        assert batch.offsets[b] == max(widths) - widths[b]
        assert torch.equal(batch.inputs["input_ids"][b, batch.offsets[b] :],
                           inp.model_inputs["input_ids"][0])  # fmt: skip
        assert int(batch.inputs["attention_mask"][b].sum()) == widths[b]
    assert batch.inputs["pixel_values"].shape[0] == 4  # 1 + 2 + 1 images, in row order
    masks = left_padded([torch.ones(2, dtype=torch.bool), torch.ones(4, dtype=torch.bool)])
    assert masks.tolist() == [[False, False, True, True], [True] * 4]


def test_batched_greedy_rows_equal_unbatched_rows(adapter, sae):
    inps = [adapter.prepare(s) for s in studies()]
    steerings = [
        None,
        feature_steering(sae, {3: 40.0}),
        direction_steering(torch.linspace(-1, 1, 48), 8.0, "image+generated"),
        feature_steering(sae, {5: 4.0}, mode="clamp", positions="prompt"),
        None,
    ]
    rows = [inps[0], inps[1], inps[2], inps[1], inps[2]]
    batched = generate_many(adapter, rows, steerings, max_new_tokens=N_NEW, sae=sae)
    alone = [
        generate(adapter, inp, max_new_tokens=N_NEW, steering=s, sae=sae)
        for inp, s in zip(rows, steerings, strict=True)
    ]
    assert batched == alone
    assert batched[1] != generate(adapter, inps[1], max_new_tokens=N_NEW)  # steering acts
    assert adapter.generate_batch(inps, N_NEW) == [adapter.generate(i, N_NEW) for i in inps]


def test_zero_steps_and_unchanged_clamps_give_the_baseline_exactly(adapter, sae):
    inps = [adapter.prepare(s) for s in studies()]
    base = [generate(adapter, inp, max_new_tokens=N_NEW) for inp in inps]
    zero_add = feature_steering(sae, {3: 0.0})
    zero_dim = direction_steering(torch.ones(48), 0.0)
    batched = generate_many(adapter, inps * 2, [zero_add] * 3 + [zero_dim] * 3,
                            max_new_tokens=N_NEW, sae=sae)  # fmt: skip
    assert batched == base * 2
    # an unchanged clamp adds exactly zero at every position of its row, bit for bit
    acts_BTD = torch.randn(2, 5, 48)
    with torch.no_grad():
        value = float(sae.encode(acts_BTD[1].reshape(-1, 48))[0, 7])
    acts_BTD[1] = acts_BTD[1, :1].expand(5, -1)  # every position reads the same latent value
    clamp = feature_steering(sae, {7: value}, mode="clamp")
    hook = SteeringHook([None, clamp], torch.ones(2, 5, dtype=torch.bool), sae)
    out = hook(acts_BTD.clone())
    assert out is None or torch.equal(out, acts_BTD)


def test_rows_outside_their_positions_are_untouched(sae):
    add = feature_steering(sae, {2: 5.0}, positions="generated")
    mask_BP = left_padded([torch.tensor([False, False, True]), torch.tensor([False, True])])
    hook = SteeringHook([add, None], mask_BP, sae)
    acts = torch.randn(2, 3, 48)
    out = hook(acts.clone())
    assert torch.equal(out[1], acts[1]) and torch.equal(out[0, :2], acts[0, :2])
    torch.testing.assert_close(out[0, 2], acts[0, 2] + 5.0 * sae.W_dec_FD[2])
    step = hook(acts[:, :1].clone())  # a cached decoding step: generated for steered rows only
    assert torch.equal(step[1], acts[1, :1]) and not torch.equal(step[0], acts[0, :1])


def test_batched_perplexities_match_one_text_at_a_time(adapter):
    s = studies()[1]
    texts = [
        "Heart size is normal.",
        None,
        "There is a small left pleural effusion. No pneumothorax.",
    ]
    many = perplexities(adapter, s, texts)
    assert many[1] is None
    for text, got in zip(texts, many, strict=True):
        if text is None:
            continue
        inp = adapter.prepare(s, findings=text)
        with torch.no_grad():
            logits_TV = adapter.model(**adapter.device_inputs(inp)).logits[0]
        ids_T = inp.model_inputs["input_ids"][0]
        idx = torch.tensor([i for i, t in enumerate(inp.tokens) if t["kind"] == "report"])
        nll = torch.nn.functional.cross_entropy(logits_TV[idx - 1], ids_T[idx])
        assert got == pytest.approx(float(torch.exp(nll)), rel=1e-4)
        assert perplexity(adapter, s, text) == pytest.approx(got, rel=1e-5)


def test_the_evaluator_batches_without_changing_any_row(adapter, sae):
    cases = [Case(i, s) for i, s in enumerate(studies())]
    arms = [Arm("sae", "pacemaker", "add", (3,), s, "raw", "add", "all", "v") for s in (0.0, 40.0)]
    arms += [
        Arm("dim", "pacemaker", "add", (), 4.0, "mean_diff", "add", "all", "v"),
        Arm("prompt", "pacemaker", "add", (), 1.0, "prompt", "prompt", "prompt", "v"),
    ]
    pairs = [(a, c) for a in arms for c in cases]
    directions = {"pacemaker": Direction(torch.linspace(-1, 1, 48), 3, 5)}
    rows = {}
    for size in (1, 5):
        ev = Evaluator(adapter, sae, N_NEW, None, directions, batch_size=size)
        chunks = ev.chunks(pairs)
        assert all(len(c) + len({x.study_id for _, x in c}) <= max(size, 2) for c in chunks)
        rows[size] = ev.run_many(pairs)
    keep = ("steered_text", "baseline_text", "side_effects", "success")
    assert [[r[k] for k in keep] for r in rows[1]] == [[r[k] for k in keep] for r in rows[5]]
    for r1, r5 in zip(rows[1], rows[5], strict=True):
        assert r5["steered_ppl"] == pytest.approx(r1["steered_ppl"], rel=1e-4)
    zero = [r for r in rows[5] if r["method"] == "sae" and r["strength"] == 0.0]
    assert zero and all(r["steered_text"] == r["baseline_text"] for r in zero)
    assert all(r["side_effects"] == [] for r in zero)
