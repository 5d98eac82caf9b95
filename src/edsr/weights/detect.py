"""Infer architecture and hyperparameters of an official-layout state dict from tensor shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from edsr.errors import CheckpointError
from edsr.models import PRESETS
from edsr.models.common import DIV2K_RGB_MEAN, mean_config


def _conv(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """The convolution weight ``key``: four dimensions (out, in, kh, kw), none of them empty."""
    w = sd[key]
    if w.dim() != 4 or 0 in w.shape:
        raise CheckpointError(
            f"tensor {key} has shape {tuple(w.shape)}, not a convolution's (out, in, k, k): "
            "not an EDSR/MDSR checkpoint, or a damaged one"
        )
    return w


def _upsampler_scale(sd: Mapping[str, torch.Tensor], prefix: str, n_feats: int) -> int:
    """Scale of a sub-pixel upsampler stored under ``prefix`` (e.g. ``tail.0.``)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    convs = sorted((int(m.group(1)), _conv(sd, k)) for k in sd if (m := pat.match(k)))
    if not convs:
        raise CheckpointError(f"no upsampler convolution under '{prefix}*' in the checkpoint")
    ratio = convs[0][1].shape[0] // n_feats
    if ratio == 9 and len(convs) == 1:
        return 3
    if ratio == 4:
        return 2 ** len(convs)
    raise CheckpointError(
        f"upsampler '{prefix}' has {len(convs)} conv(s) with {convs[0][1].shape[0]} output "
        f"channels for {n_feats} features: not an EDSR/MDSR sub-pixel upsampler"
    )


def paper_res_scale(n_resblocks: int, n_feats: int) -> float:
    """The ``res_scale`` of the EDSR preset of this size (the paper's 32x256: 0.1), else 1.0.

    No tensor shape shows residual scaling, so the presets are the only evidence.
    """
    for p in PRESETS.values():
        if p.arch == "edsr" and (p.n_resblocks, p.n_feats) == (n_resblocks, n_feats):
            return p.res_scale
    return 1.0


def detect_config(sd: Mapping[str, torch.Tensor], *, res_scale: float | None = None) -> dict:
    """Return the model config (as ``model.config()`` gives it) that produced ``sd``."""
    if "head.0.weight" not in sd:
        sample = ", ".join(list(sd)[:5])
        raise CheckpointError(
            f"not an EDSR/MDSR checkpoint: no 'head.0.weight' key (found {sample}, ...)"
        )
    head = _conv(sd, "head.0.weight")
    n_feats, n_colors = int(head.shape[0]), int(head.shape[1])
    # The body ends with a plain conv at index B; counting blocks instead would turn a file
    # with a missing block into a smaller model and hide the gap.
    closing = [int(m.group(1)) for k in sd if (m := re.match(r"^body\.(\d+)\.weight$", k))]
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"^body\.(\d+)\.body\.0\.weight$", k))]
    n_resblocks = closing[0] if len(closing) == 1 else max(blocks, default=-1) + 1
    rgb_range = 255.0
    # An identity mean shift (super-image's files, read by superimage.py) keeps its zero mean;
    # its range is then no tensor's business, so it is the authors' 255.
    zero_mean = "sub_mean.bias" in sd and not bool(sd["sub_mean.bias"].any())
    if "sub_mean.bias" in sd and not zero_mean:
        mean = torch.tensor(DIV2K_RGB_MEAN).mean().item()
        estimate = -sd["sub_mean.bias"].double().mean().item() / mean
        # Official models use 255 and some forks 1; snap to those, keep anything else as is.
        rgb_range = next(
            (r for r in (255.0, 1.0) if abs(estimate - r) < 1e-3 * r), round(estimate, 4)
        )
        if rgb_range <= 0:
            raise CheckpointError(
                f"sub_mean.bias {sd['sub_mean.bias'].tolist()} implies rgb_range {estimate}"
            )

    zero = mean_config((0.0,) * n_colors) if zero_mean else {}
    if any(k.startswith("pre_process.") for k in sd):
        n_branches = len({k.split(".")[1] for k in sd if k.startswith("upsample.")})
        scales = [_upsampler_scale(sd, f"upsample.{b}.", n_feats) for b in range(n_branches)]
        pre = sd.get("pre_process.0.0.body.0.weight")
        pre_kernel = 5 if pre is None else int(_conv(sd, "pre_process.0.0.body.0.weight").shape[-1])
        # The only MDSR with 3x3 pre-processing is super-image's, whose blocks scale by 0.1.
        variant = {} if pre_kernel == 5 else {"res_scale": 0.1, "pre_kernel": pre_kernel}
        if res_scale is not None:
            variant["res_scale"] = float(res_scale)
        return {
            "arch": "mdsr",
            "scales": scales,
            "n_resblocks": n_resblocks,
            "n_feats": n_feats,
            "n_colors": n_colors,
            "rgb_range": rgb_range,
            **variant,
            **zero,
        }
    return {
        "arch": "edsr",
        "scale": _upsampler_scale(sd, "tail.0.", n_feats),
        "n_resblocks": n_resblocks,
        "n_feats": n_feats,
        "res_scale": paper_res_scale(n_resblocks, n_feats)
        if res_scale is None
        else float(res_scale),
        "n_colors": n_colors,
        "rgb_range": rgb_range,
        **zero,
    }
