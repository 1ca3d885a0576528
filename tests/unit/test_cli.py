"""``python -m workbench``: lists every stage, and every stage explains its flags."""

from __future__ import annotations

import importlib

import pytest

from workbench.__main__ import STAGES, main


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, desc) in STAGES.items():
        assert name in out and desc in out


def test_unknown_stage_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown stage 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_help(stage, capsys):
    module = importlib.import_module(STAGES[stage][0])
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "--" in capsys.readouterr().out
