"""``python -m workbench.label``: explain SAE features and score the explanations.

For each selected feature (:func:`workbench.label.data.select_features`):

1. *explain*: the backend reads the feature's top examples and writes a one-line label,
   stored in ``feature_labels`` with method ``llm:<model>`` (or ``offline``);
2. *detection scoring* (delphi, Paulo et al. 2024, sec. 3.3): the same backend, acting as
   judge, sees the label and a shuffled mix of held-out activating and non-activating
   examples and says which ones the feature fires on; precision, recall, F1, balanced
   accuracy (and AUROC with log-probs) go to ``feature_scores`` with
   ``scorer = 'detection:<judge>'``;
3. *fuzzing* (ibid.): the judge sees held-out text examples with the activating tokens
   marked, or the marks moved to random silent tokens, and says which marks fit the label
   (``scorer = 'fuzz:<judge>'``).

The ``statistical`` labels of ``analyse`` are scored on the same examples by the same judge,
so methods compare on equal terms.

Finished features are appended to ``<run>/label/journal.jsonl`` at once and moved into
``features.duckdb`` every ``flush_seconds`` (a database rewrite copies the file, so it is
batched); a rerun first applies any leftover journal, then skips what is done. Examples are
read ``_CHUNK`` features at a time, so memory stays flat over 16k-feature SAEs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from workbench import db
from workbench.config import parse_config, save_config
from workbench.label.backends import (
    Backend,
    LabelError,
    LLMSettings,
    OfflineBackend,
    OpenAIBackend,
)
from workbench.label.data import (
    LABEL_TABLES,
    FeatureExamples,
    NegativePool,
    load_examples,
    select_features,
)
from workbench.label.journal import Journal, done_features, statistical_labels
from workbench.label.scoring import (
    DetectionMetrics,
    chunks,
    detection_metrics,
    fuzz_set,
    shuffled,
)
from workbench.run import RunLayout

log = logging.getLogger("workbench.label")
_CHUNK = 256  # features whose examples are read at once


@dataclass
class LabelConfig:
    """Explain SAE features with an LLM (or offline rules) and score labels by detection."""

    run: Path = Path("runs/demo")
    """Run directory holding features.duckdb (written by analyse)."""
    backend: Literal["offline", "openai"] = "offline"
    """offline: rule-based explainer/judge, no server; openai: any OpenAI-compatible server."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """Chat-completions endpoint (vLLM, llama.cpp, Ollama, ...); non-local needs --allow-remote."""
    model: str = ""
    """Model name sent to the server (required with --backend openai)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable read for the API key ('local' is sent when it is unset)."""
    allow_remote: bool = False
    """Allow a non-local base_url: study text (patient data) then leaves this machine."""
    features: tuple[int, ...] = ()
    """Label exactly these features (comma-separated)."""
    concept: str | None = None
    """Label the features best associated with this concept (feature_concepts AUROC)."""
    top_n: int = 50
    """How many features (most frequent, or best for --concept); 0: all live features."""
    n_explain: int = 20
    """Top examples shown to the explainer."""
    n_score: int = 10
    """Held-out activating examples judged per feature, plus as many non-activating ones."""
    examples_per_prompt: int = 5
    """Detection examples per judge prompt."""
    explain: bool = True
    """Write new labels (--no-explain: only score existing statistical labels)."""
    score_statistical: bool = True
    """Also score the statistical labels of analyse with the same judge."""
    fuzz: bool = True
    """Also score by fuzzing: are the marked tokens of text examples the right ones?"""
    logprobs: bool = False
    """Ask the server for log-probs so detection also gets AUROC (needs server support)."""
    temperature: float = 0.0
    """Sampling temperature of the LLM."""
    max_tokens: int = 600
    """Maximum answer length in tokens."""
    timeout: float = 120.0
    """Seconds before a request counts as failed."""
    retries: int = 3
    """Retries of a failed or unreadable request (exponential backoff)."""
    backoff: float = 2.0
    """First backoff in seconds (doubles every retry)."""
    overwrite: bool = False
    """Relabel features that already have a label (and scores) of this method."""
    flush_seconds: float = 60.0
    """Move finished features from the journal into features.duckdb at most this often."""
    negative_windows: int = 2000
    """Random report windows drawn once as non-activating candidates."""
    negative_studies: int = 500
    """Random studies drawn once as non-activating image candidates."""
    seed: int = 0
    """Seed of the negative draw and the example shuffle."""

    def validate(self) -> None:
        for name in ("n_explain", "n_score", "examples_per_prompt"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.flush_seconds < 0:
            raise ValueError(f"flush_seconds must be >= 0, got {self.flush_seconds}")
        if self.backend == "openai" and not self.model:
            raise ValueError("--backend openai needs --model (the server's model name)")


class LabelSummary(NamedTuple):
    labelled: int
    scored: int
    skipped: int
    notes: list[str]


def make_backend(cfg: LabelConfig) -> Backend:
    """The configured backend; the privacy check runs here, before any request."""
    if cfg.backend == "offline":
        return OfflineBackend()
    settings = LLMSettings(
        base_url=cfg.base_url,
        model=cfg.model,
        api_key=os.environ.get(cfg.api_key_env) or "local",
        timeout=cfg.timeout,
        retries=cfg.retries,
        backoff=cfg.backoff,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        logprobs=cfg.logprobs,
    )
    return OpenAIBackend(settings, allow_remote=cfg.allow_remote)


def judge(ask, feature: int, label: str, items, truth, per_prompt: int) -> DetectionMetrics:
    """Metrics of ``label`` over ``items``, asking ``ask`` (detect or fuzz) a batch at a time."""
    predicted: list[int] = []
    probs: list[float] | None = []
    for batch in chunks(items, per_prompt):
        answer = ask(feature, label, batch)
        predicted += answer.predicted
        probs = None if probs is None or answer.probs is None else probs + answer.probs
    return detection_metrics(truth, predicted, probs)


class _Work(NamedTuple):
    explain: bool
    statistical: str | None


class _Sets(NamedTuple):
    """Shuffled (items, truth) per scorer; None where the feature cannot be scored so."""

    detection: tuple[list, list[int]] | None
    fuzz: tuple[list, list[int]] | None


def _score_sets(fx: FeatureExamples, pool: NegativePool, cfg: LabelConfig):
    """Detection set (held-out activating + as many silent examples of the same kinds) and
    fuzzing set (held-out text examples, marks true or misplaced); notes on what is missing."""
    positives = fx.held_out[: cfg.n_score]
    n_image = sum(ex.kind == "image" for ex in positives)
    negatives = pool.draw(
        fx.feature,
        len(positives) - n_image,
        n_image,
        cfg.seed,
        exclude_studies={ex.study_id for ex in positives},
    )
    detection, notes = None, []
    if positives and negatives:
        detection = shuffled(positives, negatives, cfg.seed + fx.feature)
    else:
        notes.append(
            f"feature {fx.feature}: not scored ({len(positives)} held-out activating, "
            f"{len(negatives)} non-activating examples)"
        )
    fuzz = fuzz_set(positives, cfg.seed + fx.feature) if cfg.fuzz else None
    return _Sets(detection, fuzz if fuzz and fuzz[0] else None), notes


def score_label(backend: Backend, feature: int, method: str, label: str, sets: _Sets, cfg):
    """Journal score records of one label: one per scorer that has a set."""
    records = []
    for name, ask, pair in (
        ("detection", backend.detect, sets.detection),
        ("fuzz", backend.fuzz, sets.fuzz),
    ):
        if pair is not None:
            m = judge(ask, feature, label, *pair, cfg.examples_per_prompt)
            records.append(
                {
                    "type": "score",
                    "feature": feature,
                    "method": method,
                    "scorer": f"{name}:{backend.method}",
                    "n": m.n,
                    "metrics": dict(m.rows()),
                }
            )
    return records


def _label_record(backend: Backend, fx: FeatureExamples, expl, scores: list[dict]) -> dict:
    by_scorer = {r["scorer"].split(":")[0]: r["metrics"] for r in scores}
    return {
        "type": "label",
        "feature": fx.feature,
        "method": backend.method,
        "label": expl.text,
        "score": by_scorer.get("detection", {}).get("balanced_accuracy"),
        "model": backend.model,
        "details": {
            "examples": [ex.study_id for ex in fx.explain],
            "answer": (expl.raw or "")[-2000:] or None,
            "scores": by_scorer,
        },
    }


def label_one(
    backend: Backend, fx: FeatureExamples, pool: NegativePool, cfg: LabelConfig, work: _Work
) -> tuple[list[dict], list[str]]:
    """Journal records (label, scores) of one feature, and notes on what was skipped."""
    sets, notes = _score_sets(fx, pool, cfg)
    records: list[dict] = []
    if work.explain and fx.explain:
        expl = backend.explain(fx.feature, fx.explain, fx.max_act)
        scores = score_label(backend, fx.feature, backend.method, expl.text, sets, cfg)
        records += [_label_record(backend, fx, expl, scores), *scores]
    elif work.explain:
        notes.append(f"feature {fx.feature}: no activating examples in feature_examples")
    if work.statistical:
        records += score_label(backend, fx.feature, "statistical", work.statistical, sets, cfg)
    return records, notes


def _plan(con, cfg: LabelConfig, backend: Backend, journal: Journal) -> dict[int, _Work]:
    """What each selected feature still needs (resume: skip work already done)."""
    selected = select_features(con, cfg.features, cfg.concept, cfg.top_n)
    scorer = f"detection:{backend.method}"
    stat = statistical_labels(con) if cfg.score_statistical else {}
    done_labels = set() if cfg.overwrite else done_features(con, journal, backend.method, None)
    done_stat = set() if cfg.overwrite else done_features(con, journal, "statistical", scorer)
    plan = {}
    for f in selected:
        work = _Work(
            cfg.explain and f not in done_labels,
            stat.get(f) if f not in done_stat else None,
        )
        if work.explain or work.statistical:
            plan[f] = work
    return plan


def run_label(cfg: LabelConfig, backend: Backend | None = None) -> LabelSummary:
    """Label and score the configured features of ``cfg.run``; resumable (module docstring)."""
    backend = backend or make_backend(cfg)
    started = db.utc_now()
    out = RunLayout(cfg.run).label
    save_config(cfg, out / "cfg.json")
    journal = Journal(out / "journal.jsonl", cfg.run)
    journal.flush()  # leftovers of an interrupted run
    con = db.connect(cfg.run)  # a snapshot: our own flushes replace the file, not this view
    counts = {"label": 0, "score": 0}
    notes: list[str] = []
    plan = None
    try:
        db.require_tables(con, LABEL_TABLES, cfg.run)
        plan = _plan(con, cfg, backend, journal)
        pool = NegativePool(con, cfg.negative_windows, cfg.negative_studies, cfg.seed)
        last_flush, done = time.monotonic(), 0
        for batch in chunks(list(plan), _CHUNK):
            examples = load_examples(con, batch, cfg.n_explain)
            for feature in batch:
                records, skipped = label_one(backend, examples[feature], pool, cfg, plan[feature])
                notes += skipped
                journal.append(records)
                for r in records:
                    counts[r["type"]] += 1
                done += 1
                log.info("feature %d done (%d/%d)", feature, done, len(plan))
                if time.monotonic() - last_flush >= cfg.flush_seconds:
                    journal.flush()
                    last_flush = time.monotonic()
    finally:
        con.close()
        row = db.run_row("label", started, cfg, notes)
        journal.flush(runs=row if plan is not None else None)
    return LabelSummary(counts["label"], counts["score"], len(notes), notes)


def demo_step(run: Path) -> str:
    """The demo's labelling step: offline labels and detection scores for every live feature."""
    summary = run_label(LabelConfig(run=Path(run), top_n=0))
    con = db.connect(run)
    try:
        rows = con.execute(
            "SELECT method, scorer, count(DISTINCT feature), avg(value) FROM feature_scores "
            "WHERE metric = 'balanced_accuracy' GROUP BY method, scorer ORDER BY scorer, method"
        ).fetchall()
    finally:
        con.close()
    lines = [f"{summary.labelled} new labels, {summary.scored} new detection scores"]
    lines += [
        f"  {m:>12} labels, {s:<18}: mean balanced accuracy {v:.3f} over {n} features"
        for m, s, n, v in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(LabelConfig, argv, prog="python -m workbench.label")
    try:
        summary = run_label(cfg)
    except (LabelError, FileNotFoundError, ValueError) as err:
        print(f"label: error: {err}")
        return 1
    print(
        f"label: {summary.labelled} labels and {summary.scored} detection scores written to "
        f"{db.db_path(cfg.run)}; {summary.skipped} notes"
    )
    for note in summary.notes[:20]:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
