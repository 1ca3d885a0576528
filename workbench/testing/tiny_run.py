"""A tiny but complete run for the app's tests and benchmark, built from the phantom benchmark.

Builds in a few seconds on a CPU: the phantom generator writes studies in MIMIC-CXR layout
(images, reports, CSVs, ground truth and masks); activations are planted from that ground
truth, so what each feature means is known; a planted SAE reads them; the real ``analyse``
writes ``features.duckdb``. The app then meets exactly the files a real run has.

Planted coordinates of the activations (the SAE's feature f reads coordinate f, feature
D + f reads its negative and stays dead):

- :data:`PLANTED` concepts: on every image patch the concept's mask touches (2 + covered
  fraction, so a present finding always beats a word) and on report words naming it (1.2,
  negated or not, as a word feature would);
- coordinate 2: every prompt token; coordinate 3: a ramp over the image patches;
  coordinate 5: a weak detector of sentence ends.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from PIL import Image

from workbench.cxr.studies import StudyRecord, iter_studies
from workbench.run import RunLayout
from workbench.testing import planted
from workbench.testing.planted import PROMPT, PlantedSpec, token

D = 8
LAYER = 1
# coordinate -> (phantom concept, report words that name it)
PLANTED: Mapping[int, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        0: ("pneumothorax", ("pneumothorax",)),
        1: ("pleural_effusion", ("effusion", "effusions")),
        4: ("cardiomegaly", ("cardiomegaly", "enlarged")),
        6: ("nodule", ("nodule", "nodules")),
        7: ("endotracheal_tube", ("endotracheal",)),
    }
)


def studies(root: Path) -> list[StudyRecord]:
    """Every phantom study, in study id order."""
    return sorted(iter_studies(root, require_findings=False), key=lambda r: r.study_id)


def positives(root: Path, concept: str) -> set[int]:
    """Study ids where the phantom ground truth has ``concept``."""
    with open(root / "phantom-labels.csv", newline="") as fh:
        return {int(r["study_id"]) for r in csv.DictReader(fh) if r[concept] == "1"}


def coverage(root: Path, rec: StudyRecord, concept: str, grid: int) -> np.ndarray:
    """Fraction of each of the grid x grid patches covered by the concept's frontal mask."""
    sub = str(rec.subject_id)
    path = (
        root / "masks" / f"p{sub[:2]}" / f"p{sub}" / f"s{rec.study_id}"
        / rec.frontal_path.stem / f"{concept}.png"
    )  # fmt: skip
    if not path.exists():
        return np.zeros((grid, grid), np.float32)
    mask_HW = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
    h, w = mask_HW.shape
    cells = mask_HW[: h - h % grid, : w - w % grid].reshape(grid, h // grid, grid, w // grid)
    return cells.mean(axis=(1, 3))


def _image_tokens(root, rec, grid, rows, meta) -> None:
    cover = {c: coverage(root, rec, concept, grid) for c, (concept, _) in PLANTED.items()}
    for p in range(grid * grid):
        r, col = divmod(p, grid)
        x = np.zeros(D, np.float32)
        x[3] = 0.6 + 2.4 * p / (grid * grid - 1)
        for c, cov_RC in cover.items():
            x[c] = 2.0 + cov_RC[r, col] if cov_RC[r, col] > 0 else 0.0
        rows.append(x)
        meta.append(token("image", "<image>", p, rec.subject_id, patch=(r, col)))


def _word_vector(word: str) -> np.ndarray:
    x = np.zeros(D, np.float32)
    bare = re.sub(r"\W", "", word.lower())
    for c, (_, words) in PLANTED.items():
        x[c] = 1.2 if bare in words else 0.0
    x[5] = 0.7 if word.endswith(".") else 0.0
    return x


def study_tokens(root: Path, rec: StudyRecord, grid: int = 4) -> tuple[torch.Tensor, list[dict]]:
    """Planted activations [n_tokens, D] and token metadata (image, prompt, report words)."""
    rows: list[np.ndarray] = []
    meta: list[dict] = []
    _image_tokens(root, rec, grid, rows, meta)
    for tok in PROMPT:
        x = np.zeros(D, np.float32)
        x[2] = 1.0
        rows.append(x)
        meta.append(token("prompt", tok, len(meta), rec.subject_id, section="prompt"))
    for section in ("findings", "impression"):
        for word in (getattr(rec, section) or "").split():
            rows.append(_word_vector(word))
            meta.append(token("report", " " + word, len(meta), rec.subject_id, section=section))
    return torch.from_numpy(np.stack(rows)), meta


def write_model(path: Path, seed: int = 0, decoder_gain: float | None = None) -> Path:
    """A random tiny MAIRA-2 whose residual stream is ``D`` wide, so the planted SAE (layer
    ``LAYER``) fits it: the live tabs (steering, try a study) can run on the tiny run.

    ``decoder_gain`` redraws the decoder's linear weights at ``gain / sqrt(fan_in)``: at the
    default init (std 0.02) the text hardly reads the image tokens (logits move by ~0.002
    when they are moved by 100), so image-side steering needs a decoder drawn this way."""
    from workbench.models.processor import Maira2Processor
    from workbench.models.tiny import tiny_maira2, tiny_tokenizer

    if (path / "config.json").is_file():
        return path
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = tiny_maira2(tokenizer, n_layers=3, hidden_size=D)
    with torch.no_grad():  # unit-gain projector: image tokens reach the planted features' scale
        for module in model.multi_modal_projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 1.5 / module.in_features**0.5)
        for module in model.language_model.modules() if decoder_gain else ():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, decoder_gain / module.in_features**0.5)
    model.save_pretrained(path)
    Maira2Processor.for_model(model.config, tokenizer).save_pretrained(path)
    return path


def build(
    run: str | Path,
    n_studies: int = 24,
    size: int = 128,
    seed: int = 0,
    model: bool = False,
    decoder_gain: float | None = None,
) -> Path:
    """Phantom, store, SAE and ``analyse`` under ``run`` (each skipped when done); with
    ``model``, also a random tiny model of the store's width in ``<run>/model`` (its decoder
    drawn at ``decoder_gain``, :func:`write_model`)."""
    from workbench.cxr.phantom.run import PhantomConfig, generate

    layout = RunLayout(Path(run))
    root = layout.phantom
    if not (root / "phantom-summary.json").exists():
        generate(PhantomConfig(out=root, studies=n_studies, size=size, seed=seed))
    records = {rec.study_id: rec for rec in studies(root)}
    spec = PlantedSpec(tuple(records), lambda sid: study_tokens(root, records[sid]), d=D, k=4)
    if model:
        write_model(layout.model, seed, decoder_gain)
    return planted.build(run, spec)


def build_image_tokens(run: str | Path) -> Path:
    """``<run>/image-tokens`` as the demo's step "image-token SAE" makes it, on the tiny run's
    model (``build(..., model=True)`` first): the projector output recorded over the phantom
    (every patch), a signed-identity SAE in place of a trained one, and ``analyse``."""
    from workbench.analyse.run import AnalyseConfig, analyse
    from workbench.models.hooks import VISION_PROJECTOR
    from workbench.record.run import RecordConfig, record
    from workbench.sae.io import save_sae
    from workbench.sae.synthetic import signed_identity_sae

    layout = RunLayout(Path(run))
    nested = RunLayout(layout.image_tokens)
    if not (nested.activations / "manifest.json").is_file():
        record(RecordConfig(model=str(layout.model), data=layout.phantom, hook=VISION_PROJECTOR,
                            out=nested.activations, image_tokens="all",
                            progress=False))  # fmt: skip
    save_sae(signed_identity_sae(D, k=4, hook_name=VISION_PROJECTOR), nested.sae)
    analyse(AnalyseConfig(run=nested.root, data=layout.phantom, device="cpu", top_k=8,
                          per_quantile=2))  # fmt: skip
    return nested.root
