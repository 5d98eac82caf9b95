"""The Python door's inputs: each gives a result or one EdsrError naming what is wrong, never an
internal error after the work or a silently wrong picture."""

import numpy as np
import pytest
import torch
from PIL import Image

import edsr
from edsr import EdsrError
from sr_helpers import small_edsr


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_edsr(2).eval()


def test_16_bit_pillow_images_come_back_16_bit(model):
    a = (np.arange(24 * 20).reshape(20, 24) * 131 % 65535).astype(np.uint16)
    for img in (Image.fromarray(a), Image.fromarray(a.astype(np.int32))):
        out = edsr.upscale(img, model, 2)
        assert out.mode == img.mode and out.size == (48, 40)
        want = edsr.upscale(a, model, 2)  # the same pixels through numpy
        assert np.array_equal(np.asarray(out).astype(np.uint16), want)
    with pytest.raises(EdsrError, match="16-bit images hold 0..65535"):
        edsr.upscale(Image.fromarray(np.full((8, 8), 70000, np.int32)), model, 2)


def test_big_endian_samples_are_the_same_values(model):
    a = (np.random.default_rng(1).random((12, 10, 3)) * 60000).astype(np.uint16)
    out = edsr.upscale(a.astype(">u2"), model, 2)
    assert out.dtype == np.dtype(">u2") and np.array_equal(out, edsr.upscale(a, model, 2))


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (torch.zeros(0, 3, 8, 8), {}, "image is empty"),
        (np.full((8, 8, 3), np.nan, np.float32), {}, "NaN or infinite"),
        (np.full((8, 8, 3), np.inf, np.float32), {}, "NaN or infinite"),
        (np.zeros((8, 8, 3), np.float32), {"value_range": float("inf")}, "value_range must be"),
        (np.zeros((8, 8, 3), np.float32), {"value_range": 0}, "value_range must be"),
        (np.zeros((8, 8, 3), np.uint8), {"scale": 2.5}, "scale must be a whole number"),
        (np.zeros((8, 8, 3), np.uint8), {"tile": float("nan")}, "tile must be a whole number"),
        (np.zeros((8, 8, 3), np.uint8), {"tile": 0}, "tile must be"),
    ],
)
def test_a_bad_input_is_one_error_naming_it(model, image, kwargs, message):
    with pytest.raises(EdsrError, match=message) as e:
        edsr.upscale(image, model, **{"scale": 2, **kwargs})
    assert "\n" not in str(e.value)
