"""The vision side of a vision-language model as tokens: the image encoder and the projector.

``record --hook vision.blocks.{L}.hook_resid_post`` stores the output of vision-encoder block
L and ``--hook vision.hook_projector_out`` the projector's output (the image features the
language model receives). The forward pass is the model's own, stopped by the capture hook
right after the hooked module, so the language model never runs. One token per image patch
(every image of the study: frontal, lateral, prior), with the metadata the language-model
image tokens carry (``position`` of the ``<image>`` token it becomes, ``section``,
``patch_row``, ``patch_col``). Leading tokens the language model never sees (the CLS token,
registers) are dropped, so the block outputs line up with the projector output patch by patch.
Token filtering is the record stage's ``image_tokens`` rule (``--image-tokens all`` keeps
every patch; the default keeps the first and last patch of each image).

With a phantom root that has masks, each frontal-image token carries ``concept_<name>``: the
fraction of the patch covered by every finding, device and anatomy mask, in the processor's
geometry (:func:`workbench.models.mini.dense.dense_targets`, the dense targets maira2-mini
was pretrained on); tokens of other images carry NaN there.
"""

from __future__ import annotations

import math

import torch

from workbench.cxr.images import CXRDataError
from workbench.models.hooks import capture, hook_site, vision_layers
from workbench.models.mini.dense import DENSE_CHANNELS, dense_targets
from workbench.record.tokens import CONCEPT_PREFIX

VISION_SITES = ("vision_resid_post", "projector")


def is_vision_hook(hook: str) -> bool:
    """Whether ``hook`` names the image encoder or the projector."""
    return bool(hook) and hook_site(hook).site in VISION_SITES


def vision_width(adapter, hook: str) -> int:
    """Width of the activation at ``hook``; ValueError when the model has no such site."""
    if adapter.kind != "vision_language":
        raise ValueError(
            f"{adapter.name} has no vision tower ({hook} needs a vision-language model)"
        )
    site = hook_site(hook)
    if site.site == "projector":
        return adapter.d_model
    n = len(vision_layers(adapter.model))
    if not 0 <= site.layer < n:
        raise ValueError(f"{hook}: {adapter.name}'s vision encoder has blocks 0..{n - 1}")
    return int(adapter.model.config.vision_config.hidden_size)


@torch.no_grad()
def vision_acts(adapter, inp, hook: str) -> torch.Tensor:
    """``[n_images, tokens_per_image, d]`` at ``hook``; nothing after the hooked module runs."""
    with capture(adapter.model, hook) as cap:
        adapter.model(**adapter.device_inputs(inp))
    return cap.acts


def align_to_image_tokens(acts_NTD: torch.Tensor, n_image_tokens: int) -> torch.Tensor:
    """``[n_image_tokens, d]``: each image's last ``n_image_tokens / n`` tokens, in order.

    The language model's ``<image>`` tokens are the patches (plus the CLS token under the
    "full" strategy); the tower's extra leading tokens are dropped.
    """
    n_images, per_tower, d = acts_NTD.shape
    per_image, rest = divmod(n_image_tokens, n_images)
    if rest or per_image > per_tower:
        raise ValueError(
            f"{n_image_tokens} <image> tokens do not match {n_images} images of "
            f"{per_tower} vision tokens"
        )
    return acts_NTD[:, per_tower - per_image :].reshape(n_images * per_image, d)


def frontal_coverage(adapter, record, root, tokens: list[dict]) -> dict[str, list[float]]:
    """``concept_<mask>`` per image token: patch coverage on the frontal image, NaN elsewhere.

    Empty when the root has no masks for the study (no phantom, or ``--no-masks``).
    """
    proc = adapter.processor
    if root is None or not hasattr(record, "frontal_path"):
        return {}
    try:
        cover_PK = dense_targets(root, record, proc.image_size, proc.patch_size)
    except CXRDataError:
        return {}
    cols: dict[str, list[float]] = {CONCEPT_PREFIX + n: [] for n in DENSE_CHANNELS}
    for t in tokens:
        r, c = t.get("patch_row"), t.get("patch_col")
        frontal = t.get("image_index") == 0 and r is not None
        for k, name in enumerate(DENSE_CHANNELS):
            value = float(cover_PK[r * proc.grid + c, k]) if frontal else math.nan
            cols[CONCEPT_PREFIX + name].append(value)
    return cols


def vision_tokens(adapter, inp, hook: str) -> tuple[torch.Tensor, list[dict]]:
    """Activations ``[n_image_tokens, d]`` at ``hook`` and the image tokens' metadata."""
    acts_NTD = vision_acts(adapter, inp, hook)
    image_tokens = [t for t in inp.tokens if t["kind"] == "image"]
    return align_to_image_tokens(acts_NTD, len(image_tokens)), image_tokens


def coverage_names() -> list[str]:
    """The concept columns a phantom vision store has (for its manifest's concept groups)."""
    return [CONCEPT_PREFIX + n for n in DENSE_CHANNELS]
