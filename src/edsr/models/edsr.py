"""EDSR (Lim et al. 2017), single-scale."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from edsr.errors import EdsrError
from edsr.models.common import (
    DIV2K_RGB_MEAN,
    SUPPORTED_SCALES_TEXT,
    ResBlock,
    Upsampler,
    conv,
    mean_config,
    mean_shifts,
    rescale_stream,
    stream_convs,
    supported_scale,
)


class EDSR(nn.Module):
    """Enhanced Deep Residual Network for one upscaling factor.

    Inputs and outputs are images with values in ``0..rgb_range`` (255 for the official
    weights), shape (N, n_colors, H, W); the output is (N, n_colors, H*scale, W*scale).
    ``rgb_mean`` (in 0..1) is what the mean shifts subtract and add back: the DIV2K mean for
    the authors' weights, zeros for weights trained without a mean shift (super-image's).
    """

    def __init__(
        self,
        *,
        scale: int,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        n_colors: int = 3,
        rgb_range: float = 255.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        if not supported_scale(scale):
            raise ValueError(f"EDSR scale must be {SUPPORTED_SCALES_TEXT}, not {scale}")
        self.scale = scale
        self.n_resblocks = n_resblocks
        self.n_feats = n_feats
        self.res_scale = res_scale
        self.n_colors = n_colors
        self.rgb_range = rgb_range
        self.rgb_mean = tuple(float(m) for m in rgb_mean)

        # Registration order follows the official files, so state dicts match key for key.
        self.sub_mean, self.add_mean = mean_shifts(rgb_range, n_colors, self.rgb_mean)
        self.head = nn.Sequential(conv(n_colors, n_feats, 3))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, 3, res_scale=res_scale) for _ in range(n_resblocks)],
            conv(n_feats, n_feats, 3),
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, n_colors, 3))

    @property
    def scales(self) -> tuple[int, ...]:
        return (self.scale,)

    def config(self) -> dict:
        return {
            "arch": "edsr",
            "scale": self.scale,
            "n_resblocks": self.n_resblocks,
            "n_feats": self.n_feats,
            "res_scale": self.res_scale,
            "n_colors": self.n_colors,
            "rgb_range": self.rgb_range,
            **mean_config(self.rgb_mean),
        }

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if scale is not None and scale != self.scale:
            raise EdsrError(f"this EDSR model upscales x{self.scale} only, not x{scale}")
        x = self.sub_mean(x)
        x = self.head(x)
        x = self.body(x) + x
        x = self.tail(x)
        return self.add_mean(x)

    def stream_convs(self, scale: int | None = None) -> tuple[list[nn.Conv2d], list[nn.Conv2d]]:
        """(writers, readers) of the residual stream: the convs that add to it and the ones
        that read it (see :func:`~edsr.models.common.rescale_stream`)."""
        if scale is not None and scale != self.scale:
            raise EdsrError(f"this EDSR model upscales x{self.scale} only, not x{scale}")
        body = list(self.body)
        return stream_convs(self.head[0], body[:-1], body[-1], self.get_submodule("tail.0"))

    def rescale_stream(self, factors: torch.Tensor, scale: int | None = None) -> EDSR:
        """A copy that carries its residual stream divided by ``factors`` (one per feature):
        the same outputs, other activation ranges (what int8 calibration equalizes)."""
        model = copy.deepcopy(self)
        rescale_stream(*model.stream_convs(scale), factors)
        return model

    def fold_res_scale(self) -> EDSR:
        """A copy with residual scaling folded into the convolutions: same outputs, no multiply."""
        model = copy.deepcopy(self)
        for block in model.body:
            if isinstance(block, ResBlock):
                block.fold_res_scale()
        return model
