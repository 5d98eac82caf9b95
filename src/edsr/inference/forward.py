"""The forward pass on 0..255 images (gray through an RGB model) and the paper's self-ensemble."""

from __future__ import annotations

import torch

from edsr.errors import EdsrError
from edsr.inference.descriptor import Model

# BT.601 luma weights (what PIL's convert("L") uses) to turn the model's RGB output for a
# gray input back into one channel.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@torch.no_grad()
def sr_forward(model: Model, x: torch.Tensor, scale: int) -> torch.Tensor:
    """Model output for (N, C, H, W) float input in 0..255; C may be 1 (gray) for an RGB model."""
    n_colors = model.n_colors
    c = x.shape[1]
    if c == n_colors:
        return model(x, scale)
    if c == 1 and n_colors == 3:
        y = model(x.expand(-1, 3, -1, -1), scale)
        w = torch.tensor(_GRAY_WEIGHTS, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        return (y * w).sum(dim=1, keepdim=True)
    raise EdsrError(f"the model takes {n_colors}-channel images, the input has {c} channels")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms of the last two dims: k % 4 quarter turns, then a
    left-right flip when k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``."""
    y = x.flip(-1) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


@torch.no_grad()
def ensemble_forward(model: Model, x: torch.Tensor, scale: int) -> torch.Tensor:
    """Mean of the model's outputs for the 8 flips/rotations of ``x``, each mapped back
    (EDSR+ / MDSR+).

    Runs on ``x``'s device, one transform at a time (memory of one forward pass plus a float32
    accumulator), for every image of the batch at once.
    """
    acc: torch.Tensor | None = None
    for k in range(8):
        y = dihedral_inverse(sr_forward(model, dihedral(x, k), scale), k).float()
        acc = y if acc is None else acc.add_(y)
    assert acc is not None
    return acc.div_(8)
