"""How much RAM this process may still take, and the check that refuses an allocation larger than that before
Linux's OOM killer ends the process without a word. Not device choice or precision (`charnn.runtime`).
"""

from __future__ import annotations

from pathlib import Path

from charnn.errors import OutOfMemoryError

SMALLER = "use fewer streams (--batch-size, --num-samples), a shorter --seq-len or a smaller model"


def check_ram(need: int, what: str, *, fix: str = SMALLER) -> None:
    """An OutOfMemoryError (exit 5) before allocating `need` bytes more than the RAM free here: Linux grants
    such allocations and faults the pages in later, and then its OOM killer ends the process without a word.
    No check where the free RAM is unknown (macOS and Windows have no /proc/meminfo)."""
    have = available_ram()
    if have is not None and need > have:
        raise OutOfMemoryError(
            f"out of memory: {what} need about {need / 1e9:.1f} GB, more than the "
            f"{have / 1e9:.1f} GB of RAM free here; {fix}"
        )


MEMINFO, CGROUP = Path("/proc/meminfo"), Path("/sys/fs/cgroup")  # where Linux says how much RAM is free


def available_ram() -> int | None:
    """Bytes of RAM this process could still get: MemAvailable, or a cgroup's limit when lower; None where
    Linux's /proc/meminfo is not readable (macOS, Windows)."""
    try:
        with open(MEMINFO, encoding="ascii") as f:
            have = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    try:  # cgroup v2 (a container): its own limit, less what the group already uses
        limit = (CGROUP / "memory.max").read_text(encoding="ascii").strip()
        if limit != "max":
            used = int((CGROUP / "memory.current").read_text(encoding="ascii"))
            have = min(have, max(0, int(limit) - used + _reclaimable()))
    except (OSError, ValueError):
        pass
    return have


def _reclaimable() -> int:
    """The cgroup's inactive file cache, which the kernel gives back on demand (as MemAvailable counts it):
    reading a corpus fills the cache, and that is not memory in use."""
    try:
        with open(CGROUP / "memory.stat", encoding="ascii") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("inactive_file ")), 0)
    except (OSError, ValueError, IndexError):
        return 0
