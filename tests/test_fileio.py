"""atomic_write: what it leaves behind on success and failure, and the mode of what it writes."""

import os
import stat

import pytest

from edsr.errors import EdsrError
from edsr.io.atomic import atomic_write


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_mode_open_would_give_not_mkstemps_0600(tmp_path):
    dest = tmp_path / "out.png"
    with atomic_write(dest) as tmp:
        tmp.write_bytes(b"picture")
    assert dest.read_bytes() == b"picture"
    assert _mode(dest) == 0o666 & ~_umask()
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"x")
    assert _mode(dest) == _mode(plain)


def test_a_replaced_file_keeps_its_mode(tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old")
    os.chmod(dest, 0o640)
    with atomic_write(dest, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and _mode(dest) == 0o640


def test_failure_leaves_neither_a_temporary_file_nor_a_destination(tmp_path):
    dest = tmp_path / "out.png"
    with pytest.raises(RuntimeError), atomic_write(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_refused_without_overwrite(tmp_path):
    dest = tmp_path / "out.png"
    dest.write_bytes(b"mine")
    with pytest.raises(EdsrError, match="--overwrite"), atomic_write(dest):
        pass
    assert dest.read_bytes() == b"mine" and sorted(tmp_path.iterdir()) == [dest]
