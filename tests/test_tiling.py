"""Tiled inference equals whole-image inference, under any memory budget, for every preset."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from conftest import DATA
from edsr import EdsrError, build_model, save_model, upscale
from edsr.cli import main
from edsr.inference import (
    TilePlan,
    alpha_rows,
    iter_tiles,
    min_tile,
    parse_memory,
    plan_axis,
    plan_tiles,
    probe_model,
    receptive_field,
    sr_forward,
    tile_memory,
    upscale_image_file,
    upscale_tensor,
)
from edsr.io.image import read_image
from edsr.resize import imresize
from sr_helpers import random_weights, small_edsr, small_mdsr

TOL = 1e-3  # on 0..255, before quantization


def run_plan(model, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """Stitch with an explicit tile and overlap, bypassing the safety checks of plan_tiles."""
    n, _, h, w = x.shape
    plan = TilePlan(plan_axis(h, tile, overlap), plan_axis(w, tile, overlap), n, tile, overlap, 0)
    out = torch.full((n, x.shape[1], h * scale, w * scale), float("nan"))
    for bs, ys, xs, y in iter_tiles(model, x, scale, plan):
        out[bs, :, ys, xs] = y
    return out


def expected_reach(arch: str, n_resblocks: int, scale: int) -> Fraction:
    """The receptive radius counted by hand from the paper's architecture (not from the code).

    LR path: head conv (1) + [MDSR: two 5x5 ResBlocks, 4 convs of radius 2] + 2 convs per
    ResBlock + the body's closing conv; the upsampler's first conv runs at LR, a second one
    (x4) at 2x; the tail conv at HR. A radius r at resolution f reaches r/f LR pixels.
    """
    reach = Fraction(1 + 2 * n_resblocks + 1)
    if arch == "mdsr":
        reach += 4 * 2
    if scale == 3:
        reach += 1
    else:
        for i in range(int(math.log2(scale))):
            reach += Fraction(1, 2**i)
    return reach + Fraction(1, scale)


@pytest.mark.parametrize("preset", ["edsr-baseline", "edsr", "mdsr-baseline", "mdsr"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_receptive_field_counted_from_the_layers(preset, scale):
    with torch.device(
        "meta"
    ):  # shapes only: no weights to initialise, so edsr and mdsr are instant
        model = (
            build_model(preset, scale=scale) if preset.startswith("edsr") else build_model(preset)
        )
    probe = probe_model(model, scale)
    blocks = {"edsr-baseline": 16, "edsr": 32, "mdsr-baseline": 16, "mdsr": 80}[preset]
    assert probe.reach == expected_reach(preset.split("-")[0], blocks, scale)
    assert probe.overlap == math.ceil(probe.reach)
    assert receptive_field(model, scale) == probe.overlap
    if preset == "edsr-baseline":
        assert probe.overlap == 36  # the ~36 of the spec, against the public code's 10


@pytest.mark.parametrize(
    "model_fn, scale",
    [(lambda: small_edsr(2), 2), (lambda: small_edsr(3), 3), (lambda: small_edsr(4), 4)]
    + [(small_mdsr, s) for s in (2, 3, 4)],
    ids=["edsr-x2", "edsr-x3", "edsr-x4", "mdsr-x2", "mdsr-x3", "mdsr-x4"],
)
def test_derived_overlap_is_exact_and_one_less_is_not(model_fn, scale):
    model = model_fn()
    overlap = receptive_field(model, scale)
    tile = 2 * overlap + 5  # every core edge sits at the overlap limit
    x = torch.rand(2, 3, tile + 4, tile + 3) * 255  # 2 x 2 tiles, odd sizes
    whole = sr_forward(model, x, scale)
    exact = run_plan(model, x, scale, tile, overlap)
    short = run_plan(model, x, scale, tile, overlap - 1)
    assert not exact.isnan().any()
    assert (exact - whole).abs().max() <= TOL
    assert (short - whole).abs().max() > 0.05, "one pixel less context must show at the seams"


def _preset(name: str, scale: int):
    model = build_model(name, scale=scale) if name.startswith("edsr") else build_model(name)
    return model.eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("preset", ["edsr-baseline", "mdsr-baseline"])
def test_tiles_match_whole_image_for_baseline_presets(preset, scale):
    """Public path (plan_tiles with the smallest accepted tile), batch 2, odd height."""
    model = _preset(preset, scale)
    overlap = receptive_field(model, scale)
    x = torch.rand(2, 3, min_tile(overlap) + 9, 13) * 255
    plan = plan_tiles(model, x.shape, scale, tile=min_tile(overlap))
    assert len(plan.rows) == 2 and plan.batch == 2
    tiled = upscale_tensor(model, x, scale, tile=min_tile(overlap))
    assert (tiled - sr_forward(model, x, scale)).abs().max() <= TOL


def test_tiles_in_both_directions_with_batch_gray_and_alpha():
    model = small_edsr(3)
    overlap = receptive_field(model, 3)
    x = torch.rand(3, 4, 5 * overlap + 2, 4 * overlap + 3) * 255  # RGBA, odd sizes, batch 3
    plan = plan_tiles(model, x[:, :3].shape, 3, tile=min_tile(overlap))
    assert len(plan.rows) >= 3 and len(plan.cols) >= 2
    tiled = upscale_tensor(model, x, 3, tile=min_tile(overlap))
    whole = torch.cat([sr_forward(model, x[:, :3], 3), imresize(x[:, 3:].double(), 3).float()], 1)
    assert (tiled - whole).abs().max() <= TOL
    gray = x[:1, :1]
    assert (
        upscale_tensor(model, gray, 3, tile=min_tile(overlap)) - sr_forward(model, gray, 3)
    ).abs().max() <= TOL


def test_public_chop_overlap_of_10_leaves_seams():
    """The test has teeth on a full preset: the public code's 10-pixel overlap is visibly wrong."""
    model = random_weights(build_model("edsr-baseline", scale=2), 0.04)
    x = torch.rand(1, 3, 120, 9) * 255
    whole = sr_forward(model, x, 2)
    assert (run_plan(model, x, 2, 80, 36) - whole).abs().max() <= TOL
    assert (run_plan(model, x, 2, 80, 10) - whole).abs().max() > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("preset", ["edsr", "mdsr", "edsr-baseline", "mdsr-baseline"])
def test_tiles_match_whole_image_every_preset_and_scale(preset, scale):
    model = _preset(preset, scale)
    overlap = receptive_field(model, scale)
    tile = 2 * overlap + 8  # below the accepted minimum to keep the images small; still exact
    for shape in [(2, 3, tile + 5, 11), (1, 3, 13, tile + 3)]:  # seams across rows, then columns
        x = torch.rand(*shape) * 255
        tiled = run_plan(model, x, scale, tile, overlap)
        assert (tiled - sr_forward(model, x, scale)).abs().max() <= TOL


@pytest.mark.parametrize("n", [1, 7, 100, 107, 108, 109, 250, 1001])
@pytest.mark.parametrize("tile, overlap", [(108, 36), (50, 8), (300, 44), (9, 4)])
def test_plan_axis_partitions_with_full_context(n, tile, overlap):
    windows = plan_axis(n, tile, overlap)
    assert windows[0].core_start == 0 and windows[-1].core_stop == n
    sizes = {w.stop - w.start for w in windows}
    assert len(sizes) == 1, "equal windows: one convolution plan, one compiled graph"
    assert sizes.pop() <= tile or len(windows) == 1
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.core_stop == b.core_start
    for w in windows:
        assert 0 <= w.start <= w.core_start < w.core_stop <= w.stop <= n
        assert w.core_start == 0 or w.core_start - w.start >= overlap
        assert w.core_stop == n or w.stop - w.core_stop >= overlap
    if n > tile:  # no more windows than the tile size allows
        assert len(windows) == 1 + math.ceil((n - tile) / (tile - 2 * overlap))


def test_small_tile_is_enlarged_with_a_warning():
    model = small_edsr(2)
    overlap = receptive_field(model, 2)
    x = torch.rand(1, 3, 70, 30) * 255
    with pytest.warns(
        UserWarning, match=f"needs {overlap} pixels of context.*using tile {min_tile(overlap)}"
    ):
        out = upscale_tensor(model, x, 2, tile=5)
    assert (out - sr_forward(model, x, 2)).abs().max() <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an image smaller than the tile needs no tiling at all
        upscale_tensor(model, x[:, :, :20, :20], 2, tile=20)


def test_budget_too_small_is_an_error_naming_the_minimum():
    model = build_model("edsr-baseline", scale=4)
    probe = probe_model(model, 4)
    smallest = min_tile(probe.overlap)
    need = tile_memory(probe, smallest, smallest)
    with pytest.raises(
        EdsrError, match=r"too small for this model.*108x108.*36 of them context.*at least"
    ):
        plan_tiles(model, (1, 3, 500, 500), 4, max_memory=need - 1)
    plan = plan_tiles(model, (1, 3, 500, 500), 4, max_memory=need)
    assert plan.tile == smallest


def test_budget_picks_the_largest_tile_that_fits_and_splits_batches():
    model = build_model("edsr-baseline", scale=2)
    probe = probe_model(model, 2)
    budget = tile_memory(probe, 200, 200)
    plan = plan_tiles(model, (1, 3, 1000, 800), 2, max_memory=budget)
    assert plan.tile == 200 and plan.memory <= budget
    assert all(w.stop - w.start <= 200 for w in plan.rows + plan.cols)
    whole = plan_tiles(model, (1, 3, 150, 120), 2, max_memory=budget)
    assert whole.count == 1  # fits: whole-image inference
    batched = plan_tiles(model, (8, 3, 200, 200), 2, max_memory=budget * 3)
    assert batched.count == 1 and batched.batch == 3 and batched.memory <= budget * 3


def test_parse_memory_units():
    assert parse_memory("2GB") == 2 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5G") == int(1.5 * 2**30)
    assert parse_memory("1000") == 1000 and parse_memory(4096) == 4096
    for bad in ("", "lots", "2 parsecs", "-1GB", "0"):
        with pytest.raises(EdsrError):
            parse_memory(bad)


def test_alpha_band_equals_rows_of_whole_resize():
    a = torch.rand(1, 1, 37, 23) * 255
    whole = imresize(a.double(), 3).float()
    for r0, r1 in [(0, 5), (5, 20), (20, 37), (0, 37)]:
        assert torch.allclose(alpha_rows(a, 3, r0, r1), whole[..., r0 * 3 : r1 * 3, :], atol=1e-4)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiling") / "tiny_x2.safetensors"
    save_model(small_edsr(2, std=0.03), path)
    return path


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray16"])
def test_streamed_png_equals_in_memory_result(tmp_path, kind):
    model = small_edsr(2, std=0.03)
    rng = np.random.default_rng(0)
    if kind == "rgb":
        src = tmp_path / "in.png"
        PILImage.open(DATA / "Set5/HR/bird.png").crop((0, 0, 61, 47)).save(src)
    elif kind == "rgba":
        src = tmp_path / "in.png"
        a = rng.integers(0, 256, (47, 61, 4), dtype=np.uint8)
        PILImage.fromarray(a, "RGBA").save(src)
    else:
        src = tmp_path / "in.png"
        PILImage.fromarray((rng.random((47, 61)) * 65535).astype(np.uint16)).save(src)
    overlap = receptive_field(model, 2)
    opts = {"tile": min_tile(overlap)}
    streamed = upscale_image_file(src, tmp_path / "s.png", model, 2, stream=True, **opts)
    in_memory = upscale_image_file(src, tmp_path / "m.png", model, 2, stream=False, **opts)
    whole = upscale_image_file(src, tmp_path / "w.png", model, 2, stream=False)
    a, b, c = read_image(streamed), read_image(in_memory), read_image(whole)
    assert a.pixels.shape == (94, 122, a.pixels.shape[2]) and a.pixels.dtype == c.pixels.dtype
    assert np.array_equal(a.pixels, b.pixels)
    assert (a.alpha is None) == (c.alpha is None)
    if a.alpha is not None:
        assert np.array_equal(a.alpha, b.alpha)
        assert np.abs(a.alpha.astype(int) - c.alpha.astype(int)).max() <= 1
    # tiles vs whole image: equal up to rounding of values within 1e-3 of a .5 boundary
    assert np.abs(a.pixels.astype(int) - c.pixels.astype(int)).max() <= 1
    assert np.mean(a.pixels != c.pixels) < 1e-3


def test_numpy_and_pil_paths_tile_too():
    model = small_edsr(2, std=0.03)
    crop = np.asarray(PILImage.open(DATA / "Set5/HR/baby.png").convert("RGB"))[:70, :50]
    overlap = receptive_field(model, 2)
    tiled = upscale(crop, model, tile=min_tile(overlap))
    whole = upscale(crop, model)
    assert tiled.shape == (140, 100, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    tiled_pil = upscale(PILImage.fromarray(crop), model, tile=min_tile(overlap))
    assert np.array_equal(np.asarray(tiled_pil), tiled)


def test_output_too_large_for_the_format_fails_before_the_work(tmp_path):
    src = tmp_path / "wide.png"
    PILImage.new("RGB", (8200, 2), (10, 20, 30)).save(src)
    model = small_edsr(2)
    with pytest.raises(EdsrError, match=r"16400x4 result is too large for \.webp.*\.png"):
        upscale_image_file(src, tmp_path / "out.webp", model, 2)
    assert not (tmp_path / "out.webp").exists()


def test_cli_tile_and_memory_options(tmp_path, tiny_model_file, capsys):
    src = tmp_path / "in.png"
    PILImage.open(DATA / "Set5/HR/bird.png").crop((0, 0, 50, 40)).save(src)
    base = ["upscale", str(src), "--model", str(tiny_model_file), "--quiet"]
    assert main([*base, "-o", str(tmp_path / "whole.png")]) == 0
    assert (
        main([*base, "-o", str(tmp_path / "tiled.png"), "--tile", "30", "--max-memory", "1GB"]) == 0
    )
    a = np.asarray(PILImage.open(tmp_path / "whole.png"), dtype=int)
    b = np.asarray(PILImage.open(tmp_path / "tiled.png"), dtype=int)
    assert a.shape == (80, 100, 3) and np.abs(a - b).max() <= 1
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "x.png"), "--max-memory", "1MB"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edsr: error: a memory budget of") and "at least" in err
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as refused:  # refused by the parser, before any work
        main([*base, "-o", str(tmp_path / "y.png"), "--max-memory", "lots"])
    assert refused.value.code == 2
    assert "cannot read the memory size" in capsys.readouterr().err
