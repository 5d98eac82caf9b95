import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from edsr import EdsrError, build_model, upscale
from edsr.models import EDSR


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = EDSR(scale=2, n_resblocks=2, n_feats=16)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.03)
    return m.eval()


def test_same_result_for_pil_numpy_and_tensor(model, baby):
    crop = baby[100:140, 200:236]
    out_np = upscale(crop, model)
    out_pil = np.asarray(upscale(Image.fromarray(crop), model))
    t = torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255
    out_t = upscale(t, model)
    assert out_np.shape == (80, 72, 3) and out_np.dtype == np.uint8
    assert np.array_equal(out_np, out_pil)
    assert np.abs(out_t.permute(1, 2, 0).numpy() * 255 - out_np).max() <= 0.5 + 1e-3
    batch = upscale(torch.stack([t, t.flip(-1)]), model)
    assert batch.shape == (2, 3, 80, 72)
    assert torch.allclose(batch[0], out_t, atol=1e-5)


def test_unit_float_input_is_not_treated_as_0_255(model, baby):
    """The public code's trap: [0, 1] floats fed to 0..255 weights give a black picture."""
    crop = baby[:32, :32]
    unit = upscale(crop.astype(np.float32) / 255, model)
    assert unit.max() <= 1.0 and unit.mean() > 0.2
    assert np.abs(unit * 255 - upscale(crop, model)).max() <= 0.5 + 1e-3
    with pytest.raises(EdsrError, match="value_range=255"):
        upscale(crop.astype(np.float32), model)
    as255 = upscale(crop.astype(np.float32), model, value_range=255)
    assert np.abs(as255 - upscale(crop, model)).max() <= 0.5 + 1e-3


def test_gray_stays_gray_and_alpha_is_kept(model):
    gray = Image.open(DATA / "Set14" / "HR" / "bridge.png")
    assert gray.mode == "L"
    crop = gray.crop((0, 0, 30, 20))
    out = upscale(crop, model)
    assert out.mode == "L" and out.size == (60, 40)
    rgba = Image.new("RGBA", (10, 8), (200, 100, 50, 0))
    rgba.putpixel((3, 3), (10, 20, 30, 255))
    up = upscale(rgba, model)
    assert up.mode == "RGBA" and up.size == (20, 16)
    alpha = np.asarray(up)[:, :, 3]
    assert alpha[0, 0] == 0 and alpha[7, 7] > 100, "alpha follows the opaque pixel"


def test_16_bit_keeps_16_bits(model):
    rng = np.random.default_rng(0)
    a = (rng.random((12, 10)) * 65535).astype(np.uint16)
    out = upscale(a, model)
    assert out.dtype == np.uint16 and out.shape == (24, 20)
    as8 = upscale(np.floor(a / 257 + 0.5).astype(np.uint8), model)
    # Same picture, finer levels: most 16-bit values are not multiples of 257.
    assert np.abs(out / 257 - as8).max() <= 1.5
    assert np.mean(out % 257 != 0) > 0.5


def test_palette_becomes_rgb(model):
    p = Image.new("RGB", (8, 8), (255, 0, 0)).convert("P")
    assert upscale(p, model).mode == "RGB"


def test_bad_arguments(model):
    with pytest.raises(EdsrError, match="x2, not x3"):
        upscale(np.zeros((4, 4, 3), np.uint8), model, scale=3)
    with pytest.raises(EdsrError, match="PIL image, numpy array or torch tensor"):
        upscale([[1, 2]], model)
    with pytest.raises(EdsrError, match="channels"):
        upscale(torch.zeros(3, 5, 4, 4), model)
    with pytest.raises(EdsrError, match="empty"):
        upscale(np.zeros((0, 4, 3), np.uint8), model)


def test_mdsr_needs_scale():
    m = build_model("mdsr-baseline").eval()
    with pytest.raises(EdsrError, match="choose one with --scale"):
        upscale(np.zeros((4, 4, 3), np.uint8), m)
    assert upscale(np.zeros((4, 4, 3), np.uint8), m, scale=3).shape == (12, 12, 3)
