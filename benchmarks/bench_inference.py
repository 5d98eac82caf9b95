"""Inference speed against the CPU's own ceilings and against the official code, in one run.

EDSR-baseline x4 on a 128x128 input (65 GFLOP; random weights: speed does not depend on them).

Ceilings: one 3x3 64->64 convolution, NHWC, on the same 128x128 grid as the model's body:
fp32 and bf16 through oneDNN (``torch.ops.mkldnn._convolution_pointwise``, what our fused
path calls), int8 through oneDNN's quantized convolution (``torch.ao.nn.quantized.Conv2d``,
x86 engine, u8 activations x s8 per-channel weights). A whole model is judged against the
ceiling of its own precision.

Rows:
- official code: the EDSR-PyTorch checkout named by ``--official PATH`` or ``$OFFICIAL_EDSR_GIT``
  (its ``src/model/edsr.py``, fp32 NCHW, our weights loaded key for key); without one, a
  stand-in labelled as such: our plain model, NCHW, with the official ResBlock's
  ``res.mul(res_scale)`` emulated by a hook;
- ``prepare_model`` fp32, bf16 and auto (what each does: ``edsr.inference.precision``);
- ``prepare_model`` int8 when this checkout has it and the model has a calibration (or
  ``--calibrate DIR`` is given, default ../shared/datasets/train/T91 when present); else a note.

Every case runs interleaved, ``--rounds`` times (default 7), and the minimum wall time is
kept, so the ratios come from one run under the same conditions. Prints the CPU's flags and the
load average before and after: on a busy machine the numbers mean little.

Run by hand:  python benchmarks/bench_inference.py [--rounds 7] [--official PATH] [--json F]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edsr.errors import EdsrError  # noqa: E402
from edsr.inference.precision import cpu_flags, prepare_model  # noqa: E402
from edsr.models import build_model  # noqa: E402
from edsr.models.common import ResBlock  # noqa: E402

SIZE, SCALE, FEATS = 128, 4, 64
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")

Run = Callable[[], object]


def conv_flops(model: nn.Module, x: torch.Tensor, scale: int) -> int:
    """2 x multiply-adds of every convolution the model runs on ``x``."""
    total = 0

    def hook(mod: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x, scale)
    for h in handles:
        h.remove()
    return total


def ceiling_runs() -> dict[str, Run]:
    """One 3x3 64->64 conv, NHWC, SIZE x SIZE, per precision."""
    runs: dict[str, Run] = {}
    conv = nn.Conv2d(FEATS, FEATS, 3, padding=1)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        w = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        b = conv.bias.detach().to(dtype)
        x = torch.randn(1, FEATS, SIZE, SIZE, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        runs[name] = lambda x=x, w=w, b=b: torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [1, 1], [1, 1], [1, 1], 1, "none", [], ""
        )
    try:
        runs["int8"] = int8_conv(conv)
    except (RuntimeError, AttributeError, ImportError) as e:
        print(f"note: no int8 ceiling ({type(e).__name__}: {str(e).splitlines()[0]})")
    return runs


def int8_conv(conv: nn.Conv2d) -> Run:
    from torch.ao.nn import quantized as nnq

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, still oneDNN's path
        w = conv.weight.detach()
        scales = w.abs().amax(dim=(1, 2, 3)) / 127
        qw = torch.quantize_per_channel(
            w, scales, torch.zeros(FEATS, dtype=torch.long), 0, torch.qint8
        )
        q = nnq.Conv2d(FEATS, FEATS, 3, padding=1)
        q.set_weight_bias(qw, conv.bias.detach())
        q.scale, q.zero_point = 0.05, 64
        x = torch.rand(1, FEATS, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
        qx = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)
    return lambda: q(qx)


def official_model(path: str | None, weights: dict) -> tuple[str, nn.Module]:
    """The official EDSR at ``path`` (a checkout), else the labelled stand-in."""
    if path:
        src = Path(path) / "src"
        if not (src / "model" / "edsr.py").is_file():
            raise SystemExit(f"{path}: no src/model/edsr.py; give an EDSR-PyTorch checkout")
        sys.path.insert(0, str(src))
        module = importlib.import_module("model.edsr")
        args = SimpleNamespace(
            n_resblocks=16, n_feats=FEATS, scale=[SCALE], rgb_range=255, n_colors=3, res_scale=1
        )
        model = module.EDSR(args).eval()
        model.load_state_dict(weights)
        return "official code, fp32", _ignore_scale(model)
    model = build_model("edsr-baseline", scale=SCALE).eval()
    model.load_state_dict(weights)
    for block in model.modules():
        if isinstance(block, ResBlock):
            block.body.register_forward_hook(lambda m, a, out, s=block.res_scale: out.mul(s))
    return "official stand-in (ours, NCHW, res.mul), fp32", model


def _ignore_scale(model: nn.Module) -> nn.Module:
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
            return self.model(x)

    return Wrap()


def int8_run(plain: nn.Module, x: torch.Tensor, calibrate: str | None) -> tuple[Run | None, str]:
    """``prepare_model(precision="int8")`` where this checkout and the model allow it."""
    try:
        fast = prepare_model(plain, precision="int8")
        return (lambda: fast(x, SCALE)), "int8 (stored calibration)"
    except EdsrError as e:
        first = str(e)
    except Exception as e:  # noqa: BLE001 - any failure of a path under construction: a note
        return None, f"int8 skipped: prepare_model failed ({type(e).__name__}: {e})"
    if not calibrate or not Path(calibrate).is_dir():
        return None, f"int8 skipped: {first}"
    try:
        from edsr.inference.quantize import int8_engine

        t = time.perf_counter()
        engine = int8_engine(plain, calibrate_on=calibrate)
        engine(x, SCALE)
        note = f"int8 calibrated on {calibrate} in {time.perf_counter() - t:.0f} s"
        return (lambda: engine(x, SCALE)), note
    except Exception as e:  # noqa: BLE001
        return None, f"int8 skipped: calibration failed ({type(e).__name__}: {e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--official", default=os.environ.get("OFFICIAL_EDSR_GIT"))
    shared_t91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
    ap.add_argument("--calibrate", default=str(shared_t91) if shared_t91.is_dir() else None)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    flags = cpu_flags()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, "
        f"flags: {' '.join(f for f in FLAGS_SHOWN if f in flags) or 'none of ' + str(FLAGS_SHOWN)}"
    )
    load_before = os.getloadavg()
    x = torch.rand(1, 3, SIZE, SIZE) * 255
    plain = build_model("edsr-baseline", scale=SCALE).eval()
    flops = conv_flops(plain, x, SCALE)
    official_name, official = official_model(args.official, plain.state_dict())

    ceilings = ceiling_runs()
    ceiling_ops = 2 * FEATS * FEATS * 9 * SIZE * SIZE
    auto = prepare_model(plain, precision="auto")
    models: dict[str, tuple[str, Run]] = {official_name: ("fp32", lambda: official(x, SCALE))}
    for p in ("fp32", "bf16"):
        m = prepare_model(plain, precision=p)
        models[f"prepare_model {p}" + (" (auto)" if auto.precision == p else "")] = (
            p,
            lambda m=m: m(x, SCALE),
        )
    run8, note8 = int8_run(plain, x, args.calibrate)
    if run8 is not None:
        models["prepare_model int8" + (" (auto)" if auto.precision == "int8" else "")] = (
            "int8",
            run8,
        )
    print(note8)

    cases: dict[str, Run] = {f"ceiling {p}": r for p, r in ceilings.items()}
    cases.update({name: run for name, (_, run) in models.items()})
    best = dict.fromkeys(cases, float("inf"))
    with torch.no_grad():
        for run in cases.values():  # warm-up: oneDNN primitive creation, weight reorders
            run()
        for _ in range(args.rounds):
            for name, run in cases.items():
                t = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - t)
    load_after = os.getloadavg()

    rate = {p: ceiling_ops / best[f"ceiling {p}"] / 1e9 for p in ceilings}
    official_s = best[official_name]
    print(
        f"\nEDSR-baseline x{SCALE}, {SIZE}x{SIZE} input, {flops / 1e9:.1f} GFLOP; "
        f"min of {args.rounds}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print("\n| what | GFLOP/s (int8: GOP/s) | share of its ceiling |")
    print("|---|---|---|")
    rows = []
    for p, r in rate.items():
        what = {
            "fp32": "ceiling: one 3x3 64->64 conv, fp32 NHWC (oneDNN)",
            "bf16": "ceiling: same, bf16 NHWC (oneDNN)",
            "int8": "ceiling: same, int8 (oneDNN quantized conv, x86 engine)",
        }[p]
        print(f"| {what} | {r:.0f} | - |")
        rows.append({"what": what, "gflops": r})
    for name, (p, _) in models.items():
        r = flops / best[name] / 1e9
        share = f"{100 * r / rate[p]:.0f}% of {p}" if p in rate else "-"
        ratio = "" if name == official_name else f" ({official_s / best[name]:.2f}x official)"
        print(f"| {name} | {r:.0f} | {share}{ratio} |")
        rows.append(
            {
                "what": name,
                "gflops": r,
                "share": r / rate[p] if p in rate else None,
                "vs_official": official_s / best[name],
                "seconds": best[name],
            }
        )
    if args.json:
        out = {"flags": sorted(flags & set(FLAGS_SHOWN)), "load": [load_before, load_after]}
        Path(args.json).write_text(json.dumps({**out, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
