"""Checkpoints of ``bench_sae.py``'s interleaved loop, so a run longer than a session resumes.

One file, ``<dir>/bench_state.pt``, written atomically (``<file>.tmp`` then ``os.replace``):

* the loop: steps done, every peer's eval curve so far, which peers are still active, the
  per-step wall and CPU seconds of every peer and of the limit (the speed figures of a
  resumed run cover all its steps);
* every peer's training state (a stopped peer's too: the end-of-run figures read it).
  ``ours``: :meth:`workbench.sae.trainer.Trainer.state` (weights and inference threshold,
  Adam, dead-latent counters, step, normalisation factor; the batch of a step is a function
  of the step). SAELens: what its ``SAETrainer.save_trainer_state`` saves (Adam, lr scheduler,
  coefficient schedulers, dead-latent and firing counters, step and sample counts) plus the
  training SAE's parameters and buffers (``topk_threshold``) and the activation scaler (the
  normalisation factor estimated at the start, restored rather than re-estimated). The
  limit product has no state;
* the fingerprint of the arguments that change the result (:data:`FINGERPRINT`): resuming
  with another value of one of them is refused, naming it. ``--threads``,
  ``--sparse-threads``, ``--json``, ``--memory``, ``--profile`` may change between sessions.

Loading a checkpoint replaces the whole state of the freshly built peers, so their start
(normalisation estimate, ``b_dec`` at the geometric median) is overwritten, not redone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.io import atomic_path

STATE_FILE = "bench_state.pt"
# arguments (parse()'s names) that change what the run computes; "tokens" is the budget
# in steps x batch, "seed" the synthetic data's
FINGERPRINT = (
    "d_in", "d_sae", "k", "batch", "tokens", "lr", "seed", "peers", "dtype", "device",
    "shard_tokens", "held_out", "eval_every", "until_flat", "flat_window", "flat_tol", "thr_tol",
    "ours_schedule",
)  # fmt: skip
# arguments added after checkpoints existed: their value in a checkpoint that predates them
ADDED_LATER = {"ours_schedule": "shared"}
# the SAETrainer attributes its save_trainer_state saves besides optimizer and schedulers
SAELENS_COUNTERS = (
    "n_training_samples", "n_training_steps", "act_freq_scores",
    "n_forward_passes_since_fired", "n_frac_active_samples", "started_fine_tuning",
)  # fmt: skip


@dataclass
class Loop:
    """The interleaved loop between two steps (besides the peers' own state)."""

    step: int = 0
    """Steps done: the next step to run."""
    times: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    """Per name (peers and ``limit``): step -> (wall s, CPU s) of that step."""
    curves: dict[str, list[dict]] = field(default_factory=dict)
    """Per peer: its held-out eval rows so far."""
    active: dict[str, bool] = field(default_factory=dict)
    """Per peer: still training (False once ``--until-flat`` stopped it)."""

    @classmethod
    def fresh(cls, names: list[str]) -> Loop:
        """Nothing done yet for peers ``names``."""
        return cls(
            times={n: {} for n in [*names, "limit"]},
            curves={n: [] for n in names},
            active={n: True for n in names},
        )

    @property
    def done(self) -> bool:
        """Whether no peer is left training."""
        return not any(self.active.values())


def fingerprint(args, seed: int) -> dict[str, Any]:
    """The values of :data:`FINGERPRINT` for this run."""
    values = {**vars(args), "tokens": args.max_steps * args.batch, "seed": seed}
    return {name: values[name] for name in FINGERPRINT}


def peer_state(peer) -> dict[str, Any]:
    """Everything ``peer`` keeps between steps (see the module docstring)."""
    if peer.name == "ours":
        return {"trainer": peer.trainer.state()}
    t = peer.trainer
    return {
        "sae": peer.sae.state_dict(),
        "activation_scaler": vars(t.activation_scaler).copy(),
        "optimizer": t.optimizer.state_dict(),
        "lr_scheduler": t.lr_scheduler.state_dict(),
        "coefficient_schedulers": {n: s.state_dict() for n, s in t.coefficient_schedulers.items()},
        **{name: getattr(t, name) for name in SAELENS_COUNTERS},
    }


def load_peer_state(peer, state: dict[str, Any]) -> None:
    """Restore :func:`peer_state` into a freshly built ``peer``."""
    if peer.name == "ours":
        peer.trainer.load_state(state["trainer"])
        return
    t = peer.trainer
    peer.sae.load_state_dict(state["sae"])
    for name, value in state["activation_scaler"].items():
        setattr(t.activation_scaler, name, value)
    t.optimizer.load_state_dict(state["optimizer"])
    t.lr_scheduler.load_state_dict(state["lr_scheduler"])
    for name, sched in state["coefficient_schedulers"].items():
        t.coefficient_schedulers[name].load_state_dict(sched)
    for name in SAELENS_COUNTERS:
        value = state[name]
        setattr(t, name, value.to(t.cfg.device) if torch.is_tensor(value) else value)


def read(path: Path) -> dict[str, Any]:
    """A checkpoint file's contents (this script's own file: not weights-only)."""
    return torch.load(path, map_location="cpu", weights_only=False)


class BenchCheckpoint:
    """The checkpoint directory of one run: save every ``every`` steps, resume on start."""

    def __init__(self, directory: Path, args, seed: int, every: int):
        self.path = Path(directory) / STATE_FILE
        self.fingerprint = fingerprint(args, seed)
        self.every = every
        self.saved_step = -1

    def due(self, loop: Loop) -> bool:
        """Whether the step just done is a checkpoint step."""
        return loop.step % self.every == 0

    def save(self, loop: Loop, peers: list) -> None:
        """Write the loop and every peer's state, replacing the previous checkpoint."""
        if loop.step == self.saved_step:
            return
        state = {
            "fingerprint": self.fingerprint,
            "loop": vars(loop),
            "peers": {p.name: peer_state(p) for p in peers},
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        self.saved_step = loop.step

    def resume(self, peers: list) -> Loop | None:
        """Load the checkpoint into ``peers`` and return its loop; None if there is none."""
        if not self.path.exists():
            return None
        state = read(self.path)
        self.check(state["fingerprint"])
        for p in peers:
            load_peer_state(p, state["peers"][p.name])
        self.saved_step = state["loop"]["step"]
        return Loop(**state["loop"])

    def check(self, saved: dict[str, Any]) -> None:
        """Refuse a checkpoint made with other arguments, naming each that differs."""
        saved = {name: saved.get(name, ADDED_LATER.get(name)) for name in self.fingerprint}
        diff = [
            f"{name} (checkpoint {saved[name]!r}, now {now!r})"
            for name, now in self.fingerprint.items()
            if saved[name] != now
        ]
        if diff:
            raise SystemExit(
                f"{self.path}: checkpoint made with other arguments: {'; '.join(diff)}. Rerun "
                "with the checkpoint's arguments, or give another --checkpoint directory"
            )
