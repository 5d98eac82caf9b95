"""Outputs are regular files: a device, FIFO or socket is never replaced, and no job writes
over one of its own inputs, with or without --overwrite."""

import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from conftest import DATA
from edsr import EdsrError
from edsr.io.atomic import atomic_write


def _edsr(*args):
    return subprocess.run(
        [sys.executable, "-m", "edsr", *map(str, args)], capture_output=True, text=True
    )


def _specials(tmp_path):
    made = {}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    made["a FIFO"] = fifo
    sock = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    made["a socket"] = sock
    dev = tmp_path / "devfull"
    try:
        os.mknod(dev, 0o644 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full's numbers
        made["a character device"] = dev
    except PermissionError:
        pass  # not root: the FIFO and the socket still stand for the special files
    return made, s


def test_special_files_are_refused_and_left_as_they_were(tmp_path):
    made, s = _specials(tmp_path)
    try:
        for kind, path in made.items():
            before = os.lstat(path)
            with (
                pytest.raises(EdsrError, match=f"it is {kind}, not a regular file"),
                atomic_write(path, overwrite=True) as tmp,
            ):
                tmp.write_text("x")
            for argv in (
                ["upscale", DATA / "Set5" / "HR" / "bird.png", "-o", path, "--overwrite"],
                ["eval", "--data", DATA / "Set5", "--scale", "2", "--json", path, "--overwrite"],
            ):
                proc = _edsr(*argv)
                assert proc.returncode == 2, proc.stderr
                assert proc.stderr.count("\n") == 1 and "not a regular file" in proc.stderr
            after = os.lstat(path)
            assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary left"
    finally:
        s.close()


def test_a_job_never_writes_over_its_input(tmp_path):
    src = tmp_path / "same.png"
    shutil.copy(DATA / "Set5" / "HR" / "bird.png", src)
    before = src.read_bytes()
    for extra in ([], ["--overwrite"]):
        proc = _edsr("upscale", src, "-o", src, *extra)
        assert proc.returncode == 1 and "an input is never replaced" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
    # a folder job whose outputs would land on one of its inputs
    folder = tmp_path / "set"
    folder.mkdir()
    shutil.copy(DATA / "Set5" / "HR" / "bird.png", folder / "a.png")
    shutil.copy(DATA / "Set5" / "HR" / "head.png", folder / "a_x2.png")
    proc = _edsr("upscale", folder / "a.png", folder / "a_x2.png", "-o", folder, "--scale", "2")
    assert proc.returncode == 1 and "never replaced" in proc.stderr, proc.stderr
    assert src.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x2.png"]
