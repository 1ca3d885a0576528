"""Hook names and the PyTorch hooks behind them, for every model the workbench analyses.

Names follow TransformerLens: ``blocks.{L}.hook_resid_post`` is the residual stream after
decoder block L, i.e. HF ``hidden_states[L + 1]`` (``hidden_states[0]`` is the embeddings).
:func:`resid_post_name` makes the name, :func:`parse_hook_name` reads it back and
:func:`resolve_module` maps it to the HF module, in this one place; no other module spells a
hook name or a module path.

The vision side of a vision-language model and the segmentation models have names in the
same scheme (:func:`hook_site` reads any of them; docs/sae.md lists them all):

- ``vision.blocks.{L}.hook_resid_post``: output of vision-encoder block L (Dinov2 / CLIP
  layer), every token of every image including the CLS token, before the final LayerNorm;
- ``vision.hook_projector_out``: the projector's output, the image features that replace the
  ``<image>`` token embeddings (width of the language model);
- ``backbone.hook_bottleneck`` / ``backbone.hook_features``: a segmentation U-Net's coarsest
  feature map and its full-resolution features before the head (U-Net and SSN);
- ``head.hook_cov_factor``: an SSN's per-pixel covariance-factor loadings, rank x classes;
- ``generator.hook_w_plus``: SemanticGAN's W+ code, one entry per style input;
  ``generator.blocks.{i}.hook_out``: its synthesis feature map at resolution 4 * 2**i.

Plain forward hooks work for every architecture (TransformerLens' LLaVA adapter does not
handle a Dinov2 tower). transformers 5 decoder layers return a tensor, older ones a tuple
whose first element is the hidden state; both are handled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_VISION_RESID_POST = re.compile(r"^vision\.blocks\.(\d+)\.hook_resid_post$")
_GENERATOR_BLOCK = re.compile(r"^generator\.blocks\.(\d+)\.hook_out$")

SEGMENTATION_MODEL = "segmentation:"  # model spec of a segmentation run: segmentation:RUN_DIR
VISION_PROJECTOR = "vision.hook_projector_out"
SEG_BOTTLENECK = "backbone.hook_bottleneck"
SEG_FEATURES = "backbone.hook_features"
SEG_COV_FACTOR = "head.hook_cov_factor"
GAN_W_PLUS = "generator.hook_w_plus"
# Fixed-name hooks -> their site (see hook_site).
_FIXED_SITES = {
    VISION_PROJECTOR: "projector",
    SEG_BOTTLENECK: "bottleneck",
    SEG_FEATURES: "features",
    SEG_COV_FACTOR: "cov_factor",
    GAN_W_PLUS: "w_plus",
}

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
# The vision encoder's block list and the projector: MAIRA-2 (ours: a Dinov2Backbone), LLaVA
# in transformers 5 (towers under ``model``), older LLaVA with a CLIP tower.
_VISION_LAYER_PATHS = (
    "vision_tower.encoder.layer",
    "model.vision_tower.encoder.layer",
    "model.vision_tower.vision_model.encoder.layers",
    "vision_tower.vision_model.encoder.layers",
)
_PROJECTOR_PATHS = ("multi_modal_projector", "model.multi_modal_projector")
_VISION_TOWER_PATHS = ("vision_tower", "model.vision_tower")

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


class HookSite(NamedTuple):
    """Where a hook name points: the site kind and its block index (None when it has none).

    ``site`` is ``resid_post`` (language model), ``vision_resid_post``, ``projector``,
    ``bottleneck``, ``features``, ``cov_factor``, ``w_plus`` or ``generator_block``.
    """

    site: str
    layer: int | None


def vision_resid_post_name(layer: int) -> str:
    """Name of the output of vision-encoder block ``layer``."""
    if not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    return f"vision.blocks.{layer}.hook_resid_post"


def generator_block_name(block: int) -> str:
    """Name of SemanticGAN's synthesis feature map at resolution 4 * 2**block."""
    if not isinstance(block, int) or block < 0:
        raise ValueError(f"block must be a non-negative int, got {block!r}")
    return f"generator.blocks.{block}.hook_out"


def hook_site(name: str) -> HookSite:
    """The site of any hook name of the module docstring; ValueError naming the known forms."""
    for pattern, site in (
        (_RESID_POST, "resid_post"),
        (_VISION_RESID_POST, "vision_resid_post"),
        (_GENERATOR_BLOCK, "generator_block"),
    ):
        match = pattern.match(name)
        if match is not None:
            return HookSite(site, int(match.group(1)))
    if name in _FIXED_SITES:
        return HookSite(_FIXED_SITES[name], None)
    known = ["blocks.<L>.hook_resid_post", "vision.blocks.<L>.hook_resid_post"]
    known += [*_FIXED_SITES, "generator.blocks.<i>.hook_out"]
    raise ValueError(f"unknown hook name {name!r}; known forms: {', '.join(known)}")


def is_language_residual(name: str) -> bool:
    """Whether ``name`` is the language model's residual stream (where logits make sense)."""
    return _RESID_POST.match(name) is not None


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


def _first_path(model: nn.Module, paths: tuple[str, ...], kind: type, what: str) -> nn.Module:
    for path in paths:
        found = _get_path(model, path)
        if isinstance(found, kind):
            return found  # type: ignore[return-value]
    raise ValueError(f"cannot find the {what} in {type(model).__name__}; tried {', '.join(paths)}")


def vision_layers(model: nn.Module) -> nn.ModuleList:
    """The vision encoder's blocks of a MAIRA-2 or LLaVA model, in order."""
    layers = _first_path(model, _VISION_LAYER_PATHS, nn.ModuleList, "vision encoder blocks")
    return layers  # type: ignore[return-value]


def projector(model: nn.Module) -> nn.Module:
    """The multimodal projector of a MAIRA-2 or LLaVA model."""
    return _first_path(model, _PROJECTOR_PATHS, nn.Module, "multimodal projector")


def resolve_module(model: nn.Module, hook_name: str) -> nn.Module:
    """The HF module whose forward output is the activation named ``hook_name``.

    Covers the language model's and the vision side's names; the segmentation models' names
    are resolved by ``segmentation.latents``, which knows their structure.
    """
    site = hook_site(hook_name)
    if site.site == "projector":
        return projector(model)
    if site.site not in ("resid_post", "vision_resid_post"):
        raise ValueError(f"{hook_name} is a segmentation-model hook, not one of a language model")
    layer = site.layer
    vision = site.site == "vision_resid_post"
    layers = vision_layers(model) if vision else decoder_layers(model)
    what = "vision encoder" if vision else "decoder"
    if layer >= len(layers):
        raise ValueError(
            f"{hook_name}: model has {len(layers)} {what} layers (0..{len(layers) - 1})"
        )
    return layers[layer]


def modules_up_to(model: nn.Module, hook_name: str) -> list[nn.Module]:
    """The modules whose outputs alone decide the activation at a decoder hook, in order.

    For ``blocks.{L}.hook_resid_post``: the vision tower and projector (when the model has
    them) and decoder blocks 0..L. A forward that edits nothing before the hook computes the
    same outputs there on the same inputs, so a caller may compute them once and replay them
    (CE loss recovered: one clean run, then the edited runs from the hook on). Other hooks:
    an empty list (nothing is replayed).
    """
    if not is_language_residual(hook_name):
        return []
    vision = []
    for paths in (_VISION_TOWER_PATHS, _PROJECTOR_PATHS):  # the first path found of each
        found = [m for m in (_get_path(model, p) for p in paths) if isinstance(m, nn.Module)]
        vision += found[:1]
    layers = decoder_layers(model)
    layer = parse_hook_name(hook_name)
    if layer >= len(layers):
        raise ValueError(f"{hook_name}: model has {len(layers)} decoder layers")
    return [*vision, *layers[: layer + 1]]


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
        """The captured activation ([batch, tokens, d_model] for a transformer block)."""
        if self._acts is None:
            raise RuntimeError(f"{self.hook_name} was not reached: run a forward inside the block")
        return self._acts


@contextmanager
def capture_module(module: nn.Module, name: str, stop: bool = True) -> Iterator[Captured]:
    """Capture ``module``'s forward output (the first element of a tuple) inside the block.

    The one recorder primitive: every hook name, of any model, comes down to a module whose
    output is the activation. With ``stop`` the hook ends the forward pass right after the
    capture (later layers never run); without it the last call's output is kept, e.g. the
    final synthesis after test-time optimisation.
    """
    captured = Captured(name)

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        captured._acts = _hidden(output).detach()
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    except _StopForward:
        pass
    finally:
        handle.remove()


@contextmanager
def capture(model: nn.Module, hook_name: str, stop: bool = True) -> Iterator[Captured]:
    """Capture the activation at ``hook_name`` during a forward run inside the block.

    With ``stop`` (the default) the hook raises a private exception right after storing the
    activation, so later layers and the LM head never run; this block swallows it::

        with capture(model, resid_post_name(6)) as cap:
            model(**inputs)
        acts_BTD = cap.acts
    """
    with capture_module(resolve_module(model, hook_name), hook_name, stop) as captured:
        yield captured


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
