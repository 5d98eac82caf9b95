"""MDSR (Lim et al. 2017): one network, one shared body, several scales."""

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


class MDSR(nn.Module):
    """Multi-scale deep super-resolution network.

    ``forward(x, scale)`` picks the scale-specific pre-processing and upsampling branches;
    the scale is an argument, never hidden state, so one model serves several scales at once.
    The authors' MDSR has 5x5 pre-processing blocks and no residual scaling; ``pre_kernel``,
    ``res_scale`` and ``rgb_mean`` (see :class:`~edsr.models.edsr.EDSR`) describe variants
    such as super-image's (3x3, 0.1, no mean shift).
    """

    def __init__(
        self,
        *,
        scales: tuple[int, ...] = (2, 3, 4),
        n_resblocks: int = 16,
        n_feats: int = 64,
        n_colors: int = 3,
        rgb_range: float = 255.0,
        res_scale: float = 1.0,
        pre_kernel: int = 5,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if not scales or len(set(scales)) != len(scales):
            raise ValueError(f"MDSR needs distinct scales, got {scales}")
        for s in scales:
            if not supported_scale(s):
                raise ValueError(f"MDSR scales must be {SUPPORTED_SCALES_TEXT}, not {s}")
        self.scales = scales
        self.n_resblocks = n_resblocks
        self.n_feats = n_feats
        self.n_colors = n_colors
        self.rgb_range = rgb_range
        self.res_scale = res_scale
        self.pre_kernel = pre_kernel
        self.rgb_mean = tuple(float(m) for m in rgb_mean)

        # Registration order follows the official files, so state dicts match key for key.
        self.sub_mean, self.add_mean = mean_shifts(rgb_range, n_colors, self.rgb_mean)
        self.pre_process = nn.ModuleList(
            nn.Sequential(*[ResBlock(n_feats, pre_kernel, res_scale=res_scale) for _ in range(2)])
            for _ in scales
        )
        self.upsample = nn.ModuleList(Upsampler(s, n_feats) for s in scales)
        self.head = nn.Sequential(conv(n_colors, n_feats, 3))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, 3, res_scale=res_scale) for _ in range(n_resblocks)],
            conv(n_feats, n_feats, 3),
        )
        self.tail = nn.Sequential(conv(n_feats, n_colors, 3))

    def config(self) -> dict:
        return {
            "arch": "mdsr",
            "scales": list(self.scales),
            "n_resblocks": self.n_resblocks,
            "n_feats": self.n_feats,
            "n_colors": self.n_colors,
            "rgb_range": self.rgb_range,
            # Left out at the authors' values, so configs written before stay equal.
            **({} if self.res_scale == 1.0 else {"res_scale": self.res_scale}),
            **({} if self.pre_kernel == 5 else {"pre_kernel": self.pre_kernel}),
            **mean_config(self.rgb_mean),
        }

    def branch(self, scale: int) -> int:
        try:
            return self.scales.index(int(scale))
        except ValueError:
            have = ", ".join(f"x{s}" for s in self.scales)
            raise EdsrError(f"this MDSR model has scales {have}, not x{scale}") from None

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        k = self.branch(scale)
        x = self.sub_mean(x)
        x = self.head(x)
        x = self.pre_process[k](x)
        x = self.body(x) + x
        x = self.upsample[k](x)
        x = self.tail(x)
        return self.add_mean(x)

    def stream_convs(self, scale: int) -> tuple[list[nn.Conv2d], list[nn.Conv2d]]:
        """(writers, readers) of the residual stream at ``scale``: the convs that add to it
        and the ones that read it (see :func:`~edsr.models.common.rescale_stream`)."""
        k = self.branch(scale)
        body = list(self.body)
        blocks = [*self.get_submodule(f"pre_process.{k}").children(), *body[:-1]]
        return stream_convs(self.head[0], blocks, body[-1], self.get_submodule(f"upsample.{k}"))

    def rescale_stream(self, factors: torch.Tensor, scale: int) -> MDSR:
        """A copy whose stream at ``scale`` is divided by ``factors`` (one per feature): the
        same outputs at that scale (the shared body changes, so other scales do not keep
        theirs), other activation ranges (what int8 calibration equalizes)."""
        model = copy.deepcopy(self)
        rescale_stream(*model.stream_convs(scale), factors)
        return model

    def fold_res_scale(self) -> MDSR:
        """A copy with residual scaling folded into the convolutions: same outputs, no multiply."""
        model = copy.deepcopy(self)
        for block in model.modules():
            if isinstance(block, ResBlock):
                block.fold_res_scale()
        return model
