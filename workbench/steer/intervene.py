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

A :class:`GenerationMonitor` rides on the same hooks: it counts decoding steps (progress) and
raises :class:`GenerationCancelledError` when its event is set, which is how the app cancels a
running generation. :func:`steer_once` is the entry the app's sliders call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NamedTuple

import torch

from workbench.models.hooks import parse_hook_name
from workbench.models.registry import ModelAdapter, PreparedInputs
from workbench.sae import MatryoshkaSAE

Mode = Literal["add", "clamp"]
Unit = Literal["raw", "max_act", "mean_act"]
POSITION_KINDS = ("image", "prompt", "generated")


class SteeringError(ValueError):
    """A steering request that cannot be applied (wrong feature, SAE/model mismatch, ...)."""


class GenerationCancelledError(RuntimeError):
    """Raised inside ``generate`` when the caller set the monitor's cancel event."""


class SteerOutput(NamedTuple):
    baseline_text: str
    steered_text: str


class Steering(NamedTuple):
    """One intervention: a vector added and/or SAE latents clamped, at ``positions``."""

    add: torch.Tensor | None
    """Added at every chosen position (float32); None: nothing added."""
    clamp: Mapping[int, float]
    """SAE feature -> the value its activation is set to (raw units)."""
    positions: frozenset[str]
    """Subset of :data:`POSITION_KINDS`."""


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


def prompt_mask(tokens: list[dict], prompt_length: int, positions: frozenset[str]) -> torch.Tensor:
    """Which prompt positions are steered; 'generated' includes the last prompt position."""
    mask = torch.zeros(prompt_length, dtype=torch.bool)
    for i, tok in enumerate(tokens[:prompt_length]):
        kind = "image" if tok.get("kind") == "image" else "prompt"
        mask[i] = kind in positions
    if "generated" in positions and prompt_length:
        mask[prompt_length - 1] = True  # its output is the first generated token
    return mask


class GenerationMonitor:
    """Counts forward calls of one ``generate`` (prefill, then one per token) and cancels it."""

    def __init__(
        self,
        on_step: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ):
        self.on_step, self.cancel, self.steps = on_step, cancel, 0

    def __call__(self, acts_BTD: torch.Tensor) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelledError("generation cancelled")
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps)


class SteeringHook:
    """Intervention ``acts_BTD -> acts_BTD`` for :func:`workbench.models.hooks.intervene`.

    One instance serves one ``generate`` call: it counts positions to know, for each call,
    which absolute positions it sees (the whole prompt first, then one token per cached step).
    """

    def __init__(
        self,
        steering: Steering,
        mask_P: torch.Tensor,
        sae: MatryoshkaSAE | None = None,
        monitor: GenerationMonitor | None = None,
    ):
        if steering.clamp and sae is None:
            raise SteeringError("clamping needs the SAE")
        self.steering, self.mask_P, self.sae, self.monitor = steering, mask_P, sae, monitor
        self.generated = "generated" in steering.positions
        self.seen = 0
        if steering.clamp:
            device = sae.W_dec_FD.device
            self.index_K = torch.tensor(list(steering.clamp), dtype=torch.long, device=device)
            self.values_K = torch.tensor(
                list(steering.clamp.values()), dtype=torch.float32, device=device
            )
            self.dirs_KD = sae.W_dec_FD[self.index_K].detach().float()

    def _mask(self, n_tokens: int) -> torch.Tensor:
        """Steered positions of this call (absolute positions tracked across cached steps)."""
        start = self.seen if (n_tokens == 1 and self.seen > 0) else 0  # cached step vs full pass
        self.seen = start + n_tokens
        pos = torch.arange(start, start + n_tokens)
        in_prompt = pos < len(self.mask_P)
        mask = torch.full((n_tokens,), self.generated, dtype=torch.bool)
        mask[in_prompt] = self.mask_P[pos[in_prompt]]
        return mask

    @torch.no_grad()
    def delta(self, acts_ND: torch.Tensor) -> torch.Tensor:
        """What is added to ``acts_ND`` (float32, on its device), for every position given."""
        out = torch.zeros(acts_ND.shape, dtype=torch.float32, device=acts_ND.device)
        if self.steering.add is not None:
            out += self.steering.add.to(acts_ND.device)
        if self.steering.clamp:
            x = acts_ND.to(self.dirs_KD.device)
            latents_NK = self.sae.encode(x)[:, self.index_K].float()
            diff_NK = self.values_K - latents_NK  # exactly 0 where the clamp changes nothing
            out += (diff_NK @ self.dirs_KD).to(acts_ND.device)
        return out

    @torch.no_grad()
    def __call__(self, acts_BTD: torch.Tensor) -> torch.Tensor | None:
        if self.monitor is not None:
            self.monitor(acts_BTD)
        mask = self._mask(acts_BTD.shape[1]).to(acts_BTD.device)
        if not mask.any():
            return None
        out = acts_BTD.clone()
        part = out[:, mask]
        flat = part.reshape(-1, part.shape[-1])
        out[:, mask] = (flat.float() + self.delta(flat)).reshape(part.shape).to(out.dtype)
        return out


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


def generate(
    adapter: ModelAdapter,
    inp: PreparedInputs,
    *,
    max_new_tokens: int = 120,
    steering: Steering | None = None,
    sae: MatryoshkaSAE | None = None,
    hook_name: str | None = None,
    monitor: GenerationMonitor | None = None,
) -> str:
    """Greedy findings for prepared inputs, steered when ``steering`` is given.

    The steering hook sits at ``hook_name`` (default: the SAE's); without steering, the
    monitor alone sits on block 0, so unsteered generations are cancellable too.
    """
    if steering is None:
        hooks = {adapter.hook_name(0): monitor} if monitor is not None else {}
        return adapter.generate(inp, max_new_tokens=max_new_tokens, interventions=hooks)
    if sae is not None:
        name = steering_hook_name(adapter, sae, hook_name)
    elif hook_name:
        name = adapter.hook_name(parse_hook_name(hook_name))
    else:
        raise SteeringError("steering needs the SAE or an explicit hook_name")
    mask = prompt_mask(inp.tokens, inp.prompt_length, steering.positions)
    hook = SteeringHook(steering, mask, sae, monitor)
    return adapter.generate(inp, max_new_tokens=max_new_tokens, interventions={name: hook})


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
