"""The models one `charnn serve` answers with: each under a name (`NAME=RUN`, or its directory's name), with its
own engine (its own continuous batch) reporting to the metrics, and which one a request means (its `model`;
the first served when it names none). Not the routes (charnn.serve.app, charnn.serve.openai_api).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import Request

from charnn.errors import CharnnError
from charnn.novelty.run import RunNovelty
from charnn.serve.engine import Engine
from charnn.serve.jobs import Job, Output
from charnn.serve.metrics import Metrics
from charnn.serve.replies import ApiError
from charnn.serve.worker import ProcessEngine
from charnn.store.checkpoint import LoadedModel


class UnknownModel(ApiError):
    """A request names a model this server does not serve (404)."""

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(404, f"model: no model named {name!r} is served here (served: {', '.join(served)})")


def name_of(path: Path) -> str:
    """The name a run is served under when none is given: its directory's (a checkpoint file's directory)."""
    path = path.resolve()
    return path.name if path.is_dir() else path.parent.name


def served_runs(specs: list[str]) -> list[tuple[str, Path]]:
    """(name, run) of each `RUN` or `NAME=RUN` on the command line (an existing path is a run even with `=`
    in it); a CharnnError for an empty name or one given twice."""
    runs: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if Path(spec).exists() or not sep:
            name, run = name_of(Path(spec)), Path(spec)
        else:
            run = Path(rest)
        if not name or name != name.strip() or any(c.isspace() for c in name):
            raise CharnnError(f"{spec}: a model's name is one word without spaces, as NAME=RUN")
        if name in {n for n, _ in runs}:
            raise CharnnError(f"two models named {name!r}: name them apart with NAME=RUN")
        runs.append((name, run))
    return runs


class Served:
    """One served model: its loaded checkpoint, and once started its engine; generation requests go through
    `submit`, which times streamed ones to their first characters, and come back through `deliver`."""

    def __init__(self, name: str, loaded: LoadedModel) -> None:
        self.name, self.loaded = name, loaded
        self.novelty = RunNovelty(loaded)  # the index is found at the first request that asks for novelty
        self.engine: Engine | ProcessEngine | None = None
        self._arrived: dict[Job, float] = {}  # submitted jobs without text yet (event loop only)
        self._first: Callable[[float], None] = lambda s: None
        self._chars: Callable[[float], None] = lambda n: None

    def start(self, loop: asyncio.AbstractEventLoop, metrics: Metrics, **engine_options: Any) -> None:
        """Start the engine, delivering to `loop`: a thread, or with `process=True` a process of its own
        (charnn.serve.worker); the other `engine_options` go to `Engine`."""
        self._first = metrics.first.labels(self.name).observe
        self._chars = metrics.chars.labels(self.name).inc
        sink = lambda outputs: loop.call_soon_threadsafe(self.deliver, outputs)  # noqa: E731
        on_step = metrics.batch.labels(self.name).observe
        if engine_options.pop("process", False):
            self.engine = ProcessEngine(self.loaded, sink, on_step=on_step, **engine_options)
        else:
            self.engine = Engine(self.loaded.model, self.loaded.vocab, sink, on_step=on_step, **engine_options)
        metrics.watch(self.name, self.engine)
        self.engine.start()

    def submit(self, job: Job) -> None:
        """Queue a generation (ServerBusy when the queue is full); its outputs go to `job.handle`, a queue."""
        self._arrived[job] = time.perf_counter()
        try:
            self.engine.submit(job)
        except BaseException:
            del self._arrived[job]
            raise

    def deliver(self, outputs: list[Output]) -> None:
        """On the event loop: each job's text to its queue, counted and timed."""
        chars = 0
        for out in outputs:
            new = sum(map(len, out.texts))
            chars += new
            if new or out.end is not None:
                arrived = self._arrived.pop(out.job, None)
                if new and arrived is not None and out.job.stream:  # others get their text at the end
                    self._first(time.perf_counter() - arrived)
            out.job.handle.put_nowait(out)
        if chars:
            self._chars(chars)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the engine's thread between two steps."""
        return await asyncio.wrap_future(self.engine.call(fn))


class Models:
    """The served models by name, in the order given; the first answers requests that name none."""

    def __init__(self, loaded: LoadedModel | Mapping[str, LoadedModel]) -> None:
        if isinstance(loaded, LoadedModel):
            loaded = {name_of(loaded.path): loaded}
        if not loaded:
            raise CharnnError("no model to serve")
        self.by_name = {name: Served(name, one) for name, one in loaded.items()}
        self.default = next(iter(self.by_name.values()))

    def __iter__(self) -> Iterator[Served]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def pick(self, name: str | None) -> Served:
        """The model named `name`, the default for None; UnknownModel otherwise."""
        if name is None:
            return self.default
        try:
            return self.by_name[name]
        except KeyError:
            raise UnknownModel(name, list(self.by_name)) from None

    def engines(self) -> list[Engine | ProcessEngine]:
        return [s.engine for s in self if s.engine is not None]


def serving(request: Request, name: str | None) -> Served:
    """The model a request names (`request.state.model` records it for the metrics)."""
    served = request.app.state.models.pick(name)
    request.state.model = served.name
    return served
