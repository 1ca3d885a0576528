"""maira2-mini: device choice, device-independent checkpoints, reduced-precision saves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from workbench.config import ConfigError, parse_config
from workbench.models.mini.config import MiniConfig, build_mini, resolve_device


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
