"""The training display for the CLI: a tqdm bar on stderr with loss, chars/s and ETA, and the samples
written through the bar as they arrive, control characters escaped (the exact text is in samples.jsonl). When
stderr is not a terminal (`2> train.log`, a job scheduler, nohup) there is no bar: a plain `train:` line every
tenth of the run or every minute, whichever comes first. It is a `Progress` callback; the library knows nothing
of it.
"""

from __future__ import annotations

import math
import sys

from tqdm import tqdm

from charnn.terminal import for_terminal
from charnn.training.runstate import Progress

EVAL_LINE_EVERY = 10.0
PLAIN_PARTS, PLAIN_SECONDS = 10, 60.0  # without a terminal: a progress line every tenth of the run or minute


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except ValueError:  # closed
        return False


class TrainDisplay:
    def __init__(self, *, quiet: bool = False, plain: bool | None = None) -> None:
        self.quiet = quiet
        self.plain = not stderr_is_terminal() if plain is None else plain  # lines instead of a bar
        self.bar: tqdm | None = None
        self.last_step = 0
        self.last_val: float | None = None
        self.last_eval_line: float | None = None  # elapsed seconds of the last validation line written
        self.total: float | None = None  # the run's steps, or its time budget in seconds (plain lines)
        self.unit = "it"
        self.next_line = (1, 0.0)  # (tenths of the run, elapsed seconds) at which the next plain line is due

    def __enter__(self) -> TrainDisplay:
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False

    def encode(self, e) -> None:
        """A `charnn.store.corpus_cache.EncodeProgress`: one bar per pass (hash, scan, encode) with its MB/s."""
        if self.quiet or self.plain:  # a log gets no bar; the encoding of a large corpus ends in the next lines
            return
        if e.done == 0:
            if self.bar is not None:
                self.bar.close()
            # delay: small corpora are encoded before a bar would be worth drawing
            self.bar = tqdm(
                total=e.total,
                unit="B",
                unit_scale=True,
                unit_divisor=1 << 20,
                desc=e.phase,
                file=sys.stderr,
                dynamic_ncols=True,
                delay=0.5,
                leave=False,
            )
        elif self.bar is not None:
            self.bar.update(e.done - self.bar.n)
            if e.done >= e.total:
                self.bar.close()
                self.bar = None

    def _write(self, text: str) -> None:
        if not self.quiet:  # a display, never the product: a sample's ESC or NUL must not reach the terminal raw
            tqdm.write(for_terminal(text), file=sys.stderr)

    def __call__(self, p: Progress) -> None:
        if p.kind == "plan":
            for line in p.text.splitlines():
                self._write(f"plan: {line}")
            started = self.total is not None and self.unit == "it"  # the run's bar, not the encoding's
            if started and p.total_steps is not None and p.total_steps != self.total:  # its length fitted again
                self.total = p.total_steps
                if self.bar is not None:
                    self.bar.total = p.total_steps
                    self.bar.refresh()
        elif p.kind == "start":
            self._write(f"training: {p.text}")
            budget = p.time_budget
            total = p.total_steps if p.total_steps is not None else (round(budget) if budget else None)
            unit = "it" if p.total_steps is not None else "s"
            self.total, self.unit = total, unit
            self.next_line = (1, p.elapsed + PLAIN_SECONDS)
            if not self.quiet and not self.plain:
                self.bar = tqdm(
                    total=total,
                    initial=p.step if unit == "it" else int(p.elapsed),
                    unit=unit,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    desc="train",
                )
            self.last_step = p.step
        elif p.kind == "log" and self.plain:
            self._plain_line(p)
        elif p.kind == "log" and self.bar is not None:
            advance = p.step - self.last_step if self.unit == "it" else int(p.elapsed) - self.bar.n
            self.bar.update(max(advance, 0))
            self.last_step = p.step
            val = f" val {self.last_val:.3f}" if self.last_val is not None else ""
            self.bar.set_postfix_str(
                f"step {p.step} loss {p.train_loss:.3f}{val} lr {p.lr:.2e} {p.chars_per_s:,.0f} chars/s", refresh=False
            )
        elif p.kind == "eval":
            self.last_val = p.val_loss
            # Small corpora are validated every few seconds: a line at most every EVAL_LINE_EVERY seconds, the
            # latest value always in the bar.
            if self.last_eval_line is None or p.elapsed - self.last_eval_line >= EVAL_LINE_EVERY:
                self.last_eval_line = p.elapsed
                self._write(
                    f"step {p.step}: val {p.val_loss:.4f} nats/char ({p.val_loss / math.log(2):.4f} "
                    f"bits/char) at {p.elapsed:.0f}s"
                )
        elif p.kind == "sample":
            rule = "-" * 20
            novelty = f"\n{p.novelty}" if p.novelty else ""
            self._write(f"{rule} sample at iteration {p.step} {rule}\n{p.text}\n{'-' * 60}{novelty}")
        elif p.kind == "warning":
            self._write(f"warning: step {p.step}: {p.text}")
        elif p.kind == "stop":
            self._write(f"step {p.step}: {p.text}")

    def _plain_line(self, p: Progress) -> None:
        """Without a terminal: `train: 60/120 steps (50%), loss 2.512, val 2.600, 12,345 chars/s, 31 s elapsed`,
        when the run has gone another tenth or another minute has passed."""
        done = p.step if self.unit == "it" else p.elapsed
        share = done / self.total if self.total else None
        parts = int(share * PLAIN_PARTS + 1e-9) if share is not None else None  # whole tenths gone
        due_parts, due_time = self.next_line
        if (parts is None or parts < due_parts) and p.elapsed < due_time:
            return
        self.next_line = ((parts or 0) + 1, p.elapsed + PLAIN_SECONDS)
        if self.total is None:
            where = f"step {p.step:,}"
        elif self.unit == "it":
            where = f"{p.step:,}/{self.total:,} steps ({share:.0%})"
        else:
            where = f"{p.elapsed:.1f}/{self.total:,} s ({min(share, 1.0):.0%}), step {p.step:,}"
        val = f", val {self.last_val:.3f}" if self.last_val is not None else ""
        self._write(
            f"train: {where}, loss {p.train_loss:.3f}{val}, {p.chars_per_s:,.0f} chars/s, {p.elapsed:.0f} s elapsed"
        )
