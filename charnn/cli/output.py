"""What `charnn sample` and `eval` write to stdout: the sampled text, streamed as it is drawn, or raw bytes for a
byte-level model; control characters escaped on a terminal; a failed write as one error line; after the
samples, their novelty lines on stderr.

Not the sampling itself (charnn.sampling.generate); no torch import here.
"""

from __future__ import annotations

import codecs
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from charnn.cli.run import discard_stdout
from charnn.errors import CharnnError, CheckpointWriteError, ConfigError
from charnn.terminal import for_terminal

SEPARATOR = "\n---------------\n"  # between the samples of --num-samples N
STREAM_CHUNK, STREAM_WAIT = 1024, 0.05  # one stream is written every 1024 characters or 50 ms, whichever first


def stdout_error(err: OSError | UnicodeError) -> CharnnError:
    """The one-line error for a failed write to stdout: a full or failing device is a failed write (exit 4), an
    encoding that cannot carry the text a user error (exit 2). What is still buffered is discarded."""
    discard_stdout()
    if isinstance(err, UnicodeEncodeError):
        bad = err.object[err.start]
        return ConfigError(
            f"stdout's encoding ({err.encoding}) cannot write {bad!r} (U+{ord(bad):04X}); set PYTHONIOENCODING=utf-8"
        )
    return CheckpointWriteError(f"cannot write to stdout: {getattr(err, 'strerror', None) or err}")


@contextmanager
def stdout_errors() -> Iterator[None]:
    """Writes to stdout that fail raise `stdout_error`'s one line. A reader that left (BrokenPipeError) is not an
    error and passes through."""
    try:
        yield
    except BrokenPipeError:
        raise
    except (OSError, UnicodeEncodeError) as err:
        raise stdout_error(err) from None


def _stdout():
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise CheckpointWriteError("cannot write to stdout: it is closed")
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        return sys.stdout
    from charnn.store.files import check_stdout

    check_stdout(fd)  # never onto an input or into a run directory, as no output path may be
    return sys.stdout


def stdout_is_terminal() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()


def stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def echo(line: str) -> None:
    """One line of a command's product on stdout (eval's scores, the plan): control characters escaped on a
    terminal, failures as one error line."""
    out = _stdout()
    with stdout_errors():
        if out.isatty():
            out.buffer.write(for_terminal(line + "\n").encode(out.encoding or "utf-8", "backslashreplace"))
        else:
            out.write(line + "\n")
        out.flush()


class SampleWriter:
    """Writes sampled ids to stdout: the exact text or bytes, or on a terminal (`escape`) the text with control
    characters and non-UTF-8 bytes escaped (charnn.terminal), never raw."""

    def __init__(self, vocab, *, escape: bool) -> None:
        self.vocab, self.escape = vocab, escape
        self.out = _stdout()
        self.tty = self.out.isatty()
        # bytes on a terminal: decoded as they stream (a character may span steps), undecodable ones escaped
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape") if escape else None

    def write(self, ids) -> None:
        if not ids:
            return
        if not self.vocab.bytes_mode:
            self.write_text(self.vocab.decode(ids))
        elif self.decoder is not None:
            self.write_text(self.decoder.decode(bytes(self.vocab.decode_symbols(ids))))
        else:
            try:  # try/except rather than `with stdout_errors()`: this runs once per sampled step
                self.out.buffer.write(bytes(self.vocab.decode_symbols(ids)))
                if self.tty:
                    self.out.buffer.flush()
            except BrokenPipeError:
                raise
            except OSError as err:
                raise stdout_error(err) from None

    def write_text(self, text: str) -> None:
        try:
            if self.escape:
                self.out.buffer.write(for_terminal(text).encode(self.out.encoding or "utf-8", "backslashreplace"))
            elif self.vocab.bytes_mode:
                self.out.buffer.write(text.encode())
            else:
                self.out.write(text)
            if self.tty:
                self.out.flush()
        except BrokenPipeError:
            raise
        except (OSError, UnicodeEncodeError) as err:
            raise stdout_error(err) from None

    def end_text(self) -> None:
        """One text is over: a character its last bytes left unfinished is shown (escaped) now, not at the start
        of the next sample."""
        if self.decoder is not None:
            tail = self.decoder.decode(b"", final=True)
            if tail:
                self.write_text(tail)

    def flush(self) -> None:
        self.end_text()
        with stdout_errors():
            self.out.flush()


def write_generation(gen: Any, out: SampleWriter, *, num_samples: int, length: int) -> list[list[int]]:
    """One sample streams as it is drawn; several are held (4 bytes a symbol, refused with exit 5 beyond the RAM
    free here) and written one after the other. The ids each sample drew (the prime not included)."""
    if num_samples == 1:
        out.write(gen.prime)
        drawn = [_stream(gen.steps, out)]
    else:
        import torch

        from charnn.ram import check_ram

        check_ram(
            4 * num_samples * length,
            f"{num_samples:,} samples of {length:,} characters",
            fix="ask for fewer --num-samples or a shorter --length",
        )
        held = torch.empty(num_samples, length, dtype=torch.int32)
        done = 0
        for ids in gen.steps:
            held[:, done] = ids
            done += 1
        drawn = [held[k, :done].tolist() for k in range(num_samples)]
        for k in range(num_samples):
            if k:
                out.write_text(SEPARATOR)
            out.write(list(gen.prime) + drawn[k])
            out.end_text()
    out.write_text("\n")
    out.flush()
    return drawn


def _stream(steps: Any, out: SampleWriter, *, most: int = STREAM_CHUNK, wait: float = STREAM_WAIT) -> list[int]:
    """One stream's ids written in pieces: at most `most` ids, or what `wait` seconds produced (decoding and
    writing each character cost more than a tenth of a step of a small model). All of them."""
    pending: list[int] = []
    drawn: list[int] = []
    due = time.monotonic() + wait
    for ids in steps:
        pending += ids.tolist()
        if len(pending) >= most or time.monotonic() >= due:
            out.write(pending)
            drawn += pending
            pending = []
            due = time.monotonic() + wait
    out.write(pending)
    return drawn + pending


def write_beams(beams: list[Any], out: SampleWriter, *, say: Any) -> None:
    """Each text of a beam search on stdout (separated as samples are), and after it, through `say` (stderr),
    its total log-probability and that per character; stdout stays the text alone."""
    for k, beam in enumerate(beams):
        if k:
            out.write_text(SEPARATOR[1:])
        out.write(list(beam.prime) + list(beam.ids))
        out.end_text()
        out.write_text("\n")
        out.flush()
        say(
            f"beam {k + 1}: log-probability {beam.logprob:.4f} nats ({beam.per_char:.4f} per character, "
            f"{len(beam.ids)} characters)"
        )


def say_novelty(loaded: Any, drawn: list[list[int]], *, copy_span: int) -> None:
    """One line on stderr per sample: its longest copied span and the share in copied spans (charnn.novelty);
    one line saying why instead when the run's corpus cannot be read."""
    from charnn.cli.run import say
    from charnn.errors import NoveltyUnavailable
    from charnn.novelty.run import run_index, unavailable_line

    try:
        index = run_index(loaded)
    except NoveltyUnavailable as err:
        say(unavailable_line(err))
        return
    for k, ids in enumerate(drawn):
        label = "novelty" if len(drawn) == 1 else f"novelty of sample {k + 1}"
        say(index.check(ids, loaded.vocab, copy_span=copy_span).line(label))
