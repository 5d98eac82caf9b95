"""Building blocks shared by EDSR and MDSR, laid out so official state dicts load strictly."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

# DIV2K mean RGB, in 0..1; the official models subtract it (times rgb_range) first.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding ``sign * rgb_range * mean``; kept as a conv for the official keys."""

    def __init__(
        self,
        *,
        rgb_range: float = 255.0,
        sign: int = -1,
        n_colors: int = 3,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__(n_colors, n_colors, kernel_size=1)
        if len(rgb_mean) != n_colors:
            # A single-channel model has no RGB mean; use the mean of the three.
            rgb_mean = (sum(rgb_mean) / len(rgb_mean),) * n_colors
        assert self.bias is not None  # nn.Conv2d's default: bias=True
        with torch.no_grad():
            self.weight.copy_(torch.eye(n_colors).view(n_colors, n_colors, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean))
        for p in self.parameters():
            p.requires_grad = False


def mean_shifts(
    rgb_range: float, n_colors: int, rgb_mean: tuple[float, ...]
) -> tuple[MeanShift, MeanShift]:
    """The (subtract, add back) pair of a model; a zero ``rgb_mean`` makes both the identity."""
    return (
        MeanShift(rgb_range=rgb_range, sign=-1, n_colors=n_colors, rgb_mean=rgb_mean),
        MeanShift(rgb_range=rgb_range, sign=1, n_colors=n_colors, rgb_mean=rgb_mean),
    )


def mean_config(rgb_mean: tuple[float, ...]) -> dict[str, list[float]]:
    """``rgb_mean`` as a config entry; left out at the DIV2K mean, so configs written before
    the mean became a setting stay equal to the ones written now."""
    return {} if tuple(rgb_mean) == DIV2K_RGB_MEAN else {"rgb_mean": list(rgb_mean)}


class ResBlock(nn.Module):
    """conv -> ReLU -> conv, scaled by ``res_scale``, plus the input."""

    def __init__(self, n_feats: int, kernel_size: int = 3, *, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size),
            nn.ReLU(inplace=True),
            conv(n_feats, n_feats, kernel_size),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res * self.res_scale
        return res + x

    @torch.no_grad()
    def fold_res_scale(self) -> None:
        """Fold ``res_scale`` into the second conv, so inference skips the multiply."""
        if self.res_scale != 1.0:
            last = self.body[2]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            last.weight.mul_(self.res_scale)
            last.bias.mul_(self.res_scale)
            self.res_scale = 1.0


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling: log2(scale) x [conv F->4F, shuffle 2] for powers of 2, or
    [conv F->9F, shuffle 3] for x3."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale >= 2 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale must be {SUPPORTED_SCALES_TEXT}, got {scale}")
        super().__init__(*layers)


def stream_convs(
    head: nn.Module, blocks: Iterable[nn.Module], last: nn.Module, upsampler: nn.Module
) -> tuple[list[nn.Conv2d], list[nn.Conv2d]]:
    """(writers, readers) of a residual stream: the head, every block's last conv and the
    body's last conv add to it; every block's first conv, the body's last and the upsampler's
    first read it."""
    up = next(iter(upsampler.children()))
    res = [b for b in blocks if isinstance(b, ResBlock)]
    firsts, lasts = [b.body[0] for b in res], [b.body[2] for b in res]
    writers, readers = [head, *lasts, last], [*firsts, last, up]
    if not all(isinstance(c, nn.Conv2d) for c in writers + readers):
        raise ValueError("the residual stream is written and read by convolutions only")
    return writers, readers  # type: ignore[return-value]  # checked just above


@torch.no_grad()
def rescale_stream(
    writers: Sequence[nn.Conv2d], readers: Sequence[nn.Conv2d], factors: torch.Tensor
) -> None:
    """Carry the residual stream as ``stream / factors`` (per channel), in place, exactly.

    The stream is a sum of conv outputs (``writers``: the head and every block's last conv)
    read only by convs (``readers``) and never passed through a non-linearity, so dividing
    each writer's output channel by its factor and multiplying each reader's input channel
    by it leaves the model's outputs unchanged in exact arithmetic. A conv may be both.
    """
    f = factors.detach().to(dtype=torch.float32)
    if f.ndim != 1 or not bool(torch.isfinite(f).all()) or not bool((f > 0).all()):
        raise ValueError("stream factors must be a 1-D tensor of finite positive numbers")
    for c in writers:
        if c.out_channels != len(f) or c.bias is None:
            raise ValueError(f"a stream writer has {c.out_channels} outputs, not {len(f)}")
        c.weight.div_(f.to(c.weight).view(-1, 1, 1, 1))
        c.bias.div_(f.to(c.bias))
    for c in readers:
        if c.in_channels != len(f):
            raise ValueError(f"a stream reader has {c.in_channels} inputs, not {len(f)}")
        c.weight.mul_(f.to(c.weight).view(1, -1, 1, 1))


def supported_scale(scale: int) -> bool:
    """Whether the sub-pixel upsampler can be built for ``scale``: 3, or a power of 2."""
    return scale == 3 or (scale >= 2 and (scale & (scale - 1)) == 0)


SUPPORTED_SCALES_TEXT = "3 or a power of 2 (2, 4, 8, ...)"
