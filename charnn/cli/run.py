"""How a `charnn` command runs as a process: user errors as one `error: ...` line and an exit code, warnings
as `warning: ...` lines, and SIGINT/SIGTERM/SIGHUP as a flag the training loop polls.

Not the commands (charnn.cli.commands). Anything that is not a `CharnnError` is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from charnn.errors import CharnnError
from charnn.terminal import for_terminal

# Typer vendors click in newer releases and uses click itself in older ones: find the classes either way.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _PlainRows:
    """Compact help rows: no `<type>` where the row says it already (flags, and arguments, whose metavar names
    them), no `[x>=1]` ranges (the help column is narrow enough at 80 columns), and arguments in the usage line
    as RUN, [CORPUS], [FILE]... (Typer writes `{RUN}`). Parsing is unchanged."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            param._get_number_range_help_str = _nothing
            if param.param_type_name == "argument":
                param.display_type_rich = _nothing
                param._usage_display_name = partial(_usage_name, param)
            elif getattr(param, "is_flag", False):
                param.display_type_rich = _nothing
        return params


def _nothing(*args, **kwargs) -> None:
    return None


def _usage_name(param) -> str:
    name = param.metavar or param.name.upper()
    return (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")


class Command(_PlainRows, TyperCommand):
    """A command whose help rows are plain (see `_PlainRows`)."""


class OneLineErrors(_PlainRows, TyperGroup):
    """Click's usage errors as one `error: ...` line (exit 2) instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(
                args=args, prog_name=prog_name or "charnn", complete_var=complete_var, standalone_mode=False, **extra
            )
        except _USAGE_ERROR as err:
            message = " ".join(err.format_message().split())
            if not message:  # bare `charnn`: the help was shown, nothing went wrong
                return 0 if not standalone_mode else sys.exit(0)
            command = err.ctx.command_path if err.ctx else "charnn"
            typer.echo(f"error: {message} (see {command} --help)", err=True)
            code = 2
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 130
        except _CLICK_EXCEPTION as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            code = err.exit_code
        except BrokenPipeError:  # `charnn --help | head`: the reader left
            discard_stdout()
            code = 0
        except OSError as err:
            if err.errno not in _WRITE_FAILURES or err.filename is not None:  # a named file is not the output
                raise
            discard_stdout()  # what is still buffered must not fail again at exit
            say(f"error: cannot write the output: {err.strerror or err}")
            code = 4
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


# How writing to a full or failing device ends: what click's own --help and --version meet on `> /dev/full`
# (a command's own writes turn these into their error first).
_WRITE_FAILURES = {errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT, errno.EBADF}


def discard_stdout() -> None:
    """Point stdout at the null device, so that what is still buffered cannot fail again at exit (the idiom the
    Python docs give for SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no stdout, or not a file (a test's capture)
        return
    _to_null(fd)


def _to_null(fd: int) -> None:
    """File descriptor `fd` writes to the null device from now on."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def say(message: str) -> None:
    """One line on stderr (stdout carries only the product); control characters in it (a file name's newline
    or ESC) are escaped, so it stays one line and cannot drive the terminal."""
    typer.echo(for_terminal(message, keep="\t"), err=True)


def run_command(body: Callable[[], Any]) -> Any:
    """Run a command body; user errors become one line on stderr and their exit code."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        say(f"warning: {message}")

    warnings.showwarning = show_warning
    from charnn.textfile import forget_inputs

    forget_inputs()  # what an earlier command in this process read is not this one's input
    try:
        return body()
    except CharnnError as err:
        say(f"error: {err}")
        raise typer.Exit(err.exit_code) from None
    except (RuntimeError, NotImplementedError, MemoryError) as err:  # out of memory, a precision the GPU lacks
        user = _device_error(err)
        if user is None:
            raise
        say(f"error: {user}")
        raise typer.Exit(user.exit_code) from None
    except BrokenPipeError:  # `charnn sample | head`: the reader left; not an error
        sys.stderr.close()
        raise typer.Exit(0) from None


@contextmanager
def start_up() -> Iterator[None]:
    """A command's start-up (its imports, loading a model) without garbage collection, and what it made then
    frozen out of the collector's reach (`gc.freeze`). Importing torch makes hundreds of thousands of objects
    that live as long as the process: the collector's passes over them during start-up found nothing to free
    and took about 0.2 s of the 1.2 s `charnn sample` needed for its first character (docs/benchmarks.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _device_error(err: BaseException) -> CharnnError | None:
    """The user's error behind a device failure (charnn.runtime.user_device_error); torch is loaded by then."""
    if "torch" not in sys.modules:
        return None
    from charnn.runtime import user_device_error

    return user_device_error(err)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _quiet_terminal() -> None:
    """Point stdout and stderr that were a closed terminal at /dev/null; a file or pipe is left as it is."""
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                _to_null(fd)
        except OSError:
            pass


class StopFlag:
    """SIGINT/SIGTERM/SIGHUP set a flag the training loop polls between steps (it saves a checkpoint and exits
    128 + the signal's number); a second SIGINT exits at once. SIGHUP (the terminal closed) also stops the
    writes to that terminal, which now fail. Windows has no SIGHUP or SIGXFSZ, and ends a process at once where
    POSIX would send it SIGTERM."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        if hasattr(signal, "SIGXFSZ"):  # a file-size limit must fail the write (EFBIG), not kill us
            self._old[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            os.write(2, b"error: interrupted again; exiting now (checkpoints on disk are intact)\n")
            os._exit(130)
        if signum == getattr(signal, "SIGHUP", None):
            _quiet_terminal()
        self.signum = signum

    def __call__(self) -> int | None:
        return self.signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False
