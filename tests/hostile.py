"""Running the command line in-process on hostile input, and what every refusal must look like
(tests/test_hostile_cli.py: hostile option values; tests/test_hostile_files.py: hostile files).

A refusal is exit status 1 or 2, exactly one line on stderr, no "internal error" (exit 3) and
no traceback; the folder the command was run in holds what it held before.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from edsr.cli import main


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str, str]:
    """``edsr ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code: object = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refusal_problem(code: object, err: str) -> str | None:
    """What keeps (exit status, stderr) from being a one-line refusal; None when it is one."""
    if code not in (1, 2):
        return f"exit status {code}"
    if "internal error" in err or "Traceback" in err:
        return "internal error"
    if len(err.splitlines()) != 1:
        return f"{len(err.splitlines())} lines on stderr"
    return None


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def remove_new(root: Path, kept: set[str]) -> None:
    """Remove what appeared under ``root`` since :func:`snapshot` gave ``kept``."""
    for extra in sorted(snapshot(root) - kept, reverse=True):
        p = root / extra
        p.unlink() if p.is_file() or p.is_symlink() else shutil.rmtree(p, ignore_errors=True)


def hostile_env(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    """Run in ``work`` with an empty ``$EDSR_HOME``, offline, without EDSR_DEBUG's tracebacks."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDSR_HOME", str(work / "home"))
    monkeypatch.setenv("EDSR_OFFLINE", "1")
    monkeypatch.delenv("EDSR_DEBUG", raising=False)
