"""Where a steering evaluation's side effects come from, read from its stored texts.

``python benchmarks/steer_side_effects.py --db runs/demo-s12-big/image-tokens/features.duckdb \
    --labels runs/mini-train/phantom/phantom-labels.csv [--top 10] [--strengths 1,3]``

No generation: it reads ``steering_results`` (every added arm of the SAE and difference-of-means
methods with ``--strengths`` in range, eligible rows, any map variant) and the phantom's ground
truth, and prints per method

- how many steered reports flip another finding, the share of those the ``--top`` most affected
  studies carry, and the rate over the other studies (``steer --report`` prints the same per
  method for the rows of its own settings);
- the five most affected studies and their most flipped findings;
- of all flipped findings, the share that moves toward the phantom's truth (the steered report
  corrects the unsteered one) or away from it; the counterfactual's rows too, both directions.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter, defaultdict

import duckdb

ROWS = """SELECT method, direction, study_id, side_effects, details FROM steering_results
WHERE eligible AND (method = 'counterfactual' OR (method IN ('sae', 'dim') AND mode = 'add'
      AND direction = 'add' AND strength BETWEEN ? AND ?))"""


def concentration(rows, top: int) -> None:
    """Per method: side-effect rate, the top studies' share, the rate without them."""
    for method in ("sae", "dim"):
        per = defaultdict(lambda: [0, 0, Counter()])
        for m, _, sid, side, _ in rows:
            if m == method:
                per[sid][0] += 1
                per[sid][1] += bool(side)
                per[sid][2].update(side)
        studies = sorted(per.items(), key=lambda kv: -kv[1][1])
        n, s = sum(v[0] for _, v in studies), sum(v[1] for _, v in studies)
        if not n:
            continue
        tn, ts = sum(v[0] for _, v in studies[:top]), sum(v[1] for _, v in studies[:top])
        rest = (s - ts) / (n - tn) if n > tn else float("nan")
        print(f"{method}: {len(studies)} studies, {n} reports, side effects {s / n:.3f}; "
              f"top {top} carry {ts / max(s, 1):.2f}; rate without them {rest:.3f}")  # fmt: skip
        for sid, (k, hit, flips) in studies[:5]:
            print(f"  {sid}: {hit}/{k} = {hit / k:.2f}  {flips.most_common(2)}")


def toward_truth(rows, truth: dict[int, dict]) -> None:
    """Of the flipped findings, the share whose steered reading matches the phantom's truth."""
    tally = Counter()
    for method, direction, sid, side, details in rows:
        d = json.loads(details)
        for c in side:
            if sid not in truth or c not in truth[sid]:
                continue
            after = d["steered_readings"].get(c) == 1
            if after == (d["baseline_readings"].get(c) == 1):
                continue  # an uncertain or blank reading changed, not present/absent
            tally[(method, direction, after == (truth[sid][c] == "1"))] += 1
    for method, direction in sorted({k[:2] for k in tally}):
        good, bad = tally[(method, direction, True)], tally[(method, direction, False)]
        print(f"{method} {direction}: {good + bad} flips, toward truth "
              f"{good / (good + bad):.2f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="features.duckdb holding steering_results")
    p.add_argument("--labels", required=True, help="the phantom's phantom-labels.csv")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--strengths", default="1,3", help="lowest,highest strength of added arms")
    a = p.parse_args()
    lo, hi = (float(x) for x in a.strengths.split(","))
    con = duckdb.connect(a.db, read_only=True)
    rows = con.execute(ROWS, [lo, hi]).fetchall()
    with open(a.labels, newline="") as f:
        truth = {int(r["study_id"]): r for r in csv.DictReader(f)}
    concentration(rows, a.top)
    toward_truth(rows, truth)


if __name__ == "__main__":
    main()
