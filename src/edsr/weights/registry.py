"""The registry: the known weight sets by name, for ``--model NAME``, ``load_model(NAME)``,
``edsr weights`` and the server's model list.

It starts with the catalogue (``edsr.weights.catalogue``) and is mutable on purpose:
:func:`register` adds entries (a user's own weights) without editing the catalogue.
"""

from __future__ import annotations

import difflib

from edsr.errors import EdsrError
from edsr.weights.catalogue import CATALOGUE
from edsr.weights.catalogue import DEFAULT as DEFAULT
from edsr.weights.entry import WeightsEntry as WeightsEntry

#: name -> entry, in display order.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in CATALOGUE}


def default_model() -> str:
    """Name of the bundled default model (what a left-out model means).

    ``DEFAULT`` when it is registered, else the first bundled entry (a build that registers
    its own), else a user error.
    """
    if DEFAULT and DEFAULT in REGISTRY:
        return DEFAULT
    bundled = [e.name for e in REGISTRY.values() if e.bundled]
    if not bundled:
        raise EdsrError(
            "no model given and this installation has no bundled model; pass --model with "
            "a checkpoint file or a weights name (see 'edsr weights list')"
        )
    return bundled[0]


def register(entry: WeightsEntry, *, replace: bool = False) -> WeightsEntry:
    """Add ``entry`` so that ``--model NAME``, ``load_model(NAME)`` and ``edsr weights`` know it."""
    if entry.name in REGISTRY and not replace:
        raise EdsrError(f"a weights entry named {entry.name!r} already exists")
    REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def _key(text: str) -> str:
    return text.strip().lower().replace("_", "-")


def find_entry(name: str) -> WeightsEntry | None:
    """The entry called ``name`` (case and ``_``/``-`` ignored), or whose file name it is."""
    k = _key(name)
    for e in REGISTRY.values():
        if k == _key(e.name) or k == _key(e.filename) or k in (_key(a) for a in e.aliases):
            return e
    return None


def known_names(near: str | None = None) -> str:
    """The registered names for an error message, the ones close to ``near`` first."""
    close = difflib.get_close_matches(_key(near), list(REGISTRY), n=3, cutoff=0.5) if near else []
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{hint}known: {', '.join(REGISTRY)} (see 'edsr weights list')"


def get_entry(name: str | WeightsEntry) -> WeightsEntry:
    """Like :func:`find_entry`, but an unknown name is a user error naming the close matches."""
    if isinstance(name, WeightsEntry):
        return name
    entry = find_entry(name)
    if entry is None:
        raise EdsrError(f"unknown weights {name!r}; {known_names(name)}")
    return entry


def list_entries() -> list[WeightsEntry]:
    return list(REGISTRY.values())
