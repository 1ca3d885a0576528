"""maira2-mini presets, device choice, device-independent checkpoints, reduced-precision saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.config import ConfigError, load_config, parse_config
from workbench.models.mini.config import (
    SHIPPED,
    MiniConfig,
    build_mini,
    resolve_device,
    vision_config,
)

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["mini.toml", "mini-wide.toml", "mini-256.toml"])
def test_mini_presets_parse_and_validate(name):
    from_file = load_config(MiniConfig, CONFIGS / name)
    from_cli = parse_config(MiniConfig, ["--preset", str(CONFIGS / name)])
    assert from_file == from_cli


def test_wide_preset_is_the_wide_tower_from_scratch_on_the_shipped_decoder():
    from workbench.models.mini.train import keep_prefixes
    from workbench.models.registry import model_tokenizer

    cfg = load_config(MiniConfig, CONFIGS / "mini-wide.toml")
    shipped = load_config(MiniConfig, CONFIGS / "mini.toml")
    heads = vision_config(cfg).num_attention_heads
    assert (cfg.vision_hidden, cfg.vision_layers, heads) == (192, 6, 3)
    assert cfg.init_vision_from is None and cfg.init_from is None and not cfg.init_projector
    assert cfg.init_decoder_from == Path("runs/mini-train/ship-mini")
    assert (cfg.vision_phantom, cfg.vision_phantom_seed) == (Path("runs/mini-train/pretrain13"), 13)
    assert (cfg.vision_steps, cfg.vision_lr, cfg.threads) == (8000, 1e-3, 2)
    assert cfg.save_dtype == "float16" and cfg.vision_oversample == ()
    assert cfg.epochs == 2 and cfg.oversample == ("nodule", "rib_fracture")
    assert cfg.oversample_factor == 3 and cfg.device == "cpu"
    same = ("image_size", "patch_size", "text_hidden", "text_layers", "text_intermediate")
    assert all(getattr(cfg, f) == getattr(shipped, f) for f in same)
    # the model it builds: its decoder takes the shipped weights, its float16 file fits the cap
    model = build_mini(cfg, model_tokenizer(SHIPPED))
    n_params = sum(p.numel() for p in model.parameters())
    assert 4 * n_params > 25e6 > 2 * n_params  # float32 over the 25 MB cap, float16 under it
    decoder = {
        k: v for k, v in load_file(next(SHIPPED.glob("model-*.safetensors"))).items()
        if k.startswith(keep_prefixes(cfg))
    }  # fmt: skip
    missing = model.load_state_dict(decoder, strict=False).missing_keys
    assert decoder and not any(k.startswith(keep_prefixes(cfg)) for k in missing)


def test_256_preset_continues_every_part_of_the_shipped_model_at_256_px():
    from workbench.models.mini.train import keep_prefixes
    from workbench.models.mini.vision import resized_tower_state
    from workbench.models.registry import model_tokenizer

    cfg = load_config(MiniConfig, CONFIGS / "mini-256.toml")
    cfg.validate()
    assert (cfg.image_size, cfg.patch_size, cfg.vision_hidden, cfg.vision_layers) == (
        256,
        16,
        128,
        4,
    )
    ship = Path("runs/mini-train/ship-mini")
    assert cfg.init_vision_from == cfg.init_decoder_from == ship and cfg.init_projector
    assert (cfg.vision_phantom, cfg.vision_phantom_seed) == (Path("runs/mini-train/pretrain14"), 14)
    assert cfg.save_dtype == "float32" and cfg.oversample == ("nodule", "rib_fracture")
    model = build_mini(cfg, model_tokenizer(SHIPPED))
    assert 4 * sum(p.numel() for p in model.parameters()) < 25e6  # float32 under the cap
    shipped = load_file(next(SHIPPED.glob("model-*.safetensors")))
    part = {k: v for k, v in shipped.items() if k.startswith(keep_prefixes(cfg))}
    missing = model.load_state_dict(part, strict=False).missing_keys
    assert part and not any(k.startswith(keep_prefixes(cfg)) for k in missing)
    from workbench.models.maira2 import Maira2ForConditionalGeneration

    tower = Maira2ForConditionalGeneration.from_pretrained(SHIPPED).vision_tower.state_dict()
    model.vision_tower.load_state_dict(resized_tower_state(tower, grid=16))
    assert model.vision_tower.embeddings.position_embeddings.shape == (1, 257, 128)


def test_device_values_and_a_missing_gpu_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="device"):
        MiniConfig(device="gpu").validate()
    with pytest.raises(ConfigError, match="save_dtype"):
        MiniConfig(save_dtype="int8").validate()
    with pytest.raises(SystemExit):  # the CLI refuses it as a choice
        parse_config(MiniConfig, ["--device", "tpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(MiniConfig(device="auto")) == torch.device("cpu")
    assert resolve_device(MiniConfig()) == torch.device("cpu")
    with pytest.raises(ConfigError, match="'device' is 'cuda'.*no CUDA device"):
        resolve_device(MiniConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(MiniConfig(device="auto")) == torch.device("cuda")


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path, monkeypatch):
    """Storages tagged ``cuda:0`` (what torch.save writes for GPU tensors) restore here."""
    from workbench.models.mini.state import restore_state, save_state

    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    registry = list(torch.serialization._package_registry)
    monkeypatch.setattr(torch.serialization, "_package_registry", registry)
    torch.serialization.register_package(-1, lambda storage: "cuda:0", lambda obj, loc: None)
    state = {"m": module.state_dict(), "optim": optimizer.state_dict(), "step": 7}
    torch.save(state, tmp_path / "gpu.pt")
    registry.pop(0)  # back to the CPU tagger
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)  # no map_location: refused
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    assert restore_state(tmp_path / "gpu.pt", {"m": fresh}, fresh_opt) == 7
    assert torch.equal(fresh.weight, module.weight) and fresh_opt.state_dict()["state"]
    save_state(tmp_path / "cpu.pt", {"m": fresh}, fresh_opt, 8)  # CPU tensors, as on the CPU
    assert restore_state(tmp_path / "cpu.pt", {"m": torch.nn.Linear(3, 2)}) == 8


def test_storage_dtype_rounds_the_file_and_declares_float32(tmp_path):
    from workbench.models.maira2 import Maira2ForConditionalGeneration
    from workbench.models.mini.tokenizer import train_tokenizer

    tok = train_tokenizer(["There is a small left pleural effusion."] * 5, vocab_size=300)
    tiny = MiniConfig(image_size=32, vision_hidden=32, vision_layers=1, text_hidden=64,
                      text_layers=1, text_intermediate=64)  # fmt: skip
    model = build_mini(tiny, tok)
    model.save_pretrained(tmp_path / "fp32")
    assert "dtype" not in json.loads((tmp_path / "fp32" / "config.json").read_text())
    model.save_pretrained(tmp_path / "bf16", storage_dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "float32"
    stored = load_file(next((tmp_path / "bf16").glob("model-*.safetensors")))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    loaded = Maira2ForConditionalGeneration.from_pretrained(tmp_path / "bf16")
    assert loaded.dtype == torch.float32
    for (name, p), q in zip(model.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p.detach().bfloat16().float(), q), name
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the model is untouched
