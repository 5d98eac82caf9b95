"""Precision and speed options: folding, channels-last, bf16/fp16 quality, auto, torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from conftest import DATA
from edsr import EdsrError, save_model
from edsr.cli import main
from edsr.inference import precision as prec
from edsr.inference import sr_forward, upscale_tensor
from edsr.inference.fused import fused_forward, fused_kernels_available
from edsr.inference.precision import InferenceModel, prepare_model, resolve_precision
from edsr.models.common import ResBlock
from sr_helpers import pass_through_model, small_edsr, small_mdsr


def set5(crop: int | None) -> list[torch.Tensor]:
    images = []
    for path in sorted((DATA / "Set5" / "HR").glob("*.png")):
        a = np.asarray(PILImage.open(path).convert("RGB"))
        if crop:
            top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
            a = a[top : top + crop, left : left + crop]
        images.append(torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float())
    return images


def quantized_diff_percentile(model_a, model_b, images, scale, q=99.9) -> tuple[float, float]:
    """(q-th percentile, max) of |a - b| over all output samples after rounding to 0..255."""
    diffs = []
    for x in images:
        with torch.no_grad():
            a = model_a(x, scale).clamp(0, 255).round()
            b = model_b(x, scale).clamp(0, 255).round()
        diffs.append((a - b).abs().flatten().numpy())
    d = np.concatenate(diffs)
    return float(np.percentile(d, q)), float(d.max())


def test_fp32_path_folds_res_scale_uses_channels_last_and_matches():
    model = small_edsr(2, res_scale=0.1, std=0.05)
    fast = prepare_model(model, precision="fp32")
    assert isinstance(fast, InferenceModel) and fast.precision == "fp32"
    blocks = [m for m in fast.base.modules() if isinstance(m, ResBlock)]
    assert blocks and all(b.res_scale == 1.0 for b in blocks), "res_scale folded away"
    assert all(b.res_scale == 0.1 for b in model.modules() if isinstance(b, ResBlock)), (
        "original untouched"
    )
    conv = fast.base.head[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(2, 3, 17, 12) * 255
    assert (fast(x, 2) - model(x, 2)).abs().max() <= 1e-3
    # the library paths accept the prepared model like the plain one
    assert (upscale_tensor(fast, x, 2, tile=24) - sr_forward(model, x, 2)).abs().max() <= 1e-3


def test_auto_picks_bf16_only_with_native_instructions(monkeypatch):
    def with_flags(flags):
        monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset(flags))
        return resolve_precision("auto", "cpu")

    assert with_flags({"avx512f", "amx_bf16", "amx_tile"}) == torch.bfloat16
    assert with_flags({"avx512f", "avx512_bf16"}) == torch.bfloat16
    # AVX-512 without BF16 (this project's machine): oneDNN would emulate bf16, ~4x slower
    assert with_flags({"avx512f", "avx512_vnni", "avx2"}) == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("fp16", "cpu") == torch.float16
    assert resolve_precision("fp32", "cuda") == torch.float32
    with pytest.raises(EdsrError, match="unknown precision"):
        resolve_precision("fp8", "cpu")


def test_bf16_keeps_the_image_layers_in_fp32():
    fast = prepare_model(small_mdsr(std=0.05), precision="bf16")
    base = fast.base
    assert base.head[0].weight.dtype == torch.float32 and base.tail[0].weight.dtype == torch.float32
    assert base.body[0].body[0].weight.dtype == torch.bfloat16
    assert base.pre_process[1][0].body[0].weight.dtype == torch.bfloat16
    assert base.upsample[2][0].weight.dtype == torch.bfloat16
    y = fast(torch.rand(1, 3, 9, 8) * 255, 4)
    assert y.dtype == torch.float32 and y.shape == (1, 3, 36, 32)


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_low_precision_quality_guard_on_set5(precision):
    """bf16 differs from fp32 by at most 1 gray level at the 99.9th percentile (Set5 crops).

    The stand-in for trained weights passes the image through every layer (see
    pass_through_model), so each stage carries image-sized values, as in a trained EDSR.
    """
    model = pass_through_model(2)
    fp32 = prepare_model(model, precision="fp32")
    low = prepare_model(model, precision=precision)
    p999, worst = quantized_diff_percentile(fp32, low, set5(crop=48), 2)
    assert p999 <= 1.0
    assert worst <= 2.0


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 4])
def test_bf16_quality_guard_on_full_set5(scale):
    model = pass_through_model(scale)
    fp32 = prepare_model(model, precision="fp32")
    bf16 = prepare_model(model, precision="bf16")
    p999, _ = quantized_diff_percentile(fp32, bf16, set5(crop=None), scale)
    assert p999 <= 1.0


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(module, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = small_edsr(2, std=0.05)
    fast = prepare_model(model, precision="fp32", compile=True)
    x = torch.rand(1, 3, 8, 8) * 255
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        y = fast(x, 2)
    assert (y - model(x, 2)).abs().max() <= 1e-3


@pytest.mark.slow
def test_compile_matches_eager():
    model = small_edsr(2, std=0.05)
    fast = prepare_model(model, precision="fp32", compile=True)
    x = torch.rand(1, 3, 16, 12) * 255
    assert (fast(x, 2) - model(x, 2)).abs().max() <= 1e-3


def test_cli_precision_options(tmp_path, capsys):
    model_file = tmp_path / "m.safetensors"
    save_model(small_edsr(2, std=0.03), model_file)
    src = tmp_path / "in.png"
    PILImage.open(DATA / "Set5/HR/bird.png").crop((0, 0, 20, 16)).save(src)
    outs = {}
    for p in ("fp32", "bf16", "auto"):
        dst = tmp_path / f"{p}.png"
        assert (
            main(
                [
                    "upscale",
                    str(src),
                    "-o",
                    str(dst),
                    "--model",
                    str(model_file),
                    "--quiet",
                    "--precision",
                    p,
                ]
            )
            == 0
        )
        outs[p] = np.asarray(PILImage.open(dst), dtype=int)
    assert np.abs(outs["bf16"] - outs["fp32"]).max() <= 2
    with pytest.raises(SystemExit):
        main(
            [
                "upscale",
                str(src),
                "-o",
                str(tmp_path / "x.png"),
                "--model",
                str(model_file),
                "--precision",
                "fp8",
            ]
        )


needs_fused = pytest.mark.skipif(
    not fused_kernels_available(), reason="this PyTorch has no oneDNN fused convolution kernels"
)


@needs_fused
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fused_fp32_matches_the_plain_model(scale):
    model = small_edsr(scale, res_scale=0.1, std=0.05)
    fast = prepare_model(model, precision="fp32")
    assert fast.fused  # the default on a CPU in fp32
    x = torch.rand(2, 3, 19, 13) * 255  # a batch, odd sizes
    with torch.no_grad():
        assert (fast(x, scale) - model(x, scale)).abs().max() <= 1e-3


@needs_fused
def test_fused_mdsr_every_branch_matches():
    model = small_mdsr(std=0.05)
    fast = prepare_model(model, precision="fp32")
    x = torch.rand(1, 3, 15, 17) * 255
    with torch.no_grad():
        for scale in (2, 3, 4):
            assert (fast(x, scale) - model(x, scale)).abs().max() <= 1e-3
    with pytest.raises(EdsrError):
        fast(x, 5)


@needs_fused
def test_fused_upsampler_bands_give_the_same_image():
    """Row bands of one row each (every band an interior one but the two edges) equal one band."""
    base = prepare_model(small_edsr(4, std=0.05), precision="fp32").base
    x = (torch.rand(1, 3, 11, 9) * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        whole = fused_forward(base)(x, 4)
        rows = fused_forward(base, band_pixels=1)(x, 4)
        assert (rows - whole).abs().max() <= 1e-4
        assert (whole - base(x, 4)).abs().max() <= 1e-3


@needs_fused
def test_fused_bf16_quality_guard_on_set5():
    """The fused bf16 path meets the same bar as eager bf16 against fp32 (see above)."""
    model = pass_through_model(2)
    fp32 = prepare_model(model, precision="fp32")
    bf16 = prepare_model(model, precision="bf16")
    assert bf16.fused
    p999, worst = quantized_diff_percentile(fp32, bf16, set5(crop=48), 2)
    assert p999 <= 1.0
    assert worst <= 2.0


@needs_fused
def test_fused_is_not_used_for_gradients_fp16_or_compile():
    model = small_edsr(2, std=0.05)
    assert not prepare_model(model, precision="fp16").fused
    assert not prepare_model(model, precision="fp32", channels_last=False).fused
    fast = prepare_model(model, precision="fp32")
    x = (torch.rand(1, 3, 8, 8) * 255).requires_grad_()
    fast(x, 2).sum().backward()  # the eager model: the fused kernels have no autograd
    assert x.grad is not None and x.grad.abs().sum() > 0
