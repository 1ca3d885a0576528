"""What analyse reads: the store, the SAE, the dataset's studies and labels, the unembedding.

Each input is checked before any work starts, and a mismatch is an :class:`AnalyseError`
naming the file: an SAE whose ``d_in`` differs from the store's width, an SAE trained on
another hook than the store's, an empty store. Labels missing for some studies are not an
error: those studies are left out of the affected AUROCs and counted in the run's notes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from workbench.analyse.concepts import LabelMatrix, load_labels
from workbench.analyse.config import AnalyseConfig
from workbench.analyse.directions import Unembedding
from workbench.analyse.quality import OFF, QualityPlan, plan_quality
from workbench.analyse.user_labels import (
    UserLabelError,
    UserLabels,
    check_known,
    merge,
    read_user_labels,
)
from workbench.cxr.collection import TABLE_FORMATS
from workbench.models.hooks import is_language_residual
from workbench.run import RunLayout
from workbench.store import ActivationStore, StoreError

log = logging.getLogger("workbench.analyse")


class AnalyseError(ValueError):
    """The inputs of analyse are missing or do not fit together."""


class Inputs(NamedTuple):
    store: ActivationStore
    sae: object  # workbench.sae.MatryoshkaSAE
    sae_path: Path
    data_root: Path | None
    model_path: Path | None
    unembed: Unembedding | None  # None: no model, logit effects skipped (noted)
    user_labels: UserLabels | None = None  # analyse --labels FILE.csv
    quality: QualityPlan = OFF  # how SAE quality is measured (workbench.analyse.quality)


def open_inputs(cfg: AnalyseConfig, notes: list[str]) -> Inputs:
    """Resolve the run's default paths, open store, SAE and model; check they fit together.

    Everything that can fail is loaded here, before the long pass over the activations.
    """
    run = RunLayout(cfg.run)
    sae_path = cfg.sae or run.sae
    store, sae = open_store_and_sae(cfg.store or run.activations, sae_path, notes)
    default_data = run.data_or_recorded(store.manifest.get("extra", {}).get("data"))
    data = _optional(cfg.data, default_data, "dataset root")
    if data is not None and not (data.is_dir() or data.suffix.lower() in TABLE_FORMATS):
        notes.append(f"{data} is neither a dataset directory nor a table of texts: no labels")
        data = None
    model = _optional(cfg.model, run.model, "model") or _manifest_model(store, notes)
    device = cfg.torch_device()
    adapter, language = None, is_language_residual(store.hook_name)
    if not language:  # vision / segmentation hooks: no unembedding, no splicing into the LM
        notes.append(f"{store.hook_name} is not the language model's residual: no logit effects")
    elif cfg.n_logits or cfg.quality_studies:
        adapter = load_adapter(model, device, notes)
    if adapter is not None and adapter.d_model != sae.d_in:
        problem = f"{model}: model width {adapter.d_model} differs from the SAE's d_in={sae.d_in}"
        if cfg.n_logits:  # logit effects need the model the SAE reads
            raise AnalyseError(problem)
        notes.append(f"{problem}: not used")
        adapter = None
    unembed = unembedding(adapter) if adapter is not None and cfg.n_logits else None
    user = None
    if cfg.labels is not None:
        try:
            user = read_user_labels(cfg.labels)
            stored = np.asarray(store.manifest.get("studies_complete") or [], np.int64)
            check_known(user, stored, notes)
        except UserLabelError as exc:
            raise AnalyseError(str(exc)) from None
    quality = plan_quality(cfg.quality_studies, cfg.seed, store, adapter, device, notes)
    return Inputs(store, sae, sae_path, data, model, unembed, user, quality)


def _manifest_model(store: ActivationStore, notes: list[str]) -> Path | None:
    """The model the store was recorded with, when it can be found on this machine."""
    from workbench.models.hooks import SEGMENTATION_MODEL
    from workbench.models.registry import resolve_model_dir

    name = store.manifest.get("model")
    if not name:
        return None
    if str(name).startswith(SEGMENTATION_MODEL):
        notes.append(f"the store's model {name!r} is a segmentation model: no logit effects")
        return None
    try:
        path = resolve_model_dir(name)
    except (OSError, ValueError) as exc:
        notes.append(f"the store's model {name!r} was not found here ({exc}): no logit effects")
        return None
    return path if (path / "config.json").is_file() else None


def _optional(given: Path | None, default: Path, what: str) -> Path | None:
    """A path the user gave (must exist), else the run's default if it exists, else None."""
    if given is not None:
        if not given.exists():
            raise AnalyseError(f"{given}: {what} not found")
        return given
    return default if default.exists() else None


def open_store_and_sae(store_path: Path, sae_path: Path, notes: list[str]) -> tuple:
    """The store and the SAE, refused unless the SAE reads the store's width and hook."""
    from workbench.sae import load_sae

    try:
        store = ActivationStore(store_path)
    except StoreError as exc:
        raise AnalyseError(str(exc)) from None
    if not sae_path.exists():
        raise AnalyseError(f"{sae_path}: no SAE here (train one with train_sae)")
    try:
        sae = load_sae(sae_path)
    except ValueError as exc:
        raise AnalyseError(f"{sae_path}: cannot load SAE: {exc}") from None
    if sae.d_in != store.d_model:
        raise AnalyseError(
            f"{sae_path}: SAE d_in={sae.d_in} but the store {store_path} has width "
            f"d_model={store.d_model}"
        )
    if sae.hook_name is None:
        notes.append(f"{sae_path}: the SAE records no hook name, not checked against the store")
        log.warning("%s", notes[-1])
    elif sae.hook_name != store.hook_name:
        raise AnalyseError(
            f"{sae_path}: SAE was trained on {sae.hook_name} but the store {store_path} holds "
            f"{store.hook_name}"
        )
    if store.n_tokens == 0:
        raise AnalyseError(f"{store_path}: the activation store is empty (0 tokens)")
    return store, sae


def _study_rows(con) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    got = con.execute(
        "SELECT study_id, any_value(subject_id), count(*) FROM tokens GROUP BY 1 ORDER BY 1"
    ).fetchnumpy()
    return tuple(np.asarray(v) for v in got.values())  # type: ignore[return-value]


def _dataset_info(root: Path, study_ids: np.ndarray, notes: list[str]) -> tuple[dict, dict | None]:
    """Per stored study: split, frontal path, report sections; and the CheXpert table."""
    from workbench.cxr import mimic
    from workbench.cxr.images import CXRDataError
    from workbench.cxr.sections import read_report
    from workbench.cxr.studies import FRONTAL_VIEWS, build_index, pick_view

    index = build_index(root, labels="chexpert")
    chexpert = index.labels if mimic.find_table(root, "chexpert") else None
    info, no_report = {}, 0
    for sid in map(int, study_ids):
        metas = index.images.get(sid, [])
        frontal = pick_view(metas, FRONTAL_VIEWS) if metas else None
        rec = {
            "split": index.split.get(sid),
            "frontal_path": None,
            "findings": None,
            "impression": None,
        }
        if frontal is not None:
            rec["frontal_path"] = str(
                mimic.image_path(root, frontal.subject_id, sid, frontal.dicom_id)
            )
            try:
                report = read_report(mimic.report_path(root, frontal.subject_id, sid))
                rec["findings"], rec["impression"] = report.findings, report.impression
            except CXRDataError:
                no_report += 1
        info[sid] = rec
    if no_report:
        notes.append(f"{no_report} stored studies have no readable report in {root}")
    return info, chexpert


def _text_info(data: Path, study_ids: np.ndarray, recorded: dict, notes: list[str]) -> dict:
    """Per stored study of a reports tree or a table of texts: its FINDINGS and IMPRESSION."""
    from workbench.cxr.collection import study_texts

    try:
        texts = study_texts(
            data,
            set(map(int, study_ids)),
            recorded.get("text_column") or "text",
            recorded.get("id_column") or "",
            recorded.get("sections") or "findings",
        )
    except (OSError, ValueError) as exc:
        notes.append(f"no report texts read from {data}: {exc}")
        return {}
    if len(texts) < len(study_ids):
        notes.append(f"{len(study_ids) - len(texts)} stored studies have no report text in {data}")
    return {s: {"findings": f, "impression": i} for s, (f, i) in texts.items()}


def write_studies_and_labels(
    con,
    data_root: Path | None,
    notes: list[str],
    user: UserLabels | None = None,
    recorded: dict | None = None,
) -> LabelMatrix:
    """``studies``, ``study_labels`` and ``concepts`` for the studies in the store (plus the
    user's own labels as source 'user').

    ``data_root`` is a MIMIC-CXR root (splits, frontal images, report sections, CheXpert and
    phantom labels), or a reports tree or table of texts (report sections only, read with the
    store's recording settings ``recorded``: its manifest's ``extra``).
    """
    sids, subjects, counts = _study_rows(con)
    info, chexpert, phantom = {}, None, None
    if data_root is None:
        notes.append("no dataset root: no labels, concept AUROCs not computed")
    else:
        from workbench.cxr import mimic

        if data_root.is_file() or mimic.find_table(data_root, "metadata") is None:
            info = _text_info(data_root, sids, recorded or {}, notes)
        else:
            info, chexpert = _dataset_info(data_root, sids, notes)
        phantom = data_root / "phantom-labels.csv"
        phantom = phantom if phantom.exists() else None
    labels = merge(load_labels(sids, chexpert, phantom, notes), user)
    has = {
        src: ~np.isnan(labels.values[:, [s == src for s in labels.sources]]).all(1)
        if src in labels.sources
        else np.zeros(len(sids), bool)
        for src in ("chexpert", "phantom")
    }
    for src, ok in has.items():
        if src in labels.sources and not ok.all():
            notes.append(
                f"{int((~ok).sum())} of {len(sids)} stored studies have no {src} "
                "labels (left out of those AUROCs)"
            )
    con.register(
        "_studies",
        pa.table(
            {
                "study_id": sids,
                "subject_id": subjects,
                "split": [info.get(int(s), {}).get("split") for s in sids],
                "n_tokens": counts.astype(np.int32),
                "has_chexpert": has["chexpert"],
                "has_phantom": has["phantom"],
                **{
                    k: [info.get(int(s), {}).get(k) for s in sids]
                    for k in ("frontal_path", "findings", "impression")
                },
            }
        ),
    )
    con.execute("INSERT INTO studies SELECT * FROM _studies")
    con.unregister("_studies")
    _write_label_tables(con, labels)
    return labels


def _write_label_tables(con, labels: LabelMatrix) -> None:
    """``study_labels`` (long form, known values only) and ``concepts`` (counts)."""
    s_idx, c_idx = np.nonzero(~np.isnan(labels.values))
    con.register(
        "_labels",
        pa.table(
            {
                "study_id": labels.study_ids[s_idx],
                "source": np.asarray(labels.sources, object)[c_idx],
                "concept": np.asarray(labels.concepts, object)[c_idx],
                "value": labels.values[s_idx, c_idx],
            }
        ),
    )
    con.execute("INSERT INTO study_labels SELECT * FROM _labels ORDER BY study_id")
    counts = labels.counts()
    con.register(
        "_concepts",
        pa.table(
            {
                "concept": list(labels.concepts),
                "source": list(labels.sources),
                **{k: v.astype(np.int32) for k, v in counts.items()},
            }
        ),
    )
    con.execute("INSERT INTO concepts SELECT * FROM _concepts")
    for name in ("_labels", "_concepts"):
        con.unregister(name)


def load_adapter(model_path: Path | None, device, notes: list[str]):
    """The model (logit effects, SAE quality), or None (with a note) when there is none.

    Loaded through :func:`workbench.models.registry.load_model` (any model the workbench
    supports) on ``device``, in float32, or in half precision when the checkpoint is large
    (MAIRA-2: 7B; bfloat16 on the CPU, the GPU's default half type on a GPU).
    """
    if model_path is None:
        notes.append("no model: logit effects skipped")
        log.info("no model given or found: logit effects skipped")
        return None
    from workbench.models.registry import default_dtype, load_model, resolve_model_dir

    try:
        directory = resolve_model_dir(model_path)
        size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
        dtype = torch.float32  # exact logit effects and losses for every model that fits
        if size > 4e9:
            dtype = default_dtype(device) if device.type == "cuda" else torch.bfloat16
        return load_model(directory, device, dtype)
    except (OSError, ValueError) as exc:
        raise AnalyseError(f"{model_path}: cannot load the model: {exc}") from None


def unembedding(adapter) -> Unembedding:
    """The model's unembedding for logit effects, on the CPU in float32: the final norm's scale
    folded into ``W_U``, every id decoded to its text."""
    W_U_DV = adapter.unembed.detach().float().cpu()
    scale = getattr(adapter.final_norm, "weight", None)
    if isinstance(scale, torch.Tensor) and scale.shape == (W_U_DV.shape[0],):
        W_U_DV = W_U_DV * scale.detach().float().cpu()[:, None]
    tok = adapter.tokenizer
    n_known = len(tok)
    tokens = [tok.decode([i]) if i < n_known else f"<id {i}>" for i in range(W_U_DV.shape[1])]
    return Unembedding(W_U_DV.contiguous(), tokens)
