"""The one configuration of SAE training: CLI flags, ``--help``, presets and saved config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workbench.config import ConfigError
from workbench.run import RunLayout


@dataclass
class TrainSAEConfig:
    """Train a Matryoshka BatchTopK SAE on an activation store (Bussmann et al. 2025).

    The dictionary is split into nested groups; every prefix of groups must reconstruct the
    input on its own, so early latents learn general features and later ones refine them.
    """

    run: Path | None = None
    """Run directory: store and out default to <run>/activations and <run>/sae."""
    store: Path | None = None
    """Activation store directory to train on (written by `python -m workbench.record`)."""
    out: Path | None = None
    """Output directory for the SAE; default: <run>/sae, else `sae/` next to the store."""
    d_in: int = 0
    """Width of the activations; 0 takes it from the store (a mismatch is an error)."""
    d_sae: int = 0
    """Number of latents; 0 means expansion_factor * d_in."""
    expansion_factor: float = 4.0
    """d_sae / d_in when d_sae is 0 (the MAIRA-2 SAEs of the paper use 4)."""
    k: int = 32
    """Average number of active latents per token (BatchTopK keeps k * batch_size per batch)."""
    group_sizes: tuple[int, ...] = ()
    """Matryoshka group sizes (sum = d_sae); empty means use group_fractions."""
    group_fractions: tuple[float, ...] = (0.0625, 0.1875, 0.75)
    """Fractions of d_sae per group when group_sizes is empty; the last takes the remainder."""
    lr: float = 0.0
    """Adam learning rate; 0 means 2e-4 / sqrt(d_sae / 2^14) (dictionary_learning's rule)."""
    warmup_steps: int = 1000
    """Linear learning-rate warm-up steps (capped at a tenth of the run)."""
    decay_start: float = 0.8
    """Fraction of the run after which the learning rate decays linearly to 0 (1 = never)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    max_grad_norm: float = 1.0
    """Clip the joint gradient norm to this (0 = no clipping)."""
    batch_size: int = 4096
    """Tokens per optimiser step, summed over all processes."""
    tokens: int = 0
    """Training token budget; 0 means one pass over the store."""
    aux_alpha: float = 0.03125
    """Weight of the aux-k loss that revives dead latents (1/32)."""
    k_aux: int = 0
    """Dead latents each token uses in the aux-k loss; 0 means d_in // 2."""
    dead_tokens: int = 10_000_000
    """A latent is dead after this many training tokens without firing."""
    threshold_beta: float = 0.999
    """EMA factor of the inference threshold (running smallest kept activation)."""
    threshold_start_step: int = 1000
    """Step from which the threshold is estimated (capped at a quarter of the run)."""
    normalize: bool = True
    """Scale inputs to unit mean squared norm while training; the factor is folded into the saved
    weights, so the saved SAE takes raw activations."""
    norm_batches: int = 100
    """Batches used to estimate the normalisation factor."""
    buffer_tokens: int = 262144
    """Shuffle buffer: rows from whole shards mixed together (bounds memory, not the store)."""
    seed: int = 0
    """Seed of initialisation and data order (a rerun or a resume gives the same weights)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the dense encoder product (autocast); weights and Adam stay float32."""
    sparse_threads: int = 1
    """CPU threads for everything but the encoder product (which uses all torch threads): the
    sparse work is many small operations, and with more threads each one waits for the others,
    which dominates on shared or small CPUs. 0 = all threads."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (under accelerate launch each process takes its own)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many steps (and at the end); 0 = only at the end."""
    resume: bool = True
    """Continue from the latest checkpoint in out/checkpoints if the config matches."""
    log_every: int = 20
    """Write a JSON line (out/train_log.jsonl) every this many steps."""
    progress: bool = True
    """Show a tqdm progress bar."""
    scan_store: bool = True
    """Read the whole store once before training to refuse NaN/inf early (shards are checked
    again as they load either way; under data-parallel training each process scans a share)."""
    read_share: bool = True
    """Data-parallel: each process reads only the rows of its share of every batch (row
    gathers from the store) instead of whole shards; same batches, about 1/processes of the
    bytes. Off: every process reads whole windows and keeps its slice."""
    hooks: tuple[str, ...] = ()
    """Multi-hook store (record --layers): the hooks to train, one SAE each in <out>/<hook>,
    all in one pass; empty: every hook of the store."""

    def validate(self) -> None:
        """Refuse values that cannot work before anything is read."""
        positive = ("k", "batch_size", "norm_batches", "buffer_tokens", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"field '{name}' must be positive, got {getattr(self, name)}")
        for name in ("d_in", "d_sae", "tokens", "k_aux", "warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"field '{name}' must be >= 0, got {getattr(self, name)}")
        if self.d_sae and self.k > self.d_sae:
            raise ConfigError(f"k={self.k} is larger than d_sae={self.d_sae}")
        if not 0 < self.decay_start <= 1:
            raise ConfigError(f"field 'decay_start' must be in (0, 1], got {self.decay_start}")
        if not 0 <= self.threshold_beta < 1:
            raise ConfigError(f"field 'threshold_beta' must be in [0, 1): {self.threshold_beta}")
        if self.expansion_factor <= 0 or self.lr < 0:
            raise ConfigError("expansion_factor must be positive and lr >= 0")
        if not self.group_sizes and (
            not self.group_fractions or sum(self.group_fractions) > 1 + 1e-6
        ):
            raise ConfigError(f"group_fractions must sum to <= 1, got {self.group_fractions}")

    def resolved_d_sae(self, d_in: int) -> int:
        """d_sae, or expansion_factor * d_in."""
        return self.d_sae or int(round(self.expansion_factor * d_in))

    def resolved_lr(self, d_sae: int) -> float:
        """lr, or dictionary_learning's 1/sqrt(d_sae) rule (Gao et al. 2024, Fig. 3)."""
        return self.lr or 2e-4 / math.sqrt(d_sae / 2**14)

    def default_out(self) -> Path:
        """runs/x/activations -> runs/x/sae."""
        if self.out is not None:
            return Path(self.out)
        if self.run is not None:
            return RunLayout(self.run).sae
        if self.store is None:
            raise ConfigError("give --out (no --store to place the SAE beside)")
        return Path(self.store).parent / "sae"
