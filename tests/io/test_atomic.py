"""The one atomic writer: what it leaves behind on success and failure, the mode of what it
writes, its refusal to replace a file it was not allowed to, and the cleanup of stale temps."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edsr.errors import EdsrError
from edsr.io.atomic import (
    atomic_open,
    atomic_write,
    atomic_write_stream,
    check_folder_writable,
    check_writable,
    remove_stale_temps,
)

TEMP_NAME = re.compile(r"^\.out\.png\.edsr-(\d+)-[0-9a-f]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_new_file_gets_the_mode_open_would_give_not_mkstemps_0600(tmp_path: Path) -> None:
    dest = tmp_path / "out.png"
    with atomic_write(dest) as tmp:
        tmp.write_bytes(b"picture")
    assert dest.read_bytes() == b"picture"
    assert _mode(dest) == 0o666 & ~_umask()
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"x")
    assert _mode(dest) == _mode(plain)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_follows_the_umask_of_the_moment(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        out = atomic_write_stream(tmp_path / "out.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert _mode(out) == 0o666 & ~umask


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old")
    os.chmod(dest, 0o640)
    with atomic_write(dest, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and _mode(dest) == 0o640


def test_a_writer_that_replaces_the_temporary_file_still_gets_the_right_mode(
    tmp_path: Path,
) -> None:
    # What safetensors' save_file does: its own 0600 temporary file, renamed onto the path.
    dest = tmp_path / "model.safetensors"
    with atomic_write(dest) as tmp:
        fd, own = tempfile.mkstemp(dir=tmp_path)
        os.write(fd, b"weights")
        os.close(fd)
        os.replace(own, tmp)
        assert _mode(tmp) == 0o600
    assert dest.read_bytes() == b"weights"
    assert _mode(dest) == 0o666 & ~_umask()


def test_failure_leaves_neither_a_temporary_file_nor_a_destination(tmp_path: Path) -> None:
    dest = tmp_path / "out.png"
    with pytest.raises(RuntimeError), atomic_write(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(143), RuntimeError("encoder")])
@pytest.mark.parametrize("existing", [False, True])
def test_stream_form_cleans_up_on_any_failure(
    tmp_path: Path, exc: BaseException, existing: bool
) -> None:
    dest = tmp_path / "out.png"
    if existing:
        dest.write_bytes(b"old")
    seen: list[str] = []
    with pytest.raises(type(exc)), atomic_open(dest, overwrite=True) as f:
        f.write(b"partial")
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "out.png")
        raise exc
    assert len(seen) == 1 and TEMP_NAME.match(seen[0])
    assert int(TEMP_NAME.match(seen[0]).group(1)) == os.getpid()  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.png"] if existing else [])
    if existing:
        assert dest.read_bytes() == b"old"


def test_existing_file_is_refused_without_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"mine")
    with pytest.raises(EdsrError, match="--overwrite"), atomic_write(dest):
        pass
    assert dest.read_bytes() == b"mine" and sorted(tmp_path.iterdir()) == [dest]
    with pytest.raises(EdsrError, match=r"already exists; pass --overwrite"):
        check_writable(dest, overwrite=False)
    check_writable(dest, overwrite=True)


@pytest.mark.parametrize("form", ["path", "stream"])
def test_a_racing_writer_is_never_replaced(tmp_path: Path, form: str) -> None:
    # The destination appears while this writer works: publishing must fail, not clobber it.
    dest = tmp_path / "out.png"
    with pytest.raises(EdsrError, match=f"^{re.escape(str(dest))} already exists"):
        if form == "path":
            with atomic_write(dest) as tmp:
                dest.write_bytes(b"someone else")
                tmp.write_bytes(b"mine")
        else:
            with atomic_open(dest) as f:
                dest.write_bytes(b"someone else")
                f.write(b"mine")
    assert dest.read_bytes() == b"someone else"
    assert sorted(tmp_path.iterdir()) == [dest]


def test_disk_full_says_so_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    dest = tmp_path / "model.safetensors"
    with pytest.raises(EdsrError) as err, atomic_write(dest) as tmp:
        tmp.write_bytes(b"weights")
    assert str(err.value) == f"disk full while writing {dest}; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(EdsrError, match="is not a folder"):
        atomic_write_stream(tmp_path / "file" / "out.png", lambda f: None)


def test_check_folder_writable(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "out"
    check_folder_writable(folder)
    assert list(tmp_path.iterdir()) == []  # the folders made to probe are gone again
    folder.mkdir(parents=True)
    check_folder_writable(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(EdsrError, match="not a folder"):
        check_folder_writable(tmp_path / "plain")


def test_check_folder_writable_reports_a_folder_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated: chmod does not stop root, which CI containers often are.
    def read_only(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(EdsrError, match=r"^cannot write .*read-only"):
        check_folder_writable(tmp_path)


# ------------------------------------------------------------------------------------------
# Stale temporary files
# ------------------------------------------------------------------------------------------


def test_remove_stale_temps_takes_only_its_own_dead_or_old_files(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".photo_x4.png.edsr-{dead}-0123abcd.tmp"
    live = tmp_path / f".photo_x2.png.edsr-{alive}-89abcdef.tmp"
    old = tmp_path / f".model.safetensors.edsr-{alive}-00000000.tmp"
    foreign = [
        tmp_path / ".photo.png.a1b2c3d4.tmp",  # the old naming, or someone else's
        tmp_path / ".tmpazKTsI",  # safetensors' own
        tmp_path / "notes.edsr-1-0123abcd.tmp",  # not hidden: not ours
        tmp_path / "photo_x4.png",
    ]
    for p in [stale, live, old, *foreign]:
        p.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    for p in foreign:
        os.utime(p, (two_days_ago, two_days_ago))
    sub = tmp_path / "sub"
    sub.mkdir()
    nested = sub / f".deep.png.edsr-{dead}-feedbeef.tmp"
    nested.write_bytes(b"x")

    assert remove_stale_temps(tmp_path) == sorted([stale, old])
    assert live.exists() and nested.exists() and all(p.exists() for p in foreign)
    assert remove_stale_temps(tmp_path, recursive=True) == [nested]
    assert remove_stale_temps(tmp_path, max_age=0.0) == [live]  # age alone, for any pid
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_killed_writer_leaves_a_temp_the_next_run_removes(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from edsr.io.atomic import atomic_open\n"
        "with atomic_open(sys.argv[1]) as f:\n"
        "    f.write(b'half'); f.flush()\n"
        "    os._exit(9)  # as kill -9: no cleanup runs\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.png")], check=False)
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and TEMP_NAME.match(left[0].name)
    assert remove_stale_temps(tmp_path) == left
    assert list(tmp_path.iterdir()) == []
