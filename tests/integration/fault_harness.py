"""Kill a stage with SIGKILL at a random moment, the way a crash or an OOM killer would.

The stage runs in a forked child (everything is already imported, so the child starts in
milliseconds and the random moment falls inside the stage's own work, not in imports). The
parent waits a random time in ``[0, 0.9 x clean duration]`` and sends SIGKILL: no
``finally`` block, no ``except``, no atexit handler runs in the child, exactly as in a real
crash. A child that finishes before its moment counts too (the stage completed).

Nothing in this module is a test; ``test_faults.py`` uses it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

import torch


class Outcome(NamedTuple):
    """One kill: when it was sent (seconds after the start) and whether the child was alive."""

    delay: float
    killed: bool


def _child(target: Callable[[], object]) -> None:
    torch.set_num_threads(1)
    target()


HANG_LIMIT_S = 180.0  # a run to the end that takes longer than this is taken as hung


def run_in_child(target: Callable[[], object], kill_after: float | None = None) -> Outcome:
    """Run ``target()`` in a forked child; SIGKILL it after ``kill_after`` seconds.

    Without ``kill_after`` the child runs to the end, and must succeed. A child forked from a
    process with live threads can deadlock on a lock one of them held (a POSIX hazard of
    fork, not of the stage): a run to the end that outlives ``HANG_LIMIT_S`` is killed and run
    once more (every stage resumes, so a rerun is what the test checks anyway), and fails the
    test if it hangs again instead of blocking the suite.
    """
    if kill_after is not None:
        return _fork(target, kill_after)
    for attempt in (1, 2):
        outcome = _fork(target, HANG_LIMIT_S)
        if not outcome.killed:
            return Outcome(0.0, False)
        print(f"run to the end hung past {HANG_LIMIT_S:.0f} s (attempt {attempt}); killed")
    raise AssertionError(f"the stage hung twice in its child (> {HANG_LIMIT_S:.0f} s each)")


def _fork(target: Callable[[], object], limit: float) -> Outcome:
    proc = mp.get_context("fork").Process(target=_child, args=(target,), daemon=True)
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        return Outcome(limit, True)
    if proc.exitcode != 0:
        raise AssertionError(f"the stage failed in its child (exit code {proc.exitcode})")
    return Outcome(limit, False)


def timed(target: Callable[[], object]) -> float:
    """Wall seconds of one complete run of ``target`` in a child (the clean reference run)."""
    for _ in (1, 2):
        t0 = time.perf_counter()
        if not _fork(target, HANG_LIMIT_S).killed:
            return time.perf_counter() - t0
    raise AssertionError(f"the clean run hung twice in its child (> {HANG_LIMIT_S:.0f} s each)")


def kill_and_finish(
    target: Callable[[], object],
    duration: float,
    check: Callable[[], None],
    rng: random.Random,
    kills: int = 2,
) -> list[Outcome]:
    """Kill ``target`` at a random moment, then its rerun at another, ``kills`` times in all,
    checking the outputs after each kill; then rerun it to the end and check once more.

    The outputs must be usable after every kill (old-and-complete or new-and-complete) and
    the final rerun must finish; the caller then compares them with a clean run's.
    """
    outcomes = []
    for i in range(kills):
        delay = rng.uniform(0.0, 0.9 * duration)
        outcomes.append(run_in_child(target, kill_after=delay))
        print(f"kill {i + 1}: at {delay:.3f} of {duration:.3f} s, hit: {outcomes[-1].killed}")
        try:
            check()
        except AssertionError as exc:
            raise AssertionError(f"after kill {i + 1} at {delay:.3f} s: {exc}") from exc
    run_in_child(target)
    check()
    return outcomes
