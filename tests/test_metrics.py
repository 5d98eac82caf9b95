"""PSNR / SSIM on the benchmark protocol: Y of MATLAB rgb2ycbcr, shaving, gray images."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from edsr.metrics import psnr, rgb_to_y, ssim


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(99)


def _rand_rgb(rng: np.random.Generator, n: int = 1, h: int = 24, w: int = 20) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, 256, size=(n, 3, h, w), dtype=np.uint8))


# --- independent references ------------------------------------------------------------


def _ref_ssim_2d(x: np.ndarray, y: np.ndarray, L: float = 255.0) -> float:
    """ssim_index.m with explicit loops over the 'valid' window positions."""
    k = np.arange(11) - 5
    win = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (win * px).sum(), (win * py).sum()
            vx = (win * px * px).sum() - mx * mx
            vy = (win * py * py).sum() - my * my
            cxy = (win * px * py).sum() - mx * my
            vals.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
            )
    return float(np.mean(vals))


def _ref_y(rgb_chw: np.ndarray) -> np.ndarray:
    r, g, b = rgb_chw.astype(np.float64)
    return 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255


# --- rgb_to_y --------------------------------------------------------------------------


def test_y_of_primaries() -> None:
    px = torch.tensor(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=torch.float64
    )
    x = px.T.reshape(1, 3, 1, 5)
    y = rgb_to_y(x).flatten().tolist()
    expected = [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0]
    assert y == pytest.approx(expected, abs=1e-10)
    # other data ranges: same luma, in the input's own scale
    y1 = rgb_to_y(x / 255, data_range=1.0).flatten().tolist()
    assert y1 == pytest.approx([v / 255 for v in expected], abs=1e-12)
    assert rgb_to_y(x.to(torch.uint8)).dtype == torch.float64
    with pytest.raises(ValueError, match="3"):
        rgb_to_y(torch.zeros(1, 1, 4, 4))


# --- PSNR --------------------------------------------------------------------------------


def test_identical_images_give_inf_and_one(rng: np.random.Generator) -> None:
    a = _rand_rgb(rng, n=2)
    gray = a[:, :1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (a, gray):
            for yc in (True, False):
                p = psnr(x, x.clone(), y_channel=yc, crop_border=2)
                assert p.shape == (2,) and p.dtype == torch.float64
                assert torch.all(torch.isinf(p)) and torch.all(p > 0)
                assert torch.all(ssim(x, x.clone(), y_channel=yc) == 1.0)
        hwc = a[0].permute(1, 2, 0).numpy()
        assert math.isinf(psnr(hwc, hwc.copy()).item())
        assert ssim(hwc, hwc.copy()).item() == 1.0


@pytest.mark.parametrize("d", [1, 5, 17])
def test_constant_difference_gray(d: int, rng: np.random.Generator) -> None:
    hr = rng.integers(0, 200, size=(1, 1, 16, 16)).astype(np.float64)
    sr = hr + d
    expected = 20 * math.log10(255 / d)
    got = psnr(torch.from_numpy(sr), torch.from_numpy(hr)).item()
    assert got == pytest.approx(expected, abs=1e-10)
    # same on RGB without Y (MSE over all channels), and with a [0, 1] range
    rgb_hr, rgb_sr = np.repeat(hr, 3, axis=1), np.repeat(sr, 3, axis=1)
    t_hr, t_sr = torch.from_numpy(rgb_hr), torch.from_numpy(rgb_sr)
    assert psnr(t_sr, t_hr, y_channel=False).item() == pytest.approx(expected, abs=1e-10)
    got1 = psnr(t_sr / 255, t_hr / 255, y_channel=False, data_range=1.0).item()
    assert got1 == pytest.approx(expected, abs=1e-10)


def test_y_psnr_matches_manual(rng: np.random.Generator) -> None:
    hr, sr = _rand_rgb(rng), _rand_rgb(rng)
    yh, ys = _ref_y(hr[0].numpy()), _ref_y(sr[0].numpy())
    mse = np.mean((yh[3:-3, 3:-3] - ys[3:-3, 3:-3]) ** 2)
    expected = 10 * math.log10(255**2 / mse)
    assert psnr(sr, hr, crop_border=3).item() == pytest.approx(expected, abs=1e-10)
    # rounded Y, half away from zero, as MATLAB's rgb2ycbcr returns for uint8 images
    yh_r, ys_r = np.floor(yh + 0.5), np.floor(ys + 0.5)
    mse_r = np.mean((yh_r[3:-3, 3:-3] - ys_r[3:-3, 3:-3]) ** 2)
    got = psnr(sr, hr, crop_border=3, round_y=True).item()
    assert got == pytest.approx(10 * math.log10(255**2 / mse_r), abs=1e-10)
    assert abs(got - expected) > 1e-6  # rounding really happened
    # float data in [0, 1] gives the same number
    got1 = psnr(sr.double() / 255, hr.double() / 255, crop_border=3, data_range=1.0).item()
    assert got1 == pytest.approx(expected, abs=1e-9)


def test_crop_border_shaves_each_side(rng: np.random.Generator) -> None:
    hr = _rand_rgb(rng, h=20, w=24).double()
    sr = hr.clone()
    sr[..., :2, :] += 7
    sr[..., -2:, :] -= 5
    sr[..., :, :2] += 3
    sr[..., :, -2:] -= 11
    assert math.isinf(psnr(sr, hr, crop_border=2).item())
    # one pixel shaved: a ring of width 1 (2 * (18 + 22) - 4 = 76 pixels of 18x22) differs
    diff = (rgb_to_y(sr) - rgb_to_y(hr))[..., 1:-1, 1:-1]
    expected = 10 * math.log10(255**2 / diff.square().mean().item())
    assert psnr(sr, hr, crop_border=1).item() == pytest.approx(expected, abs=1e-10)
    assert int((diff.abs() > 0).sum()) == 76
    with pytest.raises(ValueError, match="crop_border"):
        psnr(sr, hr, crop_border=10)


def test_numpy_and_torch_agree(rng: np.random.Generator) -> None:
    hr, sr = _rand_rgb(rng, h=30, w=26), _rand_rgb(rng, h=30, w=26)
    hr_np = hr[0].permute(1, 2, 0).numpy()
    sr_np = sr[0].permute(1, 2, 0).numpy()
    for fn in (psnr, ssim):
        t = fn(sr, hr, crop_border=2).item()
        assert fn(sr_np, hr_np, crop_border=2).item() == pytest.approx(t, abs=1e-12)
        assert fn(sr[0], hr[0], crop_border=2).item() == pytest.approx(t, abs=1e-12)
        f = fn(sr_np.astype(np.float32), hr_np.astype(np.float32), crop_border=2).item()
        assert f == pytest.approx(t, abs=1e-12)
    g_sr, g_hr = sr_np[..., 0], hr_np[..., 0]  # numpy HW gray == torch (1, H, W)
    assert psnr(g_sr, g_hr).item() == pytest.approx(psnr(sr[0, :1], hr[0, :1]).item(), abs=1e-12)


def test_batch_is_per_image(rng: np.random.Generator) -> None:
    hr, sr = _rand_rgb(rng, n=3), _rand_rgb(rng, n=3)
    for fn in (psnr, ssim):
        batch = fn(sr, hr, crop_border=1)
        assert batch.shape == (3,)
        for i in range(3):
            assert batch[i].item() == pytest.approx(
                fn(sr[i], hr[i], crop_border=1).item(), abs=1e-12
            )


def test_gray_as_rgb_raises_psnr_by_constant(rng: np.random.Generator) -> None:
    hr = torch.from_numpy(rng.integers(0, 256, size=(2, 1, 20, 20), dtype=np.uint8))
    sr = torch.from_numpy(rng.integers(0, 256, size=(2, 1, 20, 20), dtype=np.uint8))
    direct = psnr(sr, hr)
    replicated = psnr(sr, hr, gray_as_rgb=True)
    gain = 20 * math.log10(255 / 219)
    assert gain == pytest.approx(1.3219, abs=1e-4)
    assert torch.allclose(
        replicated - direct, torch.full((2,), gain, dtype=torch.float64), atol=1e-9
    )
    # equivalent to converting the gray image to RGB by hand
    rgb = psnr(sr.expand(-1, 3, -1, -1), hr.expand(-1, 3, -1, -1))
    assert torch.allclose(replicated, rgb, atol=1e-12, rtol=0)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*\(1, 3, 8, 9\)"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\(12, 12\).*\(12, 13\)"):
        ssim(np.zeros((12, 12)), np.zeros((12, 13)))
    with pytest.raises(ValueError, match="channels"):
        psnr(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))


# --- SSIM --------------------------------------------------------------------------------


def test_ssim_matches_loop_reference(rng: np.random.Generator) -> None:
    hr = rng.integers(0, 256, size=(3, 22, 25), dtype=np.uint8)
    noise = rng.normal(0, 20, size=hr.shape)
    sr = np.clip(np.round(hr + noise), 0, 255).astype(np.uint8)
    t_sr, t_hr = torch.from_numpy(sr), torch.from_numpy(hr)

    ref_y = _ref_ssim_2d(_ref_y(sr)[2:-2, 2:-2], _ref_y(hr)[2:-2, 2:-2])
    assert ssim(t_sr, t_hr, crop_border=2).item() == pytest.approx(ref_y, abs=1e-12)

    ref_rgb = np.mean([_ref_ssim_2d(sr[c], hr[c]) for c in range(3)])
    assert ssim(t_sr, t_hr, y_channel=False).item() == pytest.approx(ref_rgb, abs=1e-12)

    ref_gray = _ref_ssim_2d(sr[0], hr[0])
    assert ssim(t_sr[:1], t_hr[:1]).item() == pytest.approx(ref_gray, abs=1e-12)
    assert 0.2 < ref_gray < 0.99  # a non-trivial value

    # data_range=1 with [0, 1] data: L scales with the data, the value is unchanged
    got1 = ssim(t_sr.double() / 255, t_hr.double() / 255, data_range=1.0, crop_border=2).item()
    assert got1 == pytest.approx(ref_y, abs=1e-12)


def test_ssim_too_small_raises() -> None:
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 1, 14, 14), torch.zeros(1, 1, 14, 14), crop_border=2)
