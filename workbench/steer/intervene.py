"""Steering interventions on the residual stream during generation (Bouzid et al. 2025, Fig. 1C).

A :class:`Steering` says what changes at the SAE's hook (``blocks.L.hook_resid_post``) and at
which positions; :class:`SteeringHook` applies it through the registry's intervention hooks:

- *add*: ``x' = x + v`` with ``v = sum_f s_f * u_f * W_dec[f]`` for SAE features (``s_f`` the
  strength, ``u_f`` the feature's typical activation: its ``max_act`` or ``mean_act`` over the
  store, or 1 for ``unit='raw'``), or ``v = s * d`` for any other direction ``d`` (the
  difference of means of :mod:`workbench.steer.peers`, in units of the mean difference);
- *clamp*: encode ``x`` with the SAE, set the chosen latents to ``s_f * u_f``, decode, and keep
  the SAE's error term: ``x' = x + (z' - z) W_dec``. An unchanged clamp (``z' = z``) adds an
  exact zero, so it is a no-op bit for bit; clamping to 0 ablates a feature.

Positions are any of ``image`` (the image tokens of the prompt), ``prompt`` (every other
prompt token), ``generated`` (the positions whose output is a new token: the last prompt
position and every generated one, reached one at a time through the KV cache), or ``all``.
SAELens' steering tutorial skips one-token calls and so never steers generated tokens with a
cache; here the hook tracks absolute positions across the cached calls.

:func:`generate_many` generates many rows in one batched ``generate`` (left padding, a KV
cache), each row with its own steering or none; the hook (:mod:`workbench.steer.hook`) keeps
a per-row position mask, and a row's text equals its one-row generation. A
:class:`GenerationMonitor` rides on the same hooks: it counts decoding steps (progress) and
raises :class:`GenerationCancelledError` when its event is set, which is how the app cancels a
running generation. :func:`steer_once` is the entry the app's sliders call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch

from workbench.models.hooks import parse_hook_name
from workbench.models.registry import ModelAdapter, PreparedInputs
from workbench.sae import MatryoshkaSAE
from workbench.steer.hook import (
    GenerationCancelledError,
    GenerationMonitor,
    Steering,
    SteeringError,
    SteeringHook,
    left_padded,
    prompt_mask,
)
from workbench.steer.image import IMAGE_HOOK, ImageSteering, ImageSteeringHook, image_deltas

__all__ = [
    "GenerationCancelledError",
    "GenerationMonitor",
    "Steering",
    "SteeringError",
    "SteeringHook",
    "SteerOutput",
    "direction_steering",
    "feature_steering",
    "generate",
    "generate_many",
    "prompt_mask",
    "steer_once",
]

Mode = Literal["add", "clamp"]
Unit = Literal["raw", "max_act", "mean_act"]
POSITION_KINDS = ("image", "prompt", "generated")


class SteerOutput(NamedTuple):
    baseline_text: str
    steered_text: str


def parse_positions(spec: str | Iterable[str]) -> frozenset[str]:
    """``'all'``, one kind, or kinds joined by ``+`` (``'image+generated'``) -> set of kinds."""
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    kinds = set()
    for part in (p.strip() for p in parts):
        if part == "all":
            kinds.update(POSITION_KINDS)
        elif part in POSITION_KINDS:
            kinds.add(part)
        else:
            raise SteeringError(
                f"positions {spec!r}: {part!r} is not one of all, {', '.join(POSITION_KINDS)}"
            )
    if not kinds:
        raise SteeringError("positions: name at least one of all, image, prompt, generated")
    return frozenset(kinds)


def positions_name(spec: str | Iterable[str]) -> str:
    """The canonical spelling of a positions choice: ``all`` or kinds in a fixed order."""
    kinds = parse_positions(spec)
    if kinds == frozenset(POSITION_KINDS):
        return "all"
    return "+".join(k for k in POSITION_KINDS if k in kinds)


def effective_scales(
    features: Mapping[int, float], unit: Unit, typical: Mapping[int, float | None] | None
) -> dict[int, float]:
    """Strengths in raw activation units: times each feature's typical activation (``unit``)."""
    if unit == "raw":
        return {int(f): float(s) for f, s in features.items()}
    if typical is None:
        raise SteeringError(f"unit {unit!r} needs the features' {unit} (feature_stats, analyse)")
    out = {}
    for f, s in features.items():
        value = typical.get(f)
        if value is None or not value > 0:
            raise SteeringError(f"feature {f}: no {unit} known (dead or not analysed)")
        out[int(f)] = float(s) * float(value)
    return out


def feature_steering(
    sae: MatryoshkaSAE,
    strengths: Mapping[int, float],
    *,
    mode: Mode = "add",
    unit: Unit = "raw",
    typical: Mapping[int, float | None] | None = None,
    positions: str | Iterable[str] = "all",
) -> Steering:
    """Steering by SAE features: add ``strength x typical x W_dec[f]`` or clamp to that value."""
    bad = [f for f in strengths if not 0 <= int(f) < sae.d_sae]
    if bad:
        raise SteeringError(f"features {bad} outside 0..{sae.d_sae - 1}")
    if mode not in ("add", "clamp"):
        raise SteeringError(f"unknown mode {mode!r}; use add or clamp")
    raw = effective_scales(strengths, unit, typical)
    where = parse_positions(positions)
    if mode == "clamp":
        return Steering(None, raw, where)
    with torch.no_grad():
        index = torch.tensor(list(raw), dtype=torch.long, device=sae.W_dec_FD.device)
        values_K = torch.tensor(list(raw.values()), dtype=torch.float32, device=index.device)
        add = values_K @ sae.W_dec_FD[index].detach().float()
    return Steering(add, {}, where)


def direction_steering(
    direction_D: torch.Tensor, strength: float, positions: str | Iterable[str] = "all"
) -> Steering:
    """Steering by any direction: add ``strength x direction`` (the direction carries its unit)."""
    return Steering(float(strength) * direction_D.detach().float(), {}, parse_positions(positions))


def steering_hook_name(adapter: ModelAdapter, sae: MatryoshkaSAE, hook_name: str | None) -> str:
    """The hook to steer at: ``hook_name`` or the SAE's, checked against the model."""
    name = hook_name or sae.hook_name
    if not name:
        raise SteeringError("the SAE records no hook_name; pass hook_name explicitly")
    if sae.d_in != adapter.d_model:
        raise SteeringError(
            f"SAE d_in={sae.d_in} does not match the model's d_model={adapter.d_model}"
        )
    return adapter.hook_name(parse_hook_name(name))


def _hook_site(
    adapter: ModelAdapter, sae: MatryoshkaSAE | None, hook_name: str | None
) -> str | None:
    """Where steering sits: ``hook_name`` or the SAE's (checked); None when neither is given."""
    if sae is not None:
        return steering_hook_name(adapter, sae, hook_name)
    if hook_name:
        return adapter.hook_name(parse_hook_name(hook_name))
    return None


def generate_many(
    adapter: ModelAdapter,
    inps: Sequence[PreparedInputs],
    steerings: Sequence[Steering | ImageSteering | None],
    *,
    max_new_tokens: int = 120,
    sae: MatryoshkaSAE | None = None,
    hook_name: str | None = None,
    monitor: GenerationMonitor | None = None,
) -> list[str]:
    """Greedy findings of several prepared inputs in one batched ``generate``, row ``b``
    steered by ``steerings[b]`` (None: unsteered; a :class:`Steering` acts at the SAE's hook
    or ``hook_name``, an :class:`~workbench.steer.image.ImageSteering` at the image-token
    embeddings).

    Every row goes through the same call, cache and hooks; rows a steering does not touch are
    bit-for-bit what they would be without it, so an unsteered row is the baseline. Without
    a residual steering the monitor alone sits on block 0 (unsteered generations are
    cancellable).
    """
    if len(inps) != len(steerings):
        raise ValueError(f"{len(inps)} inputs but {len(steerings)} steerings")
    text = [s if isinstance(s, Steering) else None for s in steerings]
    image = [s if isinstance(s, ImageSteering) else None for s in steerings]
    hooks: dict = {}
    if any(s is not None for s in image):
        if getattr(adapter, "kind", None) != "vision_language":
            raise SteeringError(f"{adapter.name} has no image tokens to steer")
        hooks[IMAGE_HOOK] = ImageSteeringHook(image_deltas(inps, image))
    if any(s is not None for s in text):
        name = _hook_site(adapter, sae, hook_name)
        if name is None:
            raise SteeringError("steering needs the SAE or an explicit hook_name")
        masks = [
            prompt_mask(inp.tokens, inp.prompt_length, s.positions)
            if s is not None
            else torch.zeros(inp.prompt_length, dtype=torch.bool)
            for inp, s in zip(inps, text, strict=True)
        ]
        hooks[name] = SteeringHook(text, left_padded(masks), sae, monitor)
    elif monitor is not None:
        hooks[adapter.hook_name(0)] = monitor
    return adapter.generate_batch(inps, max_new_tokens=max_new_tokens, interventions=hooks)


def generate(
    adapter: ModelAdapter,
    inp: PreparedInputs,
    *,
    max_new_tokens: int = 120,
    steering: Steering | ImageSteering | None = None,
    sae: MatryoshkaSAE | None = None,
    hook_name: str | None = None,
    monitor: GenerationMonitor | None = None,
) -> str:
    """Greedy findings for prepared inputs, steered when ``steering`` is given (one row of
    :func:`generate_many`; a residual :class:`Steering` needs the SAE or ``hook_name`` for its
    site, an image steering acts at the image-token embeddings)."""
    if isinstance(steering, Steering) and sae is None and not hook_name:
        raise SteeringError("steering needs the SAE or an explicit hook_name")
    return generate_many(adapter, [inp], [steering], max_new_tokens=max_new_tokens, sae=sae,
                         hook_name=hook_name, monitor=monitor)[0]  # fmt: skip


def steer_once(
    adapter: ModelAdapter,
    sae: MatryoshkaSAE,
    study,
    features: Mapping[int, float],
    *,
    max_new_tokens: int = 120,
    mode: Mode = "add",
    positions: str | Iterable[str] = "all",
    unit: Unit = "raw",
    typical: Mapping[int, float | None] | None = None,
    hook_name: str | None = None,
    baseline_text: str | None = None,
    monitor: GenerationMonitor | None = None,
) -> SteerOutput:
    """Unsteered and steered greedy findings for one study (StudyRecord or mapping).

    ``features`` maps feature -> strength (in ``unit``; negative allowed); ``baseline_text``
    skips recomputing the unsteered findings when the caller already has them.
    """
    inp = adapter.prepare(study)
    steering = feature_steering(
        sae, features, mode=mode, unit=unit, typical=typical, positions=positions
    )
    if baseline_text is None:
        baseline_text = generate(adapter, inp, max_new_tokens=max_new_tokens, monitor=monitor)
    steered = generate(
        adapter,
        inp,
        max_new_tokens=max_new_tokens,
        steering=steering,
        sae=sae,
        hook_name=hook_name,
        monitor=monitor,
    )
    return SteerOutput(baseline_text, steered)
