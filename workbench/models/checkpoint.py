"""Hub-layout checkpoints: strict loading, sharded saving, and the one key mapping.

The published MAIRA-2 checkpoint stores ``model.safetensors.index.json`` plus shards whose
keys are ``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.*`` and
``multi_modal_projector.layers.{0,2,4,6}.*`` (maira2.md section 2). Our module tree uses the
same names, except that transformers 5 renamed Dinov2's attention projections. That rename is
the only mapping, done by :func:`hub_to_module_key` / :func:`module_to_hub_key`, and the
models this project saves use the hub names, so a mini checkpoint looks like the real one.

Loading is strict: a checkpoint key that maps onto no parameter, a parameter that no key
provides, a shape mismatch, or an index that names a tensor its shard lacks all raise
:class:`CheckpointError` naming the keys. Nothing is downloaded: a repo id is only looked up
in the local Hugging Face cache (``local_files_only``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.io import atomic_path, write_text

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# Dinov2 attention renames of transformers 5, (hub fragment, module fragment), applied only
# inside "vision_tower.encoder.layer.N." keys. transformers' own conversion_mapping.py applies
# the same renames when it loads a Dinov2Model checkpoint.
_VISION_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_VISION_LAYER_PREFIX = "vision_tower.encoder.layer."


class CheckpointError(ValueError):
    """A checkpoint directory does not match the model: missing/unexpected keys, bad shapes."""


def _rename_vision_key(key: str, pairs: Iterable[tuple[str, str]]) -> str:
    """``key`` with the first ``(old, new)`` fragment of ``pairs`` it holds replaced once;
    only inside a Dinov2 layer key, else ``key`` unchanged."""
    if key.startswith(_VISION_LAYER_PREFIX):
        for old, new in pairs:
            if old in key:
                return key.replace(old, new, 1)
    return key


def hub_to_module_key(key: str) -> str:
    """Map a checkpoint (hub) key to our state-dict key; identity outside Dinov2 attention."""
    return _rename_vision_key(key, _VISION_RENAMES)


def module_to_hub_key(key: str) -> str:
    """Inverse of :func:`hub_to_module_key`."""
    return _rename_vision_key(key, ((module, hub) for hub, module in _VISION_RENAMES))


def resolve_checkpoint_dir(path_or_repo: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local directory as is, else the local HF-cache snapshot of a repo id (no download)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    spec = str(path_or_repo)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory not found: {spec}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = snapshot_download(spec, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{spec} is neither a local directory nor in the local Hugging Face cache "
            f"({cache_dir or 'default HF_HUB_CACHE'}); nothing is downloaded - fetch it first "
            "with `huggingface-cli download` and pass the directory"
        ) from err
    return Path(snap)


def weight_map(directory: Path) -> dict[str, str]:
    """Checkpoint key -> shard file name, from the index or a single ``model.safetensors``."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from err
        return dict(mapping)
    single = directory / SINGLE_NAME
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {k: SINGLE_NAME for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    raise CheckpointError(f"{directory}: neither {INDEX_NAME} nor {SINGLE_NAME} found")


def _describe(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(directory: Path, hub_keys: Iterable[str], expected: Iterable[str]) -> None:
    """Raise CheckpointError unless the mapped checkpoint keys equal the expected keys."""
    mapped = {hub_to_module_key(k): k for k in hub_keys}
    expected = set(expected)
    missing = expected - mapped.keys()
    unexpected = [mapped[k] for k in mapped.keys() - expected]
    problems = []
    if missing:
        hub_names = [module_to_hub_key(k) for k in missing]
        problems.append(f"missing keys ({len(missing)}): {_describe(hub_names)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {directory} does not match the model: " + "; ".join(problems)
        )


def load_state(
    directory: Path,
    expected_shapes: Mapping[str, torch.Size],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Read every shard into a state dict keyed by module names, checked against the model.

    Floating tensors are cast to ``dtype`` (when given) as they are read, so a float32
    checkpoint loads in bf16 without a float32 copy of the whole model.
    """
    mapping = weight_map(directory)
    check_keys(directory, mapping.keys(), expected_shapes.keys())
    state: dict[str, torch.Tensor] = {}
    by_shard: dict[str, list[str]] = {}
    for key, shard in mapping.items():
        by_shard.setdefault(shard, []).append(key)
    for shard, keys in sorted(by_shard.items()):
        shard_path = directory / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{directory / INDEX_NAME} names shard {shard}, which is missing")
        with safe_open(shard_path, framework="pt", device=str(device)) as f:
            present = set(f.keys())
            absent = [k for k in keys if k not in present]
            if absent:
                raise CheckpointError(
                    f"{shard_path} lacks keys its index names: {_describe(absent)}"
                )
            for key in keys:
                name = hub_to_module_key(key)
                tensor = f.get_tensor(key)
                if tensor.shape != expected_shapes[name]:
                    raise CheckpointError(
                        f"{shard_path}: key {key} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(expected_shapes[name])}"
                    )
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                state[name] = tensor
    return state


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor], directory: Path, max_shard_bytes: int = 2 * 1024**3
) -> list[Path]:
    """Write hub-named safetensors shards and their index; returns the shard paths.

    Shards are filled in key order up to ``max_shard_bytes``. Files are written under a
    temporary name and renamed, so an interrupted save never leaves a truncated shard.
    """
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    total = 0
    for key, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][module_to_hub_key(key)] = tensor.detach().contiguous().cpu()
        size += nbytes
        total += nbytes
    n = len(groups)
    paths, mapping = [], {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        _atomic_save(group, directory / name)
        paths.append(directory / name)
        mapping.update({k: name for k in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(mapping.items()))}
    write_text(directory / INDEX_NAME, json.dumps(index, indent=2))
    return paths


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
