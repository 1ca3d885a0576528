"""Image readers: JPG/PNG, and DICOM display pipeline (Modality LUT, VOI LUT/window, MONO1)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from workbench.cxr.images import CXRDataError, apply_window, dicom_to_unit, is_dicom, load_image


def write_dicom(path, pixels, bits_stored=16, photometric="MONOCHROME2", signed=False, **attrs):
    """Write a minimal uncompressed single-frame greyscale DICOM (Part 10) with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}
    data = pixels.astype(dtype[(ds.BitsAllocated, signed)]).tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)  # PS3.5: value fields have even length
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows, cols, hi):
    """A horizontal ramp 0..hi so that contrast direction is checkable."""
    return np.tile(np.linspace(0, hi, cols).round(), (rows, 1))


def test_jpeg_and_png_read_as_grey(tmp_path):
    rgb = np.zeros((9, 11, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(np.full((5, 7), 77, np.uint8)).save(tmp_path / "b.png")
    a, b = load_image(tmp_path / "a.jpg"), load_image(tmp_path / "b.png")
    assert a.mode == "L" and a.size == (11, 9)
    assert b.mode == "L" and np.all(np.asarray(b) == 77)


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000], [2000, 4000]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = np.asarray(load_image(tmp_path / "x.png"))
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])


def test_dicom_16bit_odd_size_minmax(tmp_path):
    px = ramp(7, 13, 65535)
    path = write_dicom(tmp_path / "x.dcm", px)
    img = load_image(path)
    assert img.mode == "L" and img.size == (13, 7)
    arr = np.asarray(img)
    assert arr[0, 0] == 0 and arr[0, -1] == 255
    assert np.all(np.diff(arr[0].astype(int)) >= 0)


def test_dicom_12bit_uses_full_display_range(tmp_path):
    px = ramp(4, 5, 4095)
    path = write_dicom(tmp_path / "twelve", px, bits_stored=12)  # no suffix: detected by magic
    assert is_dicom(path)
    arr = np.asarray(load_image(path))
    np.testing.assert_array_equal(arr[0], [0, 64, 128, 191, 255])


def test_monochrome1_is_inverted(tmp_path):
    px = ramp(3, 4, 4095)
    m1 = np.asarray(load_image(write_dicom(tmp_path / "m1.dcm", px, 12, "MONOCHROME1")))
    m2 = np.asarray(load_image(write_dicom(tmp_path / "m2.dcm", px, 12, "MONOCHROME2")))
    np.testing.assert_array_equal(m1.astype(int), 255 - m2.astype(int))
    assert m1[0, 0] == 255  # lowest stored value shows white


def test_window_centre_width_clips_outside_window(tmp_path):
    px = np.array([[0, 1000, 1500, 2000, 4000]])
    path = write_dicom(tmp_path / "w.dcm", px, 12, WindowCenter=1500.5, WindowWidth=1001)
    arr = np.asarray(load_image(path))[0]
    # window spans [1000, 2000]: below -> black, above -> white, centre -> mid grey
    assert arr[0] == 0 and arr[1] == 0 and arr[3] == 255 and arr[4] == 255
    assert abs(int(arr[2]) - 128) <= 1


def test_multivalued_window_uses_first_pair_and_rescale(tmp_path):
    px = np.array([[0, 100, 200]])
    path = write_dicom(
        tmp_path / "r.dcm",
        px,
        12,
        RescaleSlope=10,
        RescaleIntercept=-1000,  # HU-like: 0 -> -1000, 100 -> 0, 200 -> 1000
        WindowCenter=[0, 500],
        WindowWidth=[2000, 10],
    )
    arr = np.asarray(load_image(path))[0]
    assert arr[0] == 0 and abs(int(arr[1]) - 128) <= 1 and arr[2] == 255


def test_voi_lut_sequence_applied(tmp_path):
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]  # 4 entries, first mapped value 0, 8-bit output
    lut.add_new(0x00283006, "US", [255, 0, 255, 0])  # LUTData: deliberately non-monotonic
    path = write_dicom(tmp_path / "l.dcm", np.array([[0, 1, 2, 3, 9]]), 12)
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = [lut]
    ds.save_as(path)
    arr = np.asarray(load_image(path))[0]
    np.testing.assert_array_equal(arr, [255, 0, 255, 0, 0])  # 9 clips to last entry


def test_apply_window_functions():
    x = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(apply_window(x, 50, 100, "LINEAR_EXACT"), [0, 0.5, 1])
    sig = apply_window(x, 50, 100, "SIGMOID")
    # y = 1 / (1 + exp(-4 (x - c) / w)): at x = c -+ w/2 the exponent is +-2
    np.testing.assert_allclose(sig, [1 / (1 + np.exp(2)), 0.5, 1 / (1 + np.exp(-2))])
    np.testing.assert_allclose(apply_window(x, 50, 11), [0, 0.55, 1])


def test_signed_dicom_pixels(tmp_path):
    px = np.array([[-1000, 0, 1000]])
    unit = dicom_to_unit(write_dicom(tmp_path / "s.dcm", px, 16, signed=True))
    np.testing.assert_allclose(unit[0], [0, 0.5, 1])


def test_truncated_dicom_names_file(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", ramp(16, 16, 4000), 12)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CXRDataError, match="t.dcm"):
        load_image(path)


def test_truncated_jpeg_and_garbage_name_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(
        tmp_path / "j.jpg"
    )
    data = (tmp_path / "j.jpg").read_bytes()
    (tmp_path / "j.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "g.png").write_bytes(b"not an image at all")
    for name in ("j.jpg", "g.png", "missing.jpg"):
        with pytest.raises(CXRDataError, match=name):
            load_image(tmp_path / name)


def test_dicom_without_pixels_or_colour_rejected(tmp_path):
    path = write_dicom(tmp_path / "n.dcm", ramp(2, 2, 10), 12)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(CXRDataError, match="no pixel data"):
        load_image(path)
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 50)
    with pytest.raises(CXRDataError, match="bad.dcm"):
        load_image(tmp_path / "bad.dcm")


def test_undecodable_compressed_pixel_data_names_file(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", ramp(8, 8, 4000), 12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 20])  # a broken J2K codestream
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(CXRDataError, match="j2k.dcm: cannot decode DICOM pixel data"):
        load_image(path)


def test_8bit_dicom_odd_byte_count(tmp_path):
    px = np.arange(15).reshape(3, 5) * 17  # 15 bytes of pixel data, padded to 16 on disk
    arr = np.asarray(load_image(write_dicom(tmp_path / "e.dcm", px, bits_stored=8)))
    assert arr.shape == (3, 5)
    np.testing.assert_array_equal(arr, np.rint(px / px.max() * 255).astype(np.uint8))
