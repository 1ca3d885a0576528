"""MAIRA-2 (microsoft/maira-2) natively on transformers 5, without ``trust_remote_code``.

The published remote code subclasses ``LlavaForConditionalGeneration`` and breaks on
transformers 5 (Llava moved its towers under ``self.model``). Here the architecture is rebuilt
from its parts, as described in ``shared/reference/maira2.md`` sections 1-2:

* ``vision_tower``: a transformers ``Dinov2Backbone`` (RAD-DINO-MAIRA-2). Its feature map for
  the last stage, *after* the backbone's final LayerNorm, with the CLS token dropped for the
  "default" feature-select strategy, gives (size/patch)^2 features per image (1369 at 518 px).
* ``multi_modal_projector.layers``: Linear/GELU/Linear/... ``projector_n_layers`` Linear layers
  deep (keys ``layers.{0,2,4,6}`` for the published 4-layer projector).
* ``language_model``: a ``LlamaForCausalLM`` (Vicuna-7B v1.5). Image features replace the
  embeddings of the ``<image>`` tokens, one feature per token.

State-dict keys equal the checkpoint keys except for the Dinov2 attention renames of
transformers 5, which one documented function maps (:mod:`workbench.models.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlavaConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.dinov2.modeling_dinov2 import Dinov2Backbone

from workbench.models.checkpoint import load_state, resolve_checkpoint_dir, save_checkpoint

# RAD-DINO-MAIRA-2's vision config (maira2.md section 1), used when a config names none.
_RAD_DINO_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "apply_layernorm": True,
    "reshape_hidden_states": False,
}


class Maira2Config(LlavaConfig):
    """MAIRA-2's configuration: a LLaVA config with a deeper projector and a Dinov2 backbone.

    It reads the published ``config.json`` unchanged (``model_type`` "maira2"). Two things are
    normalised after loading: ``vision_config.reshape_hidden_states`` is forced to False,
    because MAIRA-2 slices ``feature_maps[-1][:, 1:]`` on a (B, 1 + n_patches, D) sequence and
    that only exists without the reshape (maira2.md section 1); and ``auto_map`` is dropped,
    so a saved copy never points back at the remote code.
    """

    model_type = "maira2"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="dinov2", init_kwargs=_RAD_DINO_DEFAULTS
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    projector_n_layers: int = 4
    vision_feature_layer: int | list[int] = -1
    image_token_index: int = 32204
    image_seq_length: int = 1369

    def __post_init__(self, **kwargs):
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)
        if not isinstance(self.projector_n_layers, int) or self.projector_n_layers < 1:
            raise ValueError(
                f"config field 'projector_n_layers' must be an int >= 1, "
                f"got {self.projector_n_layers!r}"
            )
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(
                "config field 'vision_feature_layer' must be one int for MAIRA-2, "
                f"got {self.vision_feature_layer!r}"
            )
        if self.vision_config.model_type != "dinov2":
            raise ValueError(
                "config field 'vision_config.model_type' must be 'dinov2' for MAIRA-2, "
                f"got {self.vision_config.model_type!r}"
            )
        self.vision_config.reshape_hidden_states = False
        self.hidden_size = self.text_config.hidden_size

    @property
    def image_grid(self) -> int:
        """Patches per side of one image: image_size // patch_size (37 for MAIRA-2)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def image_tokens_per_image(self) -> int:
        """Image features (and ``<image>`` tokens) per image: grid^2, plus CLS for "full"."""
        extra = 0 if self.vision_feature_select_strategy == "default" else 1
        return self.image_grid**2 + extra


# Let AutoConfig (and AutoTokenizer, which reads config.json) recognise "maira2" directories.
AutoConfig.register(Maira2Config.model_type, Maira2Config, exist_ok=True)


class Maira2MultiModalProjector(nn.Module):
    """``projector_n_layers`` Linear layers with the activation between them.

    Parameters live in ``layers.{0,2,...}`` (activations hold none), matching the published
    ``multi_modal_projector.layers.{0,2,4,6}`` keys.
    """

    def __init__(self, config: Maira2Config):
        super().__init__()
        d_vision = config.vision_config.hidden_size
        d_text = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        modules: list[nn.Module] = [nn.Linear(d_vision, d_text, bias=bias)]
        for _ in range(config.projector_n_layers - 1):
            modules.append(ACT2FN[config.projector_hidden_act])
            modules.append(nn.Linear(d_text, d_text, bias=bias))
        self.layers = nn.Sequential(*modules)

    def forward(self, features_NPV: torch.Tensor) -> torch.Tensor:
        return self.layers(features_NPV)


class Maira2ForConditionalGeneration(nn.Module):
    """MAIRA-2 as three named children: ``vision_tower``, ``multi_modal_projector``,
    ``language_model``; see the module docstring for the data flow."""

    def __init__(self, config: Maira2Config):
        super().__init__()
        self.config = config
        self.vision_tower = Dinov2Backbone(config.vision_config)
        self.multi_modal_projector = Maira2MultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.language_model.get_output_embeddings()

    def get_image_features(self, pixel_values_NCHW: torch.Tensor) -> torch.Tensor:
        """Projected image features, [n_images, tokens_per_image, d_text].

        Uses the backbone feature map (final LayerNorm applied), not the raw hidden states,
        as the original ``get_image_features`` does (maira2.md section 2).
        """
        pixel_values_NCHW = pixel_values_NCHW.to(dtype=self.dtype, device=self.device)
        out = self.vision_tower(pixel_values_NCHW)
        selected_NPV = out.feature_maps[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            selected_NPV = selected_NPV[:, 1:]
        return self.multi_modal_projector(selected_NPV)

    def embed(
        self, input_ids_BT: torch.Tensor, pixel_values_NCHW: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings with the image features written over the ``<image>`` positions.

        Raises ValueError when the number of ``<image>`` tokens differs from the number of
        image features (the failure mode of HF discussion #6).
        """
        embeds_BTD = self.get_input_embeddings()(input_ids_BT)
        is_image_BT = input_ids_BT == self.config.image_token_index
        n_image_tokens = int(is_image_BT.sum())
        if pixel_values_NCHW is None:
            if n_image_tokens:
                raise ValueError(
                    f"{n_image_tokens} <image> tokens in input_ids but no pixel_values"
                )
            return embeds_BTD
        feats_NPD = self.get_image_features(pixel_values_NCHW)
        n_features = feats_NPD.shape[0] * feats_NPD.shape[1]
        if n_image_tokens != n_features:
            raise ValueError(
                f"{n_image_tokens} <image> tokens in input_ids but {n_features} image features "
                f"({feats_NPD.shape[0]} images x {feats_NPD.shape[1]}); check the processor's "
                "image-token expansion (num_additional_image_tokens, image size, patch size)"
            )
        mask_BTD = is_image_BT.unsqueeze(-1).expand_as(embeds_BTD)
        feats = feats_NPD.reshape(-1, embeds_BTD.shape[-1]).to(embeds_BTD.dtype)
        return embeds_BTD.masked_scatter(mask_BTD, feats)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward over the merged embeddings; ``labels`` gives the shifted LM loss."""
        inputs_embeds = self.embed(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate (greedy unless told otherwise) and return prompt ids + new ids, [B, T+new].

        Delegates to ``language_model.generate(inputs_embeds=...)``, which in transformers 5
        returns only the new tokens; the prompt ids are put back in front so callers decode
        ``out[:, prompt_len:]`` as with the original model.
        """
        inputs_embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        generate_kwargs.setdefault("do_sample", False)
        pad = self.config.text_config.pad_token_id
        if pad is None:
            pad = self.config.text_config.eos_token_id
        generate_kwargs.setdefault("pad_token_id", pad)
        new_ids = self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )
        return torch.cat([input_ids, new_ids.to(input_ids.device)], dim=1)

    def save_pretrained(
        self,
        directory: str | Path,
        max_shard_bytes: int = 2 * 1024**3,
        storage_dtype: torch.dtype | None = None,
    ) -> Path:
        """Write ``config.json`` and hub-layout safetensors shards (+ index) to ``directory``.

        ``storage_dtype`` (e.g. float16) rounds the floating tensors to that precision in the
        files only: ``config.json`` then declares the model's own dtype (``dtype``), so
        :meth:`from_pretrained` and transformers' ``dtype="auto"`` load it back in that dtype.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if storage_dtype is not None:
            self.config.dtype = self.dtype
            state = {
                k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state.items()
            }
        self.config.save_pretrained(directory)
        save_checkpoint(state, directory, max_shard_bytes=max_shard_bytes)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | Path | None = None,
    ) -> Maira2ForConditionalGeneration:
        """Load from a local hub-layout directory, or the local HF cache of a repo id.

        Every checkpoint key must map onto a parameter and every parameter must be present;
        anything else raises :class:`workbench.models.checkpoint.CheckpointError`. Parameters
        are created on the meta device and replaced by the loaded tensors, so peak memory is
        one copy of the weights in ``dtype`` (bf16 halves the float32 checkpoint).

        ``dtype`` None follows transformers 5's default ``dtype="auto"``: the dtype that
        ``config.json`` declares (``dtype``, or the older ``torch_dtype``), else the stored
        tensors' own. A checkpoint stored in float16 whose config declares float32 therefore
        loads as a float32 model.
        """
        directory = resolve_checkpoint_dir(path_or_repo, cache_dir=cache_dir)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found")
        config = Maira2Config.from_pretrained(directory)
        if dtype is None and isinstance(config.dtype, torch.dtype):
            dtype = config.dtype
        with init_empty_weights(include_buffers=False):
            model = cls(config)
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        state = load_state(directory, shapes, device=device, dtype=dtype)
        model.load_state_dict(state, strict=True, assign=True)
        model.to(device)
        return model.eval()
