"""MATLAB-compatible bicubic imresize: against an independent float64 reference and real data."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edsr.metrics import psnr, ssim
from edsr.resize import imresize, imresize_np, imresize_pil, output_size

DATA = Path(__file__).parent / "data"
SCALES = [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.37, 1.7]
SIZES = [(17, 23), (20, 16)]


# --- independent reference, written from the formula, one output pixel at a time ---------


def _keys(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _mirror(i: int, n: int) -> int:
    """0-based symmetric reflection (-1 -> 0, -2 -> 1, n -> n-1), repeated as needed."""
    while i < 0 or i >= n:
        i = -1 - i if i < 0 else 2 * n - 1 - i
    return i


def _ref_axis0(v: np.ndarray, out_len: int, s: float, antialias: bool = True) -> np.ndarray:
    n = v.shape[0]
    stretch = s < 1 and antialias
    width = 4 / s if stretch else 4.0
    out = np.zeros((out_len, *v.shape[1:]), dtype=np.float64)
    for x in range(1, out_len + 1):
        u = x / s + 0.5 * (1 - 1 / s)
        first = math.floor(u - width / 2)
        taps = [first + k for k in range(math.ceil(width) + 2)]
        ws = [s * _keys(s * (u - j)) if stretch else _keys(u - j) for j in taps]
        total = sum(ws)
        acc = np.zeros(v.shape[1:], dtype=np.float64)
        for j, wj in zip(taps, ws, strict=True):
            acc = acc + (wj / total) * v[_mirror(j - 1, n)]
        out[x - 1] = acc
    return out


def ref_resize(
    img: np.ndarray, out_hw: tuple[int, int], s_hw: tuple[float, float], antialias: bool = True
) -> np.ndarray:
    """float64 resize of an (H, W) array: rows then columns."""
    a = np.asarray(img, dtype=np.float64)
    a = _ref_axis0(a, out_hw[0], s_hw[0], antialias)
    a = _ref_axis0(a.T, out_hw[1], s_hw[1], antialias).T
    return a


def ref_scale(img: np.ndarray, s: float) -> np.ndarray:
    h, w = img.shape
    return ref_resize(img, (math.ceil(h * s), math.ceil(w * s)), (s, s))


def _round_half_away(a: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(np.clip(a, 0, 255) + 0.5), 0, 255)


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- against the reference ---------------------------------------------------------------


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("s", SCALES)
def test_float_matches_reference(hw: tuple[int, int], s: float, rng: np.random.Generator) -> None:
    img = rng.uniform(0, 255, size=hw)
    ref = ref_scale(img, s)
    out64 = imresize(torch.from_numpy(img), s)
    assert out64.dtype == torch.float64
    assert tuple(out64.shape) == ref.shape
    assert np.abs(out64.numpy() - ref).max() <= 1e-9

    out32 = imresize(torch.from_numpy(img).float(), s)
    assert out32.dtype == torch.float32
    ref32 = ref_scale(img.astype(np.float32), s)  # same float32-rounded input
    assert np.abs(out32.numpy().astype(np.float64) - ref32).max() <= 1e-4


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("s", SCALES)
def test_uint8_matches_reference(hw: tuple[int, int], s: float, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=hw, dtype=np.uint8)
    ref = ref_scale(img, s)
    out = imresize(torch.from_numpy(img), s)
    assert out.dtype == torch.uint8
    diff = np.abs(out.numpy().astype(np.int64) - _round_half_away(ref).astype(np.int64))
    near_half = np.abs(np.abs(ref - np.floor(ref)) - 0.5) < 1e-3
    assert diff.max() <= 1
    assert not np.any(diff[~near_half]), "rounding differs away from a .5 tie"
    # bicubic overshoots: clipping must have happened somewhere on random data
    if s > 1:
        assert ref.min() < 0 or ref.max() > 255


def test_no_antialias_matches_reference(rng: np.random.Generator) -> None:
    img = rng.uniform(0, 255, size=(17, 23))
    ref = ref_resize(img, (9, 12), (0.5, 0.5), antialias=False)
    out = imresize(torch.from_numpy(img), 0.5, antialias=False)
    assert np.abs(out.numpy() - ref).max() <= 1e-9
    assert np.abs(out.numpy() - ref_scale(img, 0.5)).max() > 1  # antialiasing matters


def test_size_with_different_axis_scales(rng: np.random.Generator) -> None:
    img = rng.uniform(0, 255, size=(17, 23))
    # columns have the smaller scale here, so they are resized first (MATLAB's order)
    for size in [(6, 8), (34, 8), (5, 46), (17, 23)]:
        out = imresize(torch.from_numpy(img), size=size)
        ref = ref_resize(img, size, (size[0] / 17, size[1] / 23))
        assert tuple(out.shape) == size
        assert np.abs(out.numpy() - ref).max() <= 1e-9


def test_kernel_wider_than_image(rng: np.random.Generator) -> None:
    for hw, s in [((3, 2), 0.25), ((2, 5), 0.1), ((1, 1), 3), ((1, 4), 0.5)]:
        img = rng.uniform(0, 255, size=hw)
        out = imresize(torch.from_numpy(img), s)
        assert np.abs(out.numpy() - ref_scale(img, s)).max() <= 1e-9


# --- known values ------------------------------------------------------------------------


def test_output_size_ceil_rule() -> None:
    assert output_size((17, 23), 1 / 3)[0] == (6, 8)
    assert output_size((17, 23), 0.37)[0] == (7, 9)
    assert output_size((17, 23), 1.7)[0] == (29, 40)
    assert output_size((20, 16), 1 / 4)[0] == (5, 4)
    assert output_size((20, 16), 3)[0] == (60, 48)
    assert output_size((17, 23), size=(6, 9)) == ((6, 9), (6 / 17, 9 / 23))
    assert imresize(torch.zeros(17, 23), 1 / 3).shape == (6, 8)


def test_constant_is_preserved() -> None:
    for s in SCALES:
        out = imresize(torch.full((2, 17, 23), 100.25, dtype=torch.float64), s)
        assert torch.allclose(out, torch.tensor(100.25, dtype=torch.float64), atol=1e-10, rtol=0)
        out8 = imresize(torch.full((17, 23), 77, dtype=torch.uint8), s)
        assert torch.all(out8 == 77)


def test_scale_one_is_identity(rng: np.random.Generator) -> None:
    img = torch.from_numpy(rng.uniform(0, 255, size=(3, 17, 23)))
    assert torch.equal(imresize(img, 1), img)


@pytest.mark.parametrize("s", [1 / 4, 1 / 3, 0.5, 2, 3, 4, 1.7])
def test_linear_ramp_preserved_in_interior(s: float) -> None:
    h, w = 40, 36
    i = np.arange(1, h + 1, dtype=np.float64)[:, None]
    j = np.arange(1, w + 1, dtype=np.float64)[None, :]
    ramp = 3.0 * i + 0.5 * j + 10.0
    out = imresize(torch.from_numpy(ramp), s).numpy()
    half = 2 / s if s < 1 else 2.0  # kernel half-width in input pixels

    def pos(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.arange(1, n_out + 1, dtype=np.float64)
        u = x / s + 0.5 * (1 - 1 / s)
        return u, (u - half >= 1) & (u + half <= n_in)

    uh, ih = pos(h, out.shape[0])
    uw, iw = pos(w, out.shape[1])
    assert ih.sum() >= 2 and iw.sum() >= 2
    expected = 3.0 * uh[:, None] + 0.5 * uw[None, :] + 10.0
    interior = ih[:, None] & iw[None, :]
    assert np.abs(out - expected)[interior].max() <= 1e-9
    assert np.abs(out - expected)[~interior].max() > 1e-3  # mirroring bends the borders


# --- shapes, batching, wrappers, errors -----------------------------------------------------


def test_batched_equals_per_image(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.uniform(0, 255, size=(2, 3, 17, 23)))
    x8 = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 20, 16), dtype=np.uint8))
    for s in [1 / 3, 2, 0.37]:
        out = imresize(x, s)
        out8 = imresize(x8, s)
        for n in range(2):
            assert torch.allclose(imresize(x[n], s), out[n], atol=1e-10, rtol=0)
            assert torch.equal(imresize(x8[n], s), out8[n])
            for c in range(3):
                assert torch.allclose(imresize(x[n, c], s), out[n, c], atol=1e-10, rtol=0)
                ref = ref_scale(x[n, c].numpy(), s)
                assert np.abs(out[n, c].numpy() - ref).max() <= 1e-9


def test_float_dtypes_kept() -> None:
    x = torch.rand(3, 17, 23) * 255
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        out = imresize(x.to(dt), 1 / 2)
        assert out.dtype == dt and out.shape == (3, 9, 12)


def test_numpy_and_pil_wrappers(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    expected = imresize(torch.from_numpy(rgb).permute(2, 0, 1), 1 / 3).permute(1, 2, 0).numpy()
    got = imresize_np(rgb, 1 / 3)
    assert got.dtype == np.uint8 and got.shape == (6, 8, 3)
    assert np.array_equal(got, expected)
    gray = rng.uniform(0, 255, size=(17, 23)).astype(np.float32)
    got_f = imresize_np(gray, size=(30, 11))
    assert got_f.dtype == np.float32 and got_f.shape == (30, 11)
    ref = ref_resize(gray, (30, 11), (30 / 17, 11 / 23))
    assert np.abs(got_f - ref).max() <= 1e-4

    pil = imresize_pil(Image.fromarray(rgb), 1 / 3)
    assert pil.mode == "RGB" and pil.size == (8, 6)
    assert np.array_equal(np.asarray(pil), expected)
    pil_l = imresize_pil(Image.fromarray(rgb[..., 0]), size=(34, 46))
    assert pil_l.mode == "L" and pil_l.size == (46, 34)
    assert np.array_equal(np.asarray(pil_l), imresize_np(rgb[..., 0], 2))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "exactly one"),
        ((2,), {"size": (4, 4)}, "exactly one"),
        ((0,), {}, "positive"),
        ((-2,), {}, "positive"),
        ((float("nan"),), {}, "positive"),
        ((float("inf"),), {}, "positive"),
        (("2",), {}, "positive"),
        ((), {"size": (0, 4)}, "positive integers"),
        ((), {"size": (4,)}, "pair"),
        ((), {"size": (4.5, 4)}, "positive integers"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        imresize(torch.zeros(8, 8), *args, **kwargs)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        imresize(torch.zeros(0, 8), 2)
    with pytest.raises(ValueError, match="empty"):
        imresize(torch.zeros(3, 8, 0), 2)
    with pytest.raises(ValueError, match="shape"):
        imresize(torch.zeros(8), 2)
    with pytest.raises(ValueError, match="shape"):
        imresize(torch.zeros(1, 1, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="uint8 or floating"):
        imresize(torch.zeros(8, 8, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="torch.Tensor"):
        imresize(np.zeros((8, 8)), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        imresize_np(np.zeros((1, 8, 8, 3)), 2)
    with pytest.raises(ValueError, match="mode"):
        imresize_pil(Image.new("RGBA", (8, 8)), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 40, 36), dtype=np.uint8))
    xf = x.float()
    for s in [1 / 4, 3, 0.37]:
        assert torch.equal(imresize(x.cuda(), s).cpu(), imresize(x, s))
        diff = (imresize(xf.cuda(), s).cpu() - imresize(xf, s)).abs().max().item()
        assert diff <= 1e-4


# --- bicubic baselines on real data against the published tables -------------------------


def _data_dir(name: str) -> Path | None:
    candidates = []
    if os.environ.get("EDSR_DATA"):
        root = Path(os.environ["EDSR_DATA"])
        candidates += [root / "benchmark" / name / "HR", root / name / "HR"]
    candidates.append(
        Path(__file__).resolve().parents[2] / "shared/datasets/benchmark" / name / "HR"
    )
    return next((p for p in candidates if p.is_dir() and any(p.glob("*.png"))), None)


def _bicubic_scores(folder: Path, s: int) -> tuple[float, float]:
    """Mean Y-PSNR / SSIM of MATLAB bicubic down-up at scale s, shaving s pixels."""
    ps, ss = [], []
    for f in sorted(folder.glob("*.png")):
        with Image.open(f) as im:
            a = np.asarray(im)
        # gray images (Set14 bridge) stay 1-channel throughout and are measured on gray
        hr = torch.from_numpy(a.copy())
        hr = hr[None] if hr.ndim == 2 else hr.permute(2, 0, 1)
        h, w = hr.shape[-2:]
        hr = hr[:, : h - h % s, : w - w % s]
        lr = imresize(hr, 1 / s)
        sr = imresize(lr, s)
        assert lr.dtype == sr.dtype == torch.uint8 and sr.shape == hr.shape
        ps.append(psnr(sr, hr, crop_border=s).item())
        ss.append(ssim(sr, hr, crop_border=s).item())
    return float(np.mean(ps)), float(np.mean(ss))


@pytest.mark.parametrize(
    ("s", "pub_psnr", "pub_ssim"), [(2, 33.66, 0.9299), (3, 30.39, 0.8682), (4, 28.42, 0.8104)]
)
def test_set5_bicubic_matches_published(s: int, pub_psnr: float, pub_ssim: float) -> None:
    folder = DATA / "Set5" / "HR"
    assert len(list(folder.glob("*.png"))) == 5
    p, q = _bicubic_scores(folder, s)
    assert abs(p - pub_psnr) <= 0.03, p
    assert abs(q - pub_ssim) <= 0.002, q


@pytest.mark.parametrize(
    ("s", "pub_psnr", "pub_ssim"), [(2, 30.24, 0.8688), (3, 27.55, 0.7742), (4, 26.00, 0.7027)]
)
def test_set14_bicubic_matches_published(s: int, pub_psnr: float, pub_ssim: float) -> None:
    folder = _data_dir("Set14")
    if folder is None:
        pytest.skip("Set14 HR not found (set EDSR_DATA to the datasets folder or use ../shared)")
    assert len(list(folder.glob("*.png"))) == 14
    p, q = _bicubic_scores(folder, s)
    assert abs(p - pub_psnr) <= 0.03, p
    assert abs(q - pub_ssim) <= 0.002, q
