"""The prepared copy follows the model: whatever changes ``model(x)`` changes
``edsr.upscale(x, model)``, however it was changed."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import edsr
from edsr.inference.precision import PlainModel, compute_model
from sr_helpers import small_edsr

X = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)


def _plain(model) -> np.ndarray:
    """``model(x)`` itself, quantized as upscale quantizes."""
    x = torch.from_numpy(X).permute(2, 0, 1)[None].float()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        y = model.eval()(x.to(dtype), 2).float()
    return y.clamp(0, 255).round()[0].permute(1, 2, 0).numpy().astype(np.uint8)


def _gap(model) -> int:
    got = edsr.upscale(X, model, 2, precision="fp32").astype(int)
    return int(np.abs(got - _plain(model).astype(int)).max())


def _model():
    torch.manual_seed(3)
    return small_edsr(2, std=0.05, res_scale=0.5).eval()


def _data_mul(m):
    next(p for n, p in m.named_parameters() if n.startswith("head")).data.mul_(1.5)


def _copy_in(m):  # an EMA update
    src = _model()
    for p, q in zip(m.parameters(), src.parameters(), strict=True):
        p.data.copy_(q.data * 0.7)


def _numpy_view(m):
    w = next(m.parameters()).detach().numpy()
    w *= -1.0


def _res_scale(m):
    for block in m.body:
        if hasattr(block, "res_scale"):
            block.res_scale = 2.0


def _swap_relu(m):
    for block in m.body:
        if hasattr(block, "body"):
            block.body[1] = nn.Identity()


def _hook(m):
    m.tail.register_forward_hook(lambda mod, inp, out: out * 0.5)


def _bf16(m):
    m.to(torch.bfloat16)


def _half(m):
    m.half()


CHANGES = {
    ".data.mul_": _data_mul,
    "copy_ (EMA)": _copy_in,
    "numpy view": _numpy_view,
    "res_scale attribute": _res_scale,
    "ReLU -> Identity": _swap_relu,
    "forward hook": _hook,
    ".to(bfloat16)": _bf16,
    ".half()": _half,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_upscale_follows_the_model_after_each_change(change):
    m = _model()
    before = edsr.upscale(X, m, 2, precision="fp32")
    assert _gap(m) <= 1
    CHANGES[change](m)
    after = edsr.upscale(X, m, 2, precision="fp32")
    assert not np.array_equal(_plain(m), before), "the change matters: the test could fail"
    # exactly what a model never run before gives: nothing of the first call was reused
    assert np.array_equal(after, edsr.upscale(X, copy.deepcopy(m), 2, precision="fp32"))
    # and model(x) itself, within the fused kernels' float rounding
    assert _gap(m) <= 2, change


def test_unknown_structures_run_the_model_as_it_is():
    m = _model()
    assert not isinstance(compute_model(m, "fp32"), PlainModel)
    _hook(m)
    assert isinstance(compute_model(m, "fp32"), PlainModel)
    m = _model()
    _swap_relu(m)
    assert isinstance(compute_model(m, "fp32"), PlainModel)
