"""Every kind of file the package writes gets the mode a plain open() gives: 0o644 under umask
022, never mkstemp's 0o600. All go through edsr.io.atomic; this checks each writer end to end."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import edsr
from edsr.io.image import Image, write_image, write_png
from edsr.models import EDSR


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def tiny_model() -> EDSR:
    return EDSR(scale=2, n_resblocks=1, n_feats=8).eval()


def _png(path: Path) -> None:
    write_png(path, np.zeros((4, 4, 3), np.uint16))


def _jpeg(path: Path) -> None:
    write_image(path, Image(np.zeros((4, 4, 3), np.uint8)))


def _safetensors(path: Path) -> None:
    edsr.save_model(tiny_model(), path)


def _config(path: Path) -> None:
    from edsr.training.config import recipe, save_config

    save_config(recipe("edsr-baseline"), path)


def _checkpoint(path: Path) -> None:
    from edsr.training.run import RunFolder

    written = RunFolder(path.parent).save_checkpoint({"step": 1, "w": torch.zeros(3)}, 1)
    written.rename(path)


def _chart(path: Path) -> None:
    from edsr.training.plot import line_chart

    line_chart(path, {"loss": ([1.0, 2.0], [0.5, 0.25])}, title="t", xlabel="x", ylabel="y")


def _onnx(path: Path) -> None:
    pytest.importorskip("onnx")
    from edsr.export import export_model

    export_model(tiny_model(), path, "onnx", check=False)


def _torchscript(path: Path) -> None:
    from edsr.export import export_model

    export_model(tiny_model(), path, "torchscript", check=False)


WRITERS: dict[str, Callable[[Path], None]] = {
    "out.png": _png,
    "out.jpg": _jpeg,
    "model.safetensors": _safetensors,
    "config.toml": _config,
    "state.pt": _checkpoint,
    "curve.png": _chart,
    "model.onnx": _onnx,
    "model_ts.pt": _torchscript,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_written_files_are_0644_under_umask_022(tmp_path: Path, umask_022: None, name: str) -> None:
    path = tmp_path / name
    WRITERS[name](path)
    assert path.is_file()
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o644)
    # and nothing else is left beside it: no temporary file of ours or of a library's
    leftovers = [p.name for p in path.parent.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []
