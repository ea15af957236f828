"""How much memory a process holds of its own, for the benchmarks that measure DataLoader workers."""

from __future__ import annotations

import os

__all__ = ["private_memory"]


def private_memory(pid: int | None = None, *, include_page_cache: bool = False) -> int:
    """Bytes of memory that only process `pid` (default: this one) holds (Linux `/proc/PID/smaps`):
    every private dirty page, and the private clean pages of anonymous and shared memory (`/dev/shm`,
    memfd). Clean pages of mapped files (the memory-mapped data and index files, libraries) are the
    kernel's page cache, shared by every process that maps the file and dropped under memory pressure:
    they are left out even when this process happens to be the only one to have touched them, which
    smaps reports as `Private_Clean`. `include_page_cache=True` counts them too (`Private_Clean +
    Private_Dirty` of every mapping)."""
    total = 0
    memory = True  # whether the current mapping holds memory rather than a file's page cache
    with open(f"/proc/{pid or os.getpid()}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:  # a mapping's header
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) > 5 else ""
                memory = fields[4] == "0" or path.startswith(("/dev/shm/", "/memfd:"))
            elif line.startswith("Private_Dirty:") or (
                line.startswith("Private_Clean:") and (memory or include_page_cache)
            ):
                total += int(line.split()[1]) * 1024
    return total
