"""The SAE trainers compared by ``bench_sae.py`` and ``gpu_scale.py``, stepped one batch at a time.

Each peer takes the same raw batch at every step (the batch our trainer draws from its
shuffled source), normalises it its own way and updates; the driver times each step.

* :class:`Ours`: :class:`workbench.sae.trainer.Trainer` (``initialise`` then ``train_step``).
* :class:`SAELens`: ``MatryoshkaBatchTopKTrainingSAE`` trained by SAELens' ``SAETrainer``
  through its public per-step seam (``maybe_reset_sparsity``, ``step``), exactly what its
  ``fit`` loop calls. ``best=False`` leaves SAELens' defaults; ``best=True`` configures it as
  well as SAELens allows for this comparison (:data:`BEST_SETTINGS` says what and why).

:class:`StreamSource` serves synthetic superposition activations shard by shard, generated
on demand, so a token budget of tens of millions needs no memory beyond one shard.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.sae.config import TrainSAEConfig
from workbench.sae.data import geometric_median
from workbench.sae.synthetic import Superposition
from workbench.sae.trainer import Trainer

# What the best-configured SAELens changes from its defaults, and why (RESULTS.md quotes it).
BEST_SETTINGS = {
    "decoder_init_norm": "1.0 (default 0.1): unit-norm decoder rows with W_enc = W_dec^T, as "
    "ours and dictionary_learning start; 0.1 is Anthropic's heuristic for L1 SAEs and with "
    "rescale_acts_by_decoder_norm it shrinks the first pre-activations tenfold",
    "b_dec": "geometric median of the first (normalised) batch (default zeros), as ours and "
    "dictionary_learning: the synthetic data's per-dimension offset is larger than its signal",
    "rescale_acts_by_decoder_norm": "True (the default, kept): SAELens does not renormalise the "
    "decoder after each step, this makes its top-k see unit-norm rows as ours does",
    "dead_feature_window": "dead_tokens / batch steps (default 1000 steps), so both call a "
    "latent dead after the same number of tokens for the aux-k loss",
    "use_sparse_activations": "only in the 'saelens-best-sparse' peer: SAELens' sparse code "
    "path (documented as worthwhile in float32 without autocast); measure both",
}


PEERS = ("ours", "saelens-default", "saelens-best", "saelens-best-sparse")


@dataclass(frozen=True)
class Shape:
    """One SAE shape: widths, k and the batch; Matryoshka widths d_sae/16, d_sae/4, d_sae."""

    d_in: int
    d_sae: int
    k: int
    batch: int

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.d_sae // 16, self.d_sae // 4, self.d_sae)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        w = self.widths
        return (w[0], w[1] - w[0], w[2] - w[1])


class StreamSource:
    """A :class:`workbench.sae.data.ShardSource` of synthetic tokens, each shard generated
    from ``(seed, shard)`` when read: deterministic, unbounded, one shard in memory."""

    def __init__(self, shape: Shape, n_tokens: int, shard_tokens: int = 65536, seed: int = 0):
        self.data = Superposition(shape.d_in, n_features=4 * shape.d_sae, active=shape.k, seed=seed)
        self.d_in, self.hook_name, self.model = shape.d_in, None, "synthetic"
        self.shard_tokens, self.seed = shard_tokens, seed
        self.n_shards = max(1, math.ceil(n_tokens / shard_tokens))
        self.bytes_read = 0

    def shard_sizes(self) -> list[int]:
        return [self.shard_tokens] * self.n_shards

    def read(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i + 1)
        return self.data.sample(self.shard_tokens, g)

    def read_rows(self, i: int, rows: np.ndarray) -> torch.Tensor:
        return self.read(i)[torch.as_tensor(rows)]

    def describe(self, i: int) -> str:
        return f"synthetic shard {i}"

    def held_out(self, n: int) -> torch.Tensor:
        """Tokens no shard contains (their own generator)."""
        return self.data.sample(n, torch.Generator().manual_seed(self.seed * 1_000_003))


def fvu(x_ND: torch.Tensor, recon_ND: torch.Tensor) -> float:
    """Fraction of variance unexplained (scale-free: raw and normalised units agree)."""
    err = (x_ND - recon_ND).float().pow(2).sum(1).mean()
    return float(err / (x_ND - x_ND.mean(0)).float().pow(2).sum(1).mean())


def ours_schedule(lr: float, schedule: str) -> dict:
    """Ours' learning-rate settings: ``shared`` (the peers' constant ``lr``, no warm-up or
    decay: both trainers on one schedule) or ``trainer`` (:class:`TrainSAEConfig`'s defaults:
    lr 2e-4 / sqrt(d_sae / 2^14), warm-up, linear decay over the last fifth of the budget)."""
    if schedule == "shared":
        return {"lr": lr, "warmup_steps": 0, "decay_start": 1.0}
    if schedule == "trainer":
        return {}
    raise ValueError(f"ours' schedule must be 'shared' or 'trainer', not {schedule!r}")


class Ours:
    """Our trainer, driven step by step over ``source`` (steps = the token budget)."""

    name = "ours"

    def __init__(self, shape: Shape, source, steps: int, lr: float, device: str, **kw):
        out = kw.get("out") or Path(tempfile.mkdtemp(prefix="bench-ours-"))
        self.cfg = TrainSAEConfig(
            out=out, d_sae=shape.d_sae, k=shape.k,
            group_sizes=shape.group_sizes, batch_size=shape.batch, tokens=steps * shape.batch,
            **ours_schedule(lr, kw.get("schedule", "shared")),
            norm_batches=kw.get("norm_batches", 5),
            # the inference threshold as SAELens keeps it: an EMA of each step's smallest
            # kept activation from step 0 at rate 0.01 (its topk_threshold_lr default); the
            # trainer's own default (0.999 from step 1000) is for long runs
            threshold_start_step=0, threshold_beta=0.99, progress=False,
            buffer_tokens=getattr(source, "shard_tokens", TrainSAEConfig.buffer_tokens),
            device=device, checkpoint_every=0, resume=False, scan_store=False,
            sparse_threads=kw.get("sparse_threads", TrainSAEConfig.sparse_threads),
            dtype=kw.get("dtype", "float32"),
        )  # fmt: skip
        self.trainer = Trainer(self.cfg, source)
        self.trainer.initialise()

    def batch(self, step: int) -> torch.Tensor:
        """The raw batch of ``step`` (every peer trains on it)."""
        return self.trainer.batches.batch(step)

    def step(self, x: torch.Tensor) -> None:
        self.trainer.train_step(logging=False)  # draws the same batch (cached window)

    def raw_sae(self):
        return self.trainer.sae.scaled(self.trainer.norm_factor)

    @torch.no_grad()
    def evaluate(self, x_ND: torch.Tensor) -> dict[str, float]:
        """Held-out FVU with BatchTopK (the training code) and with the inference threshold."""
        sae = self.raw_sae()
        x = x_ND.to(self.trainer.dist.device)
        lat = sae.encode(x)
        return {
            "fvu_batchtopk": fvu(x, sae.decode(sae.encode_batch_topk(x))),
            "fvu_inference": fvu(x, sae.decode(lat)),
            "l0_inference": float((lat > 0).sum(1).float().mean()),
            "threshold": float(sae.threshold.max()),
        }


class SAELens:
    """SAELens' Matryoshka BatchTopK SAE and ``SAETrainer``, defaults or best-configured."""

    def __init__(self, shape: Shape, steps: int, lr: float, device: str, *, best: bool,
                 sparse: bool = False, autocast: bool = False,
                 dead_tokens: int = 10_000_000):  # fmt: skip
        from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
        from sae_lens.config import LoggingConfig
        from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig

        self.name = "saelens-best" + ("-sparse" if sparse else "") if best else "saelens-default"
        self.best, self.shape = best, shape
        extra = {"decoder_init_norm": 1.0} if best else {}
        sae_cfg = MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=shape.d_in, d_sae=shape.d_sae, k=shape.k, matryoshka_widths=list(shape.widths),
            normalize_activations="expected_average_only_in", device=device,
            use_sparse_activations=sparse, **extra,
        )  # fmt: skip
        window = max(1, dead_tokens // shape.batch) if best else 1000
        trainer_cfg = SAETrainerConfig(
            total_training_samples=steps * shape.batch, train_batch_size_samples=shape.batch,
            lr=lr, lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0, device=device,
            dead_feature_window=window, autocast=autocast,
            logger=LoggingConfig(log_to_wandb=False),
        )  # fmt: skip
        self.sae = MatryoshkaBatchTopKTrainingSAE(sae_cfg)
        self.trainer = SAETrainer(
            cfg=trainer_cfg, sae=self.sae, data_provider=iter(()), evaluator=None
        )
        self.sae.to(device)

    def start(self, first: list[torch.Tensor]) -> None:
        """Estimate the normalisation on the first batches (as ``fit`` does); best: b_dec at
        the geometric median of the first normalised batch."""
        scaler = self.trainer.activation_scaler
        scaler.estimate_scaling_factor(self.shape.d_in, iter(first), len(first))
        if self.best:
            with torch.no_grad():
                x = scaler(first[0].to(self.sae.W_dec.device))
                self.sae.b_dec.copy_(geometric_median(x))

    def step(self, x: torch.Tensor) -> None:
        self.trainer.maybe_reset_sparsity()
        self.trainer.step(x)
        self.trainer.n_training_steps += 1

    @torch.no_grad()
    def evaluate(self, x_ND: torch.Tensor) -> dict[str, float]:
        """Held-out FVU with BatchTopK and with its JumpReLU threshold (the inference code its
        saved SAE uses), computed on the training module in normalised units."""
        sae = self.sae
        x = self.trainer.activation_scaler(x_ND.to(sae.W_dec.device))
        was = sae.training
        sae.eval()
        try:
            acts, pre = sae.encode_with_hidden_pre(x)
            thr = float(sae.topk_threshold)
            inference = pre.relu() * (pre > thr)
            return {
                "fvu_batchtopk": fvu(x, sae.decode(acts)),
                "fvu_inference": fvu(x, sae.decode(inference)),
                "l0_inference": float((inference > 0).sum(1).float().mean()),
                "threshold": thr,
            }
        finally:
            sae.train(was)

    def saved_inference_fvu(self, x_ND: torch.Tensor) -> float:
        """FVU of the SAE as SAELens saves it (fold, JumpReLU, load): checks :meth:`evaluate`."""
        from sae_lens import SAE

        trainer = copy.deepcopy(self.trainer)
        trainer.sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
        with tempfile.TemporaryDirectory() as tmp:
            trainer.sae.save_inference_model(tmp)
            loaded = SAE.load_from_disk(tmp, device=str(self.sae.W_dec.device))
            with torch.no_grad():
                x = x_ND.to(self.sae.W_dec.device)
                return fvu(x, loaded.decode(loaded.encode(x)))


def make_peers(names: list[str], shape: Shape, source, steps: int, lr: float, device: str,
               **ours_kw) -> list:  # fmt: skip
    """The peers named (``ours`` first, then SAELens variants of :data:`PEERS`), the SAELens
    ones started on the first batches ours draws."""
    unknown = set(names) - set(PEERS)
    if unknown or names[:1] != ["ours"]:
        raise SystemExit(f"peers: 'ours' first, then any of {PEERS[1:]}; got {names}")
    ours = Ours(shape, source, steps, lr, device, **ours_kw)
    first = [ours.batch(s) for s in range(ours.cfg.norm_batches)]
    bf16 = ours.cfg.dtype != "float32"
    others = (saelens_peer(n, shape, steps, lr, device, first, bf16) for n in names[1:])
    return [ours, *others]


def saelens_peer(
    name: str, shape: Shape, steps: int, lr: float, device: str, first, autocast: bool = False
) -> SAELens:
    """One SAELens peer by name, started (normalisation, b_dec) on the ``first`` batches;
    ``autocast``: bfloat16 autocast, SAELens' counterpart of our bf16 encoder product."""
    peer = SAELens(shape, steps, lr, device, best=name != "saelens-default",
                   sparse=name.endswith("sparse"), autocast=autocast)  # fmt: skip
    peer.start(first)
    return peer
