"""The training display for the CLI: a tqdm bar on stderr with loss, chars/s and ETA, and the samples
written through the bar as they arrive, control characters escaped (the exact text is in samples.jsonl). It is a
`Progress` callback; the library knows nothing of it.
"""

from __future__ import annotations

import math
import sys

from tqdm import tqdm

from charnn.terminal import for_terminal
from charnn.training.runstate import Progress

EVAL_LINE_EVERY = 10.0


class TrainDisplay:
    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.last_step = 0
        self.last_val: float | None = None
        self.last_eval_line: float | None = None  # elapsed seconds of the last validation line written

    def __enter__(self) -> TrainDisplay:
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False

    def encode(self, e) -> None:
        """A `charnn.store.corpus_cache.EncodeProgress`: one bar per pass (hash, scan, encode) with its MB/s."""
        if self.quiet:
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
        elif p.kind == "start":
            self._write(f"training: {p.text}")
            if not self.quiet:
                budget = p.time_budget
                total = p.total_steps if p.total_steps is not None else (round(budget) if budget else None)
                unit = "it" if p.total_steps is not None else "s"
                self.bar = tqdm(
                    total=total,
                    initial=p.step if unit == "it" else int(p.elapsed),
                    unit=unit,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    desc="train",
                )
                self.unit = unit
            self.last_step = p.step
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
