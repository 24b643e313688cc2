"""How many CPU threads torch gets while training: the user's `--threads`, else torch's own choice cut to the
cores that other programs leave free, looked at again every few seconds (`ThreadGovernor`; the rule alone is
`choose_threads`, a pure function of `CpuFacts`). Why: docs/scaling.md#shared-cores.

Not sampling's thread choice (one thread for small steps: `charnn.sampling.stepper.few_threads`), nor the device.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

CHECK_EVERY = 2.0  # seconds between looks at the other programs' use of the cores
FIRST_LOOK = 0.2  # the first look averages over at least this long (the run's set-up usually takes longer)
# A core counts as free while the other programs take less than this share of it. A step is hundreds of small
# parallel regions whose threads wait for each other: when one of them waits for a core another program holds,
# a training step took 10-40x longer (docs/scaling.md#shared-cores), so the rule errs towards fewer threads.
SPARE = 0.25
UP_AFTER = 2  # more threads only after this many looks in a row say so (fewer at once: a busy core is costly)


@dataclass(frozen=True)
class CpuFacts:
    """What the rule reads: the cores this process may run on, torch's thread choice (the most it takes), and
    the cores' worth of CPU time the other programs used over the last few seconds (None: not readable here)."""

    cores: int
    most: int
    elsewhere: float | None


def choose_threads(facts: CpuFacts, asked: int | None = None) -> int:
    """`asked` (--threads) when given; else torch's choice, but never more threads than the cores the other
    programs leave free (at least one). Unknown load: torch's choice."""
    if asked is not None:
        return asked
    if facts.elsewhere is None:
        return facts.most
    free = math.floor(facts.cores - facts.elsewhere + SPARE)
    return max(1, min(facts.most, free))


@dataclass(frozen=True)
class CpuSnapshot:
    """Counters read at one moment; two of them give the other programs' load in between (`busy_elsewhere`)."""

    wall: float  # time.monotonic()
    own: float  # this process's CPU seconds, every thread
    busy: float | None  # CPU seconds every program spent on this process's cores (Linux's /proc/stat)
    load: float | None  # the 1-minute load average, read where /proc/stat is not (macOS)


def busy_elsewhere(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """The cores' worth of CPU time programs other than this one used between two snapshots, or None."""
    wall = after.wall - before.wall
    if wall <= 0:
        return None
    own = (after.own - before.own) / wall
    if before.busy is not None and after.busy is not None:
        return max(0.0, (after.busy - before.busy) / wall - own)
    if after.load is not None:  # a minute's average of runnable threads: it follows a change within a minute
        return max(0.0, after.load - own)
    return None


def busy_seconds(stat: str, cpus: frozenset[int] | None = None, *, ticks_per_s: int = 100) -> float | None:
    """CPU seconds spent not idle on `cpus` (all: None) since boot, from the text of /proc/stat: user, nice,
    system, irq, softirq and steal (time a virtual machine's host gave to others). None without per-CPU lines."""
    total, seen = 0, False
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = ([*map(int, fields[:8])] + [0] * 8)[:8]
        total += user + nice + system + irq + softirq + steal
        seen = True
    return total / ticks_per_s if seen else None


def usable_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on (taskset, cpusets), where the system says."""
    affinity = getattr(os, "sched_getaffinity", None)
    return frozenset(affinity(0)) if affinity else None


def cpu_snapshot(cpus: frozenset[int] | None = None) -> CpuSnapshot:
    busy = load = None
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as f:
            busy = busy_seconds(f.read(), cpus, ticks_per_s=os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        pass
    if busy is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # Windows: no load average
            pass
    return CpuSnapshot(time.monotonic(), time.process_time(), busy, load)


class ThreadGovernor:
    """Sets torch's CPU thread count for a training run and keeps it at `choose_threads` while the run steps:
    `tick()` before each step looks at the other programs' load every `every` seconds (the first look before
    the first step). Inactive off the CPU and where torch takes one thread. `restore()` puts back the count the
    process had."""

    def __init__(
        self,
        asked: int | None,
        device: torch.device,
        *,
        every: float = CHECK_EVERY,
        look: Callable[[], CpuSnapshot] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.before = torch.get_num_threads()
        self.asked, self.every, self.clock, self.sleep = asked, every, clock, sleep
        self.device_type = device.type
        cpus = usable_cpus()
        self.look = look or (lambda: cpu_snapshot(cpus))
        self.cores = len(cpus) if cpus else os.cpu_count() or 1
        self.active = device.type == "cpu" and asked is None and self.before > 1  # one thread: nothing to cut
        if asked is not None:
            torch.set_num_threads(asked)
        self.threads = torch.get_num_threads()
        self.elsewhere: float | None = None
        self.looks = self.up_votes = 0
        self.last = self.look() if self.active else None
        self.since = clock()

    def tick(self) -> bool:
        """Look again when it is time; True when the thread count changed."""
        if not self.active:
            return False
        waited = self.clock() - self.since
        if self.looks == 0 and waited < FIRST_LOOK:
            self.sleep(FIRST_LOOK - waited)
        elif self.looks and waited < self.every:
            return False
        now = self.look()
        self.elsewhere = busy_elsewhere(self.last, now)
        self.last, self.since, self.looks = now, self.clock(), self.looks + 1
        want = choose_threads(CpuFacts(self.cores, self.before, self.elsewhere))
        self.up_votes = self.up_votes + 1 if want > self.threads else 0
        if want < self.threads or self.up_votes >= UP_AFTER or (self.looks == 1 and want != self.threads):
            torch.set_num_threads(want)
            self.threads, self.up_votes = want, 0
            return self.looks > 1
        return False

    def describe(self) -> str:
        """The line the run prints about its threads ("" off the CPU)."""
        if self.asked is not None:
            return f"threads: {self.threads} (--threads)"
        if not self.active:
            return f"threads: {self.threads} (torch's choice)" if self.device_type == "cpu" else ""
        if self.elsewhere is None:
            return f"threads: {self.threads} (torch's choice; the other programs' load is not readable here)"
        held = (
            f"other programs keep {min(self.elsewhere, self.cores):.1f} cores busy; looked at again every "
            f"{self.every:g} s"
        )
        if self.threads < self.before:
            return f"threads: {self.threads} of {self.before} ({held})"
        return f"threads: {self.threads} (torch's choice; {held})"

    def restore(self) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)
