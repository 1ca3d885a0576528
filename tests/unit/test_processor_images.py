"""MAIRA-2 image normalisation, checked against transformers' own BitImageProcessor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

from workbench.models.processor import (
    MAIRA2_IMAGE_MEAN,
    MAIRA2_IMAGE_STD,
    Maira2Processor,
    normalize_image,
)
from workbench.models.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def processor():
    return Maira2Processor(tiny_tokenizer(), image_size=518, patch_size=14)


def bit_reference(size: int) -> BitImageProcessorPil:
    """MAIRA-2's preprocessor_config.json as a transformers image processor."""
    return BitImageProcessorPil(
        do_convert_rgb=True,
        size={"shortest_edge": size},
        resample=3,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[MAIRA2_IMAGE_MEAN] * 3,
        image_std=[MAIRA2_IMAGE_STD] * 3,
    )


def test_normalize_is_min_max_to_uint8_grey():
    arr = np.array([[10, 20], [30, 110]], dtype=np.uint8)
    out = np.asarray(normalize_image(Image.fromarray(arr)))
    # (v - 10) / 100 * 255, truncated: 0, 25.5 -> 25, 51, 255
    assert out.tolist() == [[0, 25], [51, 255]]
    assert normalize_image(Image.fromarray(arr)).mode == "L"


def test_normalize_converts_rgb_and_16_bit_to_grey():
    rgb = Image.fromarray(np.full((4, 4, 3), (200, 10, 10), dtype=np.uint8))
    assert normalize_image(rgb).mode == "L"
    wide = Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4) * 1000, mode="I")
    out = np.asarray(normalize_image(wide))
    assert out.min() == 0 and out.max() == 255


def test_constant_image_becomes_zeros_not_nan():
    out = np.asarray(normalize_image(Image.new("L", (5, 7), 128)))
    assert out.shape == (7, 5) and not out.any()


@pytest.mark.parametrize("shape", [(600, 700), (701, 523), (518, 518), (300, 200)])
def test_pixels_match_bit_image_processor(processor, shape):
    rng = np.random.default_rng(sum(shape))
    image = Image.fromarray(rng.integers(20, 230, shape).astype(np.uint8))
    expected = bit_reference(518)(normalize_image(image), return_tensors="np")["pixel_values"][0]
    ours = processor.preprocess_image(image)
    assert ours.shape == (3, 518, 518) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert np.array_equal(ours[0], ours[1]) and np.array_equal(ours[0], ours[2])


def test_centre_crop_keeps_the_middle_of_a_tall_image(processor):
    tall = np.zeros((1036, 518), dtype=np.uint8)  # resize is the identity, crop rows 259..777
    tall[259:777] = 255
    tall[0, 0] = 1  # keep a range so min-max is not constant
    out = processor.preprocess_image(Image.fromarray(tall))
    top = (255 / 255 - MAIRA2_IMAGE_MEAN) / MAIRA2_IMAGE_STD
    np.testing.assert_allclose(out[0], top, rtol=1e-5)


def test_pixel_values_stack(processor):
    small = Maira2Processor(processor.tokenizer, image_size=56, patch_size=14)
    images = [Image.new("L", (80, 60), 0), Image.new("L", (60, 90), 0)]
    images[0].putpixel((3, 3), 255)
    images[1].putpixel((5, 5), 255)
    assert tuple(small.pixel_values(images).shape) == (2, 3, 56, 56)
