"""The house rule that import-linter cannot state: no module reaches into another's privates."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "edsr"


def private_imports(path: Path) -> list[str]:
    """``line name`` for every ``from edsr... import _name`` in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{node.lineno} {alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edsr")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]


def test_no_module_imports_another_modules_private_names():
    offenders = {
        str(path.relative_to(SRC)): hits
        for path in sorted(SRC.rglob("*.py"))
        if (hits := private_imports(path))
    }
    assert offenders == {}


def test_the_rule_sees_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from edsr.inference import _secret, upscale\nfrom edsr import __version__\n")
    assert private_imports(bad) == ["1 _secret"]
