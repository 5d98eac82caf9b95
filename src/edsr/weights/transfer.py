"""Weight transfer between trained models: start a model from another's body (``--init-from``).

EDSR keeps its final conv at ``tail.1`` after the upsampler ``tail.0``; MDSR keeps one
upsampler per scale in ``upsample.i`` and the final conv at ``tail.0``. Translating between
the two lets a trained single-scale body start a multi-scale model and back. An upsampler is
copied only from a model of the same scale: another scale's pixel shuffle has a different
shape and meaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edsr.errors import EdsrError
from edsr.models import SRModel
from edsr.weights.detect import detect_config
from edsr.weights.io import model_from_state_dict, read_checkpoint

_FINAL_CONV = {"edsr": "tail.1.", "mdsr": "tail.0."}
#: What ``--init-from`` accepts, for a message about a file that is not one.
INIT_ACCEPTS = "--init-from takes a checkpoint (.pt, .pth, .safetensors) of a trained EDSR or MDSR"


@dataclass(frozen=True)
class Transfer:
    """What :func:`init_from` did: how many tensors it copied, and each skipped one with why."""

    loaded: int
    skipped: tuple[str, ...]


def _scales(cfg: dict[str, Any]) -> list[int]:
    return list(cfg["scales"]) if cfg["arch"] == "mdsr" else [cfg["scale"]]


def source_key(
    key: str, own_cfg: dict[str, Any], src_cfg: dict[str, Any]
) -> tuple[str | None, str]:
    """Name in the source model of our tensor ``key`` (None: do not copy it), and why."""
    src_arch, own_arch = src_cfg["arch"], own_cfg["arch"]
    src_scales, own_scales = _scales(src_cfg), _scales(own_cfg)
    if own_arch == "edsr" and key.startswith("tail.0."):
        scale, rest = own_scales[0], key[len("tail.0.") :]
    elif own_arch == "mdsr" and key.startswith("upsample."):
        index, rest = key[len("upsample.") :].split(".", 1)
        scale = own_scales[int(index)]
    elif key.startswith(_FINAL_CONV[own_arch]):
        return _FINAL_CONV[src_arch] + key[len(_FINAL_CONV[own_arch]) :], "final conv"
    else:
        return key, ""
    if scale not in src_scales:
        have = "/x".join(map(str, src_scales))
        return None, f"x{scale} upsampler (the file has x{have}; trained from scratch)"
    prefix = "tail.0." if src_arch == "edsr" else f"upsample.{src_scales.index(scale)}."
    return prefix + rest, f"x{scale} upsampler"


def init_from(model: SRModel, path: str | os.PathLike[str]) -> Transfer:
    """Copy into ``model`` every tensor of the trained model file ``path`` that fits it.

    Works across EDSR and MDSR of the same width: the body, head and final conv carry over,
    an upsampler only where the file has the same scale. A file that shares no body weights
    with ``model`` is an :class:`EdsrError`.
    """
    name = Path(path).name
    src, claimed, _ = read_checkpoint(path, accepts=INIT_ACCEPTS)
    # Read as every door reads a model file (its config a claim checked against its tensors,
    # the tensors loaded strictly into the model they describe), so a damaged or lying file is
    # refused here too, not half-copied; only then are its tensors the facts.
    model_from_state_dict(src, config=claimed, source=name)
    src_cfg = detect_config(src)  # the tensors' arch and scales: a file's config only claims
    own_cfg = model.config()
    load: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for k, v in model.state_dict().items():
        sk, why = source_key(k, own_cfg, src_cfg)
        if sk is None:
            skipped.append(f"{k}: {why}")
        elif sk not in src:
            skipped.append(f"{k}: not in {name}")
        elif tuple(src[sk].shape) != tuple(v.shape):
            skipped.append(f"{k}: shape {tuple(src[sk].shape)} in the file, {tuple(v.shape)} here")
        else:
            load[k] = src[sk].to(v.dtype)
    if not any(k.startswith("body.") for k in load):
        raise EdsrError(
            f"{path} shares no body weights with {own_cfg['arch']} "
            f"{model.n_resblocks}x{model.n_feats}; give a model of the same size to --init-from"
        )
    model.load_state_dict(load, strict=False)
    return Transfer(loaded=len(load), skipped=tuple(skipped))
