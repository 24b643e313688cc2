"""Errors a user can cause, each with the exit code the CLI maps it to, and the warning for what did not stop
the work.

Anything that is not a `CharnnError` is a bug and keeps its traceback.
"""

from __future__ import annotations


class CharnnWarning(UserWarning):
    """Something the user should hear about that did not stop the work (shown as `warning: ...`)."""


class CharnnError(Exception):
    """A problem the user can act on; `str(err)` is one line that says what and how to fix it."""

    exit_code = 2


class DataError(CharnnError):
    """The corpus or a text file cannot be used (missing, empty, binary, bad encoding, too short)."""


class ConfigError(CharnnError):
    """An option or configuration value is out of range or inconsistent."""


class CheckpointError(CharnnError):
    """A checkpoint or run directory is missing, corrupt, tampered with, or not charnn's."""


class ResumeMismatchError(CheckpointError):
    """`--resume` was asked to continue with a different corpus, vocabulary or model."""


class VocabularyError(CharnnError):
    """Text holds characters the model's vocabulary does not have."""


class SamplingError(CharnnError):
    """Sampling met non-finite probabilities (a model whose outputs overflow)."""


class NonFiniteLossError(CharnnError):
    """Training produced non-finite losses too many steps in a row."""

    exit_code = 3


class CheckpointWriteError(CharnnError):
    """A checkpoint or another output (a log, the report, an export, stdout) could not be written (disk full,
    file too large, permissions)."""

    exit_code = 4


class OutputPathError(CheckpointWriteError):
    """An output path names something that is not a regular file (a device such as /dev/null, a FIFO, a socket,
    a directory): charnn never replaces it. The path is the user's choice or doing, hence exit code 2."""

    exit_code = 2


class OutOfMemoryError(CharnnError):
    """The device ran out of memory for this batch size and sequence length."""

    exit_code = 5


class DeviceError(CharnnError):
    """The device cannot run this: a precision or kernel this GPU lacks (bf16 before Ampere, a card this build of
    PyTorch has no kernels for, an operation Apple's MPS does not implement)."""

    exit_code = 6


class NoveltyUnavailable(DataError):
    """A sample's novelty cannot be computed: the run's corpus is missing or changed, or too large for the index.
    Where novelty is shown beside samples it is one line saying so; a command that asked only for it exits 2."""


class Interrupted(CharnnError):
    """Training stopped on SIGINT/SIGTERM after saving; exit code follows the shell convention 128+signal."""

    def __init__(self, message: str, *, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters: what a one-line error quotes."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
