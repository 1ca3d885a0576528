"""SAELens and dictionary_learning on the workbench's artefacts, both ways.

* **Ours into SAELens**: the workbench SAE artefact *is* a SAELens inference directory
  (:mod:`workbench.sae.io`), so ``sae_lens.SAE.load_from_disk(run / "sae")`` loads it and
  ``HookedSAETransformer.add_sae`` attaches it at its hook. :func:`export_saelens` writes any
  SAE the workbench reads (a dictionary_learning ``ae.pt`` such as the released MAIRA-2 SAEs,
  or a SAELens ``standard`` SAE) as such a directory.
* **A store into SAELens training**: :func:`store_batches` serves an activation store as the
  endless iterator of ``[batch, d_in]`` tensors that SAELens' ``SAETrainer`` takes as its
  ``data_provider`` (shuffled across shards, bounded memory, deterministic per seed), and
  :func:`saelens_metadata` says which hook and model those activations came from.
* **Theirs into the workbench**: ``python -m workbench analyse --run DIR --sae THEIR_DIR``
  reads SAELens (``jumprelu`` / ``standard``) and dictionary_learning directories directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from workbench.sae.data import ShuffledBatches, StoreSource
from workbench.sae.io import load_sae, save_sae


def store_batches(
    store: str | Path, batch_size: int = 4096, seed: int = 0, buffer_tokens: int = 262144
) -> Iterator[torch.Tensor]:
    """Endless float32 batches ``[batch_size, d_model]`` of the store's activations.

    The rows are shuffled across shards within windows of ``buffer_tokens`` (the workbench
    trainer's own order, :class:`workbench.sae.data.ShuffledBatches`); the stream restarts
    with a new permutation after each pass, so it never ends: give SAELens a token budget.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = ShuffledBatches(StoreSource(store), batch_size, buffer_tokens, seed)
    step = 0
    while True:
        yield batches.batch(step)
        step += 1


def saelens_metadata(store: str | Path) -> dict[str, str | None]:
    """``hook_name`` and ``model_name`` of a store, for a SAELens config's ``metadata``.

    Set them on a training SAE's ``cfg.metadata`` so that the saved SAE names its hook and
    ``analyse`` can check it against the store (it refuses an SAE trained on another hook).
    """
    source = StoreSource(store)
    return {"hook_name": source.hook_name, "model_name": source.model}


def export_saelens(src: str | Path, out: str | Path, model_name: str | None = None) -> Path:
    """Write the SAE at ``src`` (any format :func:`workbench.sae.load_sae` reads) as a
    SAELens inference directory at ``out`` (our artefact: ``cfg.json`` +
    ``sae_weights.safetensors`` + ``workbench_sae.json``); returns ``out``.

    A dictionary_learning Matryoshka BatchTopK ``ae.pt`` becomes a JumpReLU SAE whose
    per-latent threshold is its scalar threshold: the same feature activations.
    """
    sae = load_sae(src)
    extra = {"converted_from": str(Path(src).resolve())}
    return save_sae(sae, out, model_name=model_name, extra=extra)
