"""Turn whatever a checkpoint file holds into a bare state dict with the official key names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeGuard

import torch

from edsr.errors import CheckpointError
from edsr.models.common import DIV2K_RGB_MEAN

# Containers used by the public code, BasicSR (``params-ema`` before 1.0), GAN trainers and
# Lightning-style trainers; EMA weights first because BasicSR stores both and the EMA copy is
# the one it evaluates, the generator before anything else a GAN checkpoint holds.
WRAPPER_KEYS = (
    "params_ema",
    "params-ema",
    "params",
    "state_dict",
    "model",
    "model_state_dict",
    "net",
    "generator",
    "netG",
    "net_g",
)
# DataParallel/DDP, torch.compile, Lightning, and the generator of GAN trainers (ESRGAN-style
# ``netG.``, BasicSR's ``net_g.``, ``generator.``).
PREFIXES = ("module.", "_orig_mod.", "model.", "netG.", "net_g.", "generator.")

StateDict = dict[str, torch.Tensor]


def _is_tensor_dict(obj: object) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def unwrap(obj: object, *, depth: int = 3) -> StateDict:
    """Find the tensor dict inside common checkpoint containers."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and depth > 0:
        for key in WRAPPER_KEYS:
            if key in obj:
                try:
                    return unwrap(obj[key], depth=depth - 1)
                except CheckpointError:
                    continue
        # A training checkpoint may mix tensors with step counters: keep only the tensors
        # when they look like a model.
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if any(k.endswith(".weight") for k in tensors):
            return tensors
        # {"g": state dict, "epoch": 40, "iter": 120000}: the one dict is the model.
        dicts = [v for v in obj.values() if isinstance(v, Mapping)]
        if len(dicts) == 1:
            return unwrap(dicts[0], depth=depth - 1)
    kind = type(obj).__name__
    keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else ""
    raise CheckpointError(
        f"no model weights found in the checkpoint ({kind}{': keys ' + keys if keys else ''}); "
        "expected a state dict, optionally under 'state_dict', 'model', 'params' or 'params_ema'"
    )


def strip_prefixes(sd: StateDict) -> StateDict:
    """Remove the :data:`PREFIXES` wrappers put before every key (``module.``, ``netG.``, ...).

    Strict: a prefix on some keys only means the file holds more than the model (a GAN's
    discriminator beside its generator, say); the first key outside it is named.
    """
    out = sd
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    for prefix in PREFIXES:
        inside = [k for k in out if k.startswith(prefix)]
        if inside and len(inside) < len(out):
            other = next(k for k in out if not k.startswith(prefix))
            raise CheckpointError(
                f"the checkpoint holds a model under '{prefix}' and also '{other}', which is "
                "neither that model nor a known wrapper; save the model's state dict alone"
            )
    return out


_BASICSR_BLOCK = re.compile(r"^body\.(\d+)\.conv([12])\.(weight|bias)$")


def is_basicsr(sd: Mapping[str, torch.Tensor]) -> bool:
    return "conv_first.weight" in sd and "conv_last.weight" in sd


def from_basicsr(sd: StateDict) -> StateDict:
    """Rename BasicSR's EDSR layout to the official one and add the MeanShift layers it lacks.

    BasicSR feeds 0..1 images and multiplies by 255 after subtracting the mean; the official
    layout feeds 0..255 and subtracts 255 x mean, which is the same function.
    """
    n_blocks = 1 + max((int(m.group(1)) for k in sd if (m := _BASICSR_BLOCK.match(k))), default=-1)
    out: StateDict = {}
    first = sd["conv_first.weight"]
    n_colors = first.shape[1]
    for k, v in sd.items():
        if m := _BASICSR_BLOCK.match(k):
            i, which, kind = m.groups()
            out[f"body.{i}.body.{0 if which == '1' else 2}.{kind}"] = v
        elif k.startswith("conv_first."):
            out["head.0." + k.split(".", 1)[1]] = v
        elif k.startswith("conv_after_body."):
            out[f"body.{n_blocks}." + k.split(".", 1)[1]] = v
        elif k.startswith("upsample."):
            out["tail.0." + k.split(".", 1)[1]] = v
        elif k.startswith("conv_last."):
            out["tail.1." + k.split(".", 1)[1]] = v
        elif k == "mean":
            continue
        else:
            out[k] = v  # left for the strict check to report
    return with_authors_mean(out, n_colors, first.dtype)


def with_authors_mean(sd: StateDict, n_colors: int, dtype: torch.dtype) -> StateDict:
    """``sd`` with the authors' mean shifts (DIV2K mean, 0..255): constants, never learned."""
    mean = torch.tensor(DIV2K_RGB_MEAN if n_colors == 3 else (sum(DIV2K_RGB_MEAN) / 3,) * n_colors)
    eye = torch.eye(n_colors, dtype=dtype).view(n_colors, n_colors, 1, 1)
    sd["sub_mean.weight"] = eye.clone()
    sd["sub_mean.bias"] = (-255.0 * mean).to(dtype)
    sd["add_mean.weight"] = eye.clone()
    sd["add_mean.bias"] = (255.0 * mean).to(dtype)
    return sd


def lacks_mean(sd: Mapping[str, torch.Tensor]) -> bool:
    """An official-layout dict without the mean-shift constants: how a file says it is in
    the authors' convention (see ``superimage.py``)."""
    return "head.0.weight" in sd and not any(k.startswith(("sub_mean.", "add_mean.")) for k in sd)


def fill_authors_mean(sd: StateDict) -> StateDict:
    """``sd`` with the authors' mean shifts added when it :func:`lacks_mean`."""
    if not lacks_mean(sd):
        return sd
    head = sd["head.0.weight"]
    return with_authors_mean(dict(sd), int(head.shape[1]), head.dtype)


def normalize_state_dict(obj: object) -> StateDict:
    """Unwrap, strip prefixes and rename to the official layout."""
    sd = strip_prefixes(unwrap(obj))
    if is_basicsr(sd):
        sd = from_basicsr(sd)
    return sd
