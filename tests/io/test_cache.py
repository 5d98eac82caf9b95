"""The cache folder and the file hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edsr.io.cache import edsr_home, sha256_file


def test_sha256_file_reads_in_pieces(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one 1 MiB piece
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_edsr_home_env_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDSR_HOME", "~/models")
    assert edsr_home() == Path.home() / "models"
    monkeypatch.delenv("EDSR_HOME")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert edsr_home() == tmp_path / "edsr"
