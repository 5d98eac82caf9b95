"""Memory: sizes as users write them, and the working memory tiles may use by default."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edsr.validators import memory_size as parse_memory

__all__ = ["default_memory_budget", "format_bytes", "host_available_memory", "parse_memory"]


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _cgroup_available() -> int | None:
    """Memory left under a cgroup v2 limit (containers), where MemAvailable shows the host's."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - int(used))


def host_available_memory() -> int:
    """Bytes of RAM the system could give us now (without psutil: /proc/meminfo or sysconf)."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            # no way to ask (e.g. Windows without psutil): assume a small machine
            avail = 4 * 1024**3
    cgroup = _cgroup_available()
    return min(avail, cgroup) if cgroup is not None else avail


def default_memory_budget(device: torch.device | str) -> int:
    """Working memory for tiles when ``--max-memory`` is not given: 80% of the GPU's free memory,
    or half of the RAM available now (the other half is left to the input, the output and the
    rest of the system)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    return host_available_memory() // 2
