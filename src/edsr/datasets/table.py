"""``edsr data list``: the catalogue as a text table, with what is on disk."""

from __future__ import annotations

import os

from edsr.datasets.catalogue import DataSetEntry
from edsr.datasets.fetch import data_root, status

__all__ = ["format_table"]


def _size(entry: DataSetEntry) -> str:
    """The download's bytes where the catalogue knows them all; T91 and BSD200 are fetched
    image by image, and no size is published for those files or for the SNU archives."""
    if entry.manual is not None:
        return "-"
    sizes = [a.size for a in entry.archives]
    if entry.images is not None or None in sizes:
        return "size unknown"
    total = sum(s for s in sizes if s is not None)
    return f"{total / 2**30:.2f} GiB" if total >= 2**30 else f"{total / 2**20:.0f} MiB"


def _checksums(entry: DataSetEntry) -> str:
    if entry.manual is not None:
        return "-"
    if entry.images is not None:
        return "pixel SHA-256"
    labels = {a.checksum.label if a.checksum else "unverified" for a in entry.archives}
    return "/".join(sorted(labels))


def format_table(entries: list[DataSetEntry], root: str | os.PathLike[str] | None = None) -> str:
    """One row per data set: files, download size, checksum kind, state on disk, folder."""
    base = data_root(root)
    rows = [("name", "files", "size", "checksum", "on disk", "folder")]
    for e in entries:
        st = status(e, base)
        state = st.state
        parts = len(e.images.files) if e.images is not None else len(e.archives)
        if state == "partial":
            kind = "images" if e.images is not None else "files"
            state = f"partial ({st.archives_done} of {parts} {kind})"
        files = ", ".join(sorted({a.filename for a in e.archives})) or "(by hand)"
        if e.images is not None:
            files = f"{parts} images"
        elif len(e.archives) > 2:
            files = f"{len(e.archives)} zip files"
        rows.append((e.name, files, _size(e), _checksums(e), state, str(st.folder)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    return "\n".join([f"data root: {base}", *lines])
