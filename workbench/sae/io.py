"""SAE files: our artefact (SAELens format + a small JSON of our own), SAELens, dictionary_learning.

* **Ours** = a SAELens inference directory (``cfg.json`` + ``sae_weights.safetensors``, saved as
  a JumpReLU SAE whose per-latent threshold is our scalar threshold, exactly how SAELens saves
  its own Matryoshka BatchTopK SAEs) plus ``workbench_sae.json`` (k, group sizes, training
  facts). ``sae_lens.SAE.load_from_disk`` loads it and gives the same feature activations.
* **SAELens**: ``jumprelu`` and ``standard`` inference SAEs are read directly from those two
  files (no sae_lens import needed at run time).
* **dictionary_learning** Matryoshka BatchTopK: ``ae.pt`` (state dict ``W_enc``, ``b_enc``,
  ``W_dec``, ``b_dec``, ``k``, ``threshold``, ``group_sizes``) + ``config.json`` with a
  ``trainer`` table; the format of the released MAIRA-2 SAEs (reference/sae.md Sec. 1).

Every loader returns a :class:`MatryoshkaSAE` that takes raw activations and has unit-norm
decoder rows (norms are folded into the encoder, as SAELens ``fold_W_dec_norm`` does).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from workbench.io import atomic_path, write_json
from workbench.sae.matryoshka import MatryoshkaSAE

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
WORKBENCH_META = "workbench_sae.json"
DL_WEIGHTS = "ae.pt"
DL_CONFIG = "config.json"
FORMAT_VERSION = 1
SAELENS_FORMAT = "6.0.0"
SAVE_ID = "workbench_save_id"


class SAEFormatError(ValueError):
    """A directory holds no SAE we can read, or a malformed one (message names the file)."""


def saelens_cfg(sae: MatryoshkaSAE, model_name: str | None = None) -> dict[str, Any]:
    """The SAELens v6 ``cfg.json`` of a JumpReLU inference SAE describing ``sae``."""
    details = {"k": sae.k, "matryoshka_widths": list(sae.group_ends)}
    metadata = {
        # the layout of SAELens >= 6 configs (older versions keep hook_name at top level)
        "sae_lens_version": SAELENS_FORMAT,
        "sae_lens_training_version": None,
        "hook_name": sae.hook_name,
        "model_name": model_name,
        "training_architecture": "matryoshka_batchtopk",
        "training_architecture_details": details,
        "trained_with": "workbench",
    }
    return {
        "architecture": "jumprelu",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc_DF.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }


def save_sae(
    sae: MatryoshkaSAE, path: str | Path, model_name: str | None = None, extra: dict | None = None
) -> Path:
    """Write ``sae`` (already taking raw activations) as a SAELens directory plus our JSON."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    thr = sae.threshold.detach().float().cpu()
    tensors = {
        "W_enc": sae.W_enc_DF.detach().cpu().contiguous(),
        "b_enc": sae.b_enc_F.detach().cpu().contiguous(),
        "W_dec": sae.W_dec_FD.detach().cpu().contiguous(),
        "b_dec": sae.b_dec_D.detach().cpu().contiguous(),
        "threshold": (thr * torch.ones(sae.d_sae)).to(sae.W_enc_DF.dtype).contiguous(),
    }
    save_id = uuid.uuid4().hex  # ties the three files of one save together (sae_incomplete)
    write_json(path / SAELENS_CFG, saelens_cfg(sae, model_name))
    meta = {
        "format_version": FORMAT_VERSION,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "group_sizes": list(sae.group_sizes),
        "hook_name": sae.hook_name,
        "threshold": thr.tolist(),
        **(extra or {}),
        SAVE_ID: save_id,
    }
    write_json(path / WORKBENCH_META, meta)
    with atomic_path(path / SAELENS_WEIGHTS) as tmp:  # last: present means a whole save
        save_file(tensors, str(tmp), metadata={"format": "pt", SAVE_ID: save_id})
    return path


def sae_incomplete(path: str | Path) -> str | None:
    """None when ``path`` holds one whole :func:`save_sae` artefact, else what is wrong.

    The "already done?" check of SAE training: all three files exist and the weights carry
    the save id of the JSON beside them (a save interrupted between its files, or a
    retraining interrupted half-way through saving, leaves ids that differ).
    """
    path = Path(path)
    for name in (SAELENS_CFG, WORKBENCH_META, SAELENS_WEIGHTS):
        if not (path / name).is_file():
            return f"{path / name} does not exist"
    try:
        meta = _read_json(path / WORKBENCH_META)
    except SAEFormatError as exc:
        return str(exc)
    return _save_id_problem(path, meta)


def _save_id_problem(path: Path, meta: dict[str, Any]) -> str | None:
    """A mismatch between the save id in ``meta`` and the weights' header, in words."""
    expected = meta.get(SAVE_ID)
    if expected is None:  # written before save ids: nothing to compare
        return None
    try:
        with safe_open(str(path / SAELENS_WEIGHTS), "pt") as fh:
            found = (fh.metadata() or {}).get(SAVE_ID)
    except (OSError, RuntimeError, ValueError) as exc:  # safetensors' header errors
        return f"{path / SAELENS_WEIGHTS}: cannot read: {exc}"
    if found != expected:
        return (
            f"{path}: {SAELENS_WEIGHTS} (save {found}) and {WORKBENCH_META} (save {expected}) "
            "come from different saves (a save was interrupted); rerun train_sae to resume"
        )
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object")
    return data


def _require(state: dict[str, torch.Tensor], keys: tuple[str, ...], source: Path) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise SAEFormatError(f"{source}: missing tensor(s) {missing}; found {sorted(state)}")


@torch.no_grad()
def from_tensors(
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor | float,
    k: int | None,
    group_sizes: tuple[int, ...] | None,
    hook_name: str | None,
    source: Path,
) -> MatryoshkaSAE:
    """Build a :class:`MatryoshkaSAE`, folding decoder-row norms into the encoder."""
    d_in, d_sae = W_enc.shape
    if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
        raise SAEFormatError(
            f"{source}: inconsistent shapes W_enc {tuple(W_enc.shape)}, W_dec "
            f"{tuple(W_dec.shape)}, b_enc {tuple(b_enc.shape)}, b_dec {tuple(b_dec.shape)}"
        )
    thr = torch.as_tensor(threshold, dtype=torch.float32).flatten()
    if thr.numel() > 1 and bool((thr == thr[0]).all()):
        thr = thr[:1]
    if thr.numel() not in (1, d_sae):
        raise SAEFormatError(f"{source}: threshold has {thr.numel()} values, d_sae is {d_sae}")
    norms_F = W_dec.float().norm(dim=1).clamp_min(1e-12)
    if not torch.allclose(norms_F, torch.ones_like(norms_F), atol=1e-4) and thr.numel() == 1:
        # a latent-wise rescale turns a scalar threshold into a per-latent one
        thr = thr.expand(d_sae).clone() if float(thr) >= 0 else thr
    sae = MatryoshkaSAE(d_in, d_sae, k, group_sizes, hook_name, dtype=W_enc.dtype)
    sae.W_enc_DF.copy_(W_enc * norms_F.to(W_enc.dtype))
    sae.b_enc_F.copy_(b_enc * norms_F.to(b_enc.dtype))
    sae.W_dec_FD.copy_(W_dec / norms_F[:, None].to(W_dec.dtype))
    sae.b_dec_D.copy_(b_dec)
    if thr.numel() == d_sae:
        thr = thr * norms_F
    sae.threshold = thr.reshape(()) if thr.numel() == 1 else thr
    return sae


def _widths_to_sizes(widths: list[int] | None, d_sae: int) -> tuple[int, ...] | None:
    if not widths:
        return None
    ends = sorted({int(w) for w in widths if 0 < int(w) <= d_sae} | {d_sae})
    return tuple(b - a for a, b in zip([0, *ends[:-1]], ends))


def load_ours(path: Path, device: str | torch.device = "cpu") -> MatryoshkaSAE:
    """Read an artefact written by :func:`save_sae`."""
    meta = _read_json(path / WORKBENCH_META)
    problem = _save_id_problem(path, meta)
    if problem is not None:
        raise SAEFormatError(problem)
    sae = load_saelens(path, device)
    sae.k = meta.get("k")
    sae.group_sizes = tuple(meta.get("group_sizes") or sae.group_sizes)
    sae.hook_name = meta.get("hook_name", sae.hook_name)
    return sae


def load_saelens(path: Path, device: str | torch.device = "cpu") -> MatryoshkaSAE:
    """Read a SAELens inference directory (``jumprelu`` or ``standard`` architecture)."""
    cfg = _read_json(path / SAELENS_CFG)
    arch = cfg.get("architecture", "standard")
    if arch not in ("jumprelu", "standard"):
        raise SAEFormatError(
            f"{path / SAELENS_CFG}: architecture '{arch}' is not supported (jumprelu or standard;"
            " SAELens saves trained (Matryoshka) BatchTopK SAEs as jumprelu)"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise SAEFormatError(
            f"{path / SAELENS_CFG}: normalize_activations='{norm}' is not supported; fold the"
            " scaling into the weights first (SAELens fold_activation_norm_scaling_factor)"
        )
    try:
        state = load_file(str(path / SAELENS_WEIGHTS))
    except (OSError, RuntimeError) as exc:
        raise SAEFormatError(f"{path / SAELENS_WEIGHTS}: cannot read: {exc}") from None
    _require(state, ("W_enc", "b_enc", "W_dec", "b_dec"), path / SAELENS_WEIGHTS)
    b_enc = state["b_enc"]
    if not cfg.get("apply_b_dec_to_input", True):
        # x W + b == (x - b_dec) W + (b + b_dec W): move b_dec into the encoder bias
        b_enc = b_enc + state["b_dec"] @ state["W_enc"]
    if arch == "jumprelu":
        _require(state, ("threshold",), path / SAELENS_WEIGHTS)
        threshold: torch.Tensor | float = state["threshold"]
    else:
        threshold = 0.0
    meta = cfg.get("metadata") or {}
    details = meta.get("training_architecture_details") or {}
    d_sae = int(state["W_enc"].shape[1])
    k = details.get("k")
    sae = from_tensors(
        state["W_enc"],
        b_enc,
        state["W_dec"],
        state["b_dec"],
        threshold,
        int(k) if k is not None and float(k).is_integer() and 0 < k <= d_sae else None,
        _widths_to_sizes(details.get("matryoshka_widths"), d_sae),
        meta.get("hook_name") or cfg.get("hook_name"),
        path,
    )
    return sae.to(device)


def _dl_hook_name(trainer: dict[str, Any]) -> str | None:
    """TransformerLens hook name of a dictionary_learning run: the output of block ``layer``."""
    layer = trainer.get("layer")
    if layer is None:
        return None
    from workbench.models.hooks import resid_post_name  # the one place hook names are made

    return resid_post_name(int(layer))


def load_dictionary_learning(path: Path, device: str | torch.device = "cpu") -> MatryoshkaSAE:
    """Read a dictionary_learning ``ae.pt`` (+ optional ``config.json``); raw-activation units.

    dictionary_learning folds its normalisation factor into the biases before saving
    (``scale_biases(norm_factor)`` in ``training.py``), so no rescaling is needed here.
    """
    try:
        state = torch.load(path / DL_WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SAEFormatError(f"{path / DL_WEIGHTS}: cannot read: {exc}") from None
    if not isinstance(state, dict):
        raise SAEFormatError(f"{path / DL_WEIGHTS}: expected a state dict")
    _require(state, ("W_enc", "b_enc", "W_dec", "b_dec"), path / DL_WEIGHTS)
    trainer = {}
    if (path / DL_CONFIG).exists():
        trainer = _read_json(path / DL_CONFIG).get("trainer") or {}
    k = state.get("k", trainer.get("k"))
    sizes = state.get("group_sizes", trainer.get("group_sizes"))
    sae = from_tensors(
        state["W_enc"],
        state["b_enc"],
        state["W_dec"],
        state["b_dec"],
        state.get("threshold", -1.0),
        None if k is None else int(torch.as_tensor(k)),
        None if sizes is None else tuple(int(s) for s in torch.as_tensor(sizes).tolist()),
        _dl_hook_name(trainer),
        path,
    )
    return sae.to(device)


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> MatryoshkaSAE:
    """Load our artefact, a plain SAELens directory, or a dictionary_learning ``ae.pt`` dir.

    ``path`` may also name the ``ae.pt`` file itself. The result takes raw activations.
    """
    path = Path(path)
    if path.is_file() and path.name == DL_WEIGHTS:
        path = path.parent
    if not path.is_dir():
        raise SAEFormatError(f"{path}: no such SAE directory")
    if (path / WORKBENCH_META).exists() and (path / SAELENS_WEIGHTS).exists():
        sae = load_ours(path, device)
    elif (path / SAELENS_CFG).exists() and (path / SAELENS_WEIGHTS).exists():
        sae = load_saelens(path, device)
    elif (path / DL_WEIGHTS).exists():
        sae = load_dictionary_learning(path, device)
    else:
        raise SAEFormatError(
            f"{path}: no SAE found (expected {SAELENS_CFG} + {SAELENS_WEIGHTS}, or {DL_WEIGHTS})"
        )
    return sae.eval().requires_grad_(False)
