"""The segmentation presets in configs/ load, validate and build their models."""

import tomllib
from pathlib import Path

import pytest

from segmentation.models import build_model
from segmentation.semantic_gan.config import SemanticGANConfig
from segmentation.study import StudyConfig
from segmentation.train import TrainConfig
from workbench.config import ConfigError, build_parser, load_config

PRESETS = sorted((Path(__file__).parents[2] / "configs").glob("seg-*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_builds(path):
    fields = tomllib.loads(path.read_text())
    if "models" in fields:  # the study preset: its two training presets must load and agree
        study = load_config(StudyConfig, path)
        root = Path(__file__).parents[2]
        unet = load_config(TrainConfig, root / study.unet_preset)
        gan = load_config(SemanticGANConfig, root / study.semgan_preset)
        assert unet.image_size == gan.image_size and unet.dataset == gan.dataset
        return
    gan = fields.get("model") == "semantic-gan"
    cfg = load_config(SemanticGANConfig if gan else TrainConfig, path)
    model = build_model(cfg.spec())
    assert sum(p.numel() for p in model.parameters()) > 0


def test_presets_exist():
    assert {p.name for p in PRESETS} >= {
        "seg-lidc-ssn.toml",
        "seg-phantom-nodules-ssn.toml",
        "seg-phantom-lungs-semantic-gan.toml",
    }


def test_help_text_comes_from_field_docstrings():
    text = build_parser(TrainConfig).format_help()
    assert "diagonal SSN ablation" in text and "--mc-samples" in text


def test_invalid_values_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "ssn"\nmc_samples = 3\n')  # antithetic needs an even count
    with pytest.raises(ConfigError, match="mc_samples"):
        load_config(TrainConfig, bad)


@pytest.mark.parametrize("field", ["weight_decay = -1.0", "grad_clip = 0.0"])
def test_regularisers_are_validated(tmp_path, field):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'model = "ssn"\n{field}\n')
    with pytest.raises(ConfigError, match="weight_decay"):
        load_config(TrainConfig, bad)


def test_demo_phase_budgets_leave_time_for_evaluation():
    from segmentation.demo import EVAL_RESERVE, _phase_budget

    plan = [("lungs", "unet", "a"), ("nodules", "unet", "b"), ("nodules", "ssn", "b")]
    assert _phase_budget(plan, 100.0) == pytest.approx(20.0)
    # the last phase gets its share of what is left, minus the evaluation reserve
    assert _phase_budget(plan[2:], 55.0) == pytest.approx(55.0 * 0.4 / (0.4 + EVAL_RESERVE))
    assert _phase_budget(plan, -5.0) == 2.0  # over budget: a token phase, never negative
