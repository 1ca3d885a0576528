"""Phantom-layout loaders and the public-dataset readers, on fixtures in their formats."""

import pickle

import numpy as np
import pytest
from PIL import Image

from segmentation import readers
from segmentation.data import load_dataset, load_phantom_lungs, load_phantom_nodules, stack
from segmentation.fixtures import write_phantom_fixture
from segmentation.io import DataError, age_group, crop_around, hash_split, normalise_sex, read_grey


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_fixture(tmp_path_factory.mktemp("phantom"), studies=8, size=64)


def test_phantom_lungs_follow_the_contract_layout(phantom):
    train = load_phantom_lungs(phantom, "train", size=32)
    assert len(train) == 4  # splits cycle train, train, validate, test
    s = train[0]
    assert s.image.shape == (32, 32) and s.image.dtype == np.float32
    assert s.masks.shape == (1, 32, 32) and set(np.unique(s.masks)) == {0, 1}
    assert s.image[s.masks[0] == 1].mean() < s.image[s.masks[0] == 0].mean()  # dark lungs
    assert s.meta["sex"] == "F" and s.meta["age_group"] == "<40" and s.meta["subject_id"]
    assert len(load_phantom_lungs(phantom, None, size=32)) == 8


def test_phantom_nodules_are_centred_crops_with_four_annotators(phantom):
    samples = load_phantom_nodules(phantom, None, size=32, crop=32)
    assert len(samples) == 8
    s = samples[0]
    assert s.masks.shape == (4, 32, 32)
    union = s.masks.any(0)
    rows, cols = np.nonzero(union)
    assert abs(rows.mean() - 16) < 3 and abs(cols.mean() - 16) < 3
    # annotators disagree: not all four masks identical
    assert any((s.masks[k] != s.masks[0]).any() for k in range(1, 4))
    assert s.roi is not None and s.roi[union].all()  # the nodule lies inside the ROI
    images, masks, rois = stack(samples)
    assert images.shape == (8, 1, 32, 32) and masks.shape == (8, 4, 32, 32)
    assert rois.shape == (8, 32, 32)


def test_studies_without_nodules_are_skipped(tmp_path):
    root = write_phantom_fixture(tmp_path, studies=6, size=32, nodule_fraction=0.0)
    assert load_phantom_nodules(root, None, size=32, crop=32) == []
    assert len(load_phantom_lungs(root, None, size=32)) == 6


def test_loader_errors_name_the_file(tmp_path, phantom):
    with pytest.raises(DataError, match="masks/"):
        load_phantom_lungs(tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("nope", phantom)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        read_grey(bad)


def test_helpers():
    assert [age_group(a) for a in (25, 40, 59.9, 60, 85, None)] == [
        "<40",
        "40-59",
        "40-59",
        "60-79",
        "80+",
        None,
    ]
    assert normalise_sex("female") == "F" and normalise_sex("M") == "M"
    assert normalise_sex("?") is None
    assert hash_split("abc") == hash_split("abc")
    counts = {s: 0 for s in ("train", "validate", "test")}
    for i in range(2000):
        counts[hash_split(str(i))] += 1
    assert 0.58 < counts["train"] / 2000 < 0.70 and 0.15 < counts["test"] / 2000 < 0.25
    a = np.arange(16).reshape(4, 4)
    c = crop_around(a, (0, 0), 2)  # window rows -1..0, cols -1..0 -> zero pad top/left
    assert c.tolist() == [[0, 0], [0, 0]]
    assert crop_around(a, (2, 2), 2).tolist() == [[5, 6], [9, 10]]


# ----------------------------------------------------------------------------- JSRT + SCR


def _gif(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).convert("P").save(path)


def test_jsrt_img_and_scr_gif_masks(tmp_path):
    raw = np.zeros((2048, 2048), dtype=">u2")
    raw[:, :1024] = 4095  # left half dense (bright when displayed after inversion: dark here)
    (tmp_path / "All247images").mkdir()
    raw.tofile(tmp_path / "All247images" / "JPCLN001.IMG")
    left = np.zeros((1024, 1024), bool)
    left[100:900, 600:900] = True
    right = np.zeros((1024, 1024), bool)
    right[100:900, 100:400] = True
    _gif(tmp_path / "scr" / "fold1" / "masks" / "left lung" / "JPCLN001.gif", left)
    _gif(tmp_path / "scr" / "fold1" / "masks" / "right lung" / "JPCLN001.gif", right)
    (tmp_path / "CLNDAT_EN.txt").write_text("JPCLN001.IMG\t3\t15\t1634\t692\t53\tfemale\tx\n")
    (s,) = readers.load_jsrt(tmp_path, None, size=64)
    assert s.image.shape == (64, 64)
    assert s.image[:, :30].max() < 0.01 and s.image[:, 34:].min() > 0.99  # inverted
    assert s.masks[0, 32, 16] == 1 and s.masks[0, 32, 44] == 1 and s.masks[0, 32, 32] == 0
    assert s.meta["sex"] == "F" and s.meta["age"] == 53.0 and s.meta["age_group"] == "40-59"


def test_jsrt_truncated_img_is_reported(tmp_path):
    (tmp_path / "JPCNN001.IMG").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="JPCNN001.IMG"):
        readers.read_jsrt_img(tmp_path / "JPCNN001.IMG")


# ------------------------------------------------------------------------ Montgomery / Shenzhen


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_montgomery_layout(tmp_path):
    img = np.zeros((80, 60), np.uint16)
    img[:, 30:] = 4000  # 12-bit data in a 16-bit PNG
    _png(tmp_path / "CXR_png" / "MCUCXR_0001_0.png", img)
    lm = np.zeros((80, 60), np.uint8)
    lm[10:70, 35:55] = 255
    rm = np.zeros((80, 60), np.uint8)
    rm[10:70, 5:25] = 255
    _png(tmp_path / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png", lm)
    _png(tmp_path / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png", rm)
    (tmp_path / "ClinicalReadings").mkdir()
    (tmp_path / "ClinicalReadings" / "MCUCXR_0001_0.txt").write_text(
        "Patient's Sex: M\nPatient's Age: 044Y\nnormal\n"
    )
    _png(tmp_path / "CXR_png" / "MCUCXR_0002_0.png", img)  # no masks: skipped
    (s,) = readers.load_montgomery(tmp_path, None, size=32)
    assert s.image.max() == pytest.approx(1.0) and s.image[:, :10].max() == 0.0
    assert s.masks.sum() > 0 and s.masks[0, :, 14:18].sum() == 0  # gap between lungs
    assert s.meta == {"id": "MCUCXR_0001_0", "sex": "M", "age": 44.0, "age_group": "40-59"}


def test_shenzhen_layout(tmp_path):
    img = (np.random.default_rng(0).random((50, 50)) * 255).astype(np.uint8)
    _png(tmp_path / "CXR_png" / "CHNCXR_0001_0.png", img)
    _png(tmp_path / "CXR_png" / "CHNCXR_0002_1.png", img)
    m = np.zeros((50, 50), np.uint8)
    m[5:45, 5:20] = 255
    _png(tmp_path / "mask" / "CHNCXR_0001_0_mask.png", m)
    (tmp_path / "ClinicalReadings").mkdir()
    (tmp_path / "ClinicalReadings" / "CHNCXR_0001_0.txt").write_text("female 65yrs\nnormal\n")
    (s,) = readers.load_shenzhen(tmp_path, None, size=50)
    assert s.meta["id"] == "CHNCXR_0001_0" and s.meta["sex"] == "F" and s.meta["age"] == 65
    assert (s.masks[0] == (m > 0)).all()
    with pytest.raises(DataError, match="CXR_png"):
        readers.load_shenzhen(tmp_path / "mask")


# ----------------------------------------------------------------------------- LIDC pickle


def _lidc_item(rng, uid):
    masks = [(rng.random((128, 128)) > 0.5).astype(np.uint8) for _ in range(4)]
    return {
        "image": rng.random((128, 128)).astype(np.float32),
        "masks": masks,
        "series_uid": uid,
        "pixel_spacing": 0.7,
    }


def test_lidc_pickle_in_knegts_format(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        f"LIDC-{i:04d}_slice_{j}.png": _lidc_item(rng, f"1.3.6.{i}")
        for i in range(30)
        for j in range(2)
    }
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(data))
    all_samples = readers.load_lidc(path, None, size=64)
    assert len(all_samples) == 60
    s = all_samples[0]
    assert s.masks.shape == (4, 64, 64) and s.image.shape == (64, 64)
    key = "LIDC-0000_slice_0.png"
    np.testing.assert_array_equal(
        readers.load_lidc(path, None, size=128)[0].masks[2], data[key]["masks"][2]
    )
    # series never straddle splits
    by_split = {
        sp: {x.meta["series_uid"] for x in readers.load_lidc(tmp_path, sp, 64)}
        for sp in ("train", "validate", "test")
    }
    assert sum(len(v) for v in by_split.values()) == 30
    assert not (by_split["train"] & by_split["test"])


def test_lidc_refuses_code_and_missing_fields(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(DataError, match="not allowed"):
        readers.load_lidc(tmp_path / "evil.pickle")
    (tmp_path / "bad.pickle").write_bytes(pickle.dumps({"a": {"image": np.zeros((4, 4))}}))
    with pytest.raises(DataError, match=r"bad.pickle\['a'\].*masks"):
        readers.load_lidc(tmp_path / "bad.pickle")
