"""Regenerate docs/models.md's model tables from the weights registry.

    python scripts/models_doc.py           # rewrite docs/models.md between the markers
    python scripts/models_doc.py --check   # exit 1 if docs/models.md is out of date (tests use it)

The table lives between ``<!-- models:start -->`` and ``<!-- models:end -->``; everything
outside the markers is left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edsr.io.atomic import atomic_write
from edsr.weights import readme_table

START = "<!-- models:start -->"
END = "<!-- models:end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def render(text: str, table: str | None = None) -> str:
    """``text`` with the part between the markers replaced by the registry's table."""
    table = readme_table() if table is None else table
    try:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"the file has no {START} ... {END} markers") from None
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 if out of date")
    p.add_argument("--doc", type=Path, default=DOC, help="file (default: docs/models.md)")
    args = p.parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    new = render(text)
    if new == text:
        print(f"{args.doc}: model table up to date")
        return 0
    if args.check:
        print(f"{args.doc}: model table out of date; run python scripts/models_doc.py")
        return 1
    with atomic_write(args.doc, overwrite=True) as tmp:
        tmp.write_text(new, encoding="utf-8")
    print(f"{args.doc}: model table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
