"""``python -m workbench.label``: explain SAE features and score the explanations.

For each selected feature (:func:`workbench.label.data.select_features`):

1. *explain*: the backend reads the feature's top examples and writes a one-line label,
   stored in ``feature_labels`` with method ``llm:<model>`` (or ``offline``);
2. *score* (:mod:`workbench.label.feature`): the same backend, acting as judge, scores the
   label by detection (random and hard negatives), fuzzing and simulation, into
   ``feature_scores`` with ``scorer = '<name>:<judge>'``.

The ``statistical`` labels of ``analyse`` are scored on the same examples by the same judge,
so methods compare on equal terms.

A feature whose requests fail after their retries is recorded as failed (with the reason, in
the summary and ``runs.notes``) and the run goes on; ``max_consecutive_failures`` failures in
a row (a dead server) stop it. Finished features are appended to ``<run>/label/journal.jsonl``
at once and moved into ``features.duckdb`` every ``flush_seconds`` (a database rewrite copies
the file, so it is batched); a rerun first applies any leftover journal, then skips what is
done (and retries what failed). Examples are read ``_CHUNK`` features at a time, so memory
stays flat over 16k-feature SAEs. Progress is a bar on a terminal, else a log line every
``progress_every`` features; the end prints done / failed / skipped / cached counts and, on
the phantom, the ground-truth metric (:mod:`workbench.label.truth`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from tqdm import tqdm

from workbench import db
from workbench.config import parse_config, save_config
from workbench.label.backends import Backend, LabelError, LLMSettings, OpenAIBackend
from workbench.label.data import LABEL_TABLES, NegativePool, load_examples, select_features
from workbench.label.feature import Work, label_one
from workbench.label.journal import Journal, done_features, statistical_labels
from workbench.label.offline import OfflineBackend
from workbench.label.scoring import chunks
from workbench.label.truth import ground_truth
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
    hard_negatives: bool = True
    """Also score detection against hard negatives: silent contexts with the feature's words."""
    simulation: bool = True
    """Also score by simulation: correlation of predicted with true per-token activations."""
    n_simulate: int = 5
    """Activating text examples simulated per label (plus as many silent ones)."""
    strong_auroc: float = 0.9
    """Offline labels lead with the feature's best concept when its AUROC is at least this."""
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
    retry_after_cap: float = 60.0
    """Longest wait in seconds honoured from a server's Retry-After header."""
    max_consecutive_failures: int = 5
    """Stop after this many features fail in a row (a dead server); 0: never stop."""
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
    progress_every: int = 50
    """Without a terminal, log progress every this many features (a bar otherwise)."""

    def validate(self) -> None:
        for name in ("n_explain", "n_score", "examples_per_prompt", "n_simulate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("flush_seconds", "retry_after_cap", "max_consecutive_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.progress_every <= 0:
            raise ValueError(f"progress_every must be positive, got {self.progress_every}")
        if self.backend == "openai" and not self.model:
            raise ValueError("--backend openai needs --model (the server's model name)")


class LabelSummary(NamedTuple):
    """What one ``label`` execution did (features, records written, notes)."""

    labelled: int
    """New labels written."""
    scored: int
    """New score records (one per label and scorer)."""
    skipped: int
    """Features of the plan that got nothing to store (e.g. no activating examples)."""
    notes: list[str]
    """Why something was skipped or not scored, and why features failed."""
    done: int = 0
    """Features finished in this execution."""
    failed: int = 0
    """Features whose requests failed after retries (retried by the next run)."""
    cached: int = 0
    """Selected features already done by an earlier run (resume)."""
    stats: dict | None = None
    """Backend counters: retries, Retry-After waits, rejected labels."""

    def line(self) -> str:
        """The one-line summary the command prints."""
        stats = ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in sorted((self.stats or {}).items())
        )
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped, {self.cached} cached;"
            f" {self.labelled} labels and {self.scored} scores written"
            + (f"; {stats}" if stats else "")
        )


def make_backend(cfg: LabelConfig) -> Backend:
    """The configured backend; the privacy check runs here, before any request."""
    if cfg.backend == "offline":
        return OfflineBackend(strong_auroc=cfg.strong_auroc)
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
        retry_after_cap=cfg.retry_after_cap,
    )
    return OpenAIBackend(settings, allow_remote=cfg.allow_remote)


def _plan(con, cfg: LabelConfig, backend: Backend, journal: Journal) -> tuple[int, dict[int, Work]]:
    """How many features are selected, and what each still needs (resume: skip work done)."""
    selected = select_features(con, cfg.features, cfg.concept, cfg.top_n)
    scorer = f"detection:{backend.method}"
    stat = statistical_labels(con) if cfg.score_statistical else {}
    done_labels = set() if cfg.overwrite else done_features(con, journal, backend.method, None)
    done_stat = set() if cfg.overwrite else done_features(con, journal, "statistical", scorer)
    plan = {}
    for f in selected:
        work = Work(
            cfg.explain and f not in done_labels,
            stat.get(f) if f not in done_stat else None,
        )
        if work.explain or work.statistical:
            plan[f] = work
    return len(selected), plan


class _Progress:
    """A bar on a terminal; otherwise one log line every ``every`` features."""

    def __init__(self, total: int, every: int):
        self.total, self.every, self.n = total, every, 0
        self.bar = tqdm(total=total, desc="label", unit="feature", disable=None, leave=False)
        self.lines = self.bar.disable

    def step(self, counts: Counter) -> None:
        self.n += 1
        self.bar.update(1)
        self.bar.set_postfix(failed=counts["failed"], refresh=False)
        if self.lines and (self.n % self.every == 0 or self.n == self.total):
            log.info("%d/%d features (%d failed)", self.n, self.total, counts["failed"])

    def close(self) -> None:
        self.bar.close()


class _Failures:
    """Failed features: noted, counted, and fatal only as a long streak (a dead server)."""

    def __init__(self, limit: int):
        self.limit, self.streak = limit, 0

    def record(self, feature: int, err: LabelError, counts: Counter, notes: list[str]) -> None:
        counts["failed"] += 1
        self.streak += 1
        notes.append(f"feature {feature}: failed: {err}")
        log.warning("feature %d failed: %s", feature, err)
        if self.limit and self.streak >= self.limit:
            raise LabelError(
                f"{self.streak} features failed in a row, stopping (finished features are "
                f"kept; rerun to resume). Last error: {err}"
            ) from err


def _label_all(con, cfg, backend, journal, plan, notes: list[str]) -> Counter:
    """Label and score every planned feature; returns the counts of the summary."""
    counts: Counter[str] = Counter()
    pool = NegativePool(con, cfg.negative_windows, cfg.negative_studies, cfg.seed)
    progress, failures = (
        _Progress(len(plan), cfg.progress_every),
        _Failures(cfg.max_consecutive_failures),
    )
    last_flush = time.monotonic()
    try:
        for batch in chunks(list(plan), _CHUNK):
            examples = load_examples(con, batch, cfg.n_explain)
            for feature in batch:
                try:
                    records, skipped = label_one(
                        backend, examples[feature], pool, cfg, plan[feature]
                    )
                except LabelError as err:
                    failures.record(feature, err, counts, notes)
                    progress.step(counts)
                    continue
                failures.streak = 0
                notes += skipped
                journal.append(records)
                counts["done" if records else "skipped"] += 1
                counts.update(r["type"] for r in records)
                progress.step(counts)
                if time.monotonic() - last_flush >= cfg.flush_seconds:
                    journal.flush()
                    last_flush = time.monotonic()
    finally:
        progress.close()
    return counts


def run_label(cfg: LabelConfig, backend: Backend | None = None) -> LabelSummary:
    """Label and score the configured features of ``cfg.run``; resumable (module docstring)."""
    backend = backend or make_backend(cfg)
    started = db.utc_now()
    out = RunLayout(cfg.run).label
    save_config(cfg, out / "cfg.json")
    journal = Journal(out / "journal.jsonl", cfg.run)
    journal.flush()  # leftovers of an interrupted run
    con = db.connect(cfg.run)  # a snapshot: our own flushes replace the file, not this view
    notes: list[str] = []
    plan, counts, n_selected = None, Counter(), 0
    try:
        db.require_tables(con, LABEL_TABLES, cfg.run)
        n_selected, plan = _plan(con, cfg, backend, journal)
        counts = _label_all(con, cfg, backend, journal, plan, notes)
    finally:
        con.close()
        row = db.run_row("label", started, cfg, notes)
        journal.flush(runs=row if plan is not None else None)
    return LabelSummary(
        labelled=counts["label"],
        scored=counts["score"],
        skipped=counts["skipped"],
        notes=notes,
        done=counts["done"],
        failed=counts["failed"],
        cached=n_selected - len(plan),
        stats=dict(getattr(backend, "stats", {}) or {}),
    )


def truth_lines(run: Path, methods: list[str] | None = None) -> list[str]:
    """The phantom ground-truth metric per labelling method (nothing off the phantom)."""
    con = db.connect(run)
    try:
        return [g.line() for g in ground_truth(con, methods)]
    finally:
        con.close()


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
    lines = [f"{summary.labelled} new labels, {summary.scored} new scores ({summary.line()})"]
    lines += [
        f"  {m:>12} labels, {s:<24}: mean balanced accuracy {v:.3f} over {n} features"
        for m, s, n, v in rows
    ]
    lines += [f"  ground truth, {line}" for line in truth_lines(run)]
    return "\n".join(lines)


def make_backend_method(cfg: LabelConfig) -> str:
    """The ``feature_labels.method`` the configured backend writes."""
    return "offline" if cfg.backend == "offline" else f"llm:{cfg.model}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(LabelConfig, argv, prog="python -m workbench.label")
    try:
        summary = run_label(cfg)
    except (LabelError, FileNotFoundError, ValueError) as err:
        print(f"label: error: {err}")
        return 1
    print(f"label: {summary.line()} ({db.db_path(cfg.run)})")
    failures = [n for n in summary.notes if ": failed: " in n]
    for note in (failures + [n for n in summary.notes if n not in failures])[:20]:
        print(f"  {note}")
    if len(summary.notes) > 20:
        print(f"  ... {len(summary.notes) - 20} more notes in the runs table")
    for line in truth_lines(cfg.run, [make_backend_method(cfg), "statistical"]):
        print(f"label: ground truth, {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
