"""``python -m workbench seg-study``: is SemanticGAN a viable alternative to a U-Net?

The analysis of Rosnati et al. (2022) on the phantom's lung-field task, in four parts:

1. **Labelled fractions**: for each fraction and seed, a U-Net trained on the labelled images
   only and a SemanticGAN trained on the labelled images plus all other training images as
   unlabelled (the same labelled images for the same seed); Dice, IoU and Hausdorff-95 on the
   test split with hierarchical bootstrap intervals, and the paired SemanticGAN - U-Net Dice
   difference, which alone decides whether "semi-supervision helps".
2. **Robustness**: the runs at ``robustness_fractions`` x ``robustness_seeds`` on perturbed
   test images (``segmentation.perturb``: noise, gamma, contrast, blur, rotation, resolution)
   and on the phantom re-rendered with an unseen scanner profile; degradation curves.
3. **Subgroups**: Dice by sex, age band and body habitus, the best-worst gap with intervals;
   and runs on a deliberately imbalanced training set (``imbalance``, e.g. 90 % women) beside
   a balanced control of the same size, to see whether each model's gap widens.
4. **Out of domain**: each run on JSRT / Montgomery / Shenzhen roots given in ``ood``.

Every (run, test set) is scored once into ``out/per_image.jsonl``; a rerun skips what is
there and resumes unfinished training, so the study can be stopped and restarted.
``segmentation.study_report`` turns the rows into tables, plots, ``summary.md`` and DuckDB.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from segmentation import metrics as M
from segmentation.data import load_dataset
from segmentation.io import DataError, SegSample
from segmentation.models import load_model, predict
from segmentation.perturb import PERTURBATIONS, perturb, scanner_shift
from segmentation.subsets import parse_subset, subset_size
from workbench.config import ConfigError, from_dict, load_config, parse_config, to_dict

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = ("unet", "semantic-gan")


@dataclass
class StudyConfig:
    """Generative (SemanticGAN) vs discriminative (U-Net) lung segmentation on the phantom."""

    data: Path = Path("runs/seg-study/phantom")
    """Phantom root (generated with masks; the study uses its lung fields)."""
    out: Path = Path("runs/seg-study")
    """Study directory: runs/, per_image.jsonl, tables, plots, summary.md."""
    models: tuple[str, ...] = MODELS
    """Models to compare (unet, semantic-gan)."""
    fractions: tuple[float, ...] = (0.02, 0.1, 0.5, 1.0)
    """Labelled fractions of the training split."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (also choose the labelled subset)."""
    unet_preset: Path = CONFIGS / "seg-phantom-lungs-unet.toml"
    """U-Net training preset (data, out, seed and fraction are set by the study)."""
    semgan_preset: Path = CONFIGS / "seg-phantom-lungs-semantic-gan.toml"
    """SemanticGAN training preset."""
    unet_steps: int | None = None
    """Override the U-Net preset's steps."""
    gan_steps: int | None = None
    """Override the SemanticGAN preset's GAN iterations."""
    enc_steps: int | None = None
    """Override the SemanticGAN preset's encoder iterations."""
    tto_steps: int | None = None
    """Override SemanticGAN's test-time optimisation steps at evaluation."""
    max_test_images: int | None = None
    """Score only the first N test images (cost of test-time optimisation)."""
    robustness: tuple[str, ...] = (*PERTURBATIONS, "scanner")
    """Perturbations to score ('scanner' = the re-rendered unseen scanner profile)."""
    scanner_strengths: tuple[float, ...] = (0.5, 1.0)
    """Scanner-shift strengths (0 = the phantom's own acquisition, 1 = the new profile)."""
    robustness_fractions: tuple[float, ...] = (0.02, 1.0)
    """Labelled fractions whose runs are scored on perturbed images."""
    robustness_seeds: tuple[int, ...] = (0,)
    """Seeds whose runs are scored on perturbed images."""
    imbalance: str | None = "sex=F:0.9"
    """Imbalanced training set ATTRIBUTE=VALUE:SHARE (a balanced control of the same size is
    trained too); None skips this part."""
    imbalance_fraction: float = 0.1
    """Labelled fraction of the imbalanced and balanced runs."""
    ood: tuple[str, ...] = ()
    """Out-of-domain sets NAME=ROOT with NAME in jsrt, montgomery, shenzhen."""
    max_ood_images: int | None = 200
    """Score at most N images per out-of-domain set."""
    batch_size: int = 16
    """Images per prediction batch."""
    n_boot: int = 2000
    """Bootstrap replicates per interval."""
    db: Path | None = None
    """DuckDB file for the segmentation_study and segmentation_results tables."""
    threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""

    def validate(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise ConfigError(f"StudyConfig.models: unknown {bad}; known {MODELS}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError("StudyConfig.fractions must be non-empty, each in (0, 1]")
        if not self.seeds:
            raise ConfigError("StudyConfig.seeds must not be empty")
        unknown = set(self.robustness) - set(PERTURBATIONS) - {"scanner"}
        if unknown:
            raise ConfigError(f"StudyConfig.robustness: unknown {sorted(unknown)}")
        try:
            if self.imbalance:
                parse_subset(self.imbalance)
            for item in self.ood:
                parse_ood(item)
        except ValueError as exc:
            raise ConfigError(f"StudyConfig: {exc}") from None


def parse_ood(item: str) -> tuple[str, Path]:
    """``'jsrt=/data/JSRT'`` -> ('jsrt', Path('/data/JSRT'))."""
    name, sep, root = item.partition("=")
    if not sep or name not in ("jsrt", "montgomery", "shenzhen") or not root:
        raise ValueError(
            f"ood entry '{item}': expected NAME=ROOT, NAME in jsrt/montgomery/shenzhen"
        )
    return name, Path(root)


class RunKey(NamedTuple):
    model: str
    fraction: float
    seed: int
    train_set: str
    """'full', 'imbalanced' or 'balanced'."""

    def dirname(self) -> Path:
        return Path(self.model) / self.train_set / f"f{self.fraction:g}-s{self.seed}"


def run_config(cfg: StudyConfig, key: RunKey, subset: tuple[str | None, int | None]):
    """The training config of one run: the model's preset with the study's settings."""
    from segmentation.semantic_gan.config import SemanticGANConfig
    from segmentation.train import TrainConfig

    gan = key.model == "semantic-gan"
    cls, preset = (SemanticGANConfig, cfg.semgan_preset) if gan else (TrainConfig, cfg.unet_preset)
    d = to_dict(load_config(cls, preset))
    d.update(
        data=cfg.data, out=cfg.out / "runs" / key.dirname(), dataset="phantom-lungs",
        labelled_fraction=key.fraction, seed=key.seed, progress=False, resume=True,
        train_subset=subset[0], train_subset_size=subset[1],
    )  # fmt: skip
    overrides = {"steps": cfg.gan_steps if gan else cfg.unet_steps, "enc_steps": cfg.enc_steps}
    d.update({k: v for k, v in overrides.items() if v is not None and (gan or k == "steps")})
    return from_dict(cls, d, source=str(preset))


def train_run(cfg: StudyConfig, key: RunKey, subset=(None, None)) -> Path:
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
    """``per_image.jsonl``: append-only rows; knows which (run, test set) are done."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[tuple] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.done.add(self.key(json.loads(line)))

    @staticmethod
    def key(row: dict) -> tuple:
        fields = ("model", "fraction", "seed", "train_set", "dataset", "condition", "strength")
        return tuple(row[k] for k in fields)

    def add(self, base: dict, rows: list[dict]) -> None:
        with open(self.path, "a") as f:
            for r in rows:
                f.write(json.dumps({**base, **r}) + "\n")
        self.done.add(self.key(base))


def test_sets(cfg: StudyConfig, clean: list[SegSample]):
    """Yield (condition, strength, samples) for the robustness part, clean excluded."""
    for name in cfg.robustness:
        if name == "scanner":
            for t in cfg.scanner_strengths:
                yield "scanner", float(t), scanner_shift(cfg.data, clean, len(clean[0].image), t)
            continue
        for s in PERTURBATIONS[name].strengths:
            yield name, float(s), [perturb(x, name, s) for x in clean]


def evaluate_run(cfg, ledger, key: RunKey, run_dir: Path, sets) -> None:
    """Score one run on each (dataset, condition, strength, samples) not yet in the ledger."""
    model = None
    for dataset, condition, strength, samples in sets:
        base = {**key._asdict(), "dataset": dataset, "condition": condition}
        base["strength"] = strength
        if Ledger.key(base) in ledger.done:
            continue
        if model is None:
            model, _, _ = load_model(run_dir)
            if cfg.tto_steps is not None and hasattr(model, "inference"):
                model.inference.steps = cfg.tto_steps
        t0 = time.monotonic()
        ledger.add(base, score(model, samples() if callable(samples) else samples, cfg.batch_size))
        log.info("scored %s on %s/%s=%s in %.0f s", key, dataset, condition, strength,
                 time.monotonic() - t0)  # fmt: skip


def _load(cfg: StudyConfig, split: str, name="phantom-lungs", root=None, limit=None):
    samples = load_dataset(name, root or cfg.data, split, _image_size(cfg))
    if not samples:
        raise DataError(f"{root or cfg.data}: no {name} images in split {split}")
    return samples[:limit] if limit else samples


def _image_size(cfg: StudyConfig) -> int:
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


def run_study(cfg: StudyConfig) -> dict:
    """Train and score everything the config asks for; write the report; return its tables."""
    from segmentation.study_report import write_report

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "study-cfg.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    ledger = Ledger(cfg.out / "per_image.jsonl")
    clean = _load(cfg, "test", limit=cfg.max_test_images)
    clean_set = [("phantom-lungs", "clean", 0.0, clean)]
    ood = [
        (name, "clean", 0.0, _load(cfg, None, name, root, cfg.max_ood_images))
        for name, root in map(parse_ood, cfg.ood)
    ]
    robust = None
    for model in cfg.models:
        for seed in cfg.seeds:
            for fraction in cfg.fractions:
                key = RunKey(model, float(fraction), int(seed), "full")
                run_dir = train_run(cfg, key)
                sets = clean_set + ood
                if fraction in cfg.robustness_fractions and seed in cfg.robustness_seeds:
                    robust = robust if robust is not None else list(test_sets(cfg, clean))
                    sets = sets + [("phantom-lungs", c, s, xs) for c, s, xs in robust]
                evaluate_run(cfg, ledger, key, run_dir, sets)
    if cfg.imbalance:
        _imbalance_runs(cfg, ledger, clean_set)
    return write_report(cfg)


def _imbalance_runs(cfg: StudyConfig, ledger: Ledger, clean_set) -> None:
    """Imbalanced and balanced training sets of the same size, each model and seed."""
    spec = parse_subset(cfg.imbalance)
    n = subset_size(_load(cfg, "train"), spec)
    balanced = f"{spec.attribute}={spec.value}:0.5"
    for model in cfg.models:
        for seed in cfg.seeds:
            for name, subset in (("imbalanced", cfg.imbalance), ("balanced", balanced)):
                key = RunKey(model, float(cfg.imbalance_fraction), int(seed), name)
                run_dir = train_run(cfg, key, (subset, n))
                evaluate_run(cfg, ledger, key, run_dir, clean_set)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(StudyConfig, argv, prog="python -m workbench seg-study")
    tables = run_study(cfg)
    print(json.dumps({"out": str(cfg.out), "verdicts": tables.get("verdicts", {})}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
