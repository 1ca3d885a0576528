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

``segmentation.study_jobs`` trains and scores the runs, in this process or in ``workers``
processes. Every (run, test set) is scored once into ``out/per_image.jsonl``; a rerun skips
what is there and resumes unfinished training, so the study can be stopped and restarted.
Sizing knobs for a CPU budget: ``max_test_images``, ``robustness_images``,
``robustness_levels``, ``imbalance_seeds``, ``tto_steps`` and the step overrides
(``configs/seg-study-cpu.toml`` fits ~30 min on 2 cores).
``segmentation.study_report`` turns the rows into tables, plots, ``summary.md`` and DuckDB.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from segmentation.perturb import PERTURBATIONS
from segmentation.study_jobs import Job, Ledger, RunKey, execute, load_split, parse_ood
from segmentation.subsets import parse_subset, subset_size
from workbench.config import ConfigError, parse_config, to_dict

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
    robustness_images: int | None = None
    """Score the perturbed sets on only the first N of those (None: all of them)."""
    robustness: tuple[str, ...] = (*PERTURBATIONS, "scanner")
    """Perturbations to score ('scanner' = the re-rendered unseen scanner profile)."""
    scanner_strengths: tuple[float, ...] = (0.5, 1.0)
    """Scanner-shift strengths (0 = the phantom's own acquisition, 1 = the new profile)."""
    robustness_fractions: tuple[float, ...] = (0.02, 1.0)
    """Labelled fractions whose runs are scored on perturbed images."""
    robustness_seeds: tuple[int, ...] = (0,)
    """Seeds whose runs are scored on perturbed images."""
    robustness_levels: int | None = None
    """Strengths per image perturbation: None = its whole curve (4), K = K of them spread
    over it, the mildest and the strongest included."""
    imbalance: str | None = "sex=F:0.9"
    """Imbalanced training set ATTRIBUTE=VALUE:SHARE (a balanced control of the same size is
    trained too); None skips this part."""
    imbalance_fraction: float = 0.1
    """Labelled fraction of the imbalanced and balanced runs."""
    imbalance_seeds: tuple[int, ...] | None = None
    """Seeds of the imbalanced and balanced runs (None: ``seeds``)."""
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
    workers: int = 1
    """Processes training and scoring runs in parallel (independent runs; 2 on 2 cores)."""
    threads: int | None = None
    """torch CPU threads per process (None: torch's default with one worker, else the cores
    shared out among the workers)."""

    def validate(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise ConfigError(f"StudyConfig.models: unknown {bad}; known {MODELS}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError("StudyConfig.fractions must be non-empty, each in (0, 1]")
        if not self.seeds:
            raise ConfigError("StudyConfig.seeds must not be empty")
        if self.workers < 1 or (self.robustness_levels is not None and self.robustness_levels < 2):
            raise ConfigError("StudyConfig: workers >= 1 and robustness_levels >= 2 (or unset)")
        if self.imbalance_seeds is not None and not self.imbalance_seeds:
            raise ConfigError("StudyConfig.imbalance_seeds must not be empty (omit it instead)")
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


def jobs(cfg: StudyConfig, imbalanced_size: int | None = None) -> list[Job]:
    """Every run the config asks for: fractions x seeds per model (the robustness ones scored
    under the perturbations too), then the imbalanced and balanced training sets, of
    ``imbalanced_size`` images (None: the largest the training split allows)."""
    out = []
    for model in cfg.models:
        for seed in cfg.seeds:
            for fraction in cfg.fractions:
                robust = fraction in cfg.robustness_fractions and seed in cfg.robustness_seeds
                out.append(Job(RunKey(model, float(fraction), int(seed), "full"), robust=robust))
    if cfg.imbalance:
        spec = parse_subset(cfg.imbalance)
        n = imbalanced_size or subset_size(load_split(cfg, "train"), spec)
        balanced = f"{spec.attribute}={spec.value}:0.5"
        seeds = cfg.seeds if cfg.imbalance_seeds is None else cfg.imbalance_seeds
        for model in cfg.models:
            for seed in seeds:
                for name, subset in (("imbalanced", cfg.imbalance), ("balanced", balanced)):
                    key = RunKey(model, float(cfg.imbalance_fraction), int(seed), name)
                    out.append(Job(key, (subset, n)))
    return out


def run_study(cfg: StudyConfig) -> dict:
    """Train and score everything the config asks for; write the report; return its tables."""
    from segmentation.study_report import write_report

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "study-cfg.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    t0 = time.monotonic()
    ran = execute(cfg, jobs(cfg), Ledger(cfg.out / "per_image.jsonl"))
    log.info("%d runs trained/scored in %.0f s; writing the report", ran, time.monotonic() - t0)
    return write_report(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(StudyConfig, argv, prog="python -m workbench seg-study")
    tables = run_study(cfg)
    print(json.dumps({"out": str(cfg.out), "verdicts": tables.get("verdicts", {})}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
