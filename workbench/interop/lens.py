"""TransformerLens views of the models the workbench records, built offline from their weights.

:func:`hooked_transformer` builds a ``HookedTransformer`` (or SAELens' ``HookedSAETransformer``)
from a model the workbench can load: a local model directory, a :class:`ModelAdapter`, or an
in-memory HF causal LM. It runs TransformerLens' own steps (its config conversion and its
weight conversion, e.g. ``convert_llama_weights``) on the HF model passed in, with no weight
processing (no LayerNorm folding, no centring), so ``run_with_cache(tokens)["blocks.L.hook_
resid_post"]`` is the residual stream the workbench records at ``blocks.L.hook_resid_post``.
:func:`transformer_bridge` does the same with TransformerLens 3's ``TransformerBridge``.

Two traps of TransformerLens 3.9 are handled here rather than left to the user:

* for a *local directory* whose path contains ``llama`` or ``gemma``, TransformerLens infers
  the architecture from the name and reads no config (``AttributeError: 'NoneType' object has
  no attribute 'hidden_size'``), and it requires ``config.architectures`` and a tokenizer
  loaded from disk; so the config and tokenizer are copied into a neutral temporary directory;
* it installs packages by itself for multimodal models (:mod:`workbench.interop.guard`): every
  call runs inside :func:`refuse_installs`, and vision-language models never reach it whole.

Vision-language models (MAIRA-2, LLaVA): TransformerLens cannot host the whole stack (its
LLaVA adapter fails on a Dinov2 tower; MAIRA-2 is not a registered architecture), but it hosts
the *language model*: :func:`hooked_transformer` converts the text decoder, and
:func:`residual_input` gives the residual stream entering block 0 (image features already
merged in) to run it with ``start_at_layer=0``. Recording stays on the native hooks.
"""

from __future__ import annotations

import copy
import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.interop.guard import refuse_installs
from workbench.models.hooks import decoder_layers
from workbench.models.registry import ModelAdapter, load_model

TL_VERSION = importlib.metadata.version("transformer-lens")
_NAME_TRAPS = ("llama", "gemma")  # names TransformerLens maps to an architecture by themselves


class InteropError(ValueError):
    """A model cannot be converted or handed over; the message says which step fails."""


def _resolve(model: Any, tokenizer: Any) -> tuple[nn.Module, Any, str]:
    """(HF model, tokenizer, name) from a directory, a ModelAdapter or an HF model."""
    if isinstance(model, (str, Path)):
        model = load_model(model, device="cpu", dtype=torch.float32)
    if isinstance(model, ModelAdapter):
        return model.model, tokenizer or model.tokenizer, model.name
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise InteropError(
            f"expected a model directory, a ModelAdapter or an HF model, got {model!r}"
        )
    if tokenizer is None:
        raise InteropError(f"{type(model).__name__}: pass its tokenizer (tokenizer=...)")
    name = getattr(model.config, "name_or_path", "") or type(model).__name__
    return model, tokenizer, name


def is_vision_language(model: nn.Module) -> bool:
    """Whether ``model`` has an image tower (MAIRA-2, LLaVA) besides its text decoder."""
    return getattr(getattr(model, "config", None), "vision_config", None) is not None


def causal_lm(model: nn.Module) -> nn.Module:
    """The text decoder with its LM head, as an HF causal LM sharing ``model``'s weights.

    A text-only model is returned as is; MAIRA-2 (ours) has one (``language_model``); an HF
    LLaVA (transformers 5) keeps the decoder and the head apart, so a causal-LM shell is built
    on the meta device and given those two modules (no weight is copied).
    """
    if not is_vision_language(model):
        return model
    inner = getattr(model, "language_model", None)
    has_head = isinstance(inner, nn.Module) and hasattr(inner, "get_output_embeddings")
    if has_head and inner.get_output_embeddings() is not None:
        return inner
    decoder = getattr(getattr(model, "model", None), "language_model", None)
    head = getattr(model, "lm_head", None)
    if decoder is None or head is None:
        raise InteropError(f"{type(model).__name__}: cannot find its language model and LM head")
    from transformers import AutoModelForCausalLM

    text_config = copy.deepcopy(model.config.text_config)
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(text_config)
    shell.model, shell.lm_head = decoder, head
    return shell.eval()


def _stage(lm: nn.Module, tokenizer: Any, where: Path) -> Any:
    """Write ``lm``'s config (with ``architectures``) and the tokenizer to ``where``; reload
    the tokenizer from there (TransformerLens reopens it by ``name_or_path``)."""
    from transformers import AutoTokenizer

    if any(trap in str(where).lower() for trap in _NAME_TRAPS):
        raise InteropError(
            f"temporary directory {where} contains one of {_NAME_TRAPS}, which TransformerLens "
            "reads as a model name; set TMPDIR to another directory"
        )
    config = copy.deepcopy(lm.config)
    if not getattr(config, "architectures", None):
        config.architectures = [type(lm).__name__]
    config.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where, local_files_only=True)


def hooked_transformer(
    model: Any,
    tokenizer: Any = None,
    *,
    cls: type | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
):
    """A ``HookedTransformer`` (``cls``: e.g. ``sae_lens.HookedSAETransformer``) with the
    weights of ``model``'s language model, converted by TransformerLens, unprocessed, offline.

    ``model``: a local model directory, a :class:`ModelAdapter` or an HF causal LM (then
    ``tokenizer`` is required). For MAIRA-2 / LLaVA the language model alone is converted;
    feed it :func:`residual_input` with ``start_at_layer=0``.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    hf_model, tokenizer, name = _resolve(model, tokenizer)
    lm = causal_lm(hf_model)
    dtype = dtype or next(lm.parameters()).dtype
    cls = cls or HookedTransformer
    with tempfile.TemporaryDirectory(prefix="workbench-tl-") as tmp, refuse_installs():
        tok = _stage(lm, tokenizer, Path(tmp))
        arch = lm.config.architectures or [type(lm).__name__]
        try:
            cfg = loading.get_pretrained_model_config(
                tmp, fold_ln=False, device=device, dtype=dtype
            )
            state = loading.get_pretrained_state_dict(tmp, cfg, lm, dtype=dtype)
        except (NotImplementedError, ValueError, KeyError, AttributeError) as exc:
            raise InteropError(
                f"{name}: TransformerLens {TL_VERSION} cannot convert {arch[0]} into a "
                f"HookedTransformer (config/weight conversion step): {exc}"
            ) from exc
        cfg.model_name = Path(str(name)).name or str(name)
        hooked = cls(cfg, tok, move_to_device=False)
    hooked.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return hooked.to(device).eval()


def transformer_bridge(model: Any, tokenizer: Any = None, *, device: str = "cpu"):
    """TransformerLens 3's ``TransformerBridge`` around a text-only causal LM, offline.

    Vision-language models are refused before TransformerLens sees them (see the module
    docstring): use :func:`hooked_transformer` and :func:`residual_input` for them.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model, tokenizer, name = _resolve(model, tokenizer)
    if is_vision_language(hf_model):
        raise InteropError(
            f"{name}: TransformerBridge cannot host {type(hf_model).__name__} (its LLaVA adapter "
            "fails on a Dinov2 tower: 'Dinov2Model' object has no attribute 'pre_layrnorm'; "
            "MAIRA-2 is no registered architecture) and it pip-installs torchvision for "
            "multimodal models; use hooked_transformer(model) with residual_input(...) instead"
        )
    with tempfile.TemporaryDirectory(prefix="workbench-tl-") as tmp, refuse_installs():
        tok = _stage(hf_model, tokenizer, Path(tmp))
        try:
            return TransformerBridge.boot_transformers(
                tmp, hf_model=hf_model, tokenizer=tok, device=device
            )
        except (NotImplementedError, ValueError, KeyError, AttributeError) as exc:
            raise InteropError(
                f"{name}: TransformerLens {TL_VERSION} cannot bridge {type(hf_model).__name__}: "
                f"{exc}"
            ) from exc


class _Stop(Exception):  # noqa: N818 (control flow, not an error)
    """Ends the forward pass once block 0's input has been captured."""


@torch.no_grad()
def residual_input(model: nn.Module, model_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The residual stream entering decoder block 0 (``blocks.0.hook_resid_pre``), [B, T, D].

    For MAIRA-2 and LLaVA these are the token embeddings with the projected image features
    written over the image positions: exactly what the language model's blocks see. Pass it
    to a :func:`hooked_transformer` with ``start_at_layer=0``. The blocks never run.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            raise InteropError(f"{type(module).__name__}: block 0 got no hidden_states tensor")
        captured.append(hidden.detach())
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**model_inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise InteropError(f"{type(model).__name__}: the forward pass never reached block 0")
    return captured[0]
