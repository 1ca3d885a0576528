"""The study's unit of work: train (or reuse) one run, then score it on its test sets.

A :class:`Job` is one training run (model, labelled fraction, seed, training set) and
whether its scoring includes the perturbed test sets. :func:`execute` runs a study's jobs in
this process (``workers = 1``) or in a pool of ``workers`` spawned processes with
``threads`` torch threads each. The runs are independent, so on a 2-core machine two
one-thread processes keep both cores busy without relying on torch splitting each small
convolution across threads. Jobs start longest first (SemanticGAN scored under the
perturbations, other SemanticGAN runs, then U-Nets), so the workers finish close together.

Each process builds the test sets once (``TestSets``): the clean test images, the
out-of-domain sets, and, only when a job needs them, the perturbed copies of the first
``robustness_images`` clean images. Every (run, test set) is appended to
``per_image.jsonl`` under a file lock as soon as it is scored, so a stopped study loses at
most the test set being scored and the training since the run's last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from segmentation import metrics as M
from segmentation.data import load_dataset
from segmentation.io import DataError, SegSample
from segmentation.models import load_model, predict
from segmentation.perturb import PERTURBATIONS, perturb, scanner_shift
from workbench.config import ConfigError, from_dict, load_config, to_dict

log = logging.getLogger(__name__)
PHANTOM = "phantom-lungs"


class RunKey(NamedTuple):
    model: str
    fraction: float
    seed: int
    train_set: str
    """'full', 'imbalanced' or 'balanced'."""

    def dirname(self) -> Path:
        return Path(self.model) / self.train_set / f"f{self.fraction:g}-s{self.seed}"


class Job(NamedTuple):
    key: RunKey
    subset: tuple[str | None, int | None] = (None, None)
    """``train_subset`` and ``train_subset_size`` of the run (imbalance part)."""
    robust: bool = False
    """Score the perturbed test sets too."""


def parse_ood(item: str) -> tuple[str, Path]:
    """``'jsrt=/data/JSRT'`` -> ('jsrt', Path('/data/JSRT'))."""
    name, sep, root = item.partition("=")
    if not sep or name not in ("jsrt", "montgomery", "shenzhen") or not root:
        raise ValueError(
            f"ood entry '{item}': expected NAME=ROOT, NAME in jsrt/montgomery/shenzhen"
        )
    return name, Path(root)


def robustness_strengths(cfg, name: str) -> tuple[float, ...]:
    """The strengths scored for one perturbation: all of its curve, or ``robustness_levels``
    of them spread over it (always the mildest and the strongest)."""
    if name == "scanner":
        return tuple(float(t) for t in cfg.scanner_strengths)
    all_ = PERTURBATIONS[name].strengths
    k = cfg.robustness_levels
    if k is None or k >= len(all_):
        return tuple(float(s) for s in all_)
    picks = sorted({int(round(i)) for i in np.linspace(0, len(all_) - 1, k)})
    return tuple(float(all_[i]) for i in picks)


def set_keys(cfg, robust: bool) -> list[tuple[str, str, float]]:
    """(dataset, condition, strength) of every test set a job scores, in scoring order."""
    keys = [(PHANTOM, "clean", 0.0)] + [(n, "clean", 0.0) for n, _ in map(parse_ood, cfg.ood)]
    if robust:
        keys += [(PHANTOM, c, s) for c in cfg.robustness for s in robustness_strengths(cfg, c)]
    return keys


def run_config(cfg, key: RunKey, subset: tuple[str | None, int | None]):
    """The training config of one run: the model's preset with the study's settings."""
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.train import TrainConfig

    gan = key.model == "semantic-gan"
    cls, preset = (SemanticGANConfig, cfg.semgan_preset) if gan else (TrainConfig, cfg.unet_preset)
    d = to_dict(load_config(cls, preset))
    d.update(
        data=cfg.data, out=cfg.out / "runs" / key.dirname(), dataset=PHANTOM,
        labelled_fraction=key.fraction, seed=key.seed, progress=False, resume=True,
        train_subset=subset[0], train_subset_size=subset[1],
    )  # fmt: skip
    overrides = {"steps": cfg.gan_steps if gan else cfg.unet_steps, "enc_steps": cfg.enc_steps}
    d.update({k: v for k, v in overrides.items() if v is not None and (gan or k == "steps")})
    if cfg.threads:  # the study's threads, not the preset's
        d["threads"] = cfg.threads
    return from_dict(cls, d, source=str(preset))


def train_run(cfg, key: RunKey, subset=(None, None)) -> Path:
    """Train (or resume, or reuse) one run; return its directory."""
    run_cfg = run_config(cfg, key, subset)
    if not (run_cfg.out / "model.pt").exists():
        t0 = time.monotonic()
        if key.model == "semantic-gan":
            from segmentation.semantic_gan.train import train as train_gan

            train_gan(run_cfg)
        else:
            from segmentation.train import train as train_unet

            train_unet(run_cfg)
        log.info("trained %s in %.0f s", key, time.monotonic() - t0)
    return run_cfg.out


def score(model, samples: list[SegSample], batch_size: int, seed: int = 0) -> list[dict]:
    """Per-image Dice, IoU and Hausdorff-95 of the point prediction (first annotator)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        x = torch.from_numpy(np.stack([s.image for s in chunk])[:, None].astype(np.float32))
        pred = predict(model, x, num_samples=1, generator=gen).prediction.numpy()
        for p, s in zip(pred, chunk, strict=True):
            y = np.array(s.masks[0])  # a writable copy (resized masks are read-only views)
            rows.append(
                {
                    "id": s.meta.get("id"),
                    "sex": s.meta.get("sex"),
                    "age_group": s.meta.get("age_group"),
                    "habitus": s.meta.get("habitus"),
                    "dice": M.dice(p, y),
                    "iou": M.iou(p, y),
                    "hd95": M.hausdorff95(p, y),
                }
            )
    return rows


class Ledger:
    """``per_image.jsonl``: append-only rows; knows which (run, test set) are done.

    ``done`` given: trust it instead of reading the file (a worker gets the main process's
    view; no other process scores the same run)."""

    FIELDS = ("model", "fraction", "seed", "train_set", "dataset", "condition", "strength")

    def __init__(self, path: Path, done: frozenset | None = None):
        self.path = path
        self.done: set[tuple] = set(done or ())
        if done is None and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.done.add(self.key(json.loads(line)))

    @classmethod
    def key(cls, row: dict) -> tuple:
        return tuple(row[k] for k in cls.FIELDS)

    def add(self, base: dict, rows: list[dict]) -> None:
        """Append one scored test set in one locked write (workers share the file)."""
        text = "".join(json.dumps({**base, **r}) + "\n" for r in rows)
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(text)
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        self.done.add(self.key(base))

    def pending(self, cfg, job: Job) -> bool:
        """Whether ``job`` has training or scoring left."""
        if not (cfg.out / "runs" / job.key.dirname() / "model.pt").exists():
            return True
        base = job.key._asdict()
        return any(
            self.key({**base, "dataset": d, "condition": c, "strength": s}) not in self.done
            for d, c, s in set_keys(cfg, job.robust)
        )


def image_size(cfg) -> int:
    """The common input size of both presets (the test images are loaded once, at it)."""
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.train import TrainConfig

    sizes = {
        load_config(TrainConfig, cfg.unet_preset).image_size,
        load_config(SemanticGANConfig, cfg.semgan_preset).image_size,
    }
    if len(sizes) != 1:
        raise ConfigError(f"{cfg.unet_preset} and {cfg.semgan_preset}: image_size {sizes} differ")
    return sizes.pop()


def load_split(cfg, split: str | None, name=PHANTOM, root=None, limit=None) -> list[SegSample]:
    samples = load_dataset(name, root or cfg.data, split, image_size(cfg))
    if not samples:
        raise DataError(f"{root or cfg.data}: no {name} images in split {split}")
    return samples[:limit] if limit else samples


class TestSets:
    """One process's test sets: clean and out-of-domain at once, perturbed when first needed."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.clean = load_split(cfg, "test", limit=cfg.max_test_images)
        self.ood = {
            name: load_split(cfg, None, name, root, cfg.max_ood_images)
            for name, root in map(parse_ood, cfg.ood)
        }
        self._perturbed: dict[tuple[str, float], list[SegSample]] = {}

    def samples(self, dataset: str, condition: str, strength: float) -> list[SegSample]:
        if condition == "clean":
            return self.clean if dataset == PHANTOM else self.ood[dataset]
        key = (condition, strength)
        if key not in self._perturbed:
            base = self.clean[: self.cfg.robustness_images or None]
            if condition == "scanner":
                size = len(base[0].image)
                self._perturbed[key] = scanner_shift(self.cfg.data, base, size, strength)
            else:
                self._perturbed[key] = [perturb(x, condition, strength) for x in base]
        return self._perturbed[key]


_TEST_SETS: dict[str, TestSets] = {}
"""This process's test sets per study config (built once, reused by every job)."""


def test_sets(cfg) -> TestSets:
    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key not in _TEST_SETS:
        _TEST_SETS[key] = TestSets(cfg)
    return _TEST_SETS[key]


def run_job(cfg, job: Job, done: frozenset | None = None) -> None:
    """Train (or reuse) the job's run and score every test set not yet in the ledger."""
    ledger = Ledger(cfg.out / "per_image.jsonl", done)
    run_dir = train_run(cfg, job.key, job.subset)
    model = None
    for dataset, condition, strength in set_keys(cfg, job.robust):
        base = {**job.key._asdict(), "dataset": dataset, "condition": condition}
        base["strength"] = strength
        if Ledger.key(base) in ledger.done:
            continue
        if model is None:
            model, _, _ = load_model(run_dir)
            if cfg.tto_steps is not None and hasattr(model, "inference"):
                model.inference.steps = cfg.tto_steps
        t0 = time.monotonic()
        samples = test_sets(cfg).samples(dataset, condition, strength)
        ledger.add(base, score(model, samples, cfg.batch_size))
        log.info("scored %s on %s/%s=%s (%d images) in %.0f s", job.key, dataset, condition,
                 strength, len(samples), time.monotonic() - t0)  # fmt: skip


def order(jobs: list[Job]) -> list[Job]:
    """Longest first: SemanticGAN with robustness scoring, SemanticGAN, then U-Nets."""
    return sorted(jobs, key=lambda j: (j.key.model != "semantic-gan", not j.robust))


def worker_threads(cfg) -> int:
    """torch threads per process: ``threads``, or the cores shared out among the workers."""
    return cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)


def _init_worker(threads: int, level: int) -> None:
    fmt = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt)
    torch.set_num_threads(threads)


def execute(cfg, jobs: list[Job], ledger: Ledger) -> int:
    """Run the jobs with work left (inline or in a process pool); return how many ran.

    The pool's workers are terminated when this returns or raises (a failed job, Ctrl-C, or
    SIGTERM, which is turned into KeyboardInterrupt meanwhile), so no orphan keeps training.
    """
    todo = [j for j in order(jobs) if ledger.pending(cfg, j)]
    log.info("%d of %d runs have training or scoring left", len(todo), len(jobs))
    if cfg.workers == 1 or len(todo) <= 1:
        for job in todo:
            run_job(cfg, job, frozenset(ledger.done))
        return len(todo)
    wcfg = dataclasses.replace(cfg, threads=worker_threads(cfg))
    ctx = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    init = (wcfg.threads, logging.getLogger().getEffectiveLevel())
    with _sigterm_interrupts(), ctx.Pool(cfg.workers, _init_worker, init) as pool:
        results = [pool.apply_async(run_job, (wcfg, job, frozenset(ledger.done))) for job in todo]
        while results:  # the first failure ends the study (the pool is terminated on exit)
            results[0].wait(timeout=1.0)
            for r in [r for r in results if r.ready()]:
                r.get()
                results.remove(r)
        pool.close()  # all done: let the workers exit (the exit would terminate them)
        pool.join()
    return len(todo)


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt in the main thread while the pool runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
