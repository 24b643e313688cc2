"""What the serving engine hands its sink, and when: a streamed job's first text and every job's end at once, other
new text every `flush_every` seconds up to 16 streamed jobs and less often with more (5x at 80). Each output is
work for the event loop, which shares the interpreter lock with the engine's thread (docs/serve.md). Not the
steps that make the text: charnn.serve.engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from charnn.serve.jobs import Output, Running


class Delivery:
    """Outputs for `sink(outputs)`, called on the engine's thread: the ends gathered (`end`) and the new text of
    the running jobs (`flush`)."""

    def __init__(self, sink: Callable[[list[Output]], None], flush_every: float) -> None:
        self.sink, self.flush_every = sink, flush_every
        self.ended: list[Output] = []  # ends not yet handed over
        self.last = 0.0  # when text was last due

    def end(self, running: Running, end: str, message: str = "") -> None:
        """A job's end with its last text; it leaves its rows at the engine's next look (`running.left`)."""
        self.ended.append(running.output(end, message))
        running.left = True

    def every(self, active: list[Running]) -> float:
        """Seconds between two flushes of the new text of `active`: 20 ms up to 16 streamed jobs, 100 ms from 80."""
        streamed = sum(a.job.stream for a in active)
        return self.flush_every * min(5, max(1, streamed / 16))

    def until(self, active: list[Running]) -> float:
        """When the engine stops stepping `active` for text to go out (`time.monotonic()`): at once for a streamed
        job's first text, else when the next flush is due."""
        if any(a.fresh and a.job.stream for a in active):
            return 0.0
        return self.last + self.every(active)

    def flush(self, active: list[Running]) -> None:
        """Hand over the ends, the first text of new streamed jobs, and, when due, the new text of the others."""
        now = time.monotonic()
        due = now - self.last >= self.every(active)
        outputs = [a.output() for a in active if a.job.stream and (due or a.fresh) and a.pending[0]]
        outputs += self.ended
        self.ended = []
        if due:
            self.last = now
        if outputs:
            self.sink(outputs)
