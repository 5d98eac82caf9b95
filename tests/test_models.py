import json

import pytest
import torch

from conftest import DATA
from edsr import EDSR, MDSR, EdsrError, build_model, count_parameters
from edsr.models import check_scales

OFFICIAL = json.loads((DATA / "official_state_dict_keys.json").read_text())

CONFIGS = {
    "EDSR_baseline_x2": ("edsr-baseline", 2),
    "EDSR_baseline_x3": ("edsr-baseline", 3),
    "EDSR_baseline_x4": ("edsr-baseline", 4),
    "EDSR_x2": ("edsr", 2),
    "EDSR_x3": ("edsr", 3),
    "EDSR_x4": ("edsr", 4),
    "MDSR_baseline": ("mdsr-baseline", None),
    "MDSR": ("mdsr", None),
}
# Spec table, section 1: trainable parameters, MeanShift excluded.
PAPER_PARAMS = {
    "EDSR_baseline_x2": 1_369_859,
    "EDSR_baseline_x3": 1_554_499,
    "EDSR_baseline_x4": 1_517_571,
    "EDSR_x2": 40_729_603,
    "EDSR_x3": 43_680_003,
    "EDSR_x4": 43_089_923,
    "MDSR_baseline": 3_227_203,
    "MDSR": 7_953_987,
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_and_official_layout(name):
    preset, scale = CONFIGS[name]
    model = build_model(preset, scale=scale)
    assert count_parameters(model) == PAPER_PARAMS[name] == OFFICIAL[name]["n_params_trainable"]
    sd = model.state_dict()
    assert sum(v.numel() for v in sd.values()) == OFFICIAL[name]["n_params_including_meanshift"]
    assert [[k, list(v.shape)] for k, v in sd.items()] == OFFICIAL[name]["state_dict"]


@pytest.mark.parametrize(
    "preset,scale",
    [
        ("edsr-baseline", 2),
        ("edsr-baseline", 3),
        ("edsr-baseline", 4),
        ("edsr", 2),
        ("edsr", 3),
        ("edsr", 4),
    ],
)
def test_edsr_forward_backward(preset, scale):
    model = build_model(preset, scale=scale)
    if preset == "edsr":
        # The 40M-parameter model is slow on 2 cores; a tiny input still checks every layer.
        x = torch.rand(1, 3, 6, 5) * 255
    else:
        x = torch.rand(2, 3, 11, 9) * 255
    y = model(x)
    assert y.shape == (x.shape[0], 3, x.shape[2] * scale, x.shape[3] * scale)
    y.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head[0].weight.grad.abs().sum() > 0
    # The frozen mean shift must never train.
    assert model.sub_mean.weight.grad is None and model.add_mean.bias.grad is None


@pytest.mark.parametrize("preset", ["mdsr-baseline", "mdsr"])
def test_mdsr_forward_each_scale_touches_only_its_branch(preset):
    model = build_model(preset)
    x = torch.rand(1, 3, 7, 6) * 255
    for k, scale in enumerate((2, 3, 4)):
        model.zero_grad(set_to_none=True)
        y = model(x, scale)
        assert y.shape == (1, 3, 7 * scale, 6 * scale)
        y.mean().backward()
        for j in range(3):
            got = model.pre_process[j][0].body[0].weight.grad
            assert (got is not None) == (j == k)
            assert (model.upsample[j][0].weight.grad is not None) == (j == k)
        assert model.body[0].body[0].weight.grad is not None


def test_mdsr_rejects_unsupported_scale():
    model = build_model("mdsr-baseline")
    with pytest.raises(EdsrError, match="x2, x3, x4, not x5"):
        model(torch.zeros(1, 3, 4, 4), 5)


def test_edsr_rejects_other_scale_and_bad_construction():
    with pytest.raises(EdsrError, match="x2 only"):
        EDSR(scale=2)(torch.zeros(1, 3, 4, 4), 3)
    # Constructors: programmer errors (ValueError), as in torchvision.
    with pytest.raises(ValueError, match="3 or a power of 2"):
        EDSR(scale=5)
    with pytest.raises(ValueError, match="distinct"):
        MDSR(scales=(2, 2))
    # What a user typed goes through the one scale check (EdsrError, one line).
    with pytest.raises(EdsrError, match="unknown preset"):
        build_model("rcan", scale=2)
    with pytest.raises(EdsrError, match="needs a scale"):
        build_model("edsr")
    with pytest.raises(EdsrError, match="scale 5 is not supported; use 3 or a power of 2"):
        build_model("edsr", scale=5)
    with pytest.raises(EdsrError, match="x2 is given twice"):
        build_model("mdsr", scales=(2, 2))


@pytest.mark.parametrize("scale", [2, 3, 4, 8, 16])
def test_every_supported_scale_builds_and_upscales(scale):
    (s,) = check_scales(scale)
    model = EDSR(scale=s, n_resblocks=1, n_feats=8)
    assert model(torch.zeros(1, 3, 3, 5)).shape == (1, 3, 3 * scale, 5 * scale)


def test_mean_shift_values():
    model = EDSR(scale=2)
    assert torch.allclose(model.sub_mean.bias, -255 * torch.tensor([0.4488, 0.4371, 0.4040]))
    assert torch.equal(model.add_mean.weight.view(3, 3), torch.eye(3))
    # An all-mean image enters the head as zeros.
    x = (255 * torch.tensor([0.4488, 0.4371, 0.4040])).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert model.sub_mean(x).abs().max() < 1e-4


def test_fold_res_scale_keeps_outputs_and_removes_multiply():
    # A 0.1 res_scale model small enough for the test suite; the preset 'edsr' folds the same way.
    model = EDSR(scale=3, n_resblocks=4, n_feats=32, res_scale=0.1).eval()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    folded = model.fold_res_scale()
    assert all(b.res_scale == 1.0 for b in folded.body[:-1])
    assert all(b.res_scale == 0.1 for b in model.body[:-1]), "folding must not modify the original"
    x = torch.rand(2, 3, 13, 10) * 255
    with torch.no_grad():
        diff = (model(x) - folded(x)).abs().max().item()
    assert diff <= 1e-3
    # Without folding the residual is scaled: the models really differ once res_scale is dropped.
    unfolded = EDSR(scale=3, n_resblocks=4, n_feats=32, res_scale=1.0).eval()
    unfolded.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (unfolded(x) - model(x)).abs().max() > 1.0


def _stream_peaks(model, x, scale):
    """Per-channel peak of the stream at each conv that reads it."""
    peaks = []
    hooks = [
        c.register_forward_pre_hook(lambda _, a: peaks.append(a[0].abs().amax(dim=(0, 2, 3))))
        for c in model.stream_convs(scale)[1]
    ]
    with torch.no_grad():
        y = model(x, scale)
    for h in hooks:
        h.remove()
    return y, torch.stack(peaks)


@pytest.mark.parametrize("arch", ["edsr", "mdsr"])
def test_rescale_stream_keeps_outputs_and_divides_the_stream(arch):
    if arch == "edsr":
        model, scale = EDSR(scale=2, n_resblocks=3, n_feats=16, res_scale=0.1).eval(), 2
    else:
        model, scale = MDSR(scales=(2, 3), n_resblocks=3, n_feats=16).eval(), 3
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    factors = torch.linspace(0.25, 4.0, 16)
    rescaled = model.rescale_stream(factors, scale)
    x = torch.rand(1, 3, 11, 9) * 255
    y, before = _stream_peaks(model, x, scale)
    y2, after = _stream_peaks(rescaled, x, scale)
    assert (y - y2).abs().max().item() <= 1e-3 * y.abs().max().item()
    # Every point where the stream is read carries it divided by the factors.
    torch.testing.assert_close(after * factors, before, rtol=1e-4, atol=1e-4)
    assert len(before) == (3 + 1 + 1 if arch == "edsr" else 2 + 3 + 1 + 1)
    with pytest.raises(ValueError, match="positive"):
        model.rescale_stream(-factors, scale)
    with pytest.raises(ValueError, match="outputs"):
        model.rescale_stream(torch.ones(8), scale)


@pytest.mark.slow
def test_fold_res_scale_on_full_edsr():
    model = build_model("edsr", scale=2).eval()
    folded = model.fold_res_scale()
    x = torch.rand(1, 3, 16, 16) * 255
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max().item() <= 1e-3
