"""The reference for steering on a phantom run: the concept really drawn into (or out of) the image.

A phantom study is rendered from its recorded spec (``phantom-studies.jsonl``, one line per
study in generation order) with the generator's own random streams, so re-rendering it gives
the stored JPEG byte for byte (checked on the demo run), and the generator draws anatomy,
findings and noise from independent streams ("adding a finding never changes the anatomy or
the noise", :func:`workbench.cxr.phantom.render.render_frontal`). The **counterfactual** of a
study for concept C is the same study re-rendered with C added (``add``: parameters drawn by
the cohort's own :func:`~workbench.cxr.phantom.cohort.sample_params`) or taken out
(``remove``); its text fields and prior image are the study's own.

What the model writes for the counterfactual is what it writes when C is really in the image:
the best an image-side intervention can hope to reproduce. Its side effects are the model's own
(a real change of the image changes its reading of other findings too), so they are the floor
against which the steering methods' side effects are read (benchmarks/RESULTS.md, *Steering*).
Only a phantom run has one (``Counterfactuals.available``).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from workbench.cxr.findings import DEVICES
from workbench.steer.hook import SteeringError

STUDIES_FILE = "phantom-studies.jsonl"
CFG_FILE = "cfg.json"
EDIT_STREAM = 7
"""rng_for stream of the added concepts' parameters (the generator uses 1-4)."""


class Counterfactuals:
    """Re-renders the studies of one phantom root with a concept added or removed."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        cfg_path, studies = self.root / CFG_FILE, self.root / STUDIES_FILE
        if not (cfg_path.is_file() and studies.is_file()):
            raise SteeringError(f"{self.root}: not a phantom root ({CFG_FILE}, {STUDIES_FILE})")
        cfg = json.loads(cfg_path.read_text())
        self.seed, self.size = int(cfg["seed"]), int(cfg["size"])
        self.quality = int(cfg.get("jpeg_quality", 95))
        self.specs: dict[int, tuple[int, dict]] = {}
        with studies.open() as f:
            for index, line in enumerate(f):
                spec = json.loads(line)
                self.specs[int(spec["study_id"])] = (index, spec)

    @staticmethod
    def available(root: str | Path) -> bool:
        return (Path(root) / CFG_FILE).is_file() and (Path(root) / STUDIES_FILE).is_file()

    def edited(self, study_id: int, concept: str, direction: str) -> tuple[int, dict]:
        """(render index, the study's spec with ``concept`` added or removed)."""
        from workbench.cxr.phantom.cohort import rng_for, sample_params

        if study_id not in self.specs:
            raise SteeringError(f"study {study_id}: not in {self.root / STUDIES_FILE}")
        index, spec = self.specs[study_id]
        spec = copy.deepcopy(spec)
        group = "devices" if concept in DEVICES else "findings"
        rng = rng_for(self.seed, EDIT_STREAM, index)
        if direction == "add" and concept not in spec[group]:
            spec[group][concept] = sample_params(concept, rng)
            if concept == "cardiomegaly":
                spec["ctr"] = spec[group][concept]["ctr"]
        elif direction == "remove" and concept in spec[group]:
            del spec[group][concept]
            if concept == "cardiomegaly":
                spec["ctr"] = round(float(rng.uniform(0.36, 0.435)), 3)  # the cohort's normal
        return index, spec

    def images(self, study_id: int, concept: str, direction: str) -> tuple[Image.Image, ...]:
        """The (frontal, lateral or None) images of the counterfactual, through the same JPEG
        encoding as the stored files."""
        from workbench.cxr.phantom.cohort import rng_for
        from workbench.cxr.phantom.render import render_study
        from workbench.cxr.phantom.run import RENDER_STREAM

        index, spec = self.edited(study_id, concept, direction)
        rendered = render_study(spec, self.size, rng_for(self.seed, RENDER_STREAM, index))
        return self._jpeg(rendered.frontal), (
            None if rendered.lateral is None else self._jpeg(rendered.lateral)
        )

    def _jpeg(self, pixels) -> Image.Image:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=self.quality)
        buf.seek(0)
        return Image.open(buf).convert("L")

    def study(self, record: Any, concept: str, direction: str) -> dict[str, Any]:
        """What ``adapter.prepare`` takes: the counterfactual images, the study's text fields
        and its prior frontal image."""
        frontal, lateral = self.images(int(_get(record, "study_id")), concept, direction)
        out = {"frontal": frontal, "lateral": lateral}
        out["prior_frontal"] = _get(record, "prior_frontal_path")
        for key in ("indication", "technique", "comparison", "prior_report"):
            out[key] = _get(record, key)
        return out


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)
