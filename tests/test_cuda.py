"""The GPU paths: low precision, tiling, ensemble, AMP training, DDP on NCCL (``pytest -m cuda``).

Run on a machine with a CUDA device by benchmarks/gpu_check.sh; everywhere else every test here
skips, with the reason.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA
from edsr.inference import ensemble_forward, sr_forward, upscale_tensor
from edsr.inference.precision import prepare_model
from edsr.training.config import TrainConfig
from edsr.training.loop import train
from local_server import free_port
from sr_helpers import pass_through_model, small_edsr
from test_precision import quantized_diff_percentile, set5

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()


def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")(test))


@pytest.mark.skipif(HAS_CUDA, reason="with a CUDA device the script runs the whole check")
def test_gpu_check_skips_cleanly_without_cuda():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped: no CUDA device" in proc.stdout
    assert "== pytest" not in proc.stdout


@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_matches_fp32_on_gpu(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = pass_through_model(2).cuda()
    fp32 = prepare_model(model, precision="fp32")
    low = prepare_model(model, precision=precision)
    assert low.precision == precision and not low.fused  # the oneDNN kernels are CPU-only
    images = [x.cuda() for x in set5(crop=96)]
    p999, worst = quantized_diff_percentile(_cpu_out(fp32), _cpu_out(low), images, 2)
    assert p999 <= 1.0
    assert worst <= 2.0


def _cpu_out(model):
    return lambda x, scale: model(x, scale).cpu()


@cuda
def test_tiling_on_gpu_equals_the_whole_image():
    model = small_edsr(2, std=0.05).cuda()
    x = torch.rand(1, 3, 61, 47, device="cuda") * 255
    with torch.no_grad():
        whole = sr_forward(model, x, 2)
    tiled = upscale_tensor(model, x, 2, tile=24)
    assert tiled.device.type == "cuda"
    assert (tiled - whole).abs().max() <= 1e-3


@cuda
def test_ensemble_on_gpu_matches_the_cpu():
    model = small_edsr(2, std=0.05)
    x = torch.rand(1, 3, 20, 16) * 255
    with torch.no_grad():
        cpu = ensemble_forward(model, x, 2)
        gpu = ensemble_forward(copy.deepcopy(model).cuda(), x.cuda(), 2).cpu()
    assert (gpu - cpu).abs().max() <= 1e-2


@cuda
def test_amp_training_with_the_gradient_scaler(tmp_path):
    """A few fp16 steps (autocast + GradScaler) and bf16 steps train to finite weights."""
    for precision in ("fp16", "bf16"):
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        cfg = TrainConfig(
            preset="edsr-baseline",
            scales=[2],
            train=[str(DATA / "Set5")],
            out=str(tmp_path / precision),
            iters=6,
            batch_size=4,
            patch_size=16,
            val_every=1000,
            checkpoint_every=3,
            log_every=1,
            precision=precision,
            cache_dir=str(tmp_path / "cache"),
        )
        path = train(cfg, progress=False)
        weights = load_file(path)
        assert weights and all(torch.isfinite(w).all() for w in weights.values())


@cuda
def test_ddp_one_process_on_nccl_matches_plain_training():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        plain = small_edsr(2, std=0.05).cuda().train()
        ddp_inner = copy.deepcopy(plain)
        ddp = DistributedDataParallel(ddp_inner, device_ids=[torch.cuda.current_device()])
        opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (plain, ddp_inner)]
        for step in range(3):
            gen = torch.Generator(device="cuda").manual_seed(step)
            lr = torch.rand(4, 3, 12, 12, device="cuda", generator=gen) * 255
            hr = torch.rand(4, 3, 24, 24, device="cuda", generator=gen) * 255
            for model, opt in zip((plain, ddp), opts, strict=True):
                opt.zero_grad()
                (model(lr, 2) - hr).abs().mean().backward()
                opt.step()
        worst = max(
            (a - b).abs().max().item()
            for a, b in zip(plain.parameters(), ddp_inner.parameters(), strict=True)
        )
        assert worst <= 1e-5
    finally:
        dist.destroy_process_group()
