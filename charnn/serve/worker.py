"""The engine in a process of its own (`charnn serve --engine process`): the same `Engine`, run in a child process
that loads the same checkpoint, so the model's steps do not share the interpreter lock with the event loop.
`ProcessEngine` has `Engine`'s interface for the web layer; jobs, cancellations and text cross two pipes.
Not the batching itself: charnn.serve.engine.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from charnn.serve.engine import Engine
from charnn.serve.jobs import Job, Output, ServerBusy
from charnn.store.checkpoint import LoadedModel

log = logging.getLogger("charnn.serve")
START_S = 120.0  # the child imports torch, loads the checkpoint and builds its steppers


class ProcessEngine:
    """`Engine`'s interface over a child process running one. Jobs are sent as they are submitted; a job the web
    layer cancels is cancelled in the child within `poll` seconds; outputs (and recorded logits) come back on a
    reader thread, which calls `sink` as the engine would. Model calls (`call`: scoring, next characters) run
    in this process, on one thread of their own, with the model loaded here."""

    def __init__(
        self,
        loaded: LoadedModel,
        sink: Callable[[list[Output]], None],
        *,
        max_batch: int = 64,
        max_waiting: int = 1024,
        on_step: Callable[[int], None] | None = None,
        poll: float = 0.02,
        **engine_options: Any,
    ) -> None:
        self.loaded, self.sink, self.on_step, self.poll = loaded, sink, on_step, poll
        self.max_batch, self.max_waiting = max_batch, max_waiting
        ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads' locks
        self._counts = ctx.Array("i", 2, lock=False)  # streams, waiting: written by the child
        child_commands, self._commands = ctx.Pipe(duplex=False)  # (receiving end, sending end)
        self._outputs, child_outputs = ctx.Pipe(duplex=False)
        device = str(loaded.model.head.weight.device)
        options = dict(engine_options, max_batch=max_batch, max_waiting=max_waiting)
        self._process = ctx.Process(
            target=_child,
            args=(child_commands, child_outputs),
            kwargs={"path": str(loaded.path), "device": device, "options": options, "counts": self._counts},
            name="charnn-serve-engine",
            daemon=True,
        )
        self._send_lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._cancel_sent: set[int] = set()
        self._ids = itertools.count()
        self._closing = self._draining = False
        self._calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="charnn-serve-calls")
        self._reader = threading.Thread(target=self._read, name="charnn-serve-reader", daemon=True)

    def start(self) -> None:
        """Start the child and wait until its engine runs (a RuntimeError if it does not)."""
        self._process.start()
        if not self._outputs.poll(START_S) or self._outputs.recv() != ("ready",):
            self._process.kill()
            raise RuntimeError("the engine process did not start (see the log above)")
        self._reader.start()

    def submit(self, job: Job) -> None:
        if job.cfg.num_samples > self.max_batch:
            raise ServerBusy(
                f"num_samples {job.cfg.num_samples} is more than this server's --max-batch {self.max_batch}"
            )
        if self._closing or self._draining:
            raise ServerBusy("the server is shutting down")
        if len(self._jobs) >= self.max_waiting + self.max_batch:  # unfinished jobs: those running, the rest wait
            raise ServerBusy(f"too many requests waiting ({self.max_waiting}); try again later")
        key = next(self._ids)
        self._jobs[key] = job
        self._send(("submit", key, job.cfg, job.prime, job.stream, job.keep_logits))

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        if self._closing or self._draining:
            raise ServerBusy("the server is shutting down")
        return self._calls.submit(_inference, fn)

    def drain(self) -> None:
        """Stop taking work; the jobs generating in the child run on (charnn.serve.engine.Engine.drain)."""
        if not self._closing:
            self._draining = True
            self._send(("drain",))

    def close(self) -> None:
        """Stop taking work; the child ends every open and waiting job with "shutdown", then exits."""
        if not self._closing:
            self._closing = True
            self._send(("close",))

    def join(self, timeout: float | None = None) -> None:
        if self._reader.ident is not None:
            self._reader.join(timeout)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
        self._calls.shutdown(wait=False)

    @property
    def streams(self) -> int:
        return self._counts[0]

    @property
    def waiting(self) -> int:
        return self._counts[1]

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._commands.send(message)
            except (BrokenPipeError, OSError):  # the child is gone: the reader ends its jobs
                pass

    def _read(self) -> None:
        """Outputs from the child to `sink`; cancellations the other way, checked every `poll` seconds."""
        end, why = "shutdown", "the server is shutting down"
        try:
            while True:
                if self._outputs.poll(self.poll):
                    message = self._outputs.recv()
                    if message[0] == "closed":
                        return
                    self._deliver(*message[1:])
                self._forward_cancels()
        except (EOFError, OSError):
            log.error("the engine process ended unexpectedly")
            end, why = "error", "the engine process ended unexpectedly (see the server log)"
        finally:
            ended = [Output(job, ("",) * job.cfg.num_samples, end, why) for job in self._jobs.values()]
            self._jobs.clear()
            if ended:
                self.sink(ended)

    def _deliver(self, outputs: list[tuple], steps: dict[int, int]) -> None:
        delivered = []
        for key, texts, end, message, logits in outputs:
            job = self._jobs.get(key)
            if job is None:
                continue
            if logits is not None:
                job.logits.extend(torch.from_numpy(logits))
            if end is not None:
                del self._jobs[key]
                self._cancel_sent.discard(key)
            delivered.append(Output(job, texts, end, message))
        if delivered:
            self.sink(delivered)
        if self.on_step is not None:
            for size, count in steps.items():
                for _ in range(count):
                    self.on_step(size)

    def _forward_cancels(self) -> None:
        for key, job in list(self._jobs.items()):
            if job.cancelled and key not in self._cancel_sent:
                self._cancel_sent.add(key)
                self._send(("cancel", key))


def _inference(fn: Callable[[], Any]) -> Any:
    with torch.inference_mode():
        return fn()


# long: the child's whole life, one loop over the parent's commands
def _child(commands: Any, outputs: Any, *, path: str, device: str, options: dict, counts: Any) -> None:
    """In the child: load the checkpoint, run an `Engine` whose sink sends to the parent, obey commands."""
    from charnn.store.checkpoint import load_model

    for sig in (signal.SIGINT, signal.SIGTERM):  # a Ctrl-C reaches the whole process group: the parent decides
        signal.signal(sig, signal.SIG_IGN)

    loaded = load_model(path, device=device)
    jobs: dict[int, Job] = {}
    sent: dict[int, int] = {}  # logits already sent, per job
    steps: Counter[int] = Counter()
    send_lock = threading.Lock()

    def on_step(rows: int) -> None:
        steps[rows] += 1

    def sink(outs: list[Output]) -> None:  # the engine's thread
        message = []
        for out in outs:
            key = out.job.handle
            logits = None
            if out.job.keep_logits and len(out.job.logits) > sent.get(key, 0):
                logits = torch.stack(out.job.logits[sent.get(key, 0) :]).cpu().numpy()  # kept on the model's device
                sent[key] = len(out.job.logits)
            if out.end is not None:
                jobs.pop(key, None)
                sent.pop(key, None)
            message.append((key, out.texts, out.end, out.message, logits))
        counts[0], counts[1] = engine.streams, engine.waiting
        taken = dict(steps)
        steps.clear()
        with send_lock:
            outputs.send(("out", message, taken))

    engine = Engine(loaded.model, loaded.vocab, sink, on_step=on_step, **options)
    engine.start()
    outputs.send(("ready",))
    try:
        while True:
            try:
                message = commands.recv()
            except EOFError:  # the parent is gone
                break
            if message[0] == "submit":
                _, key, cfg, prime, stream, keep = message
                job = Job(cfg, prime, stream=stream, handle=key, keep_logits=keep)
                jobs[key] = job
                try:
                    engine.submit(job)
                except ServerBusy as err:
                    sink([Output(job, ("",) * cfg.num_samples, "shutdown", str(err))])
            elif message[0] == "cancel" and message[1] in jobs:
                jobs[message[1]].cancelled = True
            elif message[0] == "drain":
                engine.drain()
            elif message[0] == "close":
                break
    finally:
        engine.close()
        engine.join(10.0)
        counts[0] = counts[1] = 0
        with send_lock:
            outputs.send(("closed",))
