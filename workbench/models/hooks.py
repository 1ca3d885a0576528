"""Hook names and the PyTorch hooks behind them, for every model the workbench analyses.

Names follow TransformerLens: ``blocks.{L}.hook_resid_post`` is the residual stream after
decoder block L, i.e. HF ``hidden_states[L + 1]`` (``hidden_states[0]`` is the embeddings).
:func:`resid_post_name` makes the name, :func:`parse_hook_name` reads it back and
:func:`resolve_module` maps it to the HF module, in this one place; no other module spells a
hook name or a module path.

Plain forward hooks work for every architecture (TransformerLens' LLaVA adapter does not
handle a Dinov2 tower). transformers 5 decoder layers return a tensor, older ones a tuple
whose first element is the hidden state; both are handled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")

# Attribute paths to (the decoder-layer list, the final norm before the LM head), tried in
# order: MAIRA-2 (ours), LLaVA in transformers 5, Llama/Mistral/Qwen-style causal LMs, GPT-2,
# GPT-NeoX.
_MODULE_PATHS = (
    ("language_model.model.layers", "language_model.model.norm"),
    ("model.language_model.layers", "model.language_model.norm"),
    ("model.layers", "model.norm"),
    ("transformer.h", "transformer.ln_f"),
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
)
_LAYER_PATHS = tuple(layers for layers, _ in _MODULE_PATHS)

InterventionFn = Callable[[torch.Tensor], torch.Tensor | None]


class _StopForward(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a capture hook to end the forward pass once the wanted layer has run."""


def resid_post_name(layer: int) -> str:
    """TransformerLens name of the residual stream after decoder block ``layer``."""
    if not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    return f"blocks.{layer}.hook_resid_post"


def parse_hook_name(name: str) -> int:
    """The layer of a ``blocks.{L}.hook_resid_post`` name; ValueError for anything else."""
    match = _RESID_POST.match(name)
    if match is None:
        raise ValueError(f"unsupported hook name {name!r}; expected 'blocks.<L>.hook_resid_post'")
    return int(match.group(1))


def _get_path(model: nn.Module, path: str) -> object:
    obj: object = model
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def _paths_for(model: nn.Module) -> tuple[str, str]:
    for layers_path, norm_path in _MODULE_PATHS:
        if isinstance(_get_path(model, layers_path), nn.ModuleList):
            return layers_path, norm_path
    raise ValueError(
        f"cannot find decoder layers in {type(model).__name__}; tried {', '.join(_LAYER_PATHS)}"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a MAIRA-2, LLaVA or causal-LM model, in order."""
    return _get_path(model, _paths_for(model)[0])  # type: ignore[return-value]


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last block's output before the LM head (HF hidden_states[-1])."""
    norm_path = _paths_for(model)[1]
    norm = _get_path(model, norm_path)
    if not isinstance(norm, nn.Module):
        raise ValueError(f"cannot find the final norm {norm_path} in {type(model).__name__}")
    return norm


def resolve_module(model: nn.Module, hook_name: str) -> nn.Module:
    """The HF module whose forward output is the activation named ``hook_name``."""
    layer = parse_hook_name(hook_name)
    layers = decoder_layers(model)
    if layer >= len(layers):
        raise ValueError(
            f"{hook_name}: model has {len(layers)} decoder layers (0..{len(layers) - 1})"
        )
    return layers[layer]


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class Captured:
    """Holder for an activation captured by :func:`capture`; ``acts`` raises until set."""

    def __init__(self, hook_name: str):
        self.hook_name = hook_name
        self._acts: torch.Tensor | None = None

    @property
    def acts(self) -> torch.Tensor:
        """The captured activation, [batch, tokens, d_model]."""
        if self._acts is None:
            raise RuntimeError(f"{self.hook_name} was not reached: run a forward inside the block")
        return self._acts


@contextmanager
def capture(model: nn.Module, hook_name: str, stop: bool = True) -> Iterator[Captured]:
    """Capture the activation at ``hook_name`` during a forward run inside the block.

    With ``stop`` (the default) the hook raises a private exception right after storing the
    activation, so later layers and the LM head never run; this block swallows it::

        with capture(model, resid_post_name(6)) as cap:
            model(**inputs)
        acts_BTD = cap.acts
    """
    captured = Captured(hook_name)

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        captured._acts = _hidden(output).detach()
        if stop:
            raise _StopForward

    handle = resolve_module(model, hook_name).register_forward_hook(hook)
    try:
        yield captured
    except _StopForward:
        pass
    finally:
        handle.remove()


@contextmanager
def capture_many(
    model: nn.Module, hook_names: Sequence[str], stop: bool = True
) -> Iterator[dict[str, Captured]]:
    """Capture several hooks in one forward; with ``stop`` the forward ends after the deepest.

    Every hook stores its activation as the forward passes it; the deepest one then raises,
    so blocks below the deepest named one (and the LM head) never run::

        with capture_many(model, [resid_post_name(2), resid_post_name(4)]) as caps:
            model(**inputs)
        acts_BTD = caps["blocks.2.hook_resid_post"].acts
    """
    names = list(dict.fromkeys(hook_names))
    if not names:
        raise ValueError("capture_many needs at least one hook name")
    deepest = max(names, key=parse_hook_name)
    captured = {name: Captured(name) for name in names}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            captured[name]._acts = _hidden(output).detach()
            if stop and name == deepest:
                raise _StopForward

        return hook

    handles = [resolve_module(model, n).register_forward_hook(make_hook(n)) for n in names]
    try:
        yield captured
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def intervene(model: nn.Module, interventions: Mapping[str, InterventionFn]) -> Iterator[None]:
    """Apply ``fn(acts_BTD) -> acts_BTD`` at each named hook for every forward in the block.

    During ``generate`` the hook runs once on the prompt and once per new token (T = 1 with
    a KV cache). A function may edit in place and return None, or return a new tensor.
    """
    handles = []

    def make_hook(fn: InterventionFn):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple):
            hidden = _hidden(output)
            new = fn(hidden)
            return _replace_hidden(output, hidden if new is None else new)

        return hook

    try:
        for name, fn in interventions.items():
            handles.append(resolve_module(model, name).register_forward_hook(make_hook(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()
