"""Native MAIRA-2: config, hub-layout checkpoints (strict), forward and generate."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.models.checkpoint import (
    CheckpointError,
    hub_to_module_key,
    module_to_hub_key,
    resolve_checkpoint_dir,
)
from workbench.models.maira2 import Maira2Config, Maira2ForConditionalGeneration
from workbench.models.tiny import tiny_maira2

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return tiny_maira2(tokenizer)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("maira2")
    model.save_pretrained(directory, max_shard_bytes=60_000)
    return directory


def _inputs(model, n_images=2):
    image_id = model.config.image_token_index
    per_image = model.config.image_tokens_per_image
    ids = [1, 40, 41] + [image_id] * per_image * n_images + [50, 60, 70]
    torch.manual_seed(1)
    return torch.tensor([ids]), torch.randn(n_images, 3, 56, 56)


def test_config_reads_published_layout_and_normalises():
    published = {
        "model_type": "maira2",
        "architectures": ["Maira2ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_maira2.Maira2Config"},
        "projector_n_layers": 4,
        "image_token_index": 32204,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "text_config": {
            "model_type": "llama",
            "hidden_size": 4096,
            "vocab_size": 32207,
            "rope_scaling": {"type": "linear", "factor": 1.5},
        },
        "vision_config": {
            "model_type": "dinov2",
            "image_size": 518,
            "patch_size": 14,
            "reshape_hidden_states": True,
            "out_features": ["stage12"],
        },
    }
    config = Maira2Config.from_dict(published)
    assert config.vision_config.reshape_hidden_states is False
    assert config.hidden_size == 4096
    assert config.image_tokens_per_image == 1369
    assert config.text_config.rope_parameters["rope_type"] == "linear"
    assert config.text_config.rope_parameters["factor"] == 1.5
    assert "auto_map" not in config.to_dict()


def test_config_rejects_bad_projector_depth():
    with pytest.raises(ValueError, match="projector_n_layers"):
        Maira2Config(projector_n_layers=0)


def test_module_tree_matches_checkpoint_names(model):
    keys = {module_to_hub_key(k) for k in model.state_dict()}
    projector = sorted(k for k in keys if k.startswith("multi_modal_projector."))
    assert projector == [
        f"multi_modal_projector.layers.{i}.{p}" for i in (0, 2, 4, 6) for p in ("bias", "weight")
    ]
    assert "vision_tower.encoder.layer.0.attention.attention.query.weight" in keys
    assert "vision_tower.encoder.layer.1.attention.output.dense.bias" in keys
    assert "vision_tower.layernorm.weight" in keys
    assert "language_model.lm_head.weight" in keys
    assert "language_model.model.layers.2.self_attn.q_proj.weight" in keys
    assert all(hub_to_module_key(module_to_hub_key(k)) == k for k in model.state_dict())


def test_image_tokens_equal_image_features(model):
    ids, pixels = _inputs(model)
    feats = model.get_image_features(pixels)
    assert feats.shape == (2, 16, model.config.text_config.hidden_size)
    assert int((ids == model.config.image_token_index).sum()) == feats.shape[0] * feats.shape[1]


def test_image_features_use_final_layernorm_without_cls(model):
    pixels = torch.randn(1, 3, 56, 56)
    hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    expected = model.multi_modal_projector(model.vision_tower.layernorm(hidden)[:, 1:])
    torch.testing.assert_close(model.get_image_features(pixels), expected)


def test_embed_writes_features_at_image_positions(model):
    ids, pixels = _inputs(model)
    embeds = model.embed(ids, pixels)
    feats = model.get_image_features(pixels).reshape(-1, embeds.shape[-1])
    is_image = ids[0] == model.config.image_token_index
    torch.testing.assert_close(embeds[0, is_image], feats)
    text = model.get_input_embeddings()(ids)[0, ~is_image]
    torch.testing.assert_close(embeds[0, ~is_image], text)


def test_token_feature_mismatch_is_an_error(model):
    ids, pixels = _inputs(model)
    with pytest.raises(ValueError, match="image features"):
        model.embed(ids[:, :-5].clone().fill_(model.config.image_token_index), pixels)


def test_save_writes_sharded_hub_layout(saved, model):
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2
    assert set(index["weight_map"]) == {module_to_hub_key(k) for k in model.state_dict()}
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "maira2"
    assert config["projector_n_layers"] == 4


def test_load_forward_and_generate_match(saved, model):
    loaded = Maira2ForConditionalGeneration.from_pretrained(saved)
    ids, pixels = _inputs(model)
    torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits)
    out = loaded.generate(ids, pixels, max_new_tokens=4)
    assert out.shape == (1, ids.shape[1] + 4)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    assert torch.equal(out, model.generate(ids, pixels, max_new_tokens=4))


def test_generate_is_greedy_over_the_merged_sequence(model):
    ids, pixels = _inputs(model, n_images=1)
    out = model.generate(ids, pixels, max_new_tokens=2)
    first = model(ids, pixels).logits[0, -1].argmax()
    assert out[0, ids.shape[1]] == first
    second = model(out[:, :-1], pixels).logits[0, -1].argmax()
    assert out[0, -1] == second


def test_load_in_bfloat16(saved):
    loaded = Maira2ForConditionalGeneration.from_pretrained(saved, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert not any(p.is_meta for p in loaded.parameters())


def _copy_checkpoint(saved, tmp_path):
    for path in saved.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def test_missing_key_fails_naming_it(saved, tmp_path):
    directory = _copy_checkpoint(saved, tmp_path)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    victim = "multi_modal_projector.layers.4.weight"
    shard = directory / index["weight_map"].pop(victim)
    tensors = load_file(shard)
    del tensors[victim]
    save_file(tensors, shard)
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"missing keys \(1\): multi_modal_projector.layers.4.weight"
    ):
        Maira2ForConditionalGeneration.from_pretrained(directory)


def test_extra_key_fails_naming_it(saved, tmp_path):
    directory = _copy_checkpoint(saved, tmp_path)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    save_file(
        {"language_model.model.extra.weight": torch.zeros(2)}, directory / "extra.safetensors"
    )
    index["weight_map"]["language_model.model.extra.weight"] = "extra.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"unexpected keys \(1\): language_model.model.extra.weight"
    ):
        Maira2ForConditionalGeneration.from_pretrained(directory)


def test_index_naming_a_tensor_its_shard_lacks_fails(saved, tmp_path):
    directory = _copy_checkpoint(saved, tmp_path)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    key = "vision_tower.layernorm.bias"
    shard = directory / index["weight_map"][key]
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard)
    with pytest.raises(
        CheckpointError, match="lacks keys its index names: vision_tower.layernorm.bias"
    ):
        Maira2ForConditionalGeneration.from_pretrained(directory)


def test_shape_mismatch_fails_naming_the_key(saved, tmp_path):
    directory = _copy_checkpoint(saved, tmp_path)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    key = "language_model.model.norm.weight"
    shard = directory / index["weight_map"][key]
    tensors = load_file(shard)
    tensors[key] = torch.zeros(7)
    save_file(tensors, shard)
    with pytest.raises(CheckpointError, match="language_model.model.norm.weight has shape"):
        Maira2ForConditionalGeneration.from_pretrained(directory)


def test_loads_from_local_hf_cache_without_download(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "795a2b1cd4a310624b4e3d14b5a23e41fd273deb"
    repo = tmp_path / "models--microsoft--maira-2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    _copy_checkpoint(saved, snapshot)
    found = resolve_checkpoint_dir("microsoft/maira-2", cache_dir=tmp_path)
    assert found == repo / "snapshots" / commit
    loaded = Maira2ForConditionalGeneration.from_pretrained("microsoft/maira-2", cache_dir=tmp_path)
    assert loaded.config.projector_n_layers == 4


def test_uncached_repo_id_fails_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resolve_checkpoint_dir("microsoft/maira-2", cache_dir=tmp_path)


def test_full_size_architecture_matches_published_checkpoint():
    """522 tensors and 6.88 B float32 parameters: 27,520,808,736 B of shards less headers."""
    from accelerate import init_empty_weights

    text = {
        "model_type": "llama",
        "vocab_size": 32207,
        "rope_scaling": {"type": "linear", "factor": 1.5},
    }
    with init_empty_weights():
        model = Maira2ForConditionalGeneration(Maira2Config(text_config=text))
    state = model.state_dict()
    assert len(state) == 522
    prefixes = (
        "language_model.model.",
        "language_model.lm_head.",
        "vision_tower.",
        "multi_modal_projector.",
    )
    assert all(module_to_hub_key(k).startswith(prefixes) for k in state)
    header_bytes = 27_520_808_736 - 4 * sum(t.numel() for t in state.values())
    assert 0 < header_bytes < 6 * 16_384  # six safetensors JSON headers
    assert state["multi_modal_projector.layers.0.weight"].shape == (4096, 768)
    assert state["vision_tower.embeddings.position_embeddings"].shape == (1, 1370, 768)


def test_left_padded_batch_generates_like_single_prompts(model):
    """Batched generation (left padding + attention mask) equals one prompt at a time."""
    image_id = model.config.image_token_index
    prompts = [[1, 40] + [image_id] * 16 + [50], [1, 40, 41, 42, 43] + [image_id] * 16 + [60, 61]]
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 56, 56)
    singles = [
        model.generate(torch.tensor([ids]), pixels[i : i + 1], max_new_tokens=4)[0, len(ids) :]
        for i, ids in enumerate(prompts)
    ]
    width = max(map(len, prompts))
    ids = torch.full((2, width), 3)
    mask = torch.zeros((2, width), dtype=torch.long)
    for b, row in enumerate(prompts):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    out = model.generate(ids, pixels, attention_mask=mask, max_new_tokens=4)
    assert torch.equal(out[:, width:], torch.stack(singles))
