"""Every command in the README, run in its order as a newcomer would type it.

The README promises that each line does what its comment says; this test holds it to that in
a folder laid out as the README assumes (a ``photo.jpg``, a ``holiday/`` folder of photos and
the checkout's ``tests/``). Lines that say they download are run offline here: each must stop
on one line that says what it needed, before any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import DATA, REPO, shared_datasets

README = REPO / "README.md"


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(command, comment) for every line of every bash block after "Set up"."""
    body = text.split("## Set up", 1)[1].split("\n## ", 1)[1]
    out = []
    for block in body.split("```bash\n")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            command, _, comment = line.partition("  #")
            out.append((command.strip(), comment.strip()))
    return out


def test_the_readme_is_a_five_minute_read():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for link in re.findall(r"\]\(((?:docs|src|tests)/[^)#]+)\)", text):
        assert (REPO / link).exists(), link


def _workspace(root: Path) -> None:
    """The folder the README's commands are typed in."""
    bird = Image.open(DATA / "Set5" / "HR" / "bird.png").convert("RGB")
    bird.crop((60, 60, 156, 140)).save(root / "photo.jpg", quality=70)
    (root / "holiday" / "day2").mkdir(parents=True)
    for i, (name, box) in enumerate(
        [
            ("butterfly", (40, 40, 104, 88)),
            ("head", (80, 80, 144, 128)),
            ("woman", (50, 90, 114, 138)),
        ]
    ):
        img = Image.open(DATA / "Set5" / "HR" / f"{name}.png").convert("RGB").crop(box)
        img.save(root / "holiday" / ("day2" if i == 2 else "") / f"{name}.jpg", quality=85)
    (root / "tests").symlink_to(REPO / "tests", target_is_directory=True)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _check(command: str, root: Path, out: str, err: str) -> None:
    """What the line's comment promises, beyond exiting 0."""
    said = out + err
    if command.startswith("edsr upscale photo.jpg -o out/ -v"):
        assert Image.open(root / "out" / "photo_x4.png").size == (384, 320)
        assert "mdsr-baseline-291-jpeg" in said and "quality" in said, said
    elif command.startswith("edsr upscale holiday/ -o big/ --scale 3"):
        assert len(list((root / "big").rglob("*_x3.png"))) == 3
    elif command.startswith("edsr upscale holiday/ -o big/ --skip-existing"):
        assert not list((root / "big").rglob("*_x4.png")), "the re-run did not keep the job's x3"
        assert "x3" in said, said
    elif command.startswith("edsr eval --data tests/data/Set5 --scale 4 --degrade"):
        report = json.loads((root / "results.json").read_text())
        assert "jpeg:75" in json.dumps(report) and "sha256" in json.dumps(report)
    elif command.startswith("edsr eval --data tests/data/Set5"):
        assert all(f"x{s}" in out for s in (2, 3, 4)), out
    elif command.startswith("edsr downscale"):
        assert len(list((root / "my_set").rglob("*.jpg"))) == 6
    elif command.startswith("edsr train --preset"):
        assert (root / "runs" / "try" / "model.safetensors").is_file()
    elif command.startswith("edsr upscale photo.jpg -o try/"):
        assert Image.open(root / "try" / "photo_x2.png").size == (192, 160)
    elif command.startswith("curl"):
        assert Image.open(root / "photo_x4.png").size == (384, 320)
    elif command.startswith("edsr export"):
        assert (root / "mdsr_x4.onnx").stat().st_size > 1_000_000
    elif command.startswith("edsr upscale photo.jpg -o onnx/"):
        assert Image.open(root / "onnx" / "photo_x4.png").size == (384, 320)


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the server stopped: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def test_every_readme_command_does_what_it_says(tmp_path):
    pytest.importorskip("fastapi", reason="the README's serve lines need .[serve]")
    pytest.importorskip("onnxruntime", reason="the README's export lines need .[export]")
    if shutil.which("curl") is None:
        pytest.skip("the README's serve example uses curl, which this machine lacks")
    root = tmp_path / "work"
    root.mkdir()
    _workspace(root)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["EDSR_HOME"] = str(tmp_path / "home")
    env["EDSR_OFFLINE"] = "1"  # a line that downloads must say so, not hang on a network
    env.setdefault("OMP_NUM_THREADS", "2")
    shared = shared_datasets()
    server = None
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 12
    try:
        for command, comment in commands:
            if command.endswith("&"):
                port = re.search(r"--port (\d+)", command)
                assert port, command
                server = subprocess.Popen(
                    command[:-1].split(),
                    cwd=root,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                _wait_for(f"http://127.0.0.1:{port.group(1)}/healthz", server)
                continue
            if "--recipe" in command and shared is not None:
                data = Path(env["EDSR_HOME"]) / "data"
                data.mkdir(parents=True, exist_ok=True)
                for name, part in [("T91", "train"), ("BSD200", "train"), ("Set5", "benchmark")]:
                    if not (data / name).exists():
                        (data / name).symlink_to(shared / part / name, target_is_directory=True)
            r = subprocess.run(
                command, shell=True, cwd=root, env=env, capture_output=True, text=True, timeout=600
            )
            if "downloads" in comment or ("--recipe" in command and shared is None):
                # Offline (or without the training data) the line stops on what it needed.
                assert r.returncode == 1, (command, r.returncode, r.stderr)
                line = _one_line(r.stderr)
                assert "download" in line or "EDSR_OFFLINE" in line, line
                continue
            assert r.returncode == 0, (command, r.stdout, r.stderr)
            _check(command, root, r.stdout, r.stderr)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
