"""How `charnn serve` answers over HTTP: JSON (RFC 8259: UTF-8, or ASCII escapes where the text holds lone
surrogates; a number that is not finite as null, -0.0 as 0.0), a generation's text whole or as Server-Sent Events
(a byte-level model's exact bytes beside it, base64), and every refusal as `{"error": "one line"}` with its status
(the body-size cap among them). Not the routes (charnn.serve.app), nor the model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from charnn.errors import CharnnError
from charnn.serve.jobs import Job, Output, ServerBusy


class SafeJSON(JSONResponse):
    """JSON as UTF-8, or as ASCII escapes where the text holds lone surrogates (which UTF-8 cannot carry)."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


def to_json(content: Any) -> bytes:
    content = finite(content)
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def finite(value: Any) -> Any:
    """`value` with every float that is not finite as None (JSON has no NaN or Infinity) and -0.0 as 0.0."""
    if isinstance(value, float):
        return (value + 0.0) if math.isfinite(value) else None  # -0.0 + 0.0 is 0.0
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def b64(data: bytes) -> str:
    """Bytes in JSON: standard base64 (RFC 4648), as a byte-level model's exact output travels."""
    return base64.b64encode(data).decode("ascii")


BUG = "internal server error (see the server log)"


class ApiError(Exception):
    """A request the server refuses: its status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyLimit:
    """Refuse request bodies over `max_bytes`: by their Content-Length before reading, and by counting what
    arrives (a chunked body has none)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"request body over {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await SafeJSON({"error": too_big}, 413)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, too_big)  # FastAPI re-raises it from its body reading as it is
            return message

        await self.app(scope, counted, send)


def _one_line(err: RequestValidationError) -> str:
    """The first validation error as `field: what is wrong` (`malformed JSON: ...` for a syntax error)."""
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse the body')}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return " ".join(f"{where}: {first.get('msg', 'invalid')}".split())


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as `{"error": "one line"}`: 400 malformed JSON, 413 too big, 415 not JSON, 422 invalid, 503
    busy; a bug is a 500 with its traceback in the log (charnn.serve.middleware.Bugs), and the server goes on."""

    def reply(status: int, message: Any) -> SafeJSON:
        return SafeJSON({"error": " ".join(str(message).split()) or "error"}, status)

    async def api(request: Request, err: ApiError) -> SafeJSON:
        return reply(err.status, err)

    async def busy(request: Request, err: ServerBusy) -> SafeJSON:
        return reply(503, err)

    async def user(request: Request, err: CharnnError) -> SafeJSON:  # unknown characters, bad options
        return reply(422, err)

    async def http(request: Request, err: HTTPException) -> SafeJSON:  # 404, 405, 413 while reading
        return reply(err.status_code, err.detail)

    async def invalid(request: Request, err: RequestValidationError) -> SafeJSON:
        message = _one_line(err)
        return reply(400 if message.startswith("malformed JSON") else 422, message)

    async def bug(request: Request, err: Exception) -> SafeJSON:
        return reply(500, BUG)

    for kind, handler in (
        (ApiError, api),
        (ServerBusy, busy),
        (CharnnError, user),
        (HTTPException, http),
        (RequestValidationError, invalid),
        (Exception, bug),
    ):
        app.add_exception_handler(kind, handler)


async def collect(job: Job, request: Request) -> dict:
    """The whole answer of a non-streamed request (`bytes` too for a byte-level model); a client that leaves
    while it waits cancels the job."""
    texts, data = [""] * job.cfg.num_samples, [b""] * job.cfg.num_samples
    try:
        while True:
            try:
                out: Output = await asyncio.wait_for(job.handle.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled = True
                    return SafeJSON({"error": "client disconnected"}, 499)
                continue
            texts = [t + new for t, new in zip(texts, out.texts, strict=True)]
            if out.data is not None:
                data = [d + new for d, new in zip(data, out.data, strict=True)]
            if out.end == "complete":
                exact = {"bytes": [b64(d) for d in data]} if out.data is not None else {}
                return {"texts": texts, "chars": sum(map(len, texts)), **exact}
            if out.end is not None:
                raise ApiError(503 if out.end == "shutdown" else 500, out.message or out.end)
    finally:
        job.cancelled = True  # a no-op once it ended; frees the rows if this handler was cancelled


async def events(job: Job) -> AsyncIterator[bytes]:
    """Server-Sent Events: `data: {"index": i, "text": ...}` per stream and chunk (with `"bytes"`, the chunk's
    exact bytes, for a byte-level model), then `event: done` with `{"chars": N, "complete": bool}` (or
    `event: error`). Leaving early (the client is gone) cancels the job."""
    chars = 0
    try:
        while True:
            out: Output = await job.handle.get()  # Starlette cancels this when the client disconnects
            for index, text in enumerate(out.texts):
                exact = {"bytes": b64(out.data[index])} if out.data is not None and out.data[index] else {}
                if text or exact:
                    chars += len(text)
                    yield b"data: " + to_json({"index": index, "text": text, **exact}) + b"\n\n"
            if out.end in ("complete", "shutdown", "cancelled"):
                done = {"chars": chars, "complete": out.end == "complete"}
                if out.message:
                    done["reason"] = out.message
                yield b"event: done\ndata: " + to_json(done) + b"\n\n"
                return
            if out.end is not None:
                yield b"event: error\ndata: " + to_json({"error": out.message or out.end}) + b"\n\n"
                return
    finally:
        job.cancelled = True
