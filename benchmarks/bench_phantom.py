"""Phantom generator speed and memory, side by side with the I/O floor.

Target (issue): 2,000 studies, frontal + lateral, 256 px, <= 2 minutes on 2 cores, memory
independent of N. The peer is the *I/O floor*: encoding and writing the same number of JPEG
images, mask PNGs and report files from precomputed arrays with the same encoder settings and
worker count -- what any generator writing this layout must pay. We report wall time, the
ratio generator / floor, and peak resident memory at two dataset sizes.

    python benchmarks/bench_phantom.py --studies 2000 --size 256 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _sample_arrays(size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """One real phantom study's frontal, lateral and masks: content like the generator's,
    so the floor pays the same encoder cost (noise images would compress far slower)."""
    from workbench.cxr.phantom.cohort import plan_subjects, rng_for, subject_studies
    from workbench.cxr.phantom.render import render_study

    subject, first, n = next(plan_subjects(0, 1, (0.8, 0.1)))
    study = subject_studies(0, subject, first, n)[0]
    study["acquisition"]["lateral"] = True
    r = render_study(study, size, rng_for(0, 3, 0))
    masks = list(r.masks.values())
    return r.frontal, r.lateral, (masks * 3)[:6]


def _floor_chunk(task: tuple[str, int, int, int]) -> int:
    """Encode and write ``n`` studies' files (2 JPEGs, 6 mask PNGs, 1 report) from one
    precomputed phantom study, with the generator's encoder settings."""
    root, start, n, size = task
    frontal, lateral, masks = _sample_arrays(size)
    for i in range(start, start + n):
        d = Path(root) / f"s{i}"
        d.mkdir(parents=True, exist_ok=True)
        for v, img in enumerate((frontal, lateral)):
            buf = io.BytesIO()
            Image.fromarray(img, "L").save(buf, format="JPEG", quality=95, subsampling=0)
            (d / f"{v}.jpg").write_bytes(buf.getvalue())
        for m, mask in enumerate(masks):
            buf = io.BytesIO()
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buf, format="PNG")
            (d / f"m{m}.png").write_bytes(buf.getvalue())
        (d / "report.txt").write_text("FINDINGS: " + "word " * 60)
    return n


def child(kind: str, studies: int, size: int, workers: int, out: str) -> None:
    """Run one measurement in this (fresh) process and print JSON to stdout."""
    t0 = time.perf_counter()
    if kind == "generator":
        from workbench.cxr.phantom.run import PhantomConfig, generate

        cfg = PhantomConfig(
            out=Path(out), studies=studies, size=size, workers=workers, all_lateral=True
        )
        summary = generate(cfg)
        images = summary["images"]
    else:
        tasks = [(out, s, min(250, studies - s), size) for s in range(0, studies, 250)]
        with mp.get_context("spawn").Pool(workers) as pool:
            sum(pool.imap(_floor_chunk, tasks))
        images = 2 * studies
    seconds = time.perf_counter() - t0
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print(
        json.dumps(
            {
                "kind": kind,
                "studies": studies,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "images": images,
                "peak_rss_mb": round(peak / 1024, 1),
            }
        )
    )


def measure(kind: str, studies: int, size: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--studies",
            str(studies),
            "--size",
            str(size),
            "--workers",
            str(workers),
            "--out",
            str(Path(tmp) / "ds"),
        ]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--small", type=int, default=200, help="smaller N for the memory check")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", choices=["generator", "floor"], default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.studies, args.size, args.workers, args.out)
        return 0
    gen = measure("generator", args.studies, args.size, args.workers)
    floor = measure("floor", args.studies, args.size, args.workers)
    small = measure("generator", args.small, args.size, args.workers)
    print(
        f"phantom generator: {gen['studies']} studies, {gen['images']} images at "
        f"{args.size} px, {args.workers} workers: {gen['seconds']:.1f} s "
        f"({1000 * gen['seconds'] / gen['studies']:.1f} ms/study), "
        f"target <= 120 s: {'met' if gen['seconds'] <= 120 else 'NOT met'}"
    )
    load = os.getloadavg()[0]
    print(
        f"CPU time: generator {gen['cpu_seconds']:.1f} s, floor {floor['cpu_seconds']:.1f} s "
        f"(CPU ratio {gen['cpu_seconds'] / floor['cpu_seconds']:.2f}x); on {args.workers} idle "
        f"cores the generator needs ~{gen['cpu_seconds'] / args.workers:.0f} s; "
        f"load average now {load:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"I/O floor (same files, same encoder): {floor['seconds']:.1f} s; "
        f"generator / floor = {gen['seconds'] / floor['seconds']:.2f}x"
    )
    print(
        f"peak RSS: {gen['peak_rss_mb']} MB at N={gen['studies']} vs "
        f"{small['peak_rss_mb']} MB at N={small['studies']} "
        f"(ratio {gen['peak_rss_mb'] / small['peak_rss_mb']:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
