"""Export features as files a researcher can keep or share: JSON, CSV, Neuronpedia JSON.

Three formats, documented in docs/app.md ("Export"):

- ``workbench.features`` JSON (:func:`to_json`): per feature its known-by label and every
  label with named scores and blank reasons, statistics, histogram, top concepts, neighbours,
  logit effects and every stored example with its context;
- CSV (:func:`to_csv`): one row per feature, the same scalars, the histogram as JSON text and
  the top examples as readable text;
- a Neuronpedia / SAEDashboard batch (:func:`to_neuronpedia`), following the batch JSON that
  SAEDashboard writes for Neuronpedia (``NeuronpediaDashboardBatch.to_dict`` in
  ``sae_dashboard/neuronpedia/neuronpedia_dashboard.py`` of jbloomAus/SAEDashboard): model_id,
  layer, sae_set and, per feature, ``activations`` (top group with bin_min -1, then one
  group per quantile interval with the share of firing tokens it holds), the activation
  histogram as bar values / heights, promoted and suppressed tokens, frac_nonzero. Fields the
  workbench does not compute (neuron alignment, correlated neurons, logit histogram) are
  empty lists, as SAEDashboard leaves them when not computed.

The files reach the browser as ``data:`` links (:func:`download_links`): nothing is written to
disk and no file route is opened. Pure functions over the rows of
:func:`workbench.ui.queries_feature.export_rows`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from html import escape
from typing import Any

from workbench.ui import labels
from workbench.ui.render import token_text

FORMAT = "workbench.features"
VERSION = 1
_STATS = ("frequency", "n_fires", "max_act", "mean_act", "n_studies", "frac_image",
          "frac_prompt", "frac_report", "frac_other", "dead")  # fmt: skip


def _by_feature(rows: Sequence[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        out[int(r["feature"])].append(r)
    return out


def _plain(v: Any) -> Any:
    """A JSON-safe value (numpy/duckdb scalars, timestamps as text)."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return str(v)


def records(data: dict[str, list[dict]], features: Sequence[int], tests_run: set[str]) -> list:
    """One export record per feature, in ``features`` order."""
    grouped = {k: _by_feature(v) for k, v in data.items() if k != "quantile_counts"}
    out = []
    for f in features:
        stats = (grouped["stats"].get(f) or [{}])[0]
        dead = bool(stats.get("dead"))
        cards = labels.cards(grouped["labels"].get(f, []), grouped["scores"].get(f, []),
                             tests_run, dead)  # fmt: skip
        out.append(
            {
                "feature": f,
                "label": _card(cards[0]) if cards else None,
                "labels": [_card(c) for c in cards],
                "matryoshka_group": (grouped["features"].get(f) or [{}])[0].get("matryoshka_group"),
                "stats": {k: _plain(stats.get(k)) for k in _STATS},
                "histogram": [
                    {"lo": _plain(h["bin_lo"]), "hi": _plain(h["bin_hi"]), "count": h["count"]}
                    for h in grouped["histograms"].get(f, [])
                ],
                "concepts": [
                    _pick(r, "concept", "source", "auroc", "rank")
                    for r in grouped["concepts"].get(f, [])
                ],  # fmt: skip
                "neighbors": [
                    _pick(r, "neighbor", "cosine") for r in grouped["neighbors"].get(f, [])
                ],
                "logits": [
                    _pick(r, "direction", "rank", "token", "effect")
                    for r in grouped["logits"].get(f, [])
                ],  # fmt: skip
                "examples": [_example(r) for r in grouped["examples"].get(f, [])],
            }
        )
    return out


def _card(c: labels.LabelCard) -> dict:
    return {
        "method": c.method,
        "label": c.label,
        "model": c.model,
        "rank_score": _plain(c.rank_score),
        "scores": [
            {"test": s.test, "metric": s.metric, "value": _plain(s.value), "n": s.n}
            for s in c.scores
        ],
        "blank": c.blanks,
    }


def _pick(r: dict, *keys: str) -> dict:
    return {k: _plain(r.get(k)) for k in keys}


def _example(r: dict) -> dict:
    return _pick(
        r, "example_group", "quantile", "rank", "study_id", "row", "kind", "section", "token",
        "activation", "patch_row", "patch_col", "context_tokens", "context_acts", "center",
    )  # fmt: skip


def to_json(recs: list[dict], meta: dict[str, Any]) -> str:
    """The workbench's own export: ``{"format", "version", ...meta, "features": [...]}``."""
    return json.dumps({"format": FORMAT, "version": VERSION, **meta, "features": recs}, indent=1)


CSV_COLUMNS = (
    "feature", "label", "label_method", "label_model", "label_score", "label_scores",
    "blank_scores", "other_labels", "frequency", "max_act", "mean_act", "n_studies",
    "frac_image", "dead", "best_concept", "best_concept_source", "best_auroc",
    "histogram", "top_examples",
)  # fmt: skip


def to_csv(recs: list[dict]) -> str:
    """One row per feature (:data:`CSV_COLUMNS`); lists as JSON text or '; '-joined text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in recs:
        lab = r["label"] or {}
        best = r["concepts"][0] if r["concepts"] else {}
        w.writerow(
            {
                "feature": r["feature"],
                "label": lab.get("label"),
                "label_method": lab.get("method"),
                "label_model": lab.get("model"),
                "label_score": lab.get("rank_score"),
                "label_scores": "; ".join(
                    f"{s['test']} {s['metric']} {s['value']}" for s in lab.get("scores", [])
                ),
                "blank_scores": "; ".join(lab.get("blank", [])),
                "other_labels": "; ".join(f"{x['method']}: {x['label']}" for x in r["labels"][1:]),
                **{
                    k: r["stats"].get(k)
                    for k in ("frequency", "max_act", "mean_act", "n_studies", "frac_image", "dead")
                },  # fmt: skip
                "best_concept": best.get("concept"),
                "best_concept_source": best.get("source"),
                "best_auroc": best.get("auroc"),
                "histogram": json.dumps([[h["lo"], h["hi"], h["count"]] for h in r["histogram"]]),
                "top_examples": " | ".join(_example_text(e) for e in r["examples"][:5]),
            }
        )
    return buf.getvalue()


def _example_text(e: dict) -> str:
    toks = e.get("context_tokens") or [e.get("token") or ""]
    text = re.sub(r"\s+", " ", "".join(token_text(t) for t in toks)).strip()
    return f"study {e['study_id']}: {text} [{e['activation']}]"


# Per-feature fields of SAEDashboard's batch that the workbench does not compute.
NP_EMPTY = (
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
)  # fmt: skip


def to_neuronpedia(recs: list[dict], qcounts: list[dict], meta: dict[str, Any]) -> str:
    """The SAEDashboard -> Neuronpedia batch JSON (see the module docstring for the source)."""
    counts = {(int(c["feature"]), int(c["q"])): int(c["n"]) for c in qcounts}
    n_q = int(qcounts[0]["n_quantiles"]) if qcounts else int(meta.get("n_quantiles") or 10)
    batch = {
        "model_id": meta.get("model") or "",
        "layer": meta.get("layer") or 0,
        "sae_set": meta.get("run") or "",
        "features": [_np_feature(r, counts, n_q, meta) for r in recs],
    }
    return json.dumps(batch)


def _np_feature(r: dict, counts: dict, n_q: int, meta: dict[str, Any]) -> dict:
    f, st, hist = r["feature"], r["stats"], r["histogram"]
    fires = sum(counts.get((f, q), 0) for q in range(n_q)) or st.get("n_fires") or 0
    up = [x for x in r["logits"] if x["direction"] == "promote"]
    down = [x for x in r["logits"] if x["direction"] == "suppress"]
    return {
        "feature_index": f,
        **{k: [] for k in NP_EMPTY},
        "pos_str": [x["token"] for x in up],
        "pos_values": [x["effect"] for x in up],
        "neg_str": [x["token"] for x in down],
        "neg_values": [x["effect"] for x in down],
        "frac_nonzero": st.get("frequency") or 0.0,
        "freq_hist_data_bar_values": [round((h["lo"] + h["hi"]) / 2, 6) for h in hist],
        "freq_hist_data_bar_heights": [h["count"] for h in hist],
        "n_prompts_total": meta.get("n_studies") or 0,
        "n_tokens_in_prompt": meta.get("tokens_per_study") or 0,
        "dataset": meta.get("dataset") or "",
        "activations": _np_activations(r, counts, n_q, fires),
    }


def _np_activations(r: dict, counts: dict, n_q: int, fires: int) -> list[dict]:
    top = r["stats"].get("max_act") or 0.0
    out = []
    for e in r["examples"]:
        toks = [token_text(t) for t in (e.get("context_tokens") or [e.get("token") or ""])]
        vals = [round(float(v or 0.0), 3) for v in (e.get("context_acts") or [e.get("activation")])]
        if e["example_group"] == "top":
            lo, hi, share = -1, top, -1
        else:
            q = int(e["quantile"] or 0)
            lo, hi = top * q / n_q, top * (q + 1) / n_q
            share = round(counts.get((r["feature"], q), 0) / fires, 6) if fires else 0.0
        out.append({"bin_min": round(lo, 6), "bin_max": round(hi, 6), "bin_contains": share,
                    "tokens": toks, "values": vals})  # fmt: skip
    return out


def download_links(files: Sequence[tuple[str, str, str]], note: str = "") -> str:
    """Links that download (file name, MIME type, text) without a server file route."""
    links = "".join(
        f'<a class="wb-download" download="{escape(name)}" '
        f'href="data:{mime};charset=utf-8;base64,{base64.b64encode(text.encode()).decode()}">'
        f"{escape(name)}</a> <small>({len(text.encode()) / 1024:.0f} KB)</small> "
        for name, mime, text in files
    )
    extra = f'<p class="wb-meta">{escape(note)}</p>' if note else ""
    return f'<div class="wb-exports">{links}{extra}</div>'
