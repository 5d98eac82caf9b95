"""`edsr serve` on the command line: its one-line errors, its default model, and the load test
(benchmarks/load_serve.py) run against the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="needs the 'serve' extra (fastapi)")
pytest.importorskip("uvicorn", reason="needs the 'serve' extra (uvicorn)")
pytest.importorskip("python_multipart", reason="needs the 'serve' extra (python-multipart)")

from edsr import save_model  # noqa: E402
from edsr.cli import main  # noqa: E402
from edsr.models import EDSR  # noqa: E402
from edsr.weights import registry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve_cli_models") / "tiny-x2.safetensors"
    torch.manual_seed(0)
    save_model(EDSR(scale=2, n_resblocks=2, n_feats=16), path)
    return path


def test_cli_without_model_or_bundled_default_says_pass_model(capsys, monkeypatch):
    monkeypatch.setattr(
        registry, "REGISTRY", {k: v for k, v in registry.REGISTRY.items() if not v.bundled}
    )
    monkeypatch.setattr(registry, "DEFAULT", None, raising=False)
    assert main(["serve"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--model" in err and "no bundled model" in err


def test_default_model_is_the_bundled_one(monkeypatch):
    from dataclasses import replace

    from edsr.serve import default_model_spec

    entry = replace(
        registry.REGISTRY["edsr-baseline-x2"], name="bundled-x2", bundled="b.safetensors"
    )
    monkeypatch.setattr(
        registry, "REGISTRY", {k: v for k, v in registry.REGISTRY.items() if not v.bundled}
    )
    monkeypatch.setattr(registry, "DEFAULT", None, raising=False)
    assert default_model_spec() is None
    monkeypatch.setitem(registry.REGISTRY, "bundled-x2", entry)
    assert default_model_spec() == "bundled-x2"


def test_cli_errors_are_one_line(capsys, tiny, tmp_path):
    assert main(["serve", "--model", str(tmp_path / "missing.safetensors")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--model", str(tiny), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen" in err and "--port" in err


def test_a_busy_port_is_refused_before_any_model_loads(capsys, monkeypatch):
    import socket

    import edsr.serve.run
    from edsr.errors import EdsrError
    from local_server import free_port

    loads: list[object] = []

    def load_models(*args, **kwargs):
        loads.append(args)
        raise EdsrError("no model here")

    monkeypatch.setattr(edsr.serve.run, "load_models", load_models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1  # the default models, were it free
    err = capsys.readouterr().err
    assert err == (
        f"edsr: error: cannot listen on 127.0.0.1:{port} (Address already in use); is another "
        "server using it? choose another --port\n"
    )
    assert loads == []  # said before loading, not after
    # a free port is taken first, then the models load; a failure there gives the port back
    port = free_port()
    assert main(["serve", "--port", str(port)]) == 1
    assert capsys.readouterr().err == "edsr: error: no model here\n" and len(loads) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_load_test_script(tmp_path, tiny):
    """The load test on 127.0.0.1, small: concurrent uploads, some bad, and clients that send
    half an upload and wait; every answer is the right one or a 503, the half-sent uploads are
    dropped with 408 at the upload time limit, memory stays bounded, the server stays up and
    leaves no files."""
    out = tmp_path / "load.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "load_serve.py"),
        "--model", str(tiny), "--requests", "30", "--concurrency", "6",
        "--workers", "1", "--queue", "2", "--size", "24", "--time-limit", "90", "--json", str(out),
        "--slow-clients", "4", "--upload-timeout", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["requests"] == 30 and res["errors"] == 0, res
    assert res["ok"] + res["expected_errors"] + res["busy_503"] == 30
    assert res["ok"] >= 1 and res["expected_errors"] >= 1
    assert res["slow_clients_408"] == 4 and 2 <= res["slow_client_dropped_after_s"] < 12
    assert res["server_alive"] and res["temp_files_left"] == 0
    assert res["exit_code"] == 0  # Ctrl-C: a graceful stop
    assert res["peak_rss_mb"] < 2048


def test_without_model_serve_loads_the_bundled_default_and_the_jpeg_model():
    from edsr import defaults
    from edsr.serve import load_models

    served = load_models([], device="cpu", progress=False)  # the default route's two models
    assert [m.id for m in served] == [registry.DEFAULT, *defaults.route_models()]
    assert served[0].scales == served[1].scales == (2, 3, 4)
    assert served[0].entry is registry.REGISTRY[registry.DEFAULT]


@pytest.mark.slow  # a server process with the bundled models, and a job of seconds
def test_sigterm_answers_the_request_in_flight_503_without_a_traceback(tmp_path):
    """SIGTERM while a job runs: the request answers 503 "shutting down" at once (uvicorn
    used to wait its 10 s grace period, then cancel it: a 500 and a CancelledError traceback in
    the log), and the server stops."""
    import io
    import os
    import re
    import signal
    import threading
    import time

    import httpx
    import numpy as np
    from PIL import Image

    env = {**os.environ, "EDSR_OFFLINE": "1", "EDSR_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edsr", "serve", "--port", "0", "--workers", "1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = "http://127.0.0.1:" + re.search(r":(\d+)/", proc.stdout.readline()).group(1)
        buf = io.BytesIO()
        pixels = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "PNG")
        box = {}

        def post():
            box["r"] = httpx.post(
                url + "/v1/upscale",
                files={"image": ("a.png", buf.getvalue(), "image/png")},
                data={"scale": "4", "job": "long-job-1"},
                timeout=120,
            )

        client = threading.Thread(target=post)
        client.start()
        deadline = time.monotonic() + 60
        while httpx.get(url + "/v1/progress/long-job-1").json().get("state") != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        client.join(60)
        answered = time.monotonic() - sent
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    r = box["r"]
    assert r.status_code == 503 and r.json() == {"error": "the server is shutting down"}, r.text
    assert answered < 5, answered
    assert "Traceback" not in err and "CancelledError" not in err, err
