"""Run charnn as on a system without POSIX's extras (Windows; macOS has no /proc or cgroups either): fcntl,
resource, termios, tty, pty, pwd and grp cannot be imported; os has no fork, sched_getaffinity, getloadavg,
sysconf, set_blocking, O_NONBLOCK or O_CLOEXEC; signal has no SIGHUP or SIGXFSZ; nothing under /proc or /sys
opens. A script, not a test: tests/test_portable.py runs it in a subprocess, so nothing leaks into other tests.

    python tests/without_posix.py charnn train ...   (as `python -m charnn train ...`)
    python tests/without_posix.py --import-all        (imports every module of charnn; prints how many)
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pkgutil
import runpy
import signal
import sys

POSIX_MODULES = ("fcntl", "resource", "termios", "tty", "pty", "pwd", "grp")
OS_NAMES = ("fork", "forkpty", "sched_getaffinity", "getloadavg", "sysconf", "set_blocking", "O_NONBLOCK", "O_CLOEXEC")
SIGNAL_NAMES = ("SIGHUP", "SIGXFSZ")
HIDDEN_DIRS = ("/proc", "/sys")


def hidden(path) -> bool:
    """Whether `path` lies under /proc or /sys (a file descriptor does not)."""
    if isinstance(path, int):
        return False
    text = os.path.abspath(os.fsdecode(os.fspath(path)))
    return any(text == d or text.startswith(d + "/") for d in HIDDEN_DIRS)


def refusing(real):
    """`real` (open, os.open), except that a path under /proc or /sys is not found."""

    def opener(path, *args, **kwargs):
        if hidden(path):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real(path, *args, **kwargs)

    return opener


def strip_posix() -> None:
    for name in POSIX_MODULES:
        sys.modules[name] = None  # `import fcntl` raises ImportError from now on
    for module, names in ((os, OS_NAMES), (signal, SIGNAL_NAMES)):
        for name in names:
            if hasattr(module, name):
                delattr(module, name)
    builtins.open = io.open = refusing(io.open)  # pathlib's read_text opens through io.open
    os.open = refusing(os.open)


def import_all() -> int:
    import charnn

    names = ["charnn", *(m.name for m in pkgutil.walk_packages(charnn.__path__, "charnn."))]
    for name in names:
        importlib.import_module(name)
    return len(names)


if __name__ == "__main__":
    strip_posix()
    if sys.argv[1:] == ["--import-all"]:
        print(f"imported {import_all()} modules")
    else:
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
