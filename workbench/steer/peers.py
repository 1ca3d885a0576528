"""The peers SAE-feature steering is measured against: difference of means and a prompt.

Recent work found that simple baselines often steer as well as or better than SAE features
(AxBench, Wu et al. 2025: difference-of-means directions and prompting beat SAEs on concept
steering). Both are here so that the comparison is one flag away:

- **difference of means** (``dim``): the mean residual (same hook as the SAE, read from the
  activation store) of the studies *with* the concept minus that of the studies *without* it.
  Each study is pooled first (the mean over its stored tokens of the chosen kinds), so a study
  with many tokens does not outweigh one with few. Strength 1 adds the whole difference: the
  direction's unit is "one average with-minus-without gap";
- **prompt** (``prompt``): the concept named in the INDICATION, in the phrasing the phantom
  reports use when they name it ("with pacemaker, evaluate lead position") or a plain
  "evaluate for <concept>" otherwise; to remove a concept, "no <concept>".

Studies used to build a direction are never the studies it is evaluated on (the caller
passes the held-out ids to leave out).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from workbench.steer.intervene import SteeringError
from workbench.store import KINDS, ActivationStore, iter_study_sums

_PATIENT = re.compile(r"^\s*(\d+-year-old (?:man|woman))")


class StudyMeans(NamedTuple):
    """Per-study pooled residuals: ``means[i]`` is study ``study_ids[i]``'s mean."""

    study_ids: np.ndarray
    means: torch.Tensor
    hook_name: str


class Direction(NamedTuple):
    """A difference-of-means direction and the studies it came from."""

    vector: torch.Tensor
    n_pos: int
    n_neg: int


def study_means(store: str | Path, kinds: Iterable[str] = KINDS) -> StudyMeans:
    """Mean residual of every stored study over its tokens of ``kinds``, in one pass."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SteeringError(f"token kinds {bad} unknown; the store has {KINDS}")
    acts = ActivationStore(store)
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def select(meta):
        return np.isin(np.asarray(meta.column("kind").to_pylist(), dtype=object), kinds), None

    for block in iter_study_sums(acts, select):
        for u, sid in enumerate(block.study_ids.tolist()):
            sum_D = block.sums[u, 0]
            sums[sid] = sums[sid] + sum_D if sid in sums else sum_D
            counts[sid] = counts.get(sid, 0) + int(block.counts[u, 0])
    if not sums:
        raise SteeringError(f"{store}: no stored tokens of kinds {kinds}")
    ids = np.array(sorted(sums), dtype=np.int64)
    means = torch.stack([sums[s] / counts[s] for s in ids.tolist()])
    return StudyMeans(ids, means, acts.hook_name)


def dim_direction(
    means: StudyMeans,
    labels: Mapping[int, int | float | None],
    exclude: Collection[int] = (),
    concept: str = "the concept",
) -> Direction:
    """Mean of the positive studies' means minus that of the negative ones.

    ``labels`` maps study -> 1 (present), 0 (absent); other values (uncertain, unknown) and
    the ``exclude``-d (held-out) studies are left out.
    """
    pos, neg = [], []
    for i, sid in enumerate(means.study_ids.tolist()):
        if sid in exclude:
            continue
        value = labels.get(sid)
        if value == 1:
            pos.append(i)
        elif value == 0:
            neg.append(i)
    if not pos or not neg:
        raise SteeringError(
            f"difference of means for {concept}: {len(pos)} stored studies with it and "
            f"{len(neg)} without (outside the held-out set); both must be non-zero"
        )
    diff_D = means.means[pos].mean(0) - means.means[neg].mean(0)
    return Direction(diff_D, len(pos), len(neg))


def concept_words(concept: str) -> str:
    """A concept's plain words: ``pleural_effusion`` -> ``pleural effusion``."""
    return concept.replace("_", " ").lower()


def _indication_phrases() -> dict[str, list[str]]:
    """The phantom reports' indication families (``data/phantom_phrases.json``)."""
    from workbench.cxr.phantom.reports import phrases

    return dict(phrases().get("indication", {}))


def prompt_indication(original: str | None, concept: str, direction: str) -> str:
    """The indication that names ``concept``: to add it ('add') or to rule it out ('remove').

    The patient words of the original ("67-year-old woman") are kept when present.
    """
    if direction not in ("add", "remove"):
        raise SteeringError(f"direction must be add or remove, got {direction!r}")
    match = _PATIENT.match(original or "")
    patient = match.group(1) if match else "Patient"
    words = concept_words(concept)
    if direction == "remove":
        return f"{patient}, no {words}"
    family = _indication_phrases().get(concept)
    if family:
        age, _, gender = patient.partition("-year-old ")
        if match:
            return family[0].format(age=age, gender=gender)
        text = family[0].format(age="", gender="patient").replace("-year-old ", "", 1)
        return text.strip().capitalize()
    return f"{patient}, evaluate for {words}"


def with_indication(study: Any, indication: str) -> Any:
    """A copy of ``study`` (StudyRecord or mapping) whose INDICATION is ``indication``."""
    if isinstance(study, Mapping):
        return {**study, "indication": indication}
    if dataclasses.is_dataclass(study):
        return dataclasses.replace(study, indication=indication)
    raise SteeringError(f"cannot set the indication of a {type(study).__name__}")
