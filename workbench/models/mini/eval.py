"""Clinical accuracy of generated FINDINGS on the phantom benchmark, scored per concept.

The model writes findings for each study from the MAIRA-2 prompt (greedy, as the model card);
the project's rule-based labeller (:mod:`workbench.cxr.labeller`) reads them back, and each
phantom concept (FINDINGS + DEVICES) is scored against ``phantom-labels.csv``: precision,
recall and F1 of "mentioned as present" (labeller value 1) versus ground truth 1. The macro
F1 averages the concepts with at least one positive study, the CheXbert-style clinical
efficacy measure of report generation papers applied to the phantom's known truth. The same
labeller applied to the reference findings gives the ceiling the labeller itself allows.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from workbench.cxr.findings import RENDERED
from workbench.cxr.labeller.context import label_report
from workbench.cxr.studies import StudyRecord, iter_studies
from workbench.models.mini.data import prompt_sections
from workbench.models.processor import EncodedInputs, Maira2Processor

log = logging.getLogger(__name__)


class ConceptScore(NamedTuple):
    """Counts and scores of one concept over the evaluated studies."""

    concept: str
    support: int  # studies where the concept is truly present
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


class EvalReport(NamedTuple):
    """Per-concept scores of generated and of reference findings, and the texts."""

    n_studies: int
    macro_f1: float
    scores: list[ConceptScore]
    reference_macro_f1: float
    generated: dict[int, str]


def read_phantom_labels(root: str | Path) -> dict[int, dict[str, int]]:
    """study_id -> {concept: 0/1} from ``phantom-labels.csv``."""
    path = Path(root) / "phantom-labels.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no phantom ground truth (is {root} a phantom set?)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in RENDERED if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing concept column(s) {missing}")
    return {int(r["study_id"]): {c: int(r[c]) for c in RENDERED} for r in rows}


def score(predicted: dict[int, set[str]], truth: dict[int, dict[str, int]]) -> list[ConceptScore]:
    """Per-concept precision/recall/F1 of predicted positive sets against 0/1 truth."""
    out = []
    for concept in RENDERED:
        tp = fp = fn = 0
        for study, present in predicted.items():
            gold = truth[study][concept] == 1
            said = concept in present
            tp += gold and said
            fp += said and not gold
            fn += gold and not said
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(ConceptScore(concept, tp + fn, tp, fp, fn, precision, recall, f1))
    return out


def macro_f1(scores: Sequence[ConceptScore]) -> float:
    """Mean F1 over concepts with at least one true positive study."""
    present = [s.f1 for s in scores if s.support > 0]
    return sum(present) / len(present) if present else 0.0


def positives(text: str) -> set[str]:
    """Concepts the labeller reads as present (value 1) in ``text``."""
    return {c for c, v in label_report(text).concepts.items() if v == 1 and c in RENDERED}


def _left_pad(encs: Sequence[EncodedInputs], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch of prompts (generation continues every row from its last column)."""
    length = max(e.input_ids.shape[1] for e in encs)
    ids = torch.full((len(encs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), length), dtype=torch.long)
    for b, e in enumerate(encs):
        n = e.input_ids.shape[1]
        ids[b, length - n :], mask[b, length - n :] = e.input_ids[0], 1
    pixels = torch.cat([e.pixel_values for e in encs])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


IMAGE_CONDITIONS: tuple[str, ...] = ("real", "blank", "swapped")


def blank_like(image: Image.Image) -> Image.Image:
    """A flat mid-grey image of the same size (the blank-image ablation)."""
    return Image.new("L", image.size, 128)


def study_images(
    records: Sequence[StudyRecord], i: int, condition: str
) -> tuple[Image.Image, Image.Image | None, Image.Image | None]:
    """Frontal, lateral and prior images that study ``i`` is shown under ``condition``.

    ``real``: its own; ``blank``: flat grey in place of each; ``swapped``: the images of the
    study half the list away (another subject in a shuffled split), so the text prompt and
    the images disagree.
    """
    if condition not in IMAGE_CONDITIONS:
        raise ValueError(f"image condition must be one of {IMAGE_CONDITIONS}, got {condition!r}")
    source = (
        records[(i + len(records) // 2) % len(records)] if condition == "swapped" else records[i]
    )
    im = source.load_images()
    if condition == "blank":
        return tuple(None if x is None else blank_like(x) for x in im)
    return im.frontal, im.lateral, im.prior_frontal


@torch.no_grad()
def generate_findings(
    model, processor: Maira2Processor, records: Sequence[StudyRecord], batch_size: int = 16,
    max_new_tokens: int = 160, condition: str = "real", image_only: bool = False,
) -> dict[int, str]:  # fmt: skip
    """Greedy findings for each study (batched, left-padded), keyed by study id.

    ``condition`` replaces the images (:func:`study_images`); ``image_only`` sets indication,
    comparison and prior report to N/A (:func:`~workbench.models.mini.data.prompt_sections`).
    """
    tok = processor.tokenizer
    device = next(model.parameters()).device
    out: dict[int, str] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        encs = [
            processor.reporting_inputs(
                *study_images(records, start + j, condition), **prompt_sections(rec, image_only)
            )
            for j, rec in enumerate(chunk)
        ]
        batch = {k: v.to(device) for k, v in _left_pad(encs, tok.pad_token_id).items()}
        ids = model.generate(
            **batch, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        new = ids[:, batch["input_ids"].shape[1] :]
        for rec, row in zip(chunk, new, strict=True):
            out[rec.study_id] = processor.decode_generated(row)
    return out


def evaluate_split(
    model, processor: Maira2Processor, root: str | Path, split: str = "test", limit: int = 0,
    condition: str = "real", image_only: bool = False,
) -> EvalReport:  # fmt: skip
    """Generate findings for ``split`` (first ``limit`` studies, 0 = all) and score them."""
    truth = read_phantom_labels(root)
    records = [r for r in iter_studies(root, split=split) if r.study_id in truth]
    if limit:
        records = records[:limit]
    if not records:
        raise ValueError(f"{root}: no labelled studies in split {split!r}")
    generated = generate_findings(
        model, processor, records, condition=condition, image_only=image_only
    )
    scores = score({s: positives(t) for s, t in generated.items()}, truth)
    reference = score({r.study_id: positives(r.findings or "") for r in records}, truth)
    return EvalReport(len(records), macro_f1(scores), scores, macro_f1(reference), generated)
