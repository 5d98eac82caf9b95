"""EDSR/MDSR's forward pass with its element-wise steps fused into the convolutions (CPU).

Eager PyTorch runs each ReLU, residual add and pixel shuffle as a pass of its own over memory;
on the 2-core EPYC this project is measured on they cost a quarter of edsr-baseline x4's time
(profiled: pixel shuffle 12%, adds 2.5%, ReLU 0.6%, and in bf16 the casts around the float32
output layer another 15%). Here:

- conv + ReLU and conv + residual add are one oneDNN convolution with a post-op
  (``torch.ops.mkldnn._convolution_pointwise``, the kernels ``torch.compile`` emits for CPU),
  the add written in place into the residual stream;
- the upsampler's output channels are reordered once, at preparation, so that the pixel
  shuffle is a copy of runs of ``r * n_feats`` contiguous values instead of a gather with stride
  ``r * r``; the last shuffle also does the cast to the float32 output layer in the same pass;
- the output mean shift is folded into the last convolution's bias.

The same kernels as ``torch.compile(freezing=True)``, without its compile time (34 s for
edsr-baseline on 2 cores): :func:`fused_kernels_available` says whether this PyTorch has them,
and :func:`fused_forward` builds the callable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

from edsr.models import SRModel
from edsr.models.common import ResBlock
from edsr.models.mdsr import MDSR

_Forward = Callable[[torch.Tensor, int], torch.Tensor]


def fused_kernels_available() -> bool:
    """True when PyTorch was built with oneDNN and exposes the fused convolution kernels."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.default  # noqa: B018 - probing the op
        torch.ops.mkldnn._convolution_pointwise_.binary  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


class _Conv:
    """One convolution's weights and geometry, ready for the fused kernels."""

    def __init__(self, module: nn.Module, weight: torch.Tensor | None = None) -> None:
        conv = cast(nn.Conv2d, module)
        w = conv.weight.detach() if weight is None else weight
        self.weight = w.contiguous(memory_format=torch.channels_last)  # as oneDNN wants it
        self.bias = None if conv.bias is None else conv.bias.detach().to(w.dtype)
        self.dtype = w.dtype
        pad = conv.padding
        assert not isinstance(pad, str), "EDSR convolutions have numeric padding"
        self.geometry: tuple[list[int], list[int], list[int], int] = (
            list(pad),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
        )

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(self.dtype), self.weight, self.bias, *self.geometry,
            "relu" if relu else "none", [], "",
        )  # fmt: skip

    def add(self, x: torch.Tensor, residual: torch.Tensor, in_place: bool) -> torch.Tensor:
        """``conv(x) + residual``, written into ``residual`` when ``in_place``."""
        args: tuple[Any, ...] = (
            x.to(self.dtype),
            self.weight,
            self.bias,
            *self.geometry,
            "add",
            1.0,
            None,
            [],
            None,
        )
        if in_place:
            return torch.ops.mkldnn._convolution_pointwise_.binary(residual, *args)
        return torch.ops.mkldnn._convolution_pointwise.binary(*args[:1], residual, *args[1:])


class _Block:
    def __init__(self, module: nn.Module) -> None:
        block = cast(ResBlock, module)
        assert block.res_scale == 1.0, "fold res_scale first"
        self.conv1, self.conv2 = _Conv(block.body[0]), _Conv(block.body[2])

    def __call__(self, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        return self.conv2.add(self.conv1(x, relu=True), x, in_place)


class _Shuffle:
    """conv then pixel shuffle by ``r``, with the conv's output channels in shuffle order."""

    def __init__(self, module: nn.Module, r: int, band_pixels: int) -> None:
        conv = cast(nn.Conv2d, module)
        self.band_pixels = band_pixels
        w = conv.weight.detach()
        c = w.shape[0] // (r * r)
        # PixelShuffle reads channel c*r*r + i*r + j; store it at (i*r + j)*c_out + c instead.
        order = torch.arange(w.shape[0]).view(c, r * r).t().reshape(-1)
        self.conv = _Conv(conv, w[order])
        if conv.bias is not None:
            self.conv.bias = conv.bias.detach()[order].to(w.dtype)
        self.r, self.c = r, c
        self._local = threading.local()

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # Reused from call to call (one per thread): a fresh 64 MB tensor is fresh pages from
        # the kernel, and faulting them in cost more than the shuffle itself (profiled).
        old = getattr(self._local, "out", None)
        if old is None or old.shape != shape or old.dtype != dtype:
            old = self._local.out = torch.empty(shape, dtype=dtype)
        return old

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        n, _, h, w = x.shape
        r, c = self.r, self.c
        out = self._buffer((n, h, r, w, r, c), out_dtype)
        # In bands of rows, so each band's conv output is shuffled while it is still in cache:
        # measured 30% faster than one convolution over a 256x256 input.
        rows = max(1, self.band_pixels // max(w, 1))
        weight, bias, (_, stride, dilation, groups) = (
            self.conv.weight,
            self.conv.bias,
            self.conv.geometry,
        )
        x = x.to(self.conv.dtype)
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            first, last = top == 0, bottom == h
            # Interior bands read one row of neighbours on each side and pad only columns;
            # a band at an image edge pads rows too and drops the one row that padding spoils.
            band = x[:, :, top - (not first) : bottom + (not last)]
            pad = [1 if first or last else 0, 1]
            y = torch.ops.mkldnn._convolution_pointwise(
                band, weight, bias, pad, stride, dilation, groups, "none", [], ""
            )
            if first and not last:
                y = y[:, :, : bottom - top]
            elif last and not first:
                y = y[:, :, 1:]
            y = y.permute(0, 2, 3, 1)  # NHWC (a view of channels-last memory)
            out[:, top:bottom].copy_(
                y.reshape(n, bottom - top, w, r, r, c).permute(0, 1, 3, 2, 4, 5)
            )
        return out.view(n, h * r, w * r, c).permute(0, 3, 1, 2)  # NCHW view, channels-last


class _Net:
    """The fused forward of one prepared (folded, cast, channels-last) EDSR or MDSR."""

    def __init__(self, model: SRModel, band_pixels: int) -> None:
        self.mdsr = model if isinstance(model, MDSR) else None
        self.band_pixels = band_pixels
        self.sub_mean, self.head = _Conv(model.sub_mean), _Conv(model.head[0])
        body = list(model.body.children())
        self.body = [_Block(b) for b in body[:-1]]
        self.body_end = _Conv(body[-1])
        self.dtype = self.body_end.dtype
        pre = getattr(model, "pre_process", None)
        self.pre = [[_Block(b) for b in branch] for branch in pre] if pre is not None else None
        if pre is not None:
            ups: Sequence[nn.Module] = list(model.get_submodule("upsample").children())
            last = model.tail[0]
        else:
            ups = [model.tail[0]]
            last = model.tail[1]
        self.ups = [self._upsampler(u) for u in ups]
        # add_mean is the identity plus a bias: fold it into the last conv's bias.
        self.last = _Conv(last)
        assert self.last.bias is not None and model.add_mean.bias is not None
        self.last.bias = self.last.bias + model.add_mean.bias.detach().to(self.last.dtype)

    def _upsampler(self, up: nn.Module) -> list[_Shuffle]:
        layers = list(up.children())
        return [
            _Shuffle(conv, cast(nn.PixelShuffle, shuffle).upscale_factor, self.band_pixels)
            for conv, shuffle in zip(layers[::2], layers[1::2], strict=True)
        ]

    def __call__(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        branch = self.mdsr.branch(scale) if self.mdsr is not None else 0
        x = self.head(self.sub_mean(x)).to(self.dtype)  # a fresh tensor: ours to overwrite
        if self.pre is not None:
            for block in self.pre[branch]:
                x = block(x, in_place=True)
        skip = x
        for i, block in enumerate(self.body):
            x = block(x, in_place=i > 0)  # the first block's input is the skip: keep it
        x = self.body_end.add(x, skip, in_place=bool(self.body))  # skip is not needed after
        ups = self.ups[branch]
        for i, stage in enumerate(ups):
            x = stage(x, self.last.dtype if i == len(ups) - 1 else self.dtype)
        return self.last(x)


def fused_forward(model: SRModel, *, band_pixels: int = 16384) -> _Forward:
    """``f(x, scale)``: ``model``'s forward with the fusions above, for a model already folded,
    cast and in channels-last (what ``prepare_model`` builds). Inference only (no autograd).

    ``band_pixels``: rows x width of one band of the upsampler; the default, 64 rows of a
    256-wide input, was the fastest of 8/16/32/64 rows measured on the 2-core EPYC.
    """
    return _Net(model, band_pixels)


__all__ = ["fused_forward", "fused_kernels_available"]
