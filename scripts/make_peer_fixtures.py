"""Write tests/data/peers/: small models saved by the peers' own code, each with the picture
the peer's own pipeline makes from tests/data/peers/input.png beside it.

Run once, in a venv of its own (never the project's), then commit what it wrote:

    python3 -m venv /tmp/venv-peers
    /tmp/venv-peers/bin/pip install torch==2.13.0 super-image==0.2.0
    /tmp/venv-peers/bin/pip uninstall -y torchvision
    /tmp/venv-peers/bin/pip download --no-deps -d /tmp/bsr basicsr==1.4.2
    tar xzf /tmp/bsr/basicsr-1.4.2.tar.gz -C /tmp/bsr
    /tmp/venv-peers/bin/python scripts/make_peer_fixtures.py --basicsr /tmp/bsr/basicsr-1.4.2

super-image imports torchvision only for its training data augmentation, and BasicSR's EDSR
only through helpers this script never calls, so a stub ``torchvision`` package (written to a
temporary folder) stands in for it. BasicSR's installer builds extensions and pulls in its
whole training stack; the script loads its EDSR architecture and ``tensor2img`` straight from
the unpacked source instead, which runs the same code.

The models are the peers' own classes, small (a few blocks and features) so the files stay a
few KB. super-image's MDSR fixes its size in ``__init__`` (32 blocks of 64 features); the
script rebuilds its parts with the peer's own building blocks at the small size, the way that
``__init__`` does. Each model is trained for a few hundred steps on Set5 crops, so that its
output is a picture, not noise: a conversion that is off by a scale or a mean shows.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "peers"
SET5 = REPO / "tests" / "data" / "Set5" / "HR"
STEPS = 200
FEATS, BLOCKS = 8, 2


def stub_torchvision() -> None:
    root = Path(tempfile.mkdtemp(prefix="tv-stub-"))
    pkg = root / "torchvision"
    (pkg / "transforms").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '0.0.0'  # stub: never used\n")
    (pkg / "transforms" / "__init__.py").write_text("")
    (pkg / "transforms" / "transforms.py").write_text("")
    (pkg / "utils.py").write_text("def make_grid(*a, **k):\n    raise NotImplementedError\n")
    sys.path.insert(0, str(root))


def training_pairs(scale: int, n: int = 64, lr_size: int = 16) -> tuple[torch.Tensor, ...]:
    """(LR, HR) crops in 0..1, LR made by bicubic downscaling of Set5 crops."""
    rng = np.random.default_rng(scale)
    lrs, hrs = [], []
    images = [Image.open(SET5 / f"{name}.png").convert("RGB") for name in ("baby", "bird")]
    hr_size = lr_size * scale
    for i in range(n):
        img = images[i % len(images)]
        x = int(rng.integers(0, img.width - hr_size))
        y = int(rng.integers(0, img.height - hr_size))
        hr = img.crop((x, y, x + hr_size, y + hr_size))
        lr = hr.resize((lr_size, lr_size), Image.Resampling.BICUBIC)
        hrs.append(np.asarray(hr, dtype=np.float32) / 255)
        lrs.append(np.asarray(lr, dtype=np.float32) / 255)
    as_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return as_t(lrs), as_t(hrs)


def train(model: nn.Module, scale: int, *, img_range: float = 1.0) -> nn.Module:
    """A few hundred L1 steps, so the output is a picture; ``img_range`` is the model's."""
    torch.manual_seed(scale)
    lr, hr = training_pairs(scale)
    lr, hr = lr * img_range, hr * img_range
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(STEPS):
        idx = torch.randint(0, len(lr), (16,))
        loss = (model(lr[idx]) - hr[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"  trained x{scale}: L1 {loss.item() / img_range * 255:.2f} gray levels")
    return model.eval()


def super_image(inp: Image.Image) -> None:
    stub_torchvision()
    from super_image import EdsrConfig, EdsrModel, ImageLoader, MdsrConfig, MdsrModel
    from super_image.models.mdsr import modeling_mdsr as m

    def run(model: nn.Module, out: Path) -> None:
        # The peer's own pipeline, as its README shows it.
        with torch.no_grad():
            preds = model.eval()(ImageLoader.load_image(inp))
        ImageLoader.save_image(preds, str(out))

    folder = OUT / "superimage-edsr"
    for scale in (2, 3):
        torch.manual_seed(scale)
        config = EdsrConfig(scale=scale, n_resblocks=BLOCKS, n_feats=FEATS)
        train(EdsrModel(config), scale).save_pretrained(str(folder))
    for scale in (2, 3):
        run(
            EdsrModel.from_pretrained(str(folder), scale=scale),
            OUT / f"superimage-edsr_x{scale}.png",
        )

    def small_mdsr(
        scale: int, *, bam: bool = False, feats: int = FEATS, blocks: int = BLOCKS
    ) -> nn.Module:
        torch.manual_seed(scale)
        model = MdsrModel(MdsrConfig(scale=scale, bam=bam))
        act = nn.ReLU(True)

        def block() -> nn.Module:
            return m.ResBlock(feats, bam, bias=True, act=act, res_scale=0.1)

        model.head = nn.Sequential(m.conv(3, feats, 3))
        model.pre_process = nn.ModuleDict({str(scale): nn.Sequential(block(), block())})
        model.body = nn.Sequential(*[block() for _ in range(blocks)])
        model.body.add_module(str(blocks), m.conv(feats, feats, 3))
        model.upsample = nn.ModuleDict({str(scale): m.Upsampler(scale, feats, act=False)})
        model.tail = nn.Sequential(m.conv(feats, 3, 3))
        return model

    folder = OUT / "superimage-mdsr"
    for scale in (2, 4):
        train(small_mdsr(scale), scale).save_pretrained(str(folder))
        # from_pretrained would build the full-size MDSR; the small one reads its file back
        # through the peer's own load_state_dict instead.
        model = small_mdsr(scale)
        model.load_state_dict(torch.load(folder / f"pytorch_model_{scale}x.pt"))
        run(model, OUT / f"superimage-mdsr_x{scale}.png")
    # BAM attention (eugenesiow/mdsr-bam): an architecture edsr does not have, to be refused.
    # 16 features: its attention divides them by 16.
    small_mdsr(2, bam=True, feats=16, blocks=1).save_pretrained(str(OUT / "superimage-mdsr-bam"))


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def basicsr(inp: Image.Image, src: Path) -> None:
    stub_torchvision()
    for name in ("basicsr", "basicsr.archs", "basicsr.ops", "basicsr.utils"):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = []  # type: ignore[attr-defined]
    sys.modules["basicsr.utils"].get_root_logger = logging.getLogger  # type: ignore[attr-defined]
    dcn = sys.modules["basicsr.ops.dcn"] = types.ModuleType("basicsr.ops.dcn")
    dcn.ModulatedDeformConvPack, dcn.modulated_deform_conv = nn.Module, None  # type: ignore[attr-defined]
    _load("basicsr.utils.registry", src / "basicsr/utils/registry.py")
    _load("basicsr.archs.arch_util", src / "basicsr/archs/arch_util.py")
    arch = _load("basicsr.archs.edsr_arch", src / "basicsr/archs/edsr_arch.py")
    img_util = _load("basicsr.utils.img_util", src / "basicsr/utils/img_util.py")

    torch.manual_seed(2)
    model = arch.EDSR(3, 3, num_feat=FEATS, num_block=BLOCKS, upscale=2, res_scale=1)
    train(model, 2)
    x = torch.from_numpy(np.asarray(inp, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x)
    # BasicSR's own conversion (clamp, x255, round; RGB in, RGB out with rgb2bgr=False).
    img = img_util.tensor2img(y, rgb2bgr=False)
    Image.fromarray(img).save(OUT / "basicsr-edsr_x2.png")

    sd = model.state_dict()
    folder = OUT / "basicsr-edsr"
    folder.mkdir(exist_ok=True)
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    # What BasicSR and the GAN trainers built on it write (the wrappers are by hand: the
    # trainers need datasets and GPUs this script does not have).
    files = {
        "params_ema.pth": {"params": zeros, "params_ema": sd},
        "params-ema.pth": {"params-ema": sd},  # BasicSR before 1.0
        "netG-prefix.pth": {f"netG.{k}": v for k, v in sd.items()},
        "net_g-prefix.pth": {"params": {f"net_g.{k}": v for k, v in sd.items()}},
        "generator-prefix.pth": {f"generator.{k}": v for k, v in sd.items()},
        "generator-entry.pth": {"generator": sd, "epoch": 40, "iter": 120000},
    }
    for name, obj in files.items():
        torch.save(obj, folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--basicsr", type=Path, help="unpacked basicsr-1.4.2 source folder")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # An odd-sized real crop (13x11) of the full 0..255 range: borders and clamping show.
    inp = Image.open(SET5 / "bird.png").convert("RGB").crop((186, 54, 199, 65))
    inp.save(OUT / "input.png")
    super_image(inp)
    if args.basicsr:
        basicsr(inp, args.basicsr)
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(OUT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
