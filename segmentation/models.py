"""One place that builds, saves, loads and queries the segmentation models.

``unet`` is the deterministic baseline, ``ssn`` the low-rank SSN, ``ssn-diag`` the diagonal
ablation, ``semantic-gan`` the generative segmenter of ``segmentation.semantic_gan`` (its spec
is a ``SemanticGANSpec``; prediction runs test-time optimisation, so it is deterministic given
the seed and its N samples are the prediction repeated, like the U-Net's). A saved model is
``model.pt`` = {spec, state_dict, ...}; the spec says how to rebuild it, so evaluation, the
demo and (later) latent recording need only the file.
:func:`predict` gives every model the same interface for evaluation: the point prediction,
class probabilities and N label-map samples (the deterministic U-Net's N samples are its
prediction repeated, so its sample diversity is 0 by construction).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segmentation.semantic_gan.generator import seg_to_class_logits
from segmentation.semantic_gan.inference import KIND as SEMANTIC_GAN
from segmentation.semantic_gan.inference import SemanticGANSegmenter, SemanticGANSpec
from segmentation.ssn import SSNConfig, StochasticSegmentationNetwork, sample_logits
from segmentation.unet import UNetConfig, UNetSegmenter
from workbench.io import atomic_path

ModelKind = Literal["unet", "ssn", "ssn-diag", "semantic-gan"]
MODEL_KINDS = ("unet", "ssn", "ssn-diag", SEMANTIC_GAN)


@dataclasses.dataclass
class ModelSpec:
    """Everything needed to rebuild a model: kind, classes, backbone and head configs."""

    kind: str
    num_classes: int
    unet: UNetConfig
    ssn: SSNConfig

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "unet": dataclasses.asdict(self.unet),
            "ssn": dataclasses.asdict(self.ssn),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        unet = dict(d["unet"])
        unet["channels"] = tuple(unet["channels"])
        return cls(d["kind"], int(d["num_classes"]), UNetConfig(**unet), SSNConfig(**d["ssn"]))


def build_model(spec: ModelSpec | SemanticGANSpec) -> nn.Module:
    """A fresh model for ``spec`` (``ssn-diag`` forces the diagonal head)."""
    if isinstance(spec, SemanticGANSpec):
        return SemanticGANSegmenter(spec)
    if spec.kind not in MODEL_KINDS or spec.kind == SEMANTIC_GAN:
        raise ValueError(f"unknown model kind '{spec.kind}'; known: {MODEL_KINDS}")
    if spec.kind == "unet":
        return UNetSegmenter(spec.unet, spec.num_classes)
    ssn_cfg = dataclasses.replace(spec.ssn, diagonal=spec.kind == "ssn-diag")
    return StochasticSegmentationNetwork(spec.unet, spec.num_classes, ssn_cfg)


def training_loss(
    model: nn.Module, x_BCHW, target_BHW, roi_BHW=None, mean_only: bool = False
) -> torch.Tensor:
    """CE for the U-Net, the MC log-likelihood loss for SSN models.

    ``mean_only`` trains an SSN's logit mean alone with pixel-mean cross-entropy, the warm-up
    the official ``toy_problem.py`` runs before training all parameters.
    """
    if isinstance(model, StochasticSegmentationNetwork):
        if mean_only:
            return F.cross_entropy(model(x_BCHW, roi_BHW).mean, target_BHW)
        return model.loss(x_BCHW, target_BHW, roi_BHW)
    return model.loss(x_BCHW, target_BHW)


def save_model(path: Path, model: nn.Module, spec: ModelSpec | SemanticGANSpec, **extra) -> Path:
    """Atomically write ``{spec, state_dict, **extra}`` to ``path``."""
    with atomic_path(path) as tmp:
        torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict(), **extra}, tmp)
    return Path(path)


def spec_from_dict(d: dict) -> ModelSpec | SemanticGANSpec:
    """The spec class that ``d['kind']`` names."""
    return SemanticGANSpec.from_dict(d) if d["kind"] == SEMANTIC_GAN else ModelSpec.from_dict(d)


def load_model(path: Path) -> tuple[nn.Module, ModelSpec | SemanticGANSpec, dict]:
    """Model (in eval mode), its spec and the remaining saved fields, from a file or run dir."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        spec = spec_from_dict(blob["spec"])
    except (OSError, RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a segmentation model file: {exc}") from None
    model = build_model(spec)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    extra = {k: v for k, v in blob.items() if k not in ("spec", "state_dict")}
    return model, spec, extra


class Prediction(NamedTuple):
    prediction: torch.Tensor
    """[B, H, W] argmax of the (mean) logits."""
    probs: torch.Tensor
    """[B, C, H, W] class probabilities (SSN: mean softmax over the samples)."""
    samples: torch.Tensor
    """[S, B, H, W] label-map samples."""


@torch.no_grad()
def predict(
    model: nn.Module,
    x_BCHW: torch.Tensor,
    num_samples: int = 100,
    roi_BHW=None,
    generator: torch.Generator | None = None,
) -> Prediction:
    """Point prediction, probabilities and ``num_samples`` samples for a batch of images."""
    model.eval()
    if isinstance(model, SemanticGANSegmenter):
        logits = seg_to_class_logits(model.invert(x_BCHW, generator).seg)
        pred = logits.argmax(1)
        return Prediction(pred, logits.softmax(1), pred.expand(num_samples, *pred.shape))
    if isinstance(model, StochasticSegmentationNetwork):
        out = model(x_BCHW, roi_BHW)
        logits_SBCHW = sample_logits(out, num_samples, generator=generator)
        probs = logits_SBCHW.softmax(dim=2).mean(0)
        return Prediction(out.mean.argmax(1), probs, logits_SBCHW.argmax(2))
    logits = model(x_BCHW)
    pred = logits.argmax(1)
    return Prediction(pred, logits.softmax(1), pred.expand(num_samples, *pred.shape))
