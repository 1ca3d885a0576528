"""The phantom nodules with the lung field as a class (background / lung field / nodule): the
label builder, the loader, the training config, evaluation on the nodule class and the
latent-truth targets of a three-class SSN."""

import json

import numpy as np
import pytest
import torch

from segmentation import latent_truth as truth
from segmentation import metrics as M
from segmentation.data import (
    LUNG_NODULE_CLASSES,
    dataset_classes,
    load_dataset,
    load_phantom_nodules,
    lung_nodule_labels,
)
from segmentation.evaluate import image_metrics
from segmentation.fixtures import write_phantom_fixture
from segmentation.io import TWO_CLASSES, DataError, SegSample, class_names, task_mask
from segmentation.models import Prediction
from segmentation.runs import check_resumable
from segmentation.train import TrainConfig
from workbench.config import ConfigError, to_dict

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_fixture(tmp_path_factory.mktemp("phantom"), studies=8, size=64)


def test_labels_on_a_hand_made_mask():
    lung = np.array([[0, 1, 1, 1], [0, 1, 1, 1]], np.uint8)
    nodule = np.array(
        [
            [[0, 0, 1, 0], [0, 0, 0, 0]],  # grader 0: one pixel
            [[0, 1, 1, 0], [1, 0, 0, 0]],  # grader 1: wider, one pixel outside the lung
        ],
        np.uint8,
    )
    got = lung_nodule_labels(nodule, lung)
    assert got.dtype == np.uint8 and got.shape == (2, 2, 4)
    assert got.tolist() == [
        [[0, 1, 2, 1], [0, 1, 1, 1]],
        [[0, 2, 2, 1], [2, 1, 1, 1]],  # the nodule wins, in or out of the lung
    ]


def test_task_mask_is_the_last_class_or_any_foreground():
    labels = np.array([0, 1, 2])
    assert task_mask(labels, 3).tolist() == [False, False, True]
    assert task_mask(np.array([0, 1, 1]), 2).tolist() == [False, True, True]
    assert task_mask(torch.tensor([0, 2, 1]), 3).tolist() == [False, True, False]
    assert class_names({}) == TWO_CLASSES
    assert class_names({"classes": list(LUNG_NODULE_CLASSES)}) == LUNG_NODULE_CLASSES


def test_loader_adds_the_lung_field_and_keeps_each_graders_nodule(phantom):
    two = load_phantom_nodules(phantom, None, size=32, crop=32)
    three = load_dataset("phantom-nodules", phantom, None, 32, 32, lung_class=True)
    assert len(two) == len(three) == 8
    for a, b in zip(two, three, strict=True):
        assert b.meta["classes"] == list(LUNG_NODULE_CLASSES) and "classes" not in a.meta
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_array_equal(b.roi, a.roi)
        assert set(np.unique(b.masks)) == {0, 1, 2}
        np.testing.assert_array_equal(b.masks == 2, a.masks > 0)  # the nodule, per grader
        no_nodule = ~(a.masks > 0).any(0)  # where no grader marks it, all agree on the lung
        assert (b.masks[:, no_nodule] == b.masks[0, no_nodule]).all()
        lung = (b.masks == 1).any(0)
        # the fixture's lungs are dark: the lung field is what the image shows as lung
        assert b.image[lung].mean() < b.image[~lung & no_nodule].mean()


def test_only_the_nodule_task_has_a_lung_class(phantom):
    with pytest.raises(DataError, match="lung_class applies to phantom-nodules"):
        load_dataset("phantom-lungs", phantom, None, 32, lung_class=True)
    assert dataset_classes("phantom-nodules", True) == LUNG_NODULE_CLASSES
    assert dataset_classes("lidc") == TWO_CLASSES


def test_train_config_needs_three_classes_on_the_nodule_task(tmp_path):
    TrainConfig(lung_class=True, num_classes=3).validate()
    with pytest.raises(ConfigError, match=r"num_classes = 3 \(background / lung_field"):
        TrainConfig(lung_class=True).validate()
    with pytest.raises(ConfigError, match="lung_class.*phantom-lungs"):
        TrainConfig(lung_class=True, num_classes=3, dataset="phantom-lungs").validate()


def test_a_run_saved_before_the_field_existed_still_resumes(tmp_path):
    cfg = TrainConfig(out=tmp_path)
    old = {k: v for k, v in to_dict(cfg).items() if k != "lung_class"}
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    check_resumable(cfg)  # absent field = its default then: no change
    with pytest.raises(ConfigError, match="lung_class"):
        check_resumable(TrainConfig(out=tmp_path, lung_class=True, num_classes=3))


# ------------------------------------------------------------------------------- evaluation


def _prediction(rng, S=6, H=4, W=5) -> tuple[Prediction, np.ndarray]:
    """A three-class prediction of one image and four graders' label maps."""
    point = torch.from_numpy(rng.integers(0, 3, (1, H, W)))
    samples = torch.from_numpy(rng.integers(0, 3, (S, 1, H, W)))
    probs = torch.from_numpy(rng.dirichlet(np.ones(3), (H, W))).permute(2, 0, 1)[None].float()
    return Prediction(point, probs, samples), rng.integers(0, 3, (4, H, W)).astype(np.uint8)


def test_three_classes_are_scored_on_the_nodule_as_a_two_class_model():
    pred3, ann3 = _prediction(np.random.default_rng(0))
    got = image_metrics(pred3, 0, ann3, 3, LUNG_NODULE_CLASSES)
    p = pred3.probs[:, 2]
    pred2 = Prediction(
        (pred3.prediction == 2).long(),
        torch.stack([1 - p, p], dim=1),
        (pred3.samples == 2).long(),
    )
    want = image_metrics(pred2, 0, (ann3 == 2).astype(np.uint8), 2)
    assert "dice_lung_field" not in want
    assert set(got) == set(want) | {"dice_lung_field"}
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    # the lung field: Dice of the point map's class 1 against each grader's, averaged
    a = pred3.prediction[0].numpy() == 1
    by_hand = [2 * (a & (g == 1)).sum() / (a.sum() + (g == 1).sum()) for g in ann3]
    assert got["dice_lung_field"] == pytest.approx(np.mean(by_hand))
    # not the foreground mean over lung field and nodule that the metrics module alone gives
    both = np.mean(M.per_annotator_dice(pred3.prediction[0], torch.from_numpy(ann3).long(), 3))
    assert abs(got["dice"] - both) > 0.01
    unnamed = image_metrics(pred3, 0, ann3, 3)  # names that do not fit: by index
    assert unnamed["dice_class_1"] == got["dice_lung_field"]


# ----------------------------------------------------------------------------- latent truth


def test_annotations_of_a_three_class_sample_are_the_nodules():
    masks = np.array([[[1, 2, 2, 0]], [[1, 1, 2, 0]]], np.uint8)  # two graders, one row
    sample = SegSample(np.zeros((1, 4), np.float32), masks, None,
                       {"classes": list(LUNG_NODULE_CLASSES)})  # fmt: skip
    concepts, targets = truth.annotation_maps(sample)
    np.testing.assert_allclose(concepts["annotated"], [[0, 0.5, 1, 0]])
    np.testing.assert_allclose(concepts["annotator_disagreement"], [[0, 1, 0, 0]])
    np.testing.assert_allclose(targets["annotator_variance"], [[0, 0.25, 0, 0]])
    two = SegSample(sample.image, (masks > 0).astype(np.uint8), None, {})
    np.testing.assert_allclose(truth.annotation_maps(two)[0]["annotated"], [[1, 1, 1, 0]])


class _Stub:
    """An SSN stand-in whose samples are fixed label maps ``[S, 1, 1, 3]``."""

    def __init__(self, labels, num_classes):
        self.labels, self.num_classes = torch.tensor(labels)[:, None, None, :], num_classes

    def sample(self, x, num_samples, roi, generator=None):
        return self.labels


def test_sample_variance_of_a_three_class_ssn_is_the_nodules():
    # pixel 0 always lung field; pixel 1 nodule in half the samples, lung in the rest;
    # pixel 2 nodule in one sample of four, background otherwise
    labels = [[1, 2, 2], [1, 2, 0], [1, 1, 0], [1, 1, 0]]
    x, gen = torch.zeros(1, 1, 1, 3), torch.Generator()
    var = truth.sample_variance(_Stub(labels, 3), x, None, 4, gen)
    np.testing.assert_allclose(var, [[[0.0, 0.25, 0.1875]]])
    two = truth.sample_variance(_Stub(labels, 2), x, None, 4, gen)  # any foreground
    np.testing.assert_allclose(two, [[[0.0, 0.0, 0.1875]]])
