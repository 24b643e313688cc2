"""What the serving engine works on: a generation request (`Job`), the text it hands back (`Output`), its running
side (`Running`: the seeded generator, the uniforms it draws from, the symbols not yet delivered), and how the rows
of running jobs are drawn (`draw_groups`, `draw`, and `draw_one` for a lone stream: `charnn.sampling.draw`'s
choice). Not the scheduling: charnn.serve.engine.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

import torch

from charnn.config import SampleConfig
from charnn.data import Vocab
from charnn.errors import CharnnError
from charnn.sampling import draw as drawing


class ServerBusy(CharnnError):
    """The queue of waiting requests is full, or the server is shutting down."""


@dataclass(eq=False)
class Job:
    """One generation request: `cfg.num_samples` streams of `cfg.length` symbols after warming on `prime`.

    A `stream` job gets its text as it comes (every few steps: `Engine`), another one only at its end. The
    web layer sets `cancelled` when its client is gone (the engine then drops the job at its next step) and
    keeps what it needs in `handle`. `keep_logits` records each drawn position's unscaled logits (n, V)."""

    cfg: SampleConfig
    prime: list[int]
    stream: bool = True
    handle: Any = None
    keep_logits: bool = False
    cancelled: bool = False
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Output:
    """New text of each of a job's streams since its last output; `end` is None while more is to come, else
    "complete", "cancelled", "shutdown" or "error" (with `message`). A byte-level model's `data` holds the exact
    bytes drawn since the last output (its `texts` are them decoded as UTF-8, a character split across outputs
    held back for the next, bytes that are not UTF-8 as U+FFFD); None for a character model."""

    job: Job
    texts: tuple[str, ...]
    end: str | None = None
    message: str = ""
    data: tuple[bytes, ...] | None = None


class Running:
    """The engine's side of an admitted job: its generator, the blocks of uniforms it draws from (those of
    `charnn.sampling.draw.uniforms`, drawn in the sizes `charnn sample` draws them, so a seed gives its text; read
    a window of steps at a time by the batch, a symbol at a time by a lone stream), and undelivered symbols."""

    def __init__(self, job: Job, vocab: Vocab) -> None:
        self.job, self.n, self.length, self.vocab = job, job.cfg.num_samples, job.cfg.length, vocab
        self.gen = drawing.seeded_generator(job.cfg.seed)
        self.done = 0  # symbols drawn per stream
        self.left = False  # ended or cancelled: its rows are freed at the engine's next look
        self.blocks: dict[int, torch.Tensor] = {}  # block number -> its (size, n) uniforms, from done's on
        self.listed: tuple[int, list[float]] = (-1, [])  # a block's uniforms row-major, for `next_uniforms`
        self.pending: list[list[int]] = [[] for _ in range(self.n)]
        self.fresh = True  # nothing delivered yet: deliver at once (time to first character)
        self.decoders = (
            [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(self.n)] if vocab.bytes_mode else None
        )
        self.key = (job.cfg.temperature, job.cfg.top_k, job.cfg.top_p, job.cfg.greedy)

    def _block(self, number: int) -> torch.Tensor:
        """Uniforms block `number` (size, n): the blocks are drawn in turn, each when first asked for, of the
        size `charnn sample` draws at that point; those before done's block are let go."""
        block = self.blocks.get(number)
        if block is None:
            drawn = max(self.blocks, default=-1) + 1
            if number != drawn:
                raise ValueError(f"uniforms block {number} asked for before block {drawn}")
            block = drawing.uniforms(self.gen, self.length - number * drawing.UNIFORM_BLOCK, self.n)
            first = self.done // drawing.UNIFORM_BLOCK
            self.blocks = {k: v for k, v in self.blocks.items() if k >= first}
            self.blocks[number] = block
        return block

    def uniforms(self, steps: int) -> torch.Tensor:
        """The uniforms (steps, n) of the next `steps` symbols, or of those left if fewer (unused when greedy,
        but drawn all the same)."""
        end, at, parts = min(self.done + steps, self.length), self.done, []
        while not parts or at < end:
            number, start = divmod(at, drawing.UNIFORM_BLOCK)
            parts.append(self._block(number)[start : start + end - at])
            at += parts[-1].shape[0]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def next_uniforms(self) -> list[float]:
        """The n uniforms of the next symbol as floats (a stream alone draws with them: `draw_one`)."""
        number, at = divmod(self.done, drawing.UNIFORM_BLOCK)
        if self.listed[0] != number:
            # flat: a nested tolist() took 3 ms for 2,000 x 1 (every joining request paid it), a flat one 60 us
            self.listed = (number, self._block(number).view(-1).tolist())
        return self.listed[1][at * self.n : (at + 1) * self.n]

    def take(self, ids: list[int]) -> None:
        """The symbols just drawn, one per stream."""
        for row, i in zip(self.pending, ids, strict=True):
            row.append(i)
        self.done += 1

    def extend(self, columns: list[list[int]]) -> None:
        """The symbols of the last few steps, a list per stream (`charnn.serve.window.Window.hand_out`)."""
        for row, ids in zip(self.pending, columns, strict=True):
            row.extend(ids)
        self.done += len(columns[0])

    def output(self, end: str | None = None, message: str = "") -> Output:
        """The undelivered symbols as text, one string per stream (a byte-level model's bytes decoded as UTF-8,
        a character split across outputs kept for the next); `end` flushes the decoders."""
        texts, data = [], []
        for k, ids in enumerate(self.pending):
            if self.decoders is None:
                texts.append("".join([chr(self.vocab.symbols[i]) for i in ids]))
            else:
                data.append(bytes(self.vocab.symbols[i] for i in ids))
                texts.append(self.decoders[k].decode(data[-1], end is not None))
            ids.clear()
        self.fresh = False
        return Output(self.job, tuple(texts), end, message, None if self.decoders is None else tuple(data))


def draw_groups(active: list[Running]) -> list[tuple[list[Running], torch.Tensor | None]]:
    """The jobs holding the batch's rows (in row order) grouped by their sampling options, each group with the
    indices of its rows (B,), or None when all share them: one draw for the whole batch."""
    by_key: dict[tuple, tuple[list[Running], list[int]]] = {}
    start = 0
    for running in active:
        members, rows = by_key.setdefault(running.key, ([], []))
        members.append(running)
        rows.extend(range(start, start + running.n))
        start += running.n
    if len(by_key) == 1:
        return [(next(iter(by_key.values()))[0], None)]
    return [(members, torch.tensor(rows)) for members, rows in by_key.values()]


def draw(
    cfg: SampleConfig, logits: torch.Tensor, uniform: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Next ids (m, 1) of rows that share `cfg`'s sampling options from their unscaled logits (m, V) and their
    streams' uniforms (m, 1): the draw of `charnn sample`. A SamplingError when the probabilities are not finite
    (the model's outputs overflow)."""
    return drawing.choose(_scaled(logits, cfg), uniform, cfg, out=out)


def draw_one(running: Running, logits: torch.Tensor) -> int:
    """`draw` for a job of one stream (unscaled logits (1, V)) as a Python int: `charnn.sampling.draw.choose_one`,
    the one-stream draw of `charnn sample`, which picks the symbol `choose` picks without its per-row tensors."""
    cfg = running.job.cfg
    return drawing.choose_one(_scaled(logits, cfg), running.next_uniforms()[0], cfg)


def _scaled(logits: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    return logits if cfg.temperature == 1.0 else drawing.scale(logits, cfg.temperature)  # x / 1 is x
