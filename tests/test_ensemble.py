"""Self-ensemble (EDSR+ / MDSR+): the mean of the 8 flips/rotations, each mapped back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from conftest import DATA
from edsr import save_model
from edsr.cli import main
from edsr.inference import (
    dihedral,
    dihedral_inverse,
    ensemble_forward,
    min_tile,
    receptive_field,
    sr_forward,
    upscale_tensor,
)
from sr_helpers import make_equivariant, max_equivariance_error, small_edsr, small_mdsr

# The 8 symmetries of the square written out independently of edsr.inference: (forward, inverse)
TRANSFORMS = [
    (lambda t: t, lambda t: t),
    (lambda t: t.flip(-1), lambda t: t.flip(-1)),
    (lambda t: t.flip(-2), lambda t: t.flip(-2)),
    (lambda t: t.flip(-2, -1), lambda t: t.flip(-2, -1)),
    (lambda t: t.transpose(-2, -1), lambda t: t.transpose(-2, -1)),
    (lambda t: t.transpose(-2, -1).flip(-1), lambda t: t.flip(-1).transpose(-2, -1)),
    (lambda t: t.transpose(-2, -1).flip(-2), lambda t: t.flip(-2).transpose(-2, -1)),
    (lambda t: t.flip(-2, -1).transpose(-2, -1), lambda t: t.transpose(-2, -1).flip(-2, -1)),
]


def explicit_mean(model, x, scale):
    with torch.no_grad():
        outs = [inv(model(fwd(x), scale)) for fwd, inv in TRANSFORMS]
    return torch.stack(outs).mean(0)


def test_dihedral_transforms_are_the_eight_symmetries_and_invert():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    ours = [dihedral(x, k) for k in range(8)]
    for k in range(8):
        assert torch.equal(dihedral_inverse(ours[k], k), x)
    reference = [fwd(x) for fwd, _ in TRANSFORMS]
    as_set = lambda ts: sorted(tuple(t.shape) + tuple(t.flatten().tolist()) for t in ts)  # noqa: E731
    assert as_set(ours) == as_set(reference)


@pytest.mark.parametrize(
    "model_fn, scale",
    [
        (lambda: small_edsr(2), 2),
        (lambda: small_edsr(3), 3),
        (small_mdsr, 2),
        (small_mdsr, 3),
        (small_mdsr, 4),
    ],
)
def test_equals_the_explicit_mean_of_eight_transforms(model_fn, scale):
    model = model_fn()
    x = torch.rand(2, 3, 11, 16) * 255  # non-square: transposed passes see 16x11
    got = ensemble_forward(model, x, scale)
    want = explicit_mean(model, x, scale)
    assert got.shape == (2, 3, 11 * scale, 16 * scale)
    assert (got - want).abs().max() <= 1e-3  # float rounding: the passes see other memory layouts
    assert (got - sr_forward(model, x, scale)).abs().max() > 1.0, "a random model is not symmetric"
    # batch-safe: each image of the batch gets its own ensemble
    single = ensemble_forward(model, x[1:], scale)
    assert (got[1:] - single).abs().max() <= 1e-3


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_equivariant_model_gives_the_plain_output(scale):
    model = make_equivariant(small_edsr(scale, std=0.05))
    x = torch.rand(1, 3, 13, 10) * 255
    assert max_equivariance_error(model, torch.rand(1, 3, 9, 9) * 255, scale) <= 1e-3
    assert (ensemble_forward(model, x, scale) - sr_forward(model, x, scale)).abs().max() <= 1e-3


def test_equivariant_mdsr_at_every_scale():
    model = make_equivariant(small_mdsr(std=0.05))
    x = torch.rand(1, 3, 8, 11) * 255
    for scale in (2, 3, 4):
        assert (ensemble_forward(model, x, scale) - sr_forward(model, x, scale)).abs().max() <= 1e-3


def test_composes_with_tiling_gray_and_alpha():
    model = small_mdsr()
    overlap = receptive_field(model, 3)
    x = torch.rand(2, 4, min_tile(overlap) + 7, 20) * 255
    tiled = upscale_tensor(model, x, 3, ensemble=True, tile=min_tile(overlap))
    whole = upscale_tensor(model, x, 3, ensemble=True)
    assert (tiled - whole).abs().max() <= 1e-3
    assert (whole[:, :3] - explicit_mean(model, x[:, :3], 3)).abs().max() <= 1e-3
    gray = x[:1, :1]
    g = upscale_tensor(model, gray, 3, ensemble=True)
    assert g.shape == (1, 1, gray.shape[2] * 3, 60)


def test_cli_ensemble(tmp_path, capsys):
    model_file = tmp_path / "m.safetensors"
    save_model(small_edsr(2, std=0.03), model_file)
    src = tmp_path / "in.png"
    PILImage.open(DATA / "Set5/HR/head.png").crop((0, 0, 24, 20)).save(src)
    args = ["upscale", str(src), "--model", str(model_file), "--quiet"]
    assert main([*args, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*args, "-o", str(tmp_path / "plus.png"), "--ensemble"]) == 0
    plain = np.asarray(PILImage.open(tmp_path / "plain.png"), dtype=int)
    plus = np.asarray(PILImage.open(tmp_path / "plus.png"), dtype=int)
    assert plus.shape == plain.shape == (40, 48, 3)
    assert np.abs(plus - plain).max() > 0
