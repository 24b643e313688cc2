"""What every benchmark script shares: the argument parser (`--help` from the docstring, `--quick`), the machine
header, the environment for `python -m charnn` subprocesses, and medians of interleaved repeats.

Not a measurement itself: the baselines charnn is compared with live in baseline.py and in each script.
Importing it puts this checkout first on sys.path, so the scripts measure the charnn beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """An argument parser whose `--help` shows the script's docstring, with `--quick` (`quick`: what it does)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick)
    return ap


def machine(threads: int | None = None, **extra: object) -> str:
    """The header line every script prints first: CPUs (and whether they have native bf16), torch version,
    threads, load average (read it before trusting a figure: on a shared machine a load above the core count
    makes every rate meaningless)."""
    import torch

    from charnn.runtime import native_bf16_cpu

    parts = [
        f"{os.cpu_count()} cpus",
        f"native bf16 {'yes' if native_bf16_cpu() else 'no'}",
        f"torch {torch.__version__}",
    ]
    if threads is not None:
        parts.append(f"{threads} threads")
    parts += [f"{key} {value}" for key, value in extra.items()]
    parts.append(f"load average {load_average():.2f}")
    line = "machine: " + ", ".join(parts)
    print(line, flush=True)
    return line


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def repo_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess (`python -m charnn`, `python -c CODE`) that must import this checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def median_ratio(numerators: Iterable[float], denominators: Iterable[float]) -> float:
    """Median of the per-repeat ratios: each pair was measured side by side, so a drift of the machine's speed
    between repeats cancels in each ratio, which the ratio of the two medians would not do."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def interleaved(
    repeats: int,
    measures: dict[str, Callable[[], object]],
    *,
    alternate: bool = False,
    on_repeat: Callable[[int, dict[str, list]], None] | None = None,
) -> dict[str, list]:
    """Run every measure once per repeat, one after the other, and collect what each returns.

    Interleaving puts each measure next to the others in time, so they see the same machine. `alternate`
    reverses the order every other repeat (so neither side always runs second, after the other warmed the
    caches). `on_repeat(r, results)` is called after each repeat (r from 0), e.g. to print a progress line.
    """
    results: dict[str, list] = {name: [] for name in measures}
    names = list(measures)
    for r in range(repeats):
        for name in names[::-1] if alternate and r % 2 == 0 else names:
            results[name].append(measures[name]())
        if on_repeat is not None:
            on_repeat(r, results)
    return results
