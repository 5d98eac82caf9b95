"""A TorchScript archive is code: no door runs it unless told to by name.

The payloads are real TorchScript archives whose code overwrites a file (``torch.from_file``
maps it shared, ``fill_`` writes through): one in ``__setstate__``, which ``torch.jit.load``
runs while loading, one in ``forward``. Each is saved under a checkpoint's name, with and
without edsr's metadata copied from a real export. Every door must leave the file as it was
and say on one line how to opt in; with the opt-in the payload runs, which shows the test
would see it.
"""

import importlib.util
import subprocess
import sys

import pytest
import torch

from edsr import CheckpointError, build_model, load_model
from edsr.export import export_torchscript
from edsr.runtimes import RUN_CODE_FLAG, TORCHSCRIPT_EXTRA, torchscript_info

UNTOUCHED = b"00000000"

PAYLOAD = """
import torch
from typing import Tuple


class AtLoad(torch.nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.target = state[0]
        t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        t.fill_(65)
        self.training = bool(t.sum() > 0)

    def forward(self, x):
        return x


class AtForward(torch.nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        t.fill_(66)
        return torch.nn.functional.interpolate(x, scale_factor=2.0) + t.sum() * 0
"""


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    root = tmp_path_factory.mktemp("payload")
    (root / "payload_mod.py").write_text(PAYLOAD)
    spec = importlib.util.spec_from_file_location("payload_mod", root / "payload_mod.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["payload_mod"] = mod
    spec.loader.exec_module(mod)
    real = root / "real.pt"
    export_torchscript(build_model("edsr-baseline", scale=2), real)
    meta = torchscript_info(real)
    assert meta is not None and '"scale": 2' in meta
    target = root / "target.bin"
    files = {}
    for cls, extra, name in [
        (mod.AtLoad, {}, "innocent_checkpoint.pth"),
        (mod.AtLoad, {TORCHSCRIPT_EXTRA: meta}, "with_metadata.pth"),
        (mod.AtForward, {TORCHSCRIPT_EXTRA: meta}, "forward_payload.pt"),
    ]:
        torch.jit.save(torch.jit.script(cls(str(target))), str(root / name), _extra_files=extra)
        files[name] = root / name
    return root, target, files


def _reset(target):
    target.write_bytes(UNTOUCHED)


def test_the_payloads_are_real(payloads):
    root, target, files = payloads
    _reset(target)
    torch.jit.load(str(files["innocent_checkpoint.pth"]))
    assert target.read_bytes() == b"A" * 8, "loading the archive runs its __setstate__"
    _reset(target)
    m = torch.jit.load(str(files["forward_payload.pt"]))
    assert target.read_bytes() == UNTOUCHED
    m(torch.zeros(1, 3, 4, 4))
    assert target.read_bytes() == b"B" * 8


@pytest.mark.parametrize("name", ["innocent_checkpoint.pth", "with_metadata.pth"])
def test_load_model_refuses_without_the_opt_in_and_runs_nothing(payloads, name):
    root, target, files = payloads
    _reset(target)
    with pytest.raises(CheckpointError) as e:
        load_model(files[name])
    assert target.read_bytes() == UNTOUCHED
    msg = str(e.value)
    assert "\n" not in msg
    if name == "with_metadata.pth":
        assert RUN_CODE_FLAG in msg and "run_torchscript_code=True" in msg
    else:
        assert "without edsr's metadata" in msg  # told apart from the zip, never loaded


def test_with_the_opt_in_the_code_runs_as_the_user_asked(payloads):
    root, target, files = payloads
    _reset(target)
    model = load_model(files["forward_payload.pt"], run_torchscript_code=True)
    # Loading runs the graph once, to hold what it returns against its metadata.
    assert target.read_bytes() == b"B" * 8
    _reset(target)
    model(torch.zeros(1, 3, 8, 8), 2)
    assert target.read_bytes() == b"B" * 8


def _edsr(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "edsr", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_no_door_runs_a_payload_without_the_opt_in(payloads, tmp_path):
    root, target, files = payloads
    img = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (12, 10), (90, 120, 30)).save(img)
    data = tmp_path / "set" / "HR"
    data.mkdir(parents=True)
    Image.new("RGB", (24, 24), (90, 120, 30)).save(data / "a.png")
    for name in ("with_metadata.pth", "forward_payload.pt"):
        model = files[name]
        doors = {
            "upscale": ["upscale", img, "-o", tmp_path / "out", "--model", model],
            "eval": ["eval", "--data", tmp_path / "set", "--scale", "2", "--model", model],
            "export": ["export", model, "--format", "onnx", "-o", tmp_path / "x.onnx"],
            "demo": ["demo", "-o", tmp_path / "demo", "--model", model],
            "serve": ["serve", "--model", model, "--port", "0"],
        }
        for door, argv in doors.items():
            _reset(target)
            proc = _edsr(*argv, cwd=tmp_path)
            assert target.read_bytes() == UNTOUCHED, f"{door} ran {name}"
            assert proc.returncode == 1, (door, proc.returncode, proc.stderr[-500:])
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1, (door, proc.stderr)
            if door == "export":
                assert "exported graph already" in lines[0]
            else:
                assert RUN_CODE_FLAG in lines[0], (door, lines[0])
            assert not (tmp_path / "out").exists() and not (tmp_path / "x.onnx").exists()
