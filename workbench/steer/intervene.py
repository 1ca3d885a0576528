"""Steering report generation with SAE features (Bouzid et al. 2025, sec. "steering", Fig. 1C).

Two interventions on the residual stream at the SAE's hook (``blocks.L.hook_resid_post``),
applied through the model registry's intervention hooks during ``generate``:

- ``add``: ``x' = x + sum_f s_f * W_dec[f]`` (SAELens' steering-vector recipe); with
  ``unit='max_act'`` the scale is in multiples of the feature's largest activation over the
  store (``x + gamma * f_max * W_dec[f]``), which makes scales comparable across features;
- ``clamp``: encode ``x``, set latent f to ``v_f`` and add the decoded difference,
  ``x' = x + (v_f - a_f(x)) * W_dec[f]``; the SAE's reconstruction error is kept, so only
  that feature's contribution changes (a linear decoder: ``b_dec`` cancels).

``positions='all'`` steers every position (prompt and generated); ``'generated'`` steers
only the positions whose output is a generated token: the last prompt position (it predicts
the first new token) and every new one. With a KV cache each decoding step is one call with
one position; :class:`SteeringHook` tracks absolute positions across those calls.

:func:`steer_once` is the pure entry the app's sliders call: one study, a ``{feature:
scale}`` map, and back come the unsteered and the steered report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch

from workbench.models.hooks import parse_hook_name
from workbench.models.registry import ModelAdapter, PreparedInputs
from workbench.sae import MatryoshkaSAE

Mode = Literal["add", "clamp"]
Positions = Literal["all", "generated"]
Unit = Literal["raw", "max_act"]


class SteeringError(ValueError):
    """A steering request that cannot be applied (wrong feature, SAE/model mismatch, ...)."""


class SteerOutput(NamedTuple):
    baseline_text: str
    steered_text: str


def effective_scales(
    features: Mapping[int, float], unit: Unit, max_acts: Mapping[int, float] | None
) -> dict[int, float]:
    """Scales in raw activation units (``unit='max_act'`` multiplies by each feature's max)."""
    if unit == "raw":
        return {int(f): float(s) for f, s in features.items()}
    if max_acts is None:
        raise SteeringError("unit 'max_act' needs the features' max activations (analyse)")
    out = {}
    for f, s in features.items():
        if f not in max_acts or max_acts[f] is None:
            raise SteeringError(f"feature {f}: no max activation known (dead or not analysed)")
        out[int(f)] = float(s) * float(max_acts[f])
    return out


class SteeringHook:
    """Intervention ``acts_BTD -> acts_BTD`` for :func:`workbench.models.hooks.intervene`.

    ``scales`` are in raw units (see :func:`effective_scales`). One instance serves one
    ``generate`` call: it counts positions to know where generation starts.
    """

    def __init__(
        self,
        sae: MatryoshkaSAE,
        scales: Mapping[int, float],
        mode: Mode = "add",
        positions: Positions = "all",
        prompt_length: int = 0,
    ):
        bad = [f for f in scales if not 0 <= f < sae.d_sae]
        if bad:
            raise SteeringError(f"features {bad} outside 0..{sae.d_sae - 1}")
        if mode not in ("add", "clamp") or positions not in ("all", "generated"):
            raise SteeringError(f"unknown mode {mode!r} or positions {positions!r}")
        self.sae, self.mode, self.positions = sae, mode, positions
        self.prompt_length = prompt_length
        # float32 copies on the SAE's device; moved to the activations' device when they differ
        device = sae.W_dec_FD.device
        self.index_K = torch.tensor(list(scales), dtype=torch.long, device=device)
        with torch.no_grad():
            self.dirs_KD = sae.W_dec_FD[self.index_K].detach().float()
            self.values_K = torch.tensor(list(scales.values()), dtype=torch.float32, device=device)
            self.delta_D = self.values_K @ self.dirs_KD
        self.seen = 0

    def _first(self, n_tokens: int) -> int:
        """Index (within this call) of the first position to steer; tracks absolute positions."""
        start = self.seen if (n_tokens == 1 and self.seen > 0) else 0  # cached step vs full pass
        self.seen = start + n_tokens
        if self.positions == "all":
            return 0
        return max(0, self.prompt_length - 1 - start)

    @torch.no_grad()
    def delta(self, acts_BTD: torch.Tensor) -> torch.Tensor:
        """What is added to ``acts_BTD`` (float32, on its device), for every position given."""
        if self.mode == "add":
            return self.delta_D.to(acts_BTD.device).expand(acts_BTD.shape)
        flat_ND = acts_BTD.reshape(-1, acts_BTD.shape[-1]).to(self.dirs_KD.device)
        latents_NK = self.sae.encode(flat_ND)[:, self.index_K].float()
        diff_NK = self.values_K - latents_NK  # clamp a_f to v_f
        return (diff_NK @ self.dirs_KD).reshape(acts_BTD.shape).to(acts_BTD.device)

    @torch.no_grad()
    def __call__(self, acts_BTD: torch.Tensor) -> torch.Tensor | None:
        first = self._first(acts_BTD.shape[1])
        if first >= acts_BTD.shape[1]:
            return None
        out = acts_BTD.clone()
        part = out[:, first:]
        out[:, first:] = (part.float() + self.delta(part)).to(out.dtype)
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


def generate_steered(
    adapter: ModelAdapter,
    sae: MatryoshkaSAE,
    inp: PreparedInputs,
    scales: Mapping[int, float],
    *,
    max_new_tokens: int = 120,
    mode: Mode = "add",
    positions: Positions = "all",
    hook_name: str | None = None,
) -> str:
    """Greedy report for prepared inputs with ``scales`` (raw units) applied at the hook."""
    name = steering_hook_name(adapter, sae, hook_name)
    hook = SteeringHook(sae, scales, mode, positions, inp.prompt_length)
    return adapter.generate(inp, max_new_tokens=max_new_tokens, interventions={name: hook})


def steer_once(
    adapter: ModelAdapter,
    sae: MatryoshkaSAE,
    study,
    features: Mapping[int, float],
    *,
    max_new_tokens: int = 120,
    mode: Mode = "add",
    positions: Positions = "all",
    unit: Unit = "raw",
    max_acts: Mapping[int, float] | None = None,
    hook_name: str | None = None,
    baseline_text: str | None = None,
) -> SteerOutput:
    """Unsteered and steered greedy reports for one study (StudyRecord or mapping).

    ``features`` maps feature -> scale (in ``unit``); ``baseline_text`` skips recomputing
    the unsteered report when the caller already has it (sliders moving on one study).
    """
    inp = adapter.prepare(study)
    scales = effective_scales(features, unit, max_acts)
    if baseline_text is None:
        baseline_text = adapter.generate(inp, max_new_tokens=max_new_tokens)
    steered = generate_steered(
        adapter,
        sae,
        inp,
        scales,
        max_new_tokens=max_new_tokens,
        mode=mode,
        positions=positions,
        hook_name=hook_name,
    )
    return SteerOutput(baseline_text, steered)
