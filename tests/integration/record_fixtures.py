"""Shared fixtures of the recording and maira2-mini tests: a tiny phantom, tiny saved models.

Everything is built from config (no download) and sized to run in a second or two on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.models.processor import Maira2Processor
from workbench.models.tiny import tiny_llama, tiny_maira2, tiny_tokenizer


def make_phantom(root: Path, studies: int = 10, seed: int = 3) -> Path:
    """A phantom benchmark of ``studies`` 64-px studies (no masks) at ``root``.

    Half the subjects go to train and a quarter each to validate and test, so that even a
    handful of subjects fills every split.
    """
    from workbench.cxr.phantom import PhantomConfig, generate

    cfg = PhantomConfig(out=root, studies=studies, size=64, seed=seed, masks=False)
    cfg.train_frac, cfg.validate_frac = 0.5, 0.25
    generate(cfg)
    return root


def save_tiny_maira2(directory: Path, n_layers: int = 4, seed: int = 0) -> Path:
    """A random tiny MAIRA-2 with tokenizer and processor files, loadable by load_model."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    model = tiny_maira2(tok, n_layers=n_layers)
    model.save_pretrained(directory)
    Maira2Processor.for_model(model.config, tok).save_pretrained(directory)
    return directory


def save_tiny_llama(directory: Path, n_layers: int = 3, seed: int = 0) -> Path:
    """A random tiny Llama causal LM with its tokenizer (the text-only case)."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    model = tiny_llama(tok, n_layers=n_layers)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
