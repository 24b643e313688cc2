"""What `charnn sample` writes to stdout: the sampled text, streamed as it is drawn, or raw bytes for a
byte-level model; control characters escaped on a terminal.

Not the sampling itself (charnn.sample); no torch import here.
"""

from __future__ import annotations

import sys
import time
from typing import Any

SEPARATOR = "\n---------------\n"  # between the samples of --num-samples N
STREAM_CHUNK, STREAM_WAIT = 1024, 0.05  # one stream is written every 1024 characters or 50 ms, whichever first


class SampleWriter:
    """Writes sampled ids to stdout: text (escaping control characters on a terminal) or raw bytes."""

    def __init__(self, vocab, *, escape: bool) -> None:
        self.vocab, self.escape = vocab, escape
        self.tty = sys.stdout.isatty()

    def write(self, ids) -> None:
        if not ids:
            return
        if self.vocab.bytes_mode:
            sys.stdout.buffer.write(bytes(self.vocab.decode_symbols(ids)))
            if self.tty:
                sys.stdout.buffer.flush()
            return
        self.write_text(self.vocab.decode(ids))

    def write_text(self, text: str) -> None:
        if self.escape:
            text = "".join(c if c in "\n\t" or c.isprintable() else c.encode("unicode_escape").decode()
                           for c in text)
        if self.vocab.bytes_mode:
            sys.stdout.buffer.write(text.encode())
        else:
            sys.stdout.write(text)
        if self.tty:
            sys.stdout.flush()

    def flush(self) -> None:
        sys.stdout.flush()


def write_generation(gen: Any, out: SampleWriter, *, num_samples: int) -> None:
    """One sample streams as it is drawn; several are collected and written one after the other."""
    if num_samples == 1:
        out.write(gen.prime)
        _stream(gen.steps, out)
    else:
        rows = [list(gen.prime) for _ in range(num_samples)]
        for ids in gen.steps:
            for row, i in zip(rows, ids.tolist(), strict=True):
                row.append(i)
        for k, row in enumerate(rows):
            if k:
                out.write_text(SEPARATOR)
            out.write(row)
    out.write_text("\n")
    out.flush()


def _stream(steps: Any, out: SampleWriter, *, most: int = STREAM_CHUNK, wait: float = STREAM_WAIT) -> None:
    """One stream's ids written in pieces: at most `most` ids, or what `wait` seconds produced (decoding and
    writing each character cost more than a tenth of a step of a small model)."""
    pending: list[int] = []
    due = time.monotonic() + wait
    for ids in steps:
        pending += ids.tolist()
        if len(pending) >= most or time.monotonic() >= due:
            out.write(pending)
            pending = []
            due = time.monotonic() + wait
    out.write(pending)


def write_beams(beams: list[Any], out: SampleWriter, *, say: Any) -> None:
    """Each text of a beam search on stdout (separated as samples are), and after it, through `say` (stderr),
    its total log-probability and that per character; stdout stays the text alone."""
    for k, beam in enumerate(beams):
        if k:
            out.write_text(SEPARATOR[1:])
        out.write(list(beam.prime) + list(beam.ids))
        out.write_text("\n")
        out.flush()
        say(f"beam {k + 1}: log-probability {beam.logprob:.4f} nats ({beam.per_char:.4f} per character, "
            f"{len(beam.ids)} characters)")
