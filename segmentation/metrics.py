"""Segmentation metrics for one image: overlap, distribution distances and calibration.

All functions take integer label maps (torch tensors or numpy arrays) of shape ``[H, W]`` or
stacks ``[N, H, W]`` and a class count ``C``; class 0 is background. Overlap scores are
averaged over the FOREGROUND classes 1..C-1 and a class absent from both masks scores 1
(perfect agreement), so two empty masks are at distance 0.

The distribution metrics follow SSN's LIDC evaluation (PHiSeg fork ``utils.py``; Kohl et
al. 2018): with d(a, b) = 1 - IoU(a, b),

    D^2_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]     (all pairs, self-pairs included)
    diversity = E[d(S, S')]

for model samples S and annotator masks Y. Hungarian-matched IoU pairs samples with
annotators one-to-one (Kohl et al. 2019). ECE is the usual binned |accuracy - confidence|.
Hausdorff-95 is the 95th percentile of the symmetric boundary-to-boundary distances in px.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


def _labels(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.is_floating_point():
        raise TypeError("label maps must be integer class indices, got a float tensor")
    return t.long()


def _onehot_fg(labels_NHW: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Foreground one-hot, flattened: ``[N, C-1, H*W]`` float."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    lab = labels_NHW.reshape(labels_NHW.shape[0], -1)
    if lab.numel() and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{lab.min()}, {lab.max()}]")
    classes = torch.arange(1, num_classes, device=lab.device)
    return (lab[:, None, :] == classes[None, :, None]).float()


def _pairwise_counts(a_NHW, b_MHW, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersections and the two mask sizes per foreground class: ``[N, M, C-1]`` each."""
    a = _onehot_fg(_labels(a_NHW), num_classes)
    b = _onehot_fg(_labels(b_MHW), num_classes)
    inter_NMC = torch.einsum("ncp,mcp->nmc", a, b)
    sizes_NMC = a.sum(-1)[:, None, :] + b.sum(-1)[None, :, :]
    return inter_NMC, sizes_NMC


def pairwise_iou(a_NHW, b_MHW, num_classes: int) -> torch.Tensor:
    """Foreground-mean IoU between every a and every b: ``[N, M]``."""
    inter, sizes = _pairwise_counts(a_NHW, b_MHW, num_classes)
    union = sizes - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return iou.mean(-1)


def pairwise_dice(a_NHW, b_MHW, num_classes: int) -> torch.Tensor:
    """Foreground-mean Dice between every a and every b: ``[N, M]``."""
    inter, sizes = _pairwise_counts(a_NHW, b_MHW, num_classes)
    dice = torch.where(sizes > 0, 2 * inter / sizes.clamp(min=1), torch.ones_like(inter))
    return dice.mean(-1)


def iou(a_HW, b_HW, num_classes: int = 2) -> float:
    """Foreground-mean intersection over union of two label maps."""
    return float(pairwise_iou(_labels(a_HW)[None], _labels(b_HW)[None], num_classes)[0, 0])


def dice(a_HW, b_HW, num_classes: int = 2) -> float:
    """Foreground-mean Dice coefficient 2|A n B| / (|A| + |B|) of two label maps."""
    return float(pairwise_dice(_labels(a_HW)[None], _labels(b_HW)[None], num_classes)[0, 0])


class GEDResult(NamedTuple):
    ged: float
    """D^2_GED = 2 d_sy - d_ss - d_yy."""
    d_sy: float
    """E[d(S, Y)], mean distance between samples and annotations."""
    d_ss: float
    """E[d(S, S')], the sample diversity."""
    d_yy: float
    """E[d(Y, Y')], the annotators' own diversity."""


def generalised_energy_distance(samples_NHW, annotations_MHW, num_classes: int = 2) -> GEDResult:
    """Squared generalised energy distance with d = 1 - IoU (foreground classes)."""
    d_sy = 1 - pairwise_iou(samples_NHW, annotations_MHW, num_classes).mean()
    d_ss = 1 - pairwise_iou(samples_NHW, samples_NHW, num_classes).mean()
    d_yy = 1 - pairwise_iou(annotations_MHW, annotations_MHW, num_classes).mean()
    return GEDResult(float(2 * d_sy - d_ss - d_yy), float(d_sy), float(d_ss), float(d_yy))


def sample_diversity(samples_NHW, num_classes: int = 2) -> float:
    """E[d(S, S')] over all N^2 ordered pairs (self-pairs included, as in SSN's evaluation)."""
    return float(1 - pairwise_iou(samples_NHW, samples_NHW, num_classes).mean())


def hungarian_matched_iou(samples_NHW, annotations_MHW, num_classes: int = 2) -> float:
    """Mean IoU of the one-to-one sample/annotation matching that maximises total IoU.

    When N is a multiple of M the annotations are tiled N/M times so that every sample is
    matched (Kohl et al. 2019); otherwise min(N, M) pairs are matched.
    """
    samples, annotations = _labels(samples_NHW), _labels(annotations_MHW)
    N, M = samples.shape[0], annotations.shape[0]
    if N % M == 0:
        annotations = annotations.repeat(N // M, *([1] * (annotations.dim() - 1)))
    iou_NM = pairwise_iou(samples, annotations, num_classes).numpy()
    rows, cols = linear_sum_assignment(iou_NM, maximize=True)
    return float(iou_NM[rows, cols].mean())


def per_annotator_dice(prediction_HW, annotations_MHW, num_classes: int = 2) -> list[float]:
    """Foreground-mean Dice of one prediction against each annotator: a list of M floats."""
    return pairwise_dice(_labels(prediction_HW)[None], annotations_MHW, num_classes)[0].tolist()


class CalibrationBins(NamedTuple):
    ece: float
    """Expected calibration error: sum_b (n_b / n) |acc_b - conf_b|."""
    confidence: np.ndarray
    """Mean confidence per bin (NaN for empty bins)."""
    accuracy: np.ndarray
    """Accuracy per bin (NaN for empty bins)."""
    count: np.ndarray
    """Pixels per bin."""


def calibration(probs_CHW, target_HW, n_bins: int = 10) -> CalibrationBins:
    """Bin pixels by the top class probability; compare with how often the top class is right.

    ``probs_CHW`` are class probabilities (softmax, or for SSN the mean softmax over samples).
    Bins are equal-width on (0, 1]; a confidence of exactly 0 joins the first bin.
    """
    probs = torch.as_tensor(
        np.asarray(probs_CHW) if not isinstance(probs_CHW, torch.Tensor) else probs_CHW
    ).float()
    if probs.dim() != 3 or not torch.isfinite(probs).all():
        raise ValueError(f"probs must be a finite [C, H, W] array, got shape {tuple(probs.shape)}")
    conf_P, pred_P = probs.reshape(probs.shape[0], -1).max(0)
    correct_P = (pred_P == _labels(target_HW).reshape(-1)).float()
    bin_P = (torch.ceil(conf_P * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bin_P, minlength=n_bins).double()
    conf_sum = torch.bincount(bin_P, weights=conf_P.double(), minlength=n_bins)
    acc_sum = torch.bincount(bin_P, weights=correct_P.double(), minlength=n_bins)
    conf_B, acc_B = (conf_sum / count).numpy(), (acc_sum / count).numpy()  # 0/0 -> NaN
    ece = float(((conf_sum - acc_sum).abs() / count.sum()).sum())
    return CalibrationBins(ece, conf_B, acc_B, count.numpy().astype(np.int64))


def expected_calibration_error(probs_CHW, target_HW, n_bins: int = 10) -> float:
    """ECE of pixel-wise class probabilities against one label map."""
    return calibration(probs_CHW, target_HW, n_bins).ece


def _boundary(mask_HW: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask with a 4-neighbour outside it (image borders count as outside)."""
    return mask_HW & ~ndimage.binary_erosion(mask_HW, border_value=0)


def hausdorff95(a_HW, b_HW, num_classes: int = 2) -> float:
    """Foreground-mean 95th-percentile symmetric Hausdorff distance in px.

    Per class, the distances from each boundary pixel of one mask to the nearest boundary
    pixel of the other, both ways, pooled; their 95th percentile. A class absent from both
    masks scores 0; absent from one only, the image diagonal (the largest possible distance),
    so a missed or hallucinated structure is penalised rather than dropped.
    """
    a, b = np.asarray(_labels(a_HW)), np.asarray(_labels(b_HW))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"hausdorff95 needs two [H, W] maps, got {a.shape} and {b.shape}")
    diag = float(np.hypot(*a.shape))
    out = []
    for c in range(1, num_classes):
        ma, mb = a == c, b == c
        if not ma.any() and not mb.any():
            out.append(0.0)
            continue
        if not ma.any() or not mb.any():
            out.append(diag)
            continue
        ba, bb = _boundary(ma), _boundary(mb)
        d_to_b = ndimage.distance_transform_edt(~bb)
        d_to_a = ndimage.distance_transform_edt(~ba)
        dists = np.concatenate([d_to_b[ba], d_to_a[bb]])
        out.append(float(np.percentile(dists, 95)))
    return float(np.mean(out))
