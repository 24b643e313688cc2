"""The rows of the serving batch: the streams in use packed at the top of a `FastStepper`, the smallest of a
few batch sizes that holds them, so one stream steps one row (alone, on its id as an int: `step_one`) and 64
share one step. Rows move between sizes by copying their state; joining streams are warmed on their primes here
(`warm`). Not the scheduling (which job owns which rows): charnn.serve.engine.
"""

from __future__ import annotations

import os

import torch

from charnn.model import CharRNN, Hidden, run_rnn
from charnn.sampling.stepper import FastStepper, Tuning


def serving_threads() -> int:
    """Torch threads for the model: one core fewer than torch would take, left to the event loop that serves
    the HTTP side (on a 2-core machine two torch threads and the loop fight for the cores: docs/serve.md)."""
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


class RowBatch:
    """`used` streams in rows 0..used-1 of the current stepper; rows past them are stepped and ignored.

    Each size has its own stepper (its own copy of the weights laid out for that batch size: `FastStepper`
    picks its kernels by batch size). Temperature 1: the engine scales each row's logits.
    """

    def __init__(self, model: CharRNN, sizes: tuple[int, ...], *, tuning: Tuning, threads: int | None = None) -> None:
        self.model, self.sizes, self.tuning = model, tuple(sorted(sizes)), tuning
        self.device = model.head.weight.device
        self.hidden = model.cfg.hidden
        self.default_threads = threads or serving_threads()
        self._threads: int | None = None  # set on the worker thread (OpenMP's setting is per thread)
        # built now, not when the load first reaches a size: that took ~100 ms a size here, paid by the
        # requests that happened to arrive then
        with torch.no_grad():
            self._steppers = {
                size: (
                    FastStepper(model, 1.0, batch_size=size, tuning=tuning),
                    torch.zeros(size, dtype=torch.long, device=self.device),
                )
                for size in self.sizes
            }
        cpu = self.device.type == "cpu"
        self._step_threads = {
            size: 1 if cpu and size * self.hidden <= tuning.small_step_work else self.default_threads
            for size in self.sizes
        }
        self.used = 0
        self.stepper, self.ids = self._steppers[self.sizes[0]]

    @staticmethod
    def _state(stepper: FastStepper) -> list[torch.Tensor]:
        """What a step carries to the next, row-major: every layer's h side by side, and an LSTM's cells."""
        return [stepper.hs, *stepper.c]

    def _resize(self, needed: int) -> None:
        """Move the used rows to the smallest size holding `needed` rows (the largest if none does)."""
        size = next((s for s in self.sizes if s >= needed), self.sizes[-1])
        if size == self.stepper.batch_size:
            return
        stepper, ids = self._steppers[size]
        n = self.used
        for old, new in zip(self._state(self.stepper), self._state(stepper), strict=True):
            new[:n] = old[:n]
            new[n:].zero_()
        ids[:n] = self.ids[:n]
        self.stepper, self.ids = stepper, ids

    def add(self, hidden: Hidden, ids: torch.Tensor) -> None:
        """New streams after the used rows: their module-shaped state ((L, n, H), or a pair for an LSTM) and
        the ids (n,) they step on next."""
        n = ids.shape[0]
        self._resize(self.used + n)
        a, b = self.used, self.used + n
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        for layer in range(len(self.stepper.h)):
            self.stepper.h[layer][a:b] = h[layer]
            if self.stepper.c:
                self.stepper.c[layer][a:b] = hidden[1][layer]
        self.ids[a:b] = ids
        self.used = b

    def keep(self, rows: list[int]) -> None:
        """Keep only these used rows, in this order, at the top; free rows are zeroed."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        k = len(rows)
        for t in self._state(self.stepper):
            t[:k] = t.index_select(0, index)
            t[k:].zero_()
        self.ids[:k] = self.ids.index_select(0, index)
        self.ids[k:] = 0
        self.used = k
        self._resize(max(k, 1))

    def step(self) -> torch.Tensor:
        """Unscaled logits (used, V) of every used row after one step on its id: a view the next step
        overwrites."""
        self._step_threads_set()
        return self.stepper.step(self.ids)[: self.used]

    @property
    def alone(self) -> bool:
        """One row in use, in a one-row stepper on the CPU: it can step on its id as an int (`step_one`), as
        `charnn sample` steps one stream there (on CUDA it replays a graph instead)."""
        return self.used == 1 and self.stepper.batch_size == 1 and self.device.type == "cpu"

    def step_one(self, i: int) -> torch.Tensor:
        """`step` for rows `alone` on the id `i` (the stepper's one-stream program: the same arithmetic, without
        tensor ops of its own), unscaled logits (1, V); `ids` is not read, nor written: `feed` it after."""
        self._step_threads_set()
        return self.stepper.step(i)

    def _step_threads_set(self) -> None:
        """The torch threads for a step of the stepper in use (changed only when they differ: the check is cheap,
        the change is not)."""
        batch = self.stepper.batch_size
        if self._threads != self._step_threads[batch]:
            self.threads(batch)

    def feed(self, ids: torch.Tensor) -> None:
        """The ids (used,) the used rows step on next."""
        self.ids[: self.used] = ids

    def threads(self, batch: int | None) -> None:
        """One CPU thread for small steps (`charnn.sampling.stepper.few_threads`' rule); all of them for model calls
        and large batches (`batch` None: a model call)."""
        want = self.default_threads if batch is None else self._step_threads[batch]
        if want != self._threads:
            torch.set_num_threads(want)
            self._threads = want


def powers_of_two(limit: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `limit`, and `limit`: the batch sizes rows move between."""
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    return tuple(sorted({*sizes, limit}))


WARM_WORK = 1 << 24  # floats of rnn output one warming pass may hold (64 MB): long primes go a few at a time


def same_length(joining: list, hidden: int) -> list[list]:
    """Joining jobs (each with `.job.prime`) in passes of one prime length and at most WARM_WORK floats."""
    groups: dict[int, list[list]] = {}
    for running in joining:
        length = len(running.job.prime)
        passes = groups.setdefault(length, [[]])
        if passes[-1] and (len(passes[-1]) + 1) * length * hidden > WARM_WORK:
            passes.append([])
        passes[-1].append(running)
    return [p for passes in groups.values() for p in passes]


def warm(model: CharRNN, primes: list[list[int]]) -> tuple[torch.Tensor, Hidden]:
    """One pass over same-length primes, one row each (a job's streams share it): the last position's
    logits (J, V) and the state after it. Only the last position goes through the head."""
    x = torch.tensor(primes, device=model.head.weight.device)  # (J, P)
    out, hidden = run_rnn(model.rnn, model.locked(model.embed(x)), None)  # (J, P, H)
    return model.output(out[:, -1]).float(), hidden


def rows_of(hidden: Hidden, j: int, n: int) -> Hidden:
    """Row j of a module-shaped state, repeated for n streams."""
    if isinstance(hidden, tuple):
        return tuple(t[:, j : j + 1].expand(-1, n, -1) for t in hidden)
    return hidden[:, j : j + 1].expand(-1, n, -1)
