#!/usr/bin/env bash
# The GPU check (issue 14), one script, under 8 minutes on an H200:
#   1. pytest -m cuda (tests/test_cuda.py): fp16/bf16 vs fp32, tiling, ensemble, AMP training
#      with the gradient scaler, DDP with one process on NCCL;
#   2. throughput: EDSR-baseline x4 960x540 -> 3840x2160 frames/s in fp16 and bf16 (goal >= 120
#      on an H200-class GPU: 2.06 TFLOP a frame), EDSR x4 frames/s, EDSR-baseline x2 training
#      iterations/s (batch 16, 48x48 LR patches, bf16 autocast, synthetic data: the model's
#      speed, not the data loader's).
# Without a CUDA device it says so and exits 0.
# Usage: benchmarks/gpu_check.sh   (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

if ! cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))'); then
    echo "gpu_check: $PY cannot import torch; activate the project's environment" >&2
    exit 1
fi
if [ "$cuda" != 1 ]; then
    echo "gpu_check: skipped: no CUDA device (torch.cuda.is_available() is False)"
    exit 0
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || true

echo "== pytest -m cuda"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs

echo "== throughput"
timeout 240 "$PY" - <<'PYEOF'
import time

import torch

from edsr.inference.precision import prepare_model
from edsr.models import build_model


def per_second(fn, seconds=5.0, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


print(torch.cuda.get_device_name(), "torch", torch.__version__)
frame = torch.rand(1, 3, 540, 960, device="cuda") * 255
with torch.no_grad():
    for preset in ("edsr-baseline", "edsr"):
        model = build_model(preset, scale=4).cuda().eval()
        for precision in ("fp16", "bf16"):
            fast = prepare_model(model, precision=precision)
            fps = per_second(lambda: fast(frame, 4))
            out = tuple(fast(frame, 4).shape[-2:])
            print(f"{preset} x4 {precision} 960x540 -> {out[1]}x{out[0]}: {fps:.1f} frames/s")
        del model, fast
        torch.cuda.empty_cache()

model = build_model("edsr-baseline", scale=2).cuda().train()
model = model.to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
lr = torch.rand(16, 3, 48, 48, device="cuda") * 255
hr = torch.rand(16, 3, 96, 96, device="cuda") * 255


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = (model(lr, 2) - hr).abs().mean()
    loss.backward()
    opt.step()


print(f"edsr-baseline x2 training, batch 16, 48x48, bf16: {per_second(step):.1f} it/s")
PYEOF
echo "gpu_check: done"
