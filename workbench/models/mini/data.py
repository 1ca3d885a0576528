"""Teacher-forced training examples for maira2-mini, encoded once and cached in memory.

Each study becomes the exact MAIRA-2 reporting prompt (frontal, lateral, prior image and
report, indication, technique, comparison; :mod:`workbench.models.processor`) with its FINDINGS
as the assistant turn. The loss covers the findings tokens and the closing EOS only, as in
MAIRA-2's instruction tuning. Pixels are preprocessed once by the processor and kept as one
float16 grey channel (the processor replicates the grey channel three times, so nothing is
lost but float32 rounding), which keeps a few thousand studies within a few hundred MB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from workbench.cxr.findings import RENDERED
from workbench.cxr.images import CXRDataError
from workbench.cxr.studies import StudyRecord
from workbench.models.processor import Maira2Processor
from workbench.models.prompts import IMAGE_PLACEHOLDER, ReportingRequest, reporting_prompt

log = logging.getLogger(__name__)
IGNORE_INDEX = -100  # positions the LM loss skips (HF convention, Maira2Config.ignore_index)


class Example(NamedTuple):
    """One encoded study: ids, labels (-100 outside the findings), grey pixels, truth."""

    study_id: int
    input_ids: torch.Tensor  # [T]
    labels: torch.Tensor  # [T]
    pixels: torch.Tensor  # [n_images, S, S] float16, n_images x S x S, already normalised
    concepts: torch.Tensor  # [C] 0/1 float ground truth of the rendered concepts (aux loss)


class Batch(NamedTuple):
    """A padded batch: model inputs, plus the auxiliary targets of the frontal images."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T]
    pixel_values: torch.Tensor  # [sum n_images, 3, S, S], in batch order
    frontal: torch.Tensor  # [B] index of each study's current frontal among pixel_values
    concepts: torch.Tensor  # [B, C] ground truth of each study

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward."""
        names = ("input_ids", "attention_mask", "labels", "pixel_values")
        return {k: getattr(self, k) for k in names}

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device`` (no copy when already there)."""
        return Batch(*(t.to(device) for t in self))


def prompt_corpus(records: Iterable[StudyRecord]) -> Iterator[str]:
    """The rendered prompt + findings of every study, image placeholders removed.

    This is what the tokenizer is trained on, so the fixed prompt text and the report
    vocabulary both get whole-word tokens.
    """
    for rec in records:
        request = ReportingRequest(
            has_lateral=rec.lateral_path is not None,
            has_prior=rec.prior_frontal_path is not None,
            indication=rec.indication,
            technique=rec.technique,
            comparison=rec.comparison,
            prior_report=rec.prior_report,
            assistant_text=rec.findings or "",
        )
        prompt = reporting_prompt(request, eos_token="")
        yield prompt.text.replace(IMAGE_PLACEHOLDER, " ")


def prompt_sections(rec: StudyRecord, image_only: bool = False) -> dict[str, str | None]:
    """The study's text sections for the reporting prompt.

    ``image_only`` sets indication, comparison and prior report to None (rendered ``N/A``, as
    MAIRA-2 allows): what the model then writes must come from the images and the technique.
    """
    keep = not image_only
    return {
        "indication": rec.indication if keep else None,
        "technique": rec.technique,
        "comparison": rec.comparison if keep else None,
        "prior_report": rec.prior_report if keep else None,
    }


def encode_study(
    processor: Maira2Processor,
    rec: StudyRecord,
    concepts_c: torch.Tensor,
    image_only_too: bool = False,
) -> list[Example]:
    """Encode one study with its findings teacher-forced; CXRDataError if unusable.

    Returns the full-prompt example, then (``image_only_too``) the image-only-prompt one,
    which shares the pixel tensor.
    """
    if not rec.findings:
        raise CXRDataError(f"study {rec.study_id}: no FINDINGS in {rec.report_path}")
    images = rec.load_images()
    pixels_NHW = None
    out = []
    for image_only in (False, True) if image_only_too else (False,):
        enc = processor.reporting_inputs(
            images.frontal,
            images.lateral,
            images.prior_frontal,
            **prompt_sections(rec, image_only),
            assistant_text=rec.findings,
        )
        ids_T = enc.input_ids[0]
        is_report_T = torch.tensor([t["kind"] == "report" for t in enc.tokens])
        labels_T = torch.where(is_report_T, ids_T, torch.full_like(ids_T, IGNORE_INDEX))
        if pixels_NHW is None:
            pixels_NHW = enc.pixel_values[:, 0].to(torch.float16)
        out.append(Example(rec.study_id, ids_T, labels_T, pixels_NHW, concepts_c))
    return out


def encode_all(
    processor: Maira2Processor,
    records: Sequence[StudyRecord],
    truth: dict[int, dict[str, int]],
    image_only_too: bool = False,
) -> list[list[Example]]:
    """Encode every usable study with its ground truth; unreadable ones are left out.

    Each item holds the study's prompt variants (see :func:`encode_study`).
    """
    examples = []
    for i, rec in enumerate(records):
        gold = truth.get(rec.study_id)
        if gold is None:
            log.warning("leaving out study %s: no ground-truth labels", rec.study_id)
            continue
        concepts_c = torch.tensor([float(gold[c]) for c in RENDERED])
        try:
            examples.append(encode_study(processor, rec, concepts_c, image_only_too))
        except CXRDataError as exc:
            log.warning("leaving out study %s: %s", rec.study_id, exc)
        if (i + 1) % 500 == 0:
            log.info("encoded %d/%d studies", i + 1, len(records))
    return examples


def pick_variants(
    variants: Sequence[Sequence[Example]], ids: Sequence[int], prob: float, seed: int, step: int
) -> list[Example]:
    """One prompt variant per study of a batch: the image-only one with probability ``prob``.

    The draw depends only on (seed, step), so a resumed run sees the same prompts.
    """
    rng = np.random.default_rng([seed, step, 7])
    draws = rng.random(len(ids))
    return [
        variants[i][1] if len(variants[i]) > 1 and draw < prob else variants[i][0]
        for i, draw in zip(ids, draws, strict=True)
    ]


def epoch_studies(concepts_SC: torch.Tensor, oversample: Sequence[str], factor: int) -> list[int]:
    """Study indices of one stage-2 epoch: each study once, and ``factor`` times when it is
    positive for any concept in ``oversample`` (names of ``RENDERED``, the columns of
    ``concepts_SC``)."""
    columns = [RENDERED.index(c) for c in oversample]
    if not columns or factor == 1:
        return list(range(len(concepts_SC)))
    boosted = concepts_SC[:, columns].amax(dim=1) > 0
    return [i for i, b in enumerate(boosted.tolist()) for _ in range(factor if b else 1)]


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad ids (pad), labels (-100) and stack every image, grey -> 3 channels."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        ids[b, :n], labels[b, :n], mask[b, :n] = e.input_ids, e.labels, 1
    grey_NHW = torch.cat([e.pixels for e in examples]).float()
    pixels = grey_NHW.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    counts = torch.tensor([0] + [len(e.pixels) for e in examples[:-1]])
    frontal_B = torch.cumsum(counts, 0)  # the frontal comes first in each study's images
    concepts_BC = torch.stack([e.concepts for e in examples])
    return Batch(ids, mask, labels, pixels, frontal_B, concepts_BC)


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), the same for the same seed/epoch.

    Indices are shuffled, cut into pools of 32 batches, sorted by length within a pool and
    chunked; the batch order is shuffled again so lengths do not trend over an epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
