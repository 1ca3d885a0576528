"""The live model behind the Steering and Try-a-study tabs: loaded once, lazily, one job at a time.

:class:`LiveModel` loads the run's model (``<run>/model``, through :mod:`workbench.models.registry`,
so any model the registry loads works) and SAE (``<run>/sae``) on the first request, never at
app start. A :class:`Job` runs one request in a worker thread: it waits for the model (one
request at a time per model), reports progress through a :class:`Progress` the page polls, and
stops at the next decoding step when cancelled (``steer.intervene.GenerationMonitor``).

:func:`stream` is the glue a Gradio generator handler uses: start the job, yield progress until
it ends, yield its result; when Gradio closes the generator (Stop, page closed) the job is
cancelled. Everything here is testable without a browser.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from workbench.run import RunLayout
from workbench.steer.intervene import (
    GenerationCancelledError,
    GenerationMonitor,
    SteerOutput,
    generate,
)

log = logging.getLogger("workbench.ui")

POLL_S = 0.25


class ModelUnavailableError(RuntimeError):
    """The run has no model or SAE the live tabs can load; the message says what to do."""


def model_problem(run_dir: Path, model: str | None = None) -> str | None:
    """Why the live tabs cannot run on this run (None when a model and an SAE are there)."""
    layout = RunLayout(run_dir)
    model_dir = Path(model) if model else layout.model
    if model is None and not model_dir.is_dir():
        return (
            f"This run has no model ({model_dir} is missing), so nothing can be generated. "
            f"Put the model there (or a pointer.txt naming it), e.g. `python -m workbench demo "
            f"--run {run_dir}`."
        )
    if not (layout.sae / "cfg.json").is_file():
        return f"This run has no trained SAE ({layout.sae}); train one with `train_sae` first."
    return None


class LiveModel:
    """The run's model and SAE, loaded on first use and shared by the live tabs."""

    def __init__(self, run_dir: Path, device: str = "cpu", model: str | None = None):
        self.run_dir, self.device, self.model_spec = Path(run_dir), device, model
        self.busy = threading.Lock()  # one generation at a time per model
        self._load_lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self._records: dict[int, Any] | None = None
        self._memo: dict[Any, Any] = {}
        self._memo_lock = threading.Lock()

    def problem(self) -> str | None:
        return model_problem(self.run_dir, self.model_spec)

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> tuple[Any, Any]:
        """(adapter, sae), loading them the first time (ModelUnavailableError if impossible)."""
        with self._load_lock:
            if self._loaded is None:
                problem = self.problem()
                if problem:
                    raise ModelUnavailableError(problem)
                self._loaded = self._load()
            return self._loaded

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per ``key`` while the app runs (the image site's SAE and patch maps:
        moving a slider does not refit them)."""
        with self._memo_lock:
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]

    def study(self, study_id: int, frontal: Path | None = None) -> Any:
        """What the model reads for a stored study: the dataset's record (images, indication,
        technique, comparison, prior) when ``<run>/phantom`` holds it, else just ``frontal``."""
        with self._load_lock:
            if self._records is None:
                self._records = self._read_records()
        if study_id in self._records:
            return self._records[study_id]
        if frontal is None:
            raise ModelUnavailableError(f"study {study_id}: no image found for it")
        return {"frontal": frontal, "lateral": None, "prior_frontal": None, "indication": None,
                "technique": None, "comparison": None, "prior_report": None}  # fmt: skip

    def _read_records(self) -> dict[int, Any]:
        from workbench.cxr.images import CXRDataError
        from workbench.cxr.studies import iter_studies

        root = RunLayout(self.run_dir).phantom
        if not root.is_dir():
            return {}
        try:
            return {r.study_id: r for r in iter_studies(root, require_findings=False)}
        except CXRDataError as exc:
            log.warning("%s: study records unavailable: %s", root, exc)
            return {}

    def _load(self) -> tuple[Any, Any]:
        from workbench.models.registry import load_model
        from workbench.sae import load_sae

        layout = RunLayout(self.run_dir)
        try:
            adapter = load_model(self.model_spec or layout.model, device=self.device)
            sae = load_sae(layout.sae, device=self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailableError(f"cannot load the run's model or SAE: {exc}") from exc
        log.info("live model loaded: %s (d_model %d), SAE %s", adapter.name, adapter.d_model,
                 layout.sae)  # fmt: skip
        return adapter, sae


@dataclass
class Progress:
    """What a job is doing, read by the page while it runs."""

    stage: str = "waiting for the model"
    step: int = 0
    total: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: str | None = None


Work = Callable[[Any, Any, Callable[[str, int], GenerationMonitor]], Any]
"""``work(adapter, sae, monitor_for)``: ``monitor_for(stage, total)`` makes the monitor of one
generation (it updates the progress and carries the cancel event)."""


def baseline_and_steered(
    adapter: Any,
    study: Any,
    steering: Any,
    monitor_for: Callable[[str, int], GenerationMonitor],
    *,
    max_new_tokens: int,
    baseline: str | None = None,
    sae: Any = None,
) -> SteerOutput:
    """A steering job's generations for one study, each its own progress stage: the baseline
    findings (unless ``baseline`` already holds them, e.g. the same study before a slider
    moved) and the findings under ``steering`` (residual, with ``sae``, or image-token)."""
    inp = adapter.prepare(study)
    if baseline is None:
        monitor = monitor_for("writing the baseline findings", max_new_tokens)
        baseline = generate(adapter, inp, max_new_tokens=max_new_tokens, monitor=monitor)
    monitor = monitor_for("writing the steered findings", max_new_tokens)
    steered = generate(adapter, inp, max_new_tokens=max_new_tokens, steering=steering, sae=sae,
                       monitor=monitor)  # fmt: skip
    return SteerOutput(baseline, steered)


class Job:
    """One request run in a worker thread against a :class:`LiveModel`."""

    def __init__(self, live: LiveModel, work: Work):
        self.live, self.work = live, work
        self.progress = Progress()
        self.cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="workbench-live")

    def start(self) -> Job:
        self.thread.start()
        return self

    def monitor_for(self, stage: str, total: int) -> GenerationMonitor:
        p = self.progress
        p.stage, p.step, p.total = stage, 0, total

        def on_step(n: int) -> None:
            p.step = n

        return GenerationMonitor(on_step, self.cancel)

    def _run(self) -> None:
        p = self.progress
        try:
            while not self.live.busy.acquire(timeout=POLL_S):
                if self.cancel.is_set():
                    raise GenerationCancelledError("cancelled while waiting")
            try:
                if not self.live.loaded:
                    p.stage = "loading the model (once)"
                adapter, sae = self.live.get()
                p.result = self.work(adapter, sae, self.monitor_for)
            finally:
                self.live.busy.release()
        except GenerationCancelledError:
            p.error = "Cancelled."
        except (ModelUnavailableError, ValueError, OSError, RuntimeError) as exc:
            p.error = str(exc)
            log.warning("live job failed: %s", exc)
        finally:
            p.done.set()

    def wait(self, timeout: float | None = None) -> Progress:
        self.progress.done.wait(timeout)
        return self.progress


def progress_html(p: Progress) -> str:
    """A small progress bar: the stage and the decoding steps done so far."""
    frac = min(1.0, p.step / p.total) if p.total else 0.0
    steps = f" · {p.step}/{p.total} tokens" if p.total else ""
    return (
        f'<div class="wb-progress" role="progressbar" aria-valuenow="{int(100 * frac)}">'
        f'<div style="font-size:13px;color:#495057">{escape(p.stage)}{steps}</div>'
        '<div style="background:#e9ecef;border-radius:4px;height:8px;margin-top:4px">'
        f'<div style="background:#1971c2;width:{100 * frac:.0f}%;height:8px;border-radius:4px">'
        "</div></div></div>"
    )


def stream(
    live: LiveModel,
    work: Work,
    show: Callable[[Progress], list],
    poll_s: float = POLL_S,
) -> Iterator[list]:
    """Run ``work`` as a job; yield ``show(progress)`` while it runs and once when it ends.

    Closing the generator (Gradio's cancel, a closed page) cancels the job.
    """
    job = Job(live, work).start()
    try:
        while not job.progress.done.wait(poll_s):
            yield show(job.progress)
        yield show(job.progress)
    finally:
        job.cancel.set()
