import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from edsr import EdsrError, build_model, upscale
from edsr.errors import Cancelled
from edsr.inference import (
    describe,
    min_tile,
    plan_job,
    prepare_model,
    receptive_field,
    resolve_scale,
    upscale_files,
    upscale_image_file,
)
from edsr.inference import estimate as estimate_module
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


def test_multi_scale_model_defaults_to_x4_else_its_largest():
    m = build_model("mdsr-baseline").eval()
    assert upscale(np.zeros((4, 4, 3), np.uint8), m).shape == (16, 16, 3)
    assert upscale(np.zeros((4, 4, 3), np.uint8), m, scale=3).shape == (12, 12, 3)
    assert describe(m).default_scale == 4
    no_x4 = build_model("mdsr-baseline", scales=(2, 3)).eval()
    assert resolve_scale(no_x4, None) == 3
    assert resolve_scale(build_model("edsr-baseline", scale=2), None) == 2


def test_describe_plain_and_prepared_models(model):
    info = describe(model)
    assert (info.arch, info.scales, info.n_colors, info.rgb_range) == ("edsr", (2,), 3, 255.0)
    assert info.device == torch.device("cpu") and info.dtype == torch.float32
    assert info.precision == "fp32" and info.module is model
    # learned weights only: the two fixed mean shifts (2 x 12 numbers for RGB) left out
    assert info.parameters == sum(p.numel() for p in model.parameters()) - 24
    assert info.receptive_field(2) == receptive_field(model, 2)
    fast = prepare_model(model, precision="bf16")
    prepared = describe(fast)
    assert prepared.precision == "bf16" and prepared.dtype == torch.bfloat16
    assert prepared.module is fast.base and prepared.parameters == info.parameters
    mdsr = describe(build_model("mdsr-baseline"))
    assert mdsr.arch == "mdsr" and mdsr.scales == (2, 3, 4)
    with pytest.raises(EdsrError, match="EDSR or MDSR"):
        describe(torch.nn.Conv2d(3, 3, 3))


def test_on_tile_reports_each_tile_and_should_stop_cancels(model, baby):
    crop = baby[:90, :70]
    tile = min_tile(receptive_field(model, 2))
    seen = []
    tiled = upscale(crop, model, tile=tile, on_tile=lambda done, total: seen.append((done, total)))
    total = seen[0][1]
    assert total >= 4 and seen == [(i, total) for i in range(total + 1)]
    assert np.abs(tiled.astype(int) - upscale(crop, model).astype(int)).max() <= 1
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        upscale(
            torch.from_numpy(crop.copy()).permute(2, 0, 1),
            model,
            tile=tile,
            should_stop=stop_after_two,
        )
    assert len(asked) == 3, "asked before each tile, stopped before the third"


def _nan_model():
    m = EDSR(scale=2, n_resblocks=1, n_feats=8).eval()
    with torch.no_grad():
        m.body[0].body[0].bias[0] = float("inf")  # inf - inf in the next conv: NaN
        m.body[0].body[2].weight.fill_(1.0)
        m.body[0].body[2].weight[:, :, 0, 0] = -1.0
    return m


def test_non_finite_output_is_refused_naming_the_precision():
    x = np.full((8, 8, 3), 100, np.uint8)
    with pytest.raises(EdsrError, match="not finite.*fp32"):
        upscale(x, _nan_model())
    # fp16 overflows where fp32 does not: large weights in the body
    loud = EDSR(scale=2, n_resblocks=2, n_feats=16).eval()
    with torch.no_grad():
        for block in loud.body[:-1]:  # each conv multiplies by about 5 * 16 * 9
            block.body[0].weight.fill_(5.0)
            block.body[2].weight.fill_(5.0)
    assert np.isfinite(upscale(x.astype(np.float32) / 255, loud)).all()
    try:
        fast = prepare_model(loud, precision="fp16")
        fast(torch.zeros(1, 3, 4, 4), 2)
    except (RuntimeError, EdsrError):
        pytest.skip("no fp16 convolutions on this device")
    with pytest.raises(EdsrError, match="at fp16 precision.*--precision fp32"):
        upscale(x, fast)


def _folder(tmp_path, n_good=4):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(
            src / f"img{i}.png"
        )
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    os.symlink(src / "gone.png", src / "dangling.png")
    return src


def test_batch_survives_bad_files_and_resumes_with_skip_existing(tmp_path, model):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    stale = out / ".img0_x2.png.edsr-999999999-0123abcd.tmp"  # what a kill -9 leaves
    out.mkdir()
    stale.write_bytes(b"half")
    result = upscale_files([src], out, model, progress=False)
    assert sorted(p.name for p in result.written) == [f"img{i}_x2.png" for i in range(4)]
    assert sorted(p.name for p, _ in result.failed) == ["corrupt.png", "dangling.png"]
    assert all(reason.startswith(str(p)) for p, reason in result.failed)
    assert not result.ok and "2 failed" in result.summary(out)
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}_x2.png" for i in range(4)]
    (src / "corrupt.png").unlink()
    Image.new("RGB", (6, 5), (1, 2, 3)).save(src / "corrupt.png")  # fixed
    again = upscale_files([src], out, model, progress=False, skip_existing=True)
    assert [p.name for p in again.written] == ["corrupt_x2.png"]
    assert len(again.skipped_existing) == 4 and [p.name for p, _ in again.failed] == [
        "dangling.png"
    ]
    with pytest.raises(EdsrError, match="and 4 more outputs already exist; pass --skip-existing"):
        upscale_files([src], out, model, progress=False)


def test_one_unreadable_image_alone_raises(tmp_path, model):
    src = _folder(tmp_path, n_good=0)
    with pytest.raises(EdsrError, match="corrupt.png"):
        upscale_files([src / "corrupt.png"], tmp_path / "out", model, progress=False)


def test_output_place_is_checked_before_any_work(tmp_path, model):
    src = _folder(tmp_path)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(EdsrError, match=r"'\.xyz' is not an image format"):
            upscale_files([src], tmp_path / "out.xyz", model, progress=False)
        with pytest.raises(EdsrError, match="names one file but there are 6 images"):
            upscale_files([src], tmp_path / "out.png", model, progress=False)
        blocker = tmp_path / "file"
        blocker.write_text("a file, not a folder")
        with pytest.raises(EdsrError, match="file"):
            upscale_files([src], blocker / "out", model, progress=False)
        if os.geteuid() != 0:  # root writes into read-only folders anyway
            ro = tmp_path / "ro"
            ro.mkdir(mode=0o555)
            with pytest.raises(EdsrError, match="permission denied"):
                upscale_files([src], ro, model, progress=False)
    finally:
        handle.remove()
    assert not calls, "the model ran before the output was checked"


def test_estimate_is_said_before_a_long_job_and_splits_for_progress(tmp_path, model, monkeypatch):
    src = tmp_path / "in.png"
    Image.open(DATA / "Set5/HR/bird.png").crop((0, 0, 200, 180)).save(src)
    est = plan_job(model, (1, 3, 180, 200), 2)
    assert est.tiles == est.plan.count == 1 and est.memory == est.plan.memory
    assert est.seconds > 0 and not est.long
    split = plan_job(model, (1, 3, 180, 200), 2, max_tile_seconds=est.seconds / 20)
    # the overlaps cost more work, but never over half as much again
    assert split.tiles > 1 and est.seconds < split.seconds <= 1.5 * est.seconds
    monkeypatch.setattr(estimate_module, "LONG_JOB_SECONDS", 0.0)
    lines = []
    upscale_image_file(src, tmp_path / "out.png", model, say=lines.append)
    assert len(lines) == 1 and lines[0].startswith("in.png: about ") and "1 tile" in lines[0]
