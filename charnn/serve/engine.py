"""Continuous batching for `charnn serve`: concurrent generation requests share one batched recurrent step
(`charnn.sampling.stepper.FastStepper`), each stream one row with its own state, sampling options and seeded generator.
A request joins the running batch at the next step and leaves when it is done; the rest wait in a queue. The batch
steps in windows of a few steps (charnn.serve.window), a lone stream as `charnn sample` steps one (charnn.serve.lone)
until another joins.
One worker thread runs every model call; the web layer (charnn.serve.app) gets characters back through the
`sink` callback. Not HTTP: nothing here imports FastAPI.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from charnn.data import Vocab
from charnn.errors import CharnnError
from charnn.model import CharRNN, Hidden
from charnn.sampling.stepper import MEASURED, Tuning
from charnn.serve.delivery import Delivery
from charnn.serve.jobs import Job, Output, Running, ServerBusy, draw, draw_groups
from charnn.serve.lone import step_alone
from charnn.serve.rows import RowBatch, powers_of_two, rows_of, same_length, warm
from charnn.serve.window import Window

log = logging.getLogger("charnn.serve")


class Engine:
    """The worker thread: admits waiting jobs, steps the active streams a window further, hands text to `sink`.

    `sizes` are the batch sizes the streams are packed into: the smallest that holds them all runs each step
    (powers of two up to `max_batch` by default; one size steps free rows too). `sink(outputs)` is called on
    the worker thread at once for a job's first text or its end, and otherwise every `flush_every` seconds
    up to 16 streamed jobs, less often with more (`charnn.serve.delivery.Delivery`). `threads`: torch threads for
    steps (`charnn.serve.rows.serving_threads` by default). `on_step(rows)`, if given, hears each step's size.
    While one stream is in use in the one-row stepper (`RowBatch.alone`), it runs the one-stream path
    (`charnn.serve.lone.step_alone`), many steps a round; `alone_steps` counts its steps.
    """

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocab,
        sink: Callable[[list[Output]], None],
        *,
        max_batch: int = 64,
        sizes: tuple[int, ...] | None = None,
        max_waiting: int = 1024,
        flush_every: float = 0.02,
        tuning: Tuning = MEASURED,
        threads: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.vocab, self.sink, self.on_step = model.eval(), vocab, sink, on_step
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.out = Delivery(sink, flush_every)
        self.rows = RowBatch(model, sizes or powers_of_two(max_batch), tuning=tuning, threads=threads)
        self._cond = threading.Condition()
        self._inbox: deque[Job] = deque()  # submitted, guarded by _cond
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._closing = False
        self._draining = False  # `drain`: no new work; the jobs generating run on
        self._waiting: deque[Job] = deque()  # worker thread only, from here down
        self._active: list[Running] = []  # in row order: job k holds rows starts[k] .. starts[k] + n
        self._groups: list[tuple[list[Running], torch.Tensor | None]] = []  # `draw_groups`
        self._window = Window(max_batch, self.rows.device)
        self.alone_steps = 0
        self._thread = threading.Thread(target=self._run, name="charnn-serve-engine", daemon=True)

    # --- the web layer's side (any thread) -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; ServerBusy when too many wait or the engine is closing."""
        if job.cfg.num_samples > self.max_batch:
            raise ServerBusy(
                f"num_samples {job.cfg.num_samples} is more than this server's --max-batch {self.max_batch}"
            )
        with self._cond:
            if self._closing or self._draining:
                raise ServerBusy("the server is shutting down")
            if len(self._inbox) + len(self._waiting) >= self.max_waiting:
                raise ServerBusy(f"too many requests waiting ({self.max_waiting}); try again later")
            self._inbox.append(job)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn()` on the worker thread between two steps (scoring, next-character probabilities)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closing or self._draining:
                raise ServerBusy("the server is shutting down")
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    def drain(self) -> None:
        """Stop taking work: new jobs and calls are refused, waiting jobs end with "shutdown", the jobs already
        generating and the calls already queued run on (until they end, or `close`)."""
        with self._cond:
            self._draining = True
            self._cond.notify()

    def close(self) -> None:
        """Stop taking work; the worker ends every open and waiting job with "shutdown", then exits."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def streams(self) -> int:
        """Rows in use now (read from any thread: a snapshot)."""
        return self.rows.used

    @property
    def waiting(self) -> int:
        return len(self._inbox) + len(self._waiting)

    # --- the worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():  # thread-local: entered once, on this thread
                while self._cycle():
                    pass
        except BaseException:  # a bug in the loop itself: say so, and end every request rather than hang it
            log.exception("the generation engine failed")
            raise
        finally:
            self._end_everything("shutdown", "the server is shutting down")

    def _cycle(self) -> bool:
        """One round: take new work (sleeping while there is none), run model calls, admit, step, deliver."""
        with self._cond:
            while not (self._inbox or self._calls or self._active or self._waiting or self._closing):
                self._cond.wait()
            if self._closing:
                return False
            calls = self._take_inbox()
            if self._draining:
                self._end_waiting("shutdown", "the server is shutting down")
        for fn, future in calls:
            if future.set_running_or_notify_cancel():
                self._call(fn, future)
        try:
            self._admit()
            if self._active:
                self._step()
        except Exception:  # a bug: the rows' state is unknown, so every open stream ends with an error
            log.exception("generation step failed")
            self._end_active("error", "internal error while generating (see the server log)")
        self.out.flush(self._active)
        return True

    def _call(self, fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
        self.rows.threads(None)
        try:
            future.set_result(fn())
        except BaseException as err:  # handed to the caller, who maps it (a user error or a logged 500)
            future.set_exception(err)

    def _admit(self) -> None:
        """Start the waiting jobs that fit, in order: their primes warmed in few passes (`rows.warm`), each job's
        state copied into its rows, and its first symbol drawn from its prime's last logits."""
        joining: list[Running] = []
        free = self.max_batch - self.rows.used
        while self._waiting and (self._waiting[0].cancelled or self._waiting[0].cfg.num_samples <= free):
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            if job.cfg.length == 0:
                self.out.ended.append(Running(job, self.vocab).output("complete"))
                continue
            joining.append(Running(job, self.vocab))
            free -= job.cfg.num_samples
        if not joining:
            return
        self.rows.threads(None)
        for group in same_length(joining, self.model.cfg.hidden):
            logits, hidden = warm(self.model, [a.job.prime for a in group])  # (J, V), rows (L, J, H)
            for j, active in enumerate(group):
                self._start(active, logits[j : j + 1].expand(active.n, -1), rows_of(hidden, j, active.n))
        self._regroup()

    def _start(self, active: Running, first: torch.Tensor, hidden: Hidden) -> None:
        """A warmed job: its first symbols (drawn from `first`, (n, V)), then its rows, unless it is done."""
        if active.job.keep_logits:
            active.job.logits.append(first.clone())
        try:
            ids = draw(active.job.cfg, first, active.uniforms(1).reshape(-1, 1).to(first.device))[:, 0]  # (n,)
        except CharnnError as err:  # non-finite probabilities: the model's outputs overflow
            self.out.end(active, "error", str(err))
            return
        active.take(ids.tolist())
        if active.done == active.length:
            self.out.end(active, "complete")
            return
        self.rows.add(hidden, ids)
        self._active.append(active)

    def _step(self) -> None:
        """Every active stream a window of symbols further (`charnn.serve.window.Window`): until the window is
        over, new work or a model call arrives, the engine closes, or text is due; then finished, failed and
        cancelled jobs leave their rows."""
        if self.rows.alone:
            self._step_alone()
            return
        until = self.out.until(self._active)
        self._window.open(self._active, self._groups)
        self._window.run(self.rows, lambda: not self._busy() and time.monotonic() < until, self.on_step)
        self._window.hand_out(self._active)
        for active, message in self._window.failed.items():
            self.out.end(active, "error", message)
        self._drop_left()

    def _busy(self) -> bool:
        """New work, a model call, or closing: a look without the lock (what it misses now, it sees after the
        next step)."""
        return bool(self._inbox or self._calls or self._closing)

    def _step_alone(self) -> None:
        """The lone stream many symbols further (`step_alone`): until it is done, new work or a model call
        arrives, the engine closes, its job is cancelled, or its text is due (its first text at once)."""
        active = self._active[0]
        until = self.out.until(self._active)
        before = active.done

        def go_on() -> bool:
            return not (self._busy() or active.job.cancelled) and time.monotonic() < until

        try:
            step_alone(self.rows, active, go_on, self.on_step)
        except CharnnError as err:  # a failed draw, as in `Window.step`
            self.out.end(active, "error", str(err))
        self.alone_steps += active.done - before
        self._drop_left()

    def _drop_left(self) -> None:
        """End the jobs that drew their length or were cancelled (complete first), and free the rows of every job
        that ended; the rest keep their order."""
        keep, rows, start = [], [], 0
        for active in self._active:
            if active.done == active.length and not active.left:
                self.out.end(active, "complete")
            if active.job.cancelled and not active.left:
                self.out.end(active, "cancelled")
            if not active.left:
                keep.append(active)
                rows.extend(range(start, start + active.n))
            start += active.n
        if len(keep) != len(self._active):
            self._active = keep
            self.rows.keep(rows)
            self._regroup()

    def _regroup(self) -> None:
        """Rows with the same sampling options are drawn together: one draw when all share them."""
        self._groups = draw_groups(self._active)

    def _end_active(self, end: str, message: str) -> None:
        for active in self._active:
            if not active.left:
                self.out.end(active, end, message)
        self._active = []
        self.rows.keep([])
        self._groups = []

    def _take_inbox(self) -> list:
        """Under the lock: new jobs join the waiting queue; the queued model calls are handed back to run."""
        self._waiting.extend(self._inbox)
        self._inbox.clear()
        calls = list(self._calls)
        self._calls.clear()
        return calls

    def _end_waiting(self, end: str, message: str) -> None:
        self.out.ended += [Running(job, self.vocab).output(end, message) for job in self._waiting]
        self._waiting.clear()

    def _end_everything(self, end: str, message: str) -> None:
        """At close: every open and waiting job ends; model calls still queued fail."""
        with self._cond:
            self._closing = True
            calls = self._take_inbox()
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(ServerBusy(message))
        self._end_active(end, message)
        self._end_waiting(end, message)
        self.out.flush([])
