"""The `charnn serve` process: uvicorn on a socket bound here (a port in use is a one-line error), and
SIGINT/SIGTERM as a clean stop: no new requests, the requests generating given a grace period to finish, the rest
ended with their final event or a 503, exit status 0. Not the API: charnn.serve.app.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import math
import os
import signal
import socket
import threading
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import uvicorn

from charnn.errors import CharnnError, CharnnWarning
from charnn.serve import GRACE_S
from charnn.serve.app import create_app
from charnn.store.checkpoint import LoadedModel


class _Server(uvicorn.Server):
    """uvicorn, except that a stop signal drains the engine (nothing new; the streams generating run on for
    `grace` seconds, then end with their final event) rather than wait for every stream however long, and is not
    re-raised after the shutdown (the process exits 0: stopping is the normal end)."""

    def __init__(self, config: uvicorn.Config, app: Any, grace: float) -> None:
        super().__init__(config)
        self.api, self.grace = app, grace
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may (uvicorn too)
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        before = {sig: signal.signal(sig, self._stop) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, frame: Any) -> None:
        again = self.should_exit
        if again and signum == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for anything
        self.should_exit = True  # uvicorn stops listening, and closes each connection after its answer
        if self.loop is not None:  # on the loop, not in the handler: the engine's lock may be held right here
            self.loop.call_soon_threadsafe(self._drain, 0.0 if again else self.grace)

    def _drain(self, grace: float) -> None:
        models = getattr(self.api.state, "models", None)
        for engine in models.engines() if models is not None else []:
            engine.drain()
            if grace > 0:
                asyncio.get_running_loop().call_later(grace, engine.close)
            else:
                engine.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a CharnnError saying why not (port in use, no such address)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        # The protocol named (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every answer after the first on a kept-alive connection waits ~40 ms for a delayed ACK.
        sock = socket.socket(info[0], socket.SOCK_STREAM, info[2] or socket.IPPROTO_TCP)
        if os.name == "posix":  # on Windows it would share a port another server holds (asyncio's rule too)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as err:
        raise CharnnError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def serve(
    loaded: LoadedModel | Mapping[str, LoadedModel],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 64,
    max_length: int = 10_000,
    grace: float = GRACE_S,
    log_level: str = "info",
    **engine_options: Any,
) -> None:
    """Serve `loaded` (one model, or several by name) over HTTP until SIGINT/SIGTERM; returns after a clean stop,
    which gives the requests generating `grace` seconds to finish."""
    app = create_app(loaded, max_batch=max_batch, max_length=max_length, **engine_options)
    sock = bind(host, port)
    port = sock.getsockname()[1]  # the port listened on: --port 0 picks one
    if not _is_loopback(host):
        warnings.warn(
            CharnnWarning(
                f"--host {host}: anyone who can reach this machine on port {port} can use "
                f"the model (there is no authentication)"
            ),
            stacklevel=2,
        )
    logging_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logging_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout stays clean: all logs on stderr
    config = uvicorn.Config(  # uvicorn's own wait: the grace, then a moment for the final events to go out
        app,
        log_level=log_level,
        log_config=logging_config,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(grace) + 2,
    )
    server = _Server(config, app, grace)
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info("charnn serve: http://%s:%d (API reference at /docs)", shown, port)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
