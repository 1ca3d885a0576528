"""SAE quality on held-out studies: FVU, L0, dead and dense fractions, CE loss recovered.

The figures SAELens and the SAE literature report, per Matryoshka prefix (the first n groups,
n = 1..G; n = G is the whole SAE), written to ``sae_quality`` and shown in the app's Runs tab:

- ``fvu``: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean x||^2 over
  the evaluated tokens;
- ``l0``: active latents of the prefix per token (the inference threshold applies);
- ``dead_frac`` / ``dense_frac``: latents of the prefix that never fire on those tokens / fire
  on more than :data:`DENSE_FREQ` of them;
- ``ce_*``: next-token loss on the report tokens, clean, with the SAE's reconstruction spliced
  in at the recorded layer, and zero-ablated there (:mod:`workbench.analyse.splice`). Splicing
  replaces the positions the store keeps (the tokens the SAE was trained on) and
  ``ce_recovered = (zero - spliced) / (zero - clean)``.

Which studies: ``train_sae`` fits the SAE on every stored token, so the held-out studies are
the dataset's studies the store does not hold, a seeded sample of ``quality_studies`` of them
run through the recorded model with the recording's settings (sections, token filter). That
needs the model the store was recorded with, checked first by recomputing one stored study's
activations. When every dataset study is stored, the sample is of stored studies
(``held_out`` false). Without that model (or with a large one on the CPU), FVU, L0, dead and
dense come from a sample of stored studies (at most 8 or a tenth of them, whichever is more)
measured during analyse's one encode pass, and the CE columns stay NULL. A sample bounds the
cost either way: there is no second pass over the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from workbench.analyse.splice import LOSS_MASK, SPLICE_MASK, splice_losses_by_prefix
from workbench.cxr.collection import load_collection, study_ids
from workbench.cxr.images import CXRDataError
from workbench.io import torch_threads
from workbench.models.hooks import is_language_residual
from workbench.record.run import RecordError, keep_mask, prepare_item

DENSE_FREQ = 0.1  # a latent firing on more than this share of tokens counts as dense
MATCH_TOL = 0.1  # relative error up to which recomputed activations match the stored ones
BIG_MODEL_BYTES = 4e9  # weights above this are not run on the CPU for the CE loss
STORE_SHARE, STORE_MIN = 10, 8  # a stored sample: at most max(8, a tenth of the studies)
_LOAD_ERRORS = (CXRDataError, RecordError, OSError, ValueError)
METRICS = ("fvu", "l0", "dead_frac", "dense_frac")


class QualityAccumulator:
    """Running sums for FVU, L0 and per-latent firing counts over the evaluated tokens."""

    def __init__(self, sae):
        self.ends = tuple(sae.group_ends)
        self.sse = np.zeros(len(self.ends))
        self.active = np.zeros(len(self.ends))
        self.fires = torch.zeros(sae.d_sae, dtype=torch.int64)
        self.sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        self.n_tokens = 0
        self.n_studies = 0

    @torch.no_grad()
    def update(self, sae, x_ND: torch.Tensor, lat_NF: torch.Tensor | None = None) -> None:
        """Add tokens ``x_ND`` (their latents ``lat_NF`` when already encoded).

        Reconstructions are summed from the non-zero latents only (``embedding_bag``: ``nnz x
        d_in`` work, not a dense ``d_sae x d_in`` product), so measuring a sample inside the
        encode pass costs about a tenth of encoding it (measured at MAIRA-2's SAE proportions).
        """
        if x_ND.shape[0] == 0:
            return
        x = x_ND.to(sae.W_dec_FD.device, torch.float32)
        lat = sae.encode(x) if lat_NF is None else lat_NF.to(x.device, torch.float32)
        # many small ops: one CPU thread is ~10x faster than two on a shared CPU (run.py)
        with torch_threads(1 if x.device.type == "cpu" else None):
            self._add(sae, x, lat)

    def _add(self, sae, x: torch.Tensor, lat: torch.Tensor) -> None:
        rows, feats = lat.nonzero(as_tuple=True)  # row-major: sorted by row, as bags need
        vals, W_dec = lat[rows, feats], sae.W_dec_FD.float()
        recon = sae.b_dec_D.float().expand_as(x).clone()
        start = 0
        for g, end in enumerate(self.ends):  # prefix g's reconstruction = decode(lat, g + 1)
            group = (feats >= start) & (feats < end)
            counts = torch.bincount(rows[group], minlength=x.shape[0])
            offsets = torch.cumsum(counts, 0) - counts
            recon += F.embedding_bag(
                feats[group], W_dec, offsets, mode="sum", per_sample_weights=vals[group]
            )
            self.sse[g] += float((x - recon).pow(2).sum(1).double().sum())
            self.active[g] += float((feats < end).sum())
            start = end
        self.fires += torch.bincount(feats, minlength=self.fires.shape[0]).cpu()
        self.sum_x += x.sum(0).double().cpu()
        self.sum_sq += float(x.pow(2).sum(1).double().sum())
        self.n_tokens += x.shape[0]

    def columns(self) -> dict[str, list]:
        """Per prefix: n_groups, n_latents, fvu, l0, dead_frac, dense_frac."""
        n = max(self.n_tokens, 1)
        var = self.sum_sq - float(self.sum_x.pow(2).sum()) / n
        out: dict[str, list] = {k: [] for k in ("n_groups", "n_latents", "fvu", "l0")}
        out.update(dead_frac=[], dense_frac=[])
        for g, end in enumerate(self.ends):
            fires = self.fires[:end]
            out["n_groups"].append(g + 1)
            out["n_latents"].append(end)
            out["fvu"].append(self.sse[g] / var if var > 0 else None)
            out["l0"].append(self.active[g] / n)
            out["dead_frac"].append(float((fires == 0).float().mean()))
            out["dense_frac"].append(float((fires > DENSE_FREQ * n).float().mean()))
        return out


class QualityPlan(NamedTuple):
    """How SAE quality is computed, decided before the encode pass."""

    mode: str  # "model" (through the recorded model), "store" (stored studies) or "off"
    held_out: bool  # the studies are not in the store (the SAE never saw them)
    store_sample: np.ndarray  # stored study ids read during the encode pass (mode "store")
    items: list  # workbench.cxr.collection.Item run through the model (mode "model")
    adapter: object | None = None  # the recorded model (mode "model")


OFF = QualityPlan("off", False, np.zeros(0, np.int64), [])


def _recorded(store) -> tuple[dict, Path | None]:
    """The store's recording settings and the data it was recorded from (None: unknown)."""
    extra = store.manifest.get("extra") or {}
    data = extra.get("data")
    return extra, Path(data) if data and "source_kind" in extra else None


def _collection(data: Path, extra: dict, only) -> list:
    return load_collection(
        data, None, extra.get("text_column") or "text", extra.get("id_column") or "",
        extra.get("sections") or "findings", only=only,
    ).items  # fmt: skip


def _kept_residual(adapter, item, store, extra: dict):
    """(prepared inputs, keep mask, residual at the recorded layer of the kept positions)."""
    prepared = prepare_item(adapter, item)
    keep = keep_mask(
        prepared.tokens, extra.get("image_tokens", "all"), extra.get("prompt_tokens", "all")
    )
    acts = adapter.residual(prepared, store.layer)
    return prepared, keep, acts[torch.tensor(keep, device=acts.device)]


def _reproduces(store, adapter, data: Path, extra: dict) -> str | None:
    """None when the model recomputes the first stored study's activations, else why not."""
    studies = store.metadata(0).column("study_id").to_numpy()
    sid = int(studies[0])
    stored = store.read_rows(0, np.flatnonzero(studies == sid)).float()  # whole studies a shard
    try:
        items = _collection(data, extra, [sid])
        if not items:
            return f"stored study {sid} is not readable in {data}"
        with torch.no_grad():
            x = _kept_residual(adapter, items[0], store, extra)[2].float().cpu()
    except _LOAD_ERRORS as exc:
        return f"stored study {sid} cannot be recomputed: {exc}"
    if x.shape != stored.shape:
        return f"the model gives {x.shape[0]} tokens for study {sid}, the store {stored.shape[0]}"
    err = float((x - stored).norm() / stored.norm().clamp_min(1e-12))
    if err > MATCH_TOL:
        return f"its activations of study {sid} differ from the stored ones (rel. error {err:.2f})"
    return None


def _model_problem(store, adapter, device: torch.device) -> str | None:
    """Why the recorded model cannot be run on held-out studies here (None: it can)."""
    extra, data = _recorded(store)
    if adapter is None:
        return "no model"
    if not is_language_residual(store.hook_name):
        return f"{store.hook_name} is not the language model's residual"
    if data is None:
        return "the store does not say what it was recorded from (not workbench.record)"
    if not data.exists():
        return f"the recorded data {data} is not here"
    if not 0 <= store.layer < adapter.n_layers:
        return f"the model has no block {store.layer}"
    size = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    if device.type == "cpu" and size > BIG_MODEL_BYTES:
        return f"a {size / 1e9:.0f} GB model is not run on the CPU (use --device cuda)"
    return _reproduces(store, adapter, data, extra)


def _model_items(store, n: int, seed: int) -> tuple[list, bool]:
    """Up to ``n`` items of studies the store lacks (held out), else of stored studies."""
    extra, data = _recorded(store)
    stored = set(store.manifest["studies_complete"])
    seen = stored | {int(s) for s in store.manifest["skipped"]}
    fresh = sorted(set(study_ids(data, extra.get("id_column") or "")) - seen)
    pool = np.asarray(fresh or sorted(stored), np.int64)
    order = np.random.default_rng(seed).permutation(pool)
    items, start = [], 0
    while len(items) < n and start < len(order):  # skipped studies are replaced by the next
        chunk = order[start : start + 2 * n].tolist()
        got = {it.study_id: it for it in _collection(data, extra, chunk)}
        items += [got[s] for s in chunk if s in got][: n - len(items)]
        start += len(chunk)
    return items, bool(fresh)


def plan_quality(n: int, seed: int, store, adapter, device: torch.device, notes: list[str]):
    """The :class:`QualityPlan` for ``n`` studies (see the module docstring)."""
    if n == 0:
        notes.append("SAE quality not computed (quality_studies = 0)")
        return OFF
    problem = _model_problem(store, adapter, device)
    if problem is None:
        try:
            items, held_out = _model_items(store, n, seed)
        except _LOAD_ERRORS as exc:
            items, held_out, problem = [], False, f"the recorded data is unreadable: {exc}"
        if items:
            if not held_out:
                notes.append("SAE quality on stored studies: every study of the data is stored")
            return QualityPlan("model", held_out, OFF.store_sample, items, adapter)
        problem = problem or "no readable study in the recorded data"
    stored = np.asarray(sorted(store.manifest["studies_complete"]), np.int64)
    size = min(n, len(stored), max(STORE_MIN, len(stored) // STORE_SHARE))
    pick = np.random.default_rng(seed).choice(stored, size, replace=False)
    notes.append(
        f"CE loss recovered not computed ({problem}); FVU, L0, dead and dense fractions on "
        f"{len(pick)} stored studies"
    )
    return QualityPlan("store", False, np.sort(pick), [])


def model_quality(plan: QualityPlan, sae, store, notes: list[str]):
    """Run the plan's items through the model: the accumulator and the losses per prefix.

    FVU, L0, dead and dense fractions are measured on the activations the clean run of the
    CE loss meets at the recorded hook (and on the SAE's code of them, computed there once):
    no forward pass of their own.
    """
    adapter, (extra, _) = plan.adapter, _recorded(store)
    sae = sae.to(adapter.device)
    acc = QualityAccumulator(sae)
    kept_kinds = (extra.get("image_tokens", "all"), extra.get("prompt_tokens", "all"))

    def batches():
        for item in plan.items:
            try:
                prepared = prepare_item(adapter, item)
            except (CXRDataError, OSError) as exc:
                notes.append(f"SAE quality: study {item.study_id} skipped ({exc})")
                continue
            keep = keep_mask(prepared.tokens, *kept_kinds)
            report = [t["kind"] == "report" for t in prepared.tokens]
            yield {
                **adapter.device_inputs(prepared),
                LOSS_MASK: torch.tensor([report]),
                SPLICE_MASK: torch.tensor([keep]),
            }

    def measure(batch, x_BTD: torch.Tensor, lat_BTF: torch.Tensor) -> None:
        kept = batch[SPLICE_MASK][0]  # the positions the store keeps, as recorded
        acc.update(sae, x_BTD[0][kept.to(x_BTD.device)], lat_BTF[0][kept.to(lat_BTF.device)])
        acc.n_studies += 1

    prefixes = tuple(range(1, len(sae.group_sizes) + 1))
    try:
        losses = splice_losses_by_prefix(
            adapter.model, sae, batches(), store.hook_name, prefixes, on_clean=measure
        )
    except ValueError as exc:  # no report token to predict
        notes.append(f"CE loss recovered not computed: {exc}")
        losses = None
    finally:
        sae.cpu()
    return acc, losses


def quality_table(acc: QualityAccumulator, plan: QualityPlan, losses) -> pa.Table:
    """The ``sae_quality`` rows: one per Matryoshka prefix."""
    cols = acc.columns()
    G = len(cols["n_groups"])
    ce = {k: [None] * G for k in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_recovered")}
    n_ce = [None] * G
    if losses is not None:
        for i, g in enumerate(cols["n_groups"]):
            got = losses[g]
            ce["ce_clean"][i], ce["ce_spliced"][i] = got.clean, got.spliced
            ce["ce_zero_ablated"][i], n_ce[i] = got.zero_ablated, got.n_tokens
            ce["ce_recovered"][i] = None if np.isnan(got.recovered) else got.recovered
    return pa.table(
        {
            "n_groups": pa.array(cols["n_groups"], pa.int32()),
            "n_latents": pa.array(cols["n_latents"], pa.int32()),
            "source": [plan.mode] * G,
            "held_out": [plan.held_out] * G,
            "n_studies": pa.array([acc.n_studies] * G, pa.int32()),
            "n_tokens": pa.array([acc.n_tokens] * G, pa.int64()),
            **{k: pa.array(cols[k], pa.float64()) for k in METRICS},
            **{k: pa.array(v, pa.float64()) for k, v in ce.items()},
            "n_ce_tokens": pa.array(n_ce, pa.int64()),
        }
    )


def write_quality(con, plan: QualityPlan, sae, store, acc, notes: list[str]) -> None:
    """``sae_quality`` from the plan (``acc``: the encode pass's sample, mode "store")."""
    if plan.mode == "off":
        return
    losses = None
    if plan.mode == "model":
        acc, losses = model_quality(plan, sae, store, notes)
    elif acc is not None:
        acc.n_studies = len(plan.store_sample)
    if acc is None or acc.n_tokens == 0:
        notes.append("SAE quality: no token evaluated")
        return
    con.register("_quality", quality_table(acc, plan, losses))
    con.execute("INSERT INTO sae_quality SELECT * FROM _quality ORDER BY n_groups")
    con.unregister("_quality")
