"""The counterfactual reference (workbench.steer.counterfactual): a phantom study re-rendered
without an edit is its stored image bit for bit; with the concept added or removed, only the
image changes (text fields, prior image and anatomy stay)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workbench.cxr.findings import DEVICES
from workbench.cxr.phantom.run import PhantomConfig, generate
from workbench.cxr.studies import iter_studies
from workbench.models.mini.eval import read_phantom_labels
from workbench.steer.counterfactual import Counterfactuals
from workbench.steer.hook import SteeringError

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("cf") / "phantom"
    generate(PhantomConfig(out=root, studies=6, size=64, seed=5, workers=1))
    return root


def pixels(image) -> np.ndarray:
    with Image.open(image) if not isinstance(image, Image.Image) else image as img:
        return np.asarray(img.convert("L"))


def test_an_unedited_study_is_its_stored_image(phantom):
    cf = Counterfactuals(phantom)
    truth = read_phantom_labels(phantom)
    for rec in iter_studies(phantom, require_findings=False):
        absent = next(c for c, v in truth[rec.study_id].items() if v == 0)
        frontal, lateral = cf.images(rec.study_id, absent, "remove")  # nothing to remove
        assert np.array_equal(pixels(frontal), pixels(rec.frontal_path))
        assert (lateral is None) == (rec.lateral_path is None)
        if lateral is not None:
            assert np.array_equal(pixels(lateral), pixels(rec.lateral_path))


def test_adding_and_removing_change_only_the_image(phantom):
    cf = Counterfactuals(phantom)
    truth = read_phantom_labels(phantom)
    rec = next(iter(iter_studies(phantom, require_findings=False)))
    absent = [c for c in ("pacemaker", "pleural_effusion") if truth[rec.study_id][c] == 0]
    present = [c for c, v in truth[rec.study_id].items() if v == 1]
    for concept, direction in [(c, "add") for c in absent] + [(c, "remove") for c in present]:
        _, spec = cf.edited(rec.study_id, concept, direction)
        group = "devices" if concept in DEVICES else "findings"
        assert (concept in spec[group]) == (direction == "add")
        study = cf.study(rec, concept, direction)
        assert not np.array_equal(pixels(study["frontal"]), pixels(rec.frontal_path))
        assert study["indication"] == rec.indication and study["prior_report"] == rec.prior_report
        assert study["prior_frontal"] == rec.prior_frontal_path
    assert cf.edited(rec.study_id, "pacemaker", "add") == cf.edited(rec.study_id, "pacemaker",
                                                                     "add")  # fmt: skip


def test_only_a_phantom_root_has_counterfactuals(tmp_path, phantom):
    assert Counterfactuals.available(phantom) and not Counterfactuals.available(tmp_path)
    with pytest.raises(SteeringError, match="not a phantom root"):
        Counterfactuals(tmp_path)
    with pytest.raises(SteeringError, match="study 1: not in"):
        Counterfactuals(phantom).edited(1, "pacemaker", "add")
