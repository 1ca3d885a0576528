"""The Try-a-study tab's handlers: an uploaded radiograph in, findings and firing features out.

Uploads are checked for size, decoded by the project's own readers
(:func:`workbench.cxr.images.load_image`: PNG, JPG, DICOM) into memory, and the uploaded file
is deleted at once: nothing is kept on disk and nothing is written into the run. The model
work (:func:`try_work`) writes the findings, then reads the residual stream at the SAE's layer
over the prompt and the findings, encodes it with the SAE and keeps, for the page, the
features firing on the frontal image (per patch) and on each generated token. No Gradio
import, so it is tested without a browser.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from workbench.cxr.images import CXRDataError, load_image
from workbench.models.hooks import parse_hook_name
from workbench.steer.intervene import generate, steering_hook_name
from workbench.ui import heatmap, render
from workbench.ui.context import AppContext
from workbench.ui.handlers_steer import report_html
from workbench.ui.live import LiveModel, Progress, progress_html, stream

log = logging.getLogger("workbench.ui")

MAX_UPLOAD_BYTES = 20 * 2**20
"""Largest upload accepted (20 MB: a chest X-ray DICOM is typically 5-30 MB uncompressed)."""
TOP_IMAGE = 12
TOP_TOKEN = 3


class TryResult(NamedTuple):
    """What one generation found: the findings and the features that fired."""

    findings: str
    frontal: Image.Image
    grid: tuple[int, int]
    image_features: list[tuple[int, float]]
    """The features with the largest activation on the frontal image, with that maximum."""
    patches: dict[int, np.ndarray]
    """feature -> [n_rows, n_cols] activations over the frontal image's patches."""
    tokens: list[tuple[str, list[tuple[int, float]]]]
    """Each generated token and its strongest features."""


def read_upload(path: str | os.PathLike | None, what: str, required: bool = False):
    """The uploaded image as a greyscale PIL image (None if absent and optional).

    The file is read once and deleted: uploads live only in memory.
    """
    if path is None or str(path) == "":
        if required:
            raise ValueError(f"Upload a {what} image (PNG, JPG or DICOM).")
        return None
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise ValueError(
                f"The {what} image is {size / 2**20:.1f} MB; the limit is "
                f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB."
            )
        try:
            image = load_image(p)
        except CXRDataError as exc:
            raise ValueError(f"The {what} image cannot be read: {_reason(exc, p)}") from exc
        image.load()
        return image
    finally:
        p.unlink(missing_ok=True)


def _reason(exc: Exception, path: Path) -> str:
    """The reader's message without the (temporary, private) upload path."""
    text = str(exc).replace(f"{path}: ", "").replace(str(path), "the file")
    return text


def study_of(frontal: Image.Image, lateral: Image.Image | None, indication: str | None) -> dict:
    """The upload as a study mapping for ``adapter.prepare``."""
    return {
        "frontal": frontal,
        "lateral": lateral,
        "prior_frontal": None,
        "indication": (indication or "").strip() or None,
        "technique": None,
        "comparison": None,
        "prior_report": None,
    }


def try_work(study: dict, max_new_tokens: int):
    """The job: findings, then the SAE features over the frontal image and each new token."""

    def work(adapter, sae, monitor_for) -> TryResult:
        steering_hook_name(adapter, sae, None)  # the SAE fits the model (clear error if not)
        inp = adapter.prepare(study)
        monitor = monitor_for("writing the findings", max_new_tokens)
        text = generate(adapter, inp, max_new_tokens=max_new_tokens, monitor=monitor)
        full = adapter.prepare(study, findings=text) if text.strip() else inp
        monitor_for("reading the features", 0)
        acts_TF = features_of(adapter, sae, full)
        return summarise(text, study["frontal"], full.tokens, acts_TF, adapter.tokenizer)

    return work


@torch.no_grad()
def features_of(adapter, sae, inp) -> torch.Tensor:
    """SAE activations [T, d_sae] over every position of ``inp`` at the SAE's layer."""
    resid_TD = adapter.residual(inp, parse_hook_name(sae.hook_name))
    return sae.encode(resid_TD.to(sae.W_enc_DF.device).float()).float().cpu()


def summarise(text, frontal, tokens: list[dict], acts_TF: torch.Tensor, tokenizer) -> TryResult:
    """Keep what the page shows: top image features with their patch grids, token features."""
    image_pos = [i for i, t in enumerate(tokens) if t.get("kind") == "image"
                 and t.get("image_index") == 0 and t.get("patch_row") is not None]  # fmt: skip
    n_rows = 1 + max((tokens[i]["patch_row"] for i in image_pos), default=0)
    n_cols = 1 + max((tokens[i]["patch_col"] for i in image_pos), default=0)
    image_features: list[tuple[int, float]] = []
    patches: dict[int, np.ndarray] = {}
    if image_pos:
        img_PF = acts_TF[image_pos]
        peak_F = img_PF.max(0).values
        k = min(TOP_IMAGE, int((peak_F > 0).sum()))
        top = torch.topk(peak_F, k) if k else None
        for f, v in zip(top.indices.tolist(), top.values.tolist()) if top is not None else ():
            image_features.append((f, float(v)))
            grid = np.zeros((n_rows, n_cols), np.float32)
            for i, pos in enumerate(image_pos):
                grid[tokens[pos]["patch_row"], tokens[pos]["patch_col"]] = float(img_PF[i, f])
            patches[f] = grid
    out_tokens = []
    for i, t in enumerate(tokens):
        if t.get("kind") != "report":
            continue
        vals, idx = torch.topk(acts_TF[i], min(TOP_TOKEN, acts_TF.shape[1]))
        feats = [(int(f), float(v)) for f, v in zip(idx.tolist(), vals.tolist()) if v > 0]
        out_tokens.append((render.token_text(t.get("token") or ""), feats))
    return TryResult(text, frontal, (n_rows, n_cols), image_features, patches, out_tokens)


def labels(ctx: AppContext, features: list[int]) -> dict[int, str]:
    """Best label of each feature (empty when the run has none)."""
    if not features or not ctx.has("feature_labels"):
        return {}
    rows = ctx.rows(
        "SELECT feature, arg_max(label, CASE method WHEN 'human' THEN 3 WHEN 'statistical' "
        "THEN 1 ELSE 2 END) AS label FROM feature_labels WHERE feature IN (SELECT unnest(?)) "
        "GROUP BY feature",
        [features],
    )
    return {int(r["feature"]): r["label"] for r in rows}


def feature_options(ctx: AppContext, result: TryResult) -> list[tuple[str, int]]:
    """Dropdown choices: the image features, strongest first."""
    names = labels(ctx, [f for f, _ in result.image_features])
    return [(f"{f} · {names.get(f) or 'unlabelled'} (max {v:.2f})", f)
            for f, v in result.image_features]  # fmt: skip


def heatmap_html(result: TryResult | None, feature: Any) -> str:
    """The frontal image with ``feature``'s patch activations over it."""
    if result is None:
        return ""
    f = render.as_int(feature)
    if f is None or f not in result.patches:
        uri = heatmap.data_uri(heatmap.thumbnail(result.frontal))
        return render.image_block(uri, "the uploaded frontal image (no feature fires on it)")
    grid = result.patches[f]
    uri = heatmap.data_uri(heatmap.overlay(result.frontal, grid, float(grid.max())))
    return render.image_block(uri, f"feature {f} over the frontal image (max {grid.max():.2f})")


def findings_html(ctx: AppContext, result: TryResult) -> str:
    """The findings, then each generated token with its strongest features as links."""
    names = labels(ctx, sorted({f for _, fs in result.tokens for f, _ in fs}))
    findings = render.card("Findings", report_html("wb-try-findings", escape(result.findings)))
    rows = []
    for tok, feats in result.tokens:
        chips = "".join(
            render.feature_link(f, f"#{f} {names.get(f) or ''}".strip(), f" · {v:.2f}")
            for f, v in feats
        )
        rows.append(f"<tr><td><code>{escape(tok)}</code></td>"
                    f'<td><div class="wb-chips">{chips}</div></td></tr>')  # fmt: skip
    table = ('<div style="max-height:420px;overflow-y:auto"><table class="wb-table"><thead><tr>'
             "<th>token</th><th>strongest features</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table></div>") if rows else ""  # fmt: skip
    image = "".join(render.feature_link(f, f"#{f} {names.get(f) or ''}".strip(), f" · {v:.2f}")
                    for f, v in result.image_features)  # fmt: skip
    return (
        findings
        + render.card("Features on the image", f'<div class="wb-chips">{image}</div>'
                      if image else '<p class="wb-empty">None fires on the image.</p>')
        + render.card("Features on each generated token", table or '<p class="wb-empty">-</p>')
    )  # fmt: skip


def upload(path: str | None, what: str) -> tuple[Image.Image | None, str]:
    """An upload event: the decoded image (kept in memory) and a line saying what it is."""
    try:
        image = read_upload(path, what)
    except ValueError as exc:
        return None, render.message(str(exc), "error")
    if image is None:
        return None, ""
    return image, render.message(f"{what} image read: {image.width} x {image.height} pixels")


def updates(
    ctx: AppContext,
    live: LiveModel,
    frontal: Image.Image | None,
    lateral: Image.Image | None,
    indication: str | None,
    max_new_tokens: int,
) -> Iterator[tuple]:
    """The Generate button: (progress, findings, feature choices, heatmap, result) per update.

    ``None`` leaves a panel as it is; feature choices are (choices, selected).
    """
    problem = live.problem()
    if problem:
        yield (render.message(problem, "error"), None, None, None, None)
        return
    if frontal is None:
        yield (render.message("Upload a frontal image first.", "warn"), None, None, None, None)
        return
    work = try_work(study_of(frontal, lateral, indication), max(1, int(max_new_tokens)))

    def show(p: Progress) -> tuple:
        if not p.done.is_set():
            return (progress_html(p), None, None, None, None)
        if p.error:
            return (render.message(p.error, "error"), None, None, None, None)
        result: TryResult = p.result
        options = feature_options(ctx, result)
        first = options[0][1] if options else None
        return ("", findings_html(ctx, result), (options, first), heatmap_html(result, first),
                result)  # fmt: skip

    yield from stream(live, work, show)
