"""Config dataclasses: field docstrings -> --help, TOML presets, flag overrides, cfg.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from workbench.config import (
    ConfigError,
    build_parser,
    field_docs,
    load_config,
    parse_config,
    save_config,
)


@dataclass
class Demo:
    """A demo stage."""

    out: Path = Path("runs/x")
    """Where artefacts go."""
    steps: int = 10
    """Optimiser steps."""
    lr: float = 1e-3
    """Learning rate."""
    widths: tuple[int, ...] = (2, 4)
    """Matryoshka prefix widths."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    fast: bool = False
    """Skip the slow part."""
    note: str | None = None
    """Free text."""

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError("steps must be positive")


def test_field_docs_feed_help(capsys):
    assert field_docs(Demo)["lr"] == "Learning rate."
    with pytest.raises(SystemExit):
        build_parser(Demo).parse_args(["--help"])
    out = capsys.readouterr().out
    assert "Matryoshka prefix widths." in out and "--no-fast" in out


def test_preset_then_flags_override(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('steps = 50\nwidths = [1, 2, 3]\nmode = "b"\n')
    cfg = parse_config(Demo, ["--preset", str(preset), "--steps", "7", "--fast"])
    assert (cfg.steps, cfg.widths, cfg.mode, cfg.fast) == (7, (1, 2, 3), "b", True)
    assert cfg.out == Path("runs/x") and cfg.note is None


def test_save_load_round_trip(tmp_path):
    cfg = parse_config(Demo, ["--widths", "3,5", "--note", "hi", "--out", "o"])
    path = save_config(cfg, tmp_path / "cfg.json")
    assert load_config(Demo, path) == cfg


def test_bad_config_names_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(Demo, bad)
    bad.write_text('steps = "many"\n')
    with pytest.raises(ConfigError, match="steps"):
        load_config(Demo, bad)
    bad.write_text("steps = 0\n")
    with pytest.raises(ConfigError, match="positive"):
        load_config(Demo, bad)
    with pytest.raises(SystemExit):
        parse_config(Demo, ["--mode", "c"])
