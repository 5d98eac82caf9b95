from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    """The larger shared data sets: $EDSR_DATA, else ../shared/datasets beside the repo."""
    env = os.environ.get("EDSR_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "datasets"]:
        if (cand / "benchmark").is_dir():
            return cand
    return None


def need_shared(*parts: str) -> Path:
    root = shared_datasets()
    path = root.joinpath(*parts) if root else None
    if path is None or not path.exists():
        pytest.skip(
            f"needs the shared data set {'/'.join(parts)} "
            "(set EDSR_DATA or place ../shared/datasets)"
        )
    return path


def crop_set(root: Path, names: tuple[str, ...], box: tuple[int, int, int, int]) -> Path:
    """A benchmark-layout folder (``root/HR``) of crops of real Set5 images, for fast tests."""
    (root / "HR").mkdir(parents=True)
    for name in names:
        Image.open(DATA / "Set5" / "HR" / f"{name}.png").crop(box).save(root / "HR" / f"{name}.png")
    return root


def load_rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / "Set5" / "HR" / name).convert("RGB"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def baby() -> np.ndarray:
    return load_rgb("baby.png")


@pytest.fixture
def local_server():
    """An HTTP file server on 127.0.0.1 for one test (see local_server.LocalServer)."""
    from local_server import LocalServer

    with LocalServer() as s:
        yield s


@pytest.fixture
def edsr_home(tmp_path, monkeypatch):
    """An empty ``$EDSR_HOME`` with the network allowed (the tests' servers are local)."""
    monkeypatch.setenv("EDSR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDSR_OFFLINE", raising=False)
    return tmp_path / "home"
