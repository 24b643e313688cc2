"""charnn without POSIX's extras (Windows, and macOS in part): every module imports, train -> sample -> eval ->
export works end to end with its notes (tests/without_posix.py takes them away in a subprocess), and no module
uses a POSIX-only name unguarded (a static check, for the paths no run here takes)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, TINY_TEXT, cli_env

DRIVER = REPO / "tests" / "without_posix.py"
PKG = REPO / "charnn"

# Modules Windows does not have at all, and names of os and signal it lacks (os.kill it has, but there
# os.kill(pid, 0) ends the process instead of probing it).
POSIX_MODULES = {"fcntl", "resource", "termios", "tty", "pty", "pwd", "grp", "posix", "syslog", "crypt", "curses"}
POSIX_NAMES = {
    "os": set(
        "fork forkpty register_at_fork sched_getaffinity sched_setaffinity getloadavg sysconf confstr pathconf "
        "fpathconf statvfs fstatvfs getuid geteuid getgid getegid getgroups setuid setgid setsid setpgrp getpgid "
        "getpgrp killpg nice mkfifo mknod chown fchown lchown chroot sync openpty ttyname wait3 wait4 uname "
        "getpriority setpriority posix_fadvise posix_fallocate pread pwrite sendfile set_blocking get_blocking "
        "O_NONBLOCK O_CLOEXEC O_NOFOLLOW O_DIRECTORY O_SYNC O_DSYNC O_NOCTTY O_NDELAY O_ASYNC O_DIRECT O_PATH "
        "O_TMPFILE WNOHANG kill".split()
    ),
    "signal": set(
        "SIGHUP SIGQUIT SIGKILL SIGUSR1 SIGUSR2 SIGPIPE SIGALRM SIGCHLD SIGCONT SIGSTOP SIGTSTP SIGTTIN SIGTTOU "
        "SIGXCPU SIGXFSZ SIGVTALRM SIGPROF SIGWINCH SIGIO SIGSYS SIGBUS SIGTRAP SIGURG alarm pause setitimer "
        "getitimer siginterrupt pthread_kill pthread_sigmask sigpending sigwait SIG_BLOCK".split()
    ),
}
# Uses guarded otherwise than by a try or an `if hasattr(...)` around them: (file under charnn/, name) -> how.
GUARDED = {
    ("textfile.py", "set_blocking"): "called only after an open with O_NONBLOCK, which Windows lacks",
    ("store/files.py", "kill"): "_alive returns before it on Windows",
}


def without_posix(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(DRIVER), *args],
        cwd=cwd,
        env={**cli_env(), "OMP_NUM_THREADS": "2"},  # two threads: the thread governor has a choice to make
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_module_imports_without_posix(tmp_path):
    done = without_posix("--import-all", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"imported {len(list(PKG.rglob('*.py')))} modules\n"


def test_train_sample_eval_export_without_posix(tmp_path):
    (tmp_path / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    shape = ["--model", "lstm", "--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4"]
    train = without_posix(
        *["charnn", "train", "tiny.txt", "--out", "run", "--max-iters", "6", "--seq-len", "16", *shape],
        *["--eval-every", "3", "--sample-every", "6", "--sample-length", "20"],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    lines = train.stderr.splitlines()
    lock = "warning: no run lock on this system (Python has no fcntl here): never train the same run in two "
    assert [line for line in lines if line.startswith("warning:")] == [lock + "processes at once"]
    assert "plan: threads: 2 (torch's choice; the other programs' load is not readable here)" in lines
    assert not (tmp_path / "run" / ".lock").exists()

    sample = without_posix("charnn", "sample", "run", "--length", "40", "--seed", "1", cwd=tmp_path)
    assert sample.returncode == 0 and len(sample.stdout) >= 40, sample.stderr
    evaluate = without_posix("charnn", "eval", "run", "tiny.txt", "--json", cwd=tmp_path)
    assert evaluate.returncode == 0 and '"nats_per_char"' in evaluate.stdout, evaluate.stderr
    export = without_posix("charnn", "export", "run", "-o", "page.html", cwd=tmp_path)
    assert export.returncode == 0 and (tmp_path / "page.html").stat().st_size > 0, export.stderr
    for done in (train, sample, evaluate, export):
        assert "Traceback" not in done.stderr, done.stderr


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST], caught: str, name: str) -> bool:
    """Whether `node` sits in a try that catches `caught` (or Exception), or under an `if hasattr(_, name)`."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for handler in node.handlers:
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if handler.type is None or any(getattr(t, "id", None) in {caught, "Exception"} for t in types):
                    return True
        if isinstance(node, ast.If) and child in node.body:
            for call in ast.walk(node.test):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "hasattr":
                    if any(isinstance(a, ast.Constant) and a.value == name for a in call.args):
                        return True
    return False


def _unguarded(source: str, where: str) -> list[str]:
    """The POSIX-only imports and names in `source` (the file `where` under charnn/) that nothing guards."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in POSIX_MODULES and not _guarded(node, parents, "ImportError", name):
                    found.append(f"{where}:{node.lineno}: import {name} (import it in a try: ... except ImportError)")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in POSIX_NAMES.get(node.value.id, ()) and (where, node.attr) not in GUARDED:
                if not _guarded(node, parents, "AttributeError", node.attr):
                    found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr} (use getattr(_, name, None))")
    return found


def test_no_posix_only_name_is_used_unguarded():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        problems += _unguarded(path.read_text(encoding="utf-8"), path.relative_to(PKG).as_posix())
    assert problems == []


def test_the_static_check_finds_what_it_should():
    bare = "import fcntl\nimport os, signal\nos.fork()\nsignal.SIGHUP\nos.set_blocking(0, True)\n"
    assert len(_unguarded(bare, "x.py")) == 4
    assert len(_unguarded(bare, "textfile.py")) == 3  # its set_blocking is guarded by its O_NONBLOCK
    guarded = (
        "try:\n    import fcntl\nexcept ImportError:\n    pass\nimport signal\n"
        "if hasattr(signal, 'SIGHUP'):\n    signal.SIGHUP\ntry:\n    os.fork()\nexcept (OSError, AttributeError):\n"
        "    pass\n"
    )
    assert _unguarded(guarded, "x.py") == []


def test_no_lock_without_fcntl_warns_once(tmp_path, monkeypatch):
    from charnn.store import runlock

    monkeypatch.setitem(sys.modules, "fcntl", None)
    runlock._warn_unlocked.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with runlock.lock_run(tmp_path), runlock.lock_run(tmp_path):  # unlocked: the second one is not refused
            pass
    runlock._warn_unlocked.cache_clear()
    assert [str(w.message) for w in caught] == [
        "no run lock on this system (Python has no fcntl here): never train the same run in two processes at once"
    ]
    assert not (tmp_path / ".lock").exists()


def test_windows_keeps_other_processes_temp_files(monkeypatch):
    """os.kill(pid, 0) would end process `pid` on Windows: there another process's temp file counts as being
    written (kept), and only this process's own is stale."""
    from charnn.store.files import _alive

    def kill(pid, sig):
        raise AssertionError("os.kill called")

    monkeypatch.setattr(os, "kill", kill)
    with monkeypatch.context() as windows:  # only around the calls: pathlib reads os.name too
        windows.setattr(os, "name", "nt")
        alive = [_alive(os.getpid() + 1), _alive(os.getpid())]
    assert alive == [True, False]


@pytest.mark.parametrize("meminfo", ["missing", "unreadable"])
def test_unknown_free_ram_skips_the_ram_check(tmp_path, monkeypatch, meminfo):
    from charnn import ram

    path = tmp_path / "meminfo"
    if meminfo == "unreadable":
        path.mkdir()  # open() fails with IsADirectoryError
    monkeypatch.setattr(ram, "MEMINFO", path)
    assert ram.available_ram() is None
    ram.check_ram(1 << 60, "a model")  # an exabyte: refused where free RAM is known, not checked here
