"""The README's Python example against the CLI's engine, in one run (issue 22).

256x256 crop of Set5 ``baby``, x4, the bundled model, no option given anywhere:

- README: ``model = edsr.load_model(); edsr.upscale(img, model)`` (the plain module; its
  prepared copy is made on the first call and reused);
- CLI engine: what ``edsr upscale`` runs, ``prepare_model`` at ``defaults.PRECISION`` through the
  same tiled engine;
- server (with the 'serve' extra): ``POST /v1/upscale`` with the image only, in-process
  (FastAPI's TestClient: PNG decode and encode included);
- before: the plain fp32 module through the engine, what the README example ran before the
  doors shared one compute path.

Every case runs interleaved, in turn forwards and backwards, ``--rounds`` times (default 5),
and the minimum wall time is kept; the first call of the README example (preparation
included) is timed once, apart. Exits 1 when the README example is over 1.10x the CLI engine
or their pixels differ by more than one gray level.

Run by hand:  python benchmarks/bench_doors.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import edsr  # noqa: E402
from edsr import defaults  # noqa: E402
from edsr.inference import describe, upscale_tensor  # noqa: E402
from edsr.inference.precision import chosen_precision, prepare_model  # noqa: E402

SIZE, SCALE, LIMIT = 256, 4, 1.10


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def server_case(img: Image.Image) -> Callable[[], np.ndarray] | None:
    try:
        from fastapi.testclient import TestClient

        from edsr.serve import ServeConfig, create_app, load_models
    except ImportError:
        return None
    client = TestClient(create_app(load_models([], progress=False), ServeConfig()))
    client.__enter__()  # the app's lifespan: its queue and temp folder, for the whole run
    buf = io.BytesIO()
    img.save(buf, "PNG")
    body = buf.getvalue()

    def post() -> np.ndarray:
        r = client.post("/v1/upscale", files={"image": ("in.png", body, "image/png")})
        r.raise_for_status()
        assert r.headers["x-scale"] == str(SCALE), r.headers["x-scale"]
        return np.asarray(Image.open(io.BytesIO(r.content)))

    return post


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    src = Image.open(ROOT / "tests" / "data" / "Set5" / "HR" / "baby.png").convert("RGB")
    img = src.crop((128, 128, 128 + SIZE, 128 + SIZE))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")

    # the README's two lines, first call timed apart: it prepares the model's fast copy
    t_load, model = timed(edsr.load_model)
    t_first, _ = timed(lambda: edsr.upscale(img, model))
    engine = prepare_model(edsr.load_model(), precision=defaults.PRECISION)  # `edsr upscale`
    info = describe(model)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float()
    cases: dict[str, Callable[[], object]] = {
        "README example": lambda: np.asarray(edsr.upscale(img, model)),
        "CLI engine": lambda: np.asarray(edsr.upscale(img, engine)),
        "before: plain fp32 module": lambda: upscale_tensor(model, x),
    }
    post = server_case(img)
    if post is not None:
        cases["server, no options"] = post
    print(
        f"{SIZE}x{SIZE} x{SCALE}, model {edsr.weights.default_model()} "
        f"({info.parameters:,} parameters), compute path "
        f"{chosen_precision(model, 'auto')} (auto); load {t_load:.2f} s, first README call "
        f"{t_first:.2f} s (preparation included)"
    )
    best = dict.fromkeys(cases, float("inf"))
    outs: dict[str, object] = {}
    for r in range(args.rounds):
        order = list(cases.items())
        for name, fn in order if r % 2 == 0 else reversed(order):  # no case always first
            t, outs[name] = timed(fn)
            best[name] = min(best[name], t)
    base = best["CLI engine"]
    for name, t in best.items():
        print(f"{name:<28} {t:7.3f} s  {t / base:5.2f}x the CLI engine")
    ratio = best["README example"] / base
    readme, cli = (np.asarray(outs[k]).astype(int) for k in ("README example", "CLI engine"))
    diff = int(np.abs(readme - cli).max())
    print(f"README / CLI engine: {ratio:.3f} (must be <= {LIMIT}); pixels differ by {diff} at most")
    if "server, no options" in outs:
        server = np.asarray(outs["server, no options"]).astype(int)
        print(f"server / CLI engine pixels differ by {int(np.abs(server - cli).max())} at most")
    print(f"load after: {os.getloadavg()}")
    return 0 if ratio <= LIMIT and diff <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
