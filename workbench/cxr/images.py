"""Read chest X-ray images (MIMIC-CXR-JPG JPEGs, PNGs and original MIMIC-CXR DICOMs) as grey PIL.

Every reader returns an 8-bit ``'L'`` image, which is what MAIRA-2's processor starts from
(it converts to ``'L'`` and min-max rescales; maira2.md section 3). DICOMs go through the
display pipeline of DICOM PS3.3 C.11 in order: stored values -> Modality LUT (rescale
slope/intercept) -> VOI LUT sequence or window centre/width -> MONOCHROME1 inversion -> 8 bit.

Anything unreadable (missing, truncated, not an image, an undecodable transfer syntax)
raises :class:`CXRDataError` with the path in the message, never a bare library error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class CXRDataError(ValueError):
    """A chest X-ray input (image, report, CSV) is missing or malformed; the path is named."""


def is_dicom(path: str | Path) -> bool:
    """True for a DICOM file: by suffix, else by the ``DICM`` magic at byte 128 (Part 10)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_image(path: str | Path) -> Image.Image:
    """Read a JPG/PNG/DICOM chest X-ray as an 8-bit greyscale ``'L'`` PIL image."""
    path = Path(path)
    if not path.is_file():
        raise CXRDataError(f"{path}: image file not found")
    if is_dicom(path):
        return Image.fromarray(to_uint8(dicom_to_unit(path)), mode="L")
    return _load_raster(path)


def to_uint8(unit_HW: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 [0, 255] with rounding (clipping anything outside)."""
    return np.rint(np.clip(unit_HW, 0.0, 1.0) * 255.0).astype(np.uint8)


def _load_raster(path: Path) -> Image.Image:
    """JPEG/PNG/TIFF via Pillow; high-bit-depth greyscale is min-max scaled, not clipped."""
    try:
        with Image.open(path) as img:
            img.load()  # force decoding now so a truncated file fails here
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return Image.fromarray(to_uint8(_minmax(np.asarray(img, dtype=np.float64))))
            return img.convert("L")
    except (OSError, ValueError, SyntaxError) as exc:
        raise CXRDataError(f"{path}: cannot read image: {exc}") from exc


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1]; a constant image becomes all zeros rather than NaN."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float64)
    return (arr - lo) / (hi - lo)


def dicom_to_unit(path: str | Path) -> np.ndarray:
    """Decode a DICOM's first frame to display values in [0, 1] (float64, white = 1)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise CXRDataError(f"{path}: not a readable DICOM file: {exc}") from exc
    if "PixelData" not in ds:
        raise CXRDataError(f"{path}: DICOM has no pixel data")
    try:
        arr = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as exc:
        raise CXRDataError(f"{path}: cannot decode DICOM pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CXRDataError(f"{path}: unsupported PhotometricInterpretation {photometric}")
    if arr.ndim == 3:  # multi-frame: a radiograph has one frame that matters, the first
        arr = arr[0]
    if arr.ndim != 2:
        raise CXRDataError(f"{path}: expected a 2-D greyscale image, got shape {arr.shape}")
    try:
        unit = _display_values(arr, ds)
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise CXRDataError(f"{path}: malformed Modality/VOI LUT attributes: {exc}") from exc
    # MONOCHROME1: the minimum value is displayed white (PS3.3 C.7.6.3.1.2), so invert.
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def _display_values(arr: np.ndarray, ds) -> np.ndarray:
    """Modality LUT then VOI transform (PS3.3 C.11.1, C.11.2) to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        lut_in = np.rint(values).astype(np.int64)  # LUT inputs are integers (C.11.2.1.1)
        out = np.asarray(apply_voi(lut_in, ds, index=0), dtype=np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return np.clip(out / float(2**bits - 1), 0.0, 1.0)
    window = _window(ds)
    if window is not None:
        centre, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        return apply_window(values, centre, width, function)
    return _minmax(values)


def _first(value) -> float:
    """First number of a possibly multi-valued DS element (Window Center can hold several)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _window(ds) -> tuple[float, float] | None:
    """The first (centre, width) pair of Window Center/Width, or None if absent or unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    if ds.WindowCenter is None or ds.WindowWidth is None:
        return None
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    return (centre, width) if width > 0 else None


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR"):
    """Window centre/width to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":  # C.11.2.1.3.1
        return 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    if function == "LINEAR_EXACT":  # C.11.2.1.3.2
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    if width <= 1.0:  # degenerate LINEAR window: a threshold at c - 0.5
        return (values > centre - 0.5).astype(np.float64)
    # C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> min; x > c - 0.5 + (w-1)/2 -> max; else linear.
    return np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
