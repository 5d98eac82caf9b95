"""Models with known properties for the inference tests (tiling, ensemble, precision, video)."""

from __future__ import annotations

import torch
from torch import nn

from edsr.inference import dihedral, dihedral_inverse
from edsr.models import EDSR, MDSR


@torch.no_grad()
def random_weights(model: nn.Module, std: float, seed: int = 0) -> nn.Module:
    """Normal(0, std) for every trainable weight and bias; the frozen mean shifts stay exact.

    With std 0.08 on a 2-block, 16-feature model, a pixel's influence still reaches the edge of
    the receptive field with a visible weight (the last ring contributes ~0.1 gray levels),
    which is what makes an overlap that is one pixel short detectable.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def small_edsr(scale: int, *, std: float = 0.08, res_scale: float = 1.0, n_feats: int = 16) -> EDSR:
    return random_weights(
        EDSR(scale=scale, n_resblocks=2, n_feats=n_feats, res_scale=res_scale), std
    )


def small_mdsr(*, std: float = 0.08) -> MDSR:
    return random_weights(MDSR(n_resblocks=2, n_feats=16), std)


def trained_small_mdsr() -> MDSR:
    """A 2-block MDSR x2 carrying the bundled model's trained layers: real image-like outputs
    (and int8 activation ranges) at a tenth of the cost."""
    from edsr.weights import load_model

    full = load_model(device="cpu")
    assert isinstance(full, MDSR)
    model = MDSR(scales=(2,), n_resblocks=2).eval()
    have = full.state_dict()
    sd = {}
    for key in model.state_dict():
        src = key
        if key.startswith(("pre_process.", "upsample.")):
            src = key.replace(".0.", f".{full.scales.index(2)}.", 1)
        elif key.startswith("body.2."):
            src = key.replace("body.2.", f"body.{full.n_resblocks}.", 1)
        sd[key] = have[src]
    model.load_state_dict(sd)
    return model


@torch.no_grad()
def make_equivariant(model: nn.Module) -> nn.Module:
    """Average every conv over the 8 dihedral transforms so the model commutes with all of them.

    For a plain conv this makes each kernel symmetric under flips and quarter turns. A conv
    that feeds a PixelShuffle(r) also has its output channels permuted: a flip of the HR image
    swaps the sub-pixel positions inside each r x r block, so the channel producing sub-pixel
    (i, j) must hold the transformed kernel of the channel for the transformed position.
    Averaging g^-1 A(g x) over the group gives an equivariant operator; for conv + shuffle that
    average is again a conv + shuffle, with the weights computed here.
    """
    shuffle_after: dict[nn.Conv2d, int] = {}
    for seq in model.modules():
        layers = list(seq.children())
        for a, b in zip(layers, layers[1:], strict=False):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.PixelShuffle):
                shuffle_after[a] = b.upscale_factor
    for conv in model.modules():
        if not isinstance(conv, nn.Conv2d) or not conv.weight.requires_grad:
            continue
        r = shuffle_after.get(conv, 1)
        grid = torch.arange(r * r).view(r, r)
        groups = conv.out_channels // (r * r)
        w_sum = torch.zeros_like(conv.weight)
        b_sum = torch.zeros_like(conv.bias)
        for k in range(8):
            perm = dihedral_inverse(grid, k).flatten()
            idx = torch.cat([c * r * r + perm for c in range(groups)])
            w_sum += dihedral_inverse(conv.weight, k)[idx]
            b_sum += conv.bias[idx]
        conv.weight.copy_(w_sum / 8)
        conv.bias.copy_(b_sum / 8)
    return model.eval()


def max_equivariance_error(model: nn.Module, x: torch.Tensor, scale: int) -> float:
    """max over the 8 transforms g of |model(g x) - g model(x)|."""
    with torch.no_grad():
        y = model(x, scale)
        return max(
            float((model(dihedral(x, k), scale) - dihedral(y, k)).abs().max()) for k in range(8)
        )


@torch.no_grad()
def pass_through_model(
    scale: int, *, n_resblocks: int = 16, n_feats: int = 64, seed: int = 0
) -> EDSR:
    """An EDSR-baseline-sized model whose output is the image, nearest-neighbour upscaled, plus
    what its randomly initialised body adds (a few gray levels).

    The head copies the (mean-subtracted) RGB input into features 0-2, the upsampler copies
    them into every sub-pixel position and the tail reads them back, so the values that flow
    through every layer are image-sized, as in a trained model. That makes it a fair stand-in
    for trained weights where numeric precision and colour order are what is being tested.
    """
    torch.manual_seed(seed)
    model = EDSR(scale=scale, n_resblocks=n_resblocks, n_feats=n_feats).eval()

    def copy_rgb(conv: nn.Conv2d, repeats: int = 1) -> None:
        centre = conv.kernel_size[0] // 2
        for c in range(3):
            for j in range(repeats):
                o = c * repeats + j
                conv.weight[o].zero_()
                conv.weight[o, c, centre, centre] = 1.0
                conv.bias[o] = 0.0

    copy_rgb(model.head[0])
    for block in model.body[:-1]:  # keep the body's contribution to a few gray levels
        block.body[2].weight.mul_(0.1)
        block.body[2].bias.mul_(0.1)
    model.body[-1].weight.mul_(0.1)
    model.body[-1].bias.mul_(0.1)
    for layer in model.tail[0]:
        if isinstance(layer, nn.Conv2d):
            copy_rgb(layer, layer.out_channels // n_feats)
    copy_rgb(model.tail[-1])
    return model
