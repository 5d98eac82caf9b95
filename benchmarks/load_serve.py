"""Load test of `edsr serve` on 127.0.0.1: concurrent uploads, some of them bad.

Starts the real command (`python -m edsr serve`) in its own process with its own temporary
directory, sends a fixed number of requests from a pool of threads, and checks that every
request gets the right answer (200 with an image of the right size, or the expected 4xx with a
JSON error) or a 503 with Retry-After. Meanwhile it samples the server's resident memory and
times /healthz. At the end the server must still be up, and after it stops no file may be left.

With --slow-clients N, N more clients each send half an upload and then wait: they must cost
sockets, not workers (the requests above are still served), and each must be answered 408 and
dropped once --upload-timeout has passed.

Bounded in count (--requests, at most 2000) and time (--time-limit); only loopback is used.

    python benchmarks/load_serve.py                       # edsr-baseline x2 (random weights)
    python benchmarks/load_serve.py --requests 200 --concurrency 16 --json load.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

MAX_REQUESTS = 2000


@dataclass
class Case:
    kind: str
    body: bytes
    content_type: str
    expect: int  # the right answer; 503 is always allowed as well
    size: tuple[int, int] | None = None  # for 200: the output size


def multipart(fields: dict[str, str], image: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        )
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    out.write(image)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def gif(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    first, *rest = (Image.fromarray(f) for f in frames)
    first.save(buf, "GIF", save_all=True, append_images=rest)
    return buf.getvalue()


def make_cases(n: int, size: int, max_pixels: int, upload_mb: float, seed: int) -> list[Case]:
    """A fixed, shuffled mix: 2/3 good requests (PNG, JPEG and WebP out, some self-ensemble, a
    GIF in), 1/3 bad ones of six kinds."""
    rng = np.random.default_rng(seed)
    big_side = int(max_pixels**0.5) + 8  # just over the pixel limit, a small file
    too_big = b"\x89PNG" + bytes(int(upload_mb * 2**20) + 1024)
    kinds = ["good"] * 7 + ["good-jpeg", "good-webp", "good-ensemble", "good-bicubic", "good-gif"]
    kinds += ["corrupt", "not-image", "too-many-pixels", "too-large", "bad-scale", "unknown-model"]
    cases = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        w, h = (
            size + int(rng.integers(0, size // 2 + 1)),
            size + int(rng.integers(0, size // 2 + 1)),
        )
        image = png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        fields = {"scale": "2"}
        expect, out = 200, (2 * w, 2 * h)
        if kind == "good-jpeg":
            fields["format"] = "jpeg"
        elif kind == "good-webp":
            fields["format"] = "webp"
        elif kind == "good-ensemble":
            fields["ensemble"] = "true"
        elif kind == "good-bicubic":
            fields["model"] = "bicubic"
        elif kind == "good-gif":  # the first frame of an animation, as the CLI takes it
            image = gif([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2)])
        elif kind == "corrupt":
            image, expect, out = image[: len(image) // 2], 422, None
        elif kind == "not-image":
            image, expect, out = b"just some text, not an image\n" * 20, 415, None
        elif kind == "too-many-pixels":
            image, expect, out = png(np.zeros((big_side, big_side, 3), np.uint8)), 422, None
        elif kind == "too-large":
            image, expect, out = too_big, 413, None
        elif kind == "bad-scale":
            fields["scale"], expect, out = "5", 422, None
        elif kind == "unknown-model":
            fields["model"], expect, out = "no-such-model", 422, None
        body, ctype = multipart(fields, image, f"img{i}.png")
        cases.append(Case(kind, body, ctype, expect, out))
    random.Random(seed).shuffle(cases)
    return cases


def request(host: str, port: int, method: str, path: str, body: bytes | None = None,
            ctype: str | None = None, timeout: float = 120) -> tuple[int, dict, bytes]:  # fmt: skip
    conn = HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if ctype:
            headers["Content-Type"] = ctype
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def check(case: Case, status: int, headers: dict, data: bytes) -> str | None:
    """None when the answer is right (or a proper 503), else what is wrong."""
    if status == 503:
        if "retry-after" not in headers:
            return "503 without Retry-After"
        return None
    if status != case.expect:
        return f"{case.kind}: expected {case.expect}, got {status}: {data[:200]!r}"
    if status == 200:
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except Exception as e:  # noqa: BLE001 - any decode failure is a wrong answer
            return f"{case.kind}: 200 but not an image ({e})"
        if im.size != case.size:
            return f"{case.kind}: expected {case.size}, got {im.size}"
        return None
    try:
        err = json.loads(data)["error"]
    except Exception:  # noqa: BLE001
        return f"{case.kind}: {status} without a JSON error: {data[:200]!r}"
    return None if isinstance(err, str) and err else f"{case.kind}: empty error"


def half_sent(host: str, port: int, body: bytes, ctype: str) -> socket.socket:
    """A client that sends its headers and half its body, then waits."""
    s = socket.create_connection((host, port), timeout=10)
    head = (
        f"POST /v1/upscale HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body[: len(body) // 2])
    return s


def dropped(s: socket.socket, t0: float, timeout: float) -> tuple[int | None, float]:
    """The status the server answered a half-sent upload with, and when (since ``t0``) it
    closed the connection; None when it said nothing before ``timeout``."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - t0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def build_model(path: Path, arch: str) -> None:
    import torch

    from edsr import build_model as build
    from edsr import save_model

    torch.manual_seed(0)
    save_model(build(arch, scale=2), path)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", help="checkpoint to serve (default: edsr-baseline x2, random weights)"
    )
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument(
        "--size", type=int, default=48, help="input side, pixels (each gets up to +50%%)"
    )
    ap.add_argument("--max-pixels", type=int, default=16384)
    ap.add_argument("--max-upload-mb", type=float, default=1.0)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds for the whole run")
    ap.add_argument("--retries", type=int, default=2, help="times a client retries after a 503")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--slow-clients", type=int, default=0, help="clients that send half an upload and wait"
    )
    ap.add_argument("--upload-timeout", type=float, default=5.0, help="the server's, seconds")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        ap.error(f"--requests must be 1 to {MAX_REQUESTS}")

    work = Path(tempfile.mkdtemp(prefix="edsr-load-"))
    server_tmp = work / "server-tmp"
    server_tmp.mkdir()
    model = args.model
    if model is None:
        model = str(work / "edsr-baseline-x2-random.safetensors")
        build_model(Path(model), "edsr-baseline")
    cases = make_cases(args.requests, args.size, args.max_pixels, args.max_upload_mb, args.seed)

    cmd = [
        sys.executable, "-m", "edsr", "serve", "--model", model, "--port", "0",
        "--workers", str(args.workers), "--queue", str(args.queue),
        "--max-pixels", str(args.max_pixels), "--max-upload-mb", str(args.max_upload_mb),
        "--timeout", "60", "--device", "cpu", "--tmp-dir", str(server_tmp), "--quiet",
        "--upload-timeout", str(args.upload_timeout),
        "--max-uploads", str(args.slow_clients + args.concurrency + 4),
        # every simulated client comes from 127.0.0.1: one address, so no per-client share
        "--max-uploads-per-client", str(args.slow_clients + args.concurrency + 4),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start_deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < start_deadline:
        line = proc.stdout.readline()
        if "http://" in line or not line:
            break
    if "http://" not in line:
        proc.kill()
        print("server did not start:", line, proc.stderr.read(), file=sys.stderr)
        return 2
    url = urlsplit(line.split()[2])
    host, port = url.hostname, url.port
    # keep the pipes drained so the server never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True).start()

    request(host, port, "GET", "/healthz")
    idle_rss = rss_bytes(proc.pid)
    peak = [idle_rss]
    health_ms: list[float] = []
    stop = threading.Event()

    samples: list[tuple[float, int]] = []
    finished: list[float] = []  # completion time of each request

    def sample() -> None:
        while not stop.is_set():
            try:
                rss = rss_bytes(proc.pid)
            except OSError:
                return
            peak[0] = max(peak[0], rss)
            samples.append((time.monotonic(), rss))
            time.sleep(0.02)

    def probe_health() -> None:
        while not stop.wait(0.25):
            t = time.perf_counter()
            try:
                status, _, _ = request(host, port, "GET", "/healthz", timeout=10)
                if status == 200:
                    health_ms.append((time.perf_counter() - t) * 1000)
            except OSError:
                health_ms.append(float("inf"))

    samplers = [
        threading.Thread(target=sample, daemon=True),
        threading.Thread(target=probe_health, daemon=True),
    ]
    for t in samplers:
        t.start()

    run_deadline = time.monotonic() + args.time_limit
    results: list[dict] = []

    def one(case: Case) -> dict:
        if time.monotonic() > run_deadline:
            return {"kind": case.kind, "status": None, "problem": "not sent: time limit", "ms": 0.0}
        t = time.perf_counter()
        busy = 0
        while True:
            try:
                status, headers, data = request(
                    host, port, "POST", "/v1/upscale", case.body, case.content_type
                )
                problem = check(case, status, headers, data)
            except OSError as e:
                status, problem = None, f"{case.kind}: connection error {e!r}"
            if status != 503 or problem or busy >= args.retries:
                break
            # a polite client: wait as told (capped, so the run stays short), then try again
            busy += 1
            time.sleep(min(1.0, float(headers.get("retry-after", 1))) * random.uniform(0.5, 1.0))
        finished.append(time.monotonic())
        return {
            "kind": case.kind,
            "status": status,
            "problem": problem,
            "busy": busy + (status == 503),
            "ms": (time.perf_counter() - t) * 1000,
        }

    slow_body, slow_ctype = multipart({"scale": "2"}, png(np.zeros((16, 16, 3), np.uint8)), "s.png")
    slow_t0 = time.monotonic()
    slow = [half_sent(host, port, slow_body, slow_ctype) for _ in range(args.slow_clients)]
    with ThreadPoolExecutor(max(1, args.slow_clients)) as slow_pool:
        slow_answers = [
            slow_pool.submit(dropped, s, slow_t0, args.upload_timeout + 30) for s in slow
        ]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, cases))
        wall = time.perf_counter() - t0
        slow_results = [f.result() for f in slow_answers]
    stop.set()
    for t in samplers:
        t.join(5)

    alive = proc.poll() is None
    try:
        alive = alive and request(host, port, "GET", "/healthz", timeout=10)[0] == 200
    except OSError:
        alive = False
    final_rss = rss_bytes(proc.pid) if proc.poll() is None else 0
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    left = sum(1 for _ in server_tmp.rglob("*"))

    ok = sum(1 for r in results if r["status"] == 200 and r["problem"] is None)
    busy = sum(1 for r in results if r["status"] == 503 and r["problem"] is None)
    expected_errors = sum(
        1 for r in results if r["problem"] is None and r["status"] not in (200, 503)
    )
    problems = [r["problem"] for r in results if r["problem"] is not None]
    for status, after in slow_results:
        if status != 408 or not args.upload_timeout <= after < args.upload_timeout + 10:
            problems.append(f"half-sent upload: answered {status} after {after:.1f} s")
    lat = [r["ms"] for r in results if r["status"] is not None]
    lat_ok = [r["ms"] for r in results if r["status"] == 200]
    by_status: dict[str, int] = {}
    for r in results:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
    # Bounded memory: the second half of the run must not need more than the first did.
    t_half = sorted(finished)[len(finished) // 2] if finished else 0.0
    first = [r for t, r in samples if t <= t_half] or [0]
    second = [r for t, r in samples if t > t_half] or [0]
    figures = {
        "requests": len(results),
        "concurrency": args.concurrency,
        "workers": args.workers,
        "queue": args.queue,
        "ok": ok,
        "expected_errors": expected_errors,
        "successes": ok + expected_errors,
        "busy_503": busy,
        "retries": args.retries,
        "busy_503_answers": sum(r.get("busy", 0) for r in results),
        "errors": len(problems),
        "by_status": dict(sorted(by_status.items())),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p95_ms": round(percentile(lat, 95), 1) if lat else None,
        "p50_ok_ms": round(statistics.median(lat_ok), 1) if lat_ok else None,
        "p95_ok_ms": round(percentile(lat_ok, 95), 1) if lat_ok else None,
        "healthz_max_ms": round(max(health_ms), 1) if health_ms else None,
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "peak_rss_mb": round(peak[0] / 2**20, 1),
        "peak_rss_first_half_mb": round(max(first) / 2**20, 1),
        "peak_rss_second_half_mb": round(max(second) / 2**20, 1),
        "final_rss_mb": round(final_rss / 2**20, 1),
        "wall_s": round(wall, 2),
        "slow_clients": args.slow_clients,
        "slow_clients_408": sum(1 for status, _ in slow_results if status == 408),
        "slow_client_dropped_after_s": (
            round(max(after for _, after in slow_results), 2) if slow_results else None
        ),
        "server_alive": alive,
        "exit_code": proc.returncode,
        "temp_files_left": left,
        "problems": problems[:20],
        "input_side": f"{args.size}-{args.size + args.size // 2}",
        "model": Path(model).name,
    }
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        if k != "problems":
            print(f"{k:<{width}}  {v}")
    for p in problems[:20]:
        print("PROBLEM:", p)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if not alive:
        print("".join(stderr_lines[-20:]), file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems and alive and left == 0 and proc.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
