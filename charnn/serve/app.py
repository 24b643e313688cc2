"""The HTTP API of `charnn serve` (FastAPI): routes, errors as `{"error": "one line"}`, the body-size cap, and
Server-Sent Events for streamed generation. Every model call goes to the engine's worker thread, so the event
loop never waits on the model. Not the process (uvicorn, signals): charnn.serve.server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from charnn.config import to_dict
from charnn.errors import CharnnError
from charnn.evaluate import evaluate_ids
from charnn.export.html import build_page
from charnn.model import num_parameters
from charnn.sampling.generate import default_prime
from charnn.serve.engine import Engine
from charnn.serve.jobs import Job, Output, ServerBusy
from charnn.serve.schemas import (
    GenerateRequest,
    GenerateResponse,
    NextRequest,
    NextResponse,
    ScoreRequest,
    ScoreResponse,
    as_file_text,
    text_ids,
)
from charnn.store.checkpoint import LoadedModel
from charnn.version import __version__

log = logging.getLogger("charnn.serve")


class SafeJSON(JSONResponse):
    """JSON as UTF-8, or as ASCII escapes where the text holds lone surrogates (which UTF-8 cannot carry)."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


def to_json(content: Any) -> bytes:
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


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


def _errors(app: FastAPI) -> None:
    """Every refusal as `{"error": "one line"}`: 400 malformed JSON, 413 too big, 422 invalid, 503 busy; a bug
    is a 500 whose traceback Starlette logs after this reply, and the server goes on."""

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
        return reply(500, "internal server error (see the server log)")

    for kind, handler in (
        (ApiError, api),
        (ServerBusy, busy),
        (CharnnError, user),
        (HTTPException, http),
        (RequestValidationError, invalid),
        (Exception, bug),
    ):
        app.add_exception_handler(kind, handler)


def create_app(
    loaded: LoadedModel,
    *,
    max_batch: int = 64,
    max_length: int = 10_000,
    max_body: int = 1 << 20,
    **engine_options: Any,
) -> FastAPI:
    """The API for one loaded model; its engine thread starts and stops with the app's lifespan.
    `engine_options` go to `charnn.serve.engine.Engine` (sizes, max_waiting, flush_every, tuning)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        engine = Engine(
            loaded.model,
            loaded.vocab,
            lambda out: loop.call_soon_threadsafe(_deliver, out),
            max_batch=max_batch,
            **engine_options,
        )
        app.state.engine = engine
        engine.start()
        try:
            yield
        finally:
            engine.close()
            await asyncio.to_thread(engine.join, 5.0)

    app = FastAPI(
        title="charnn",
        version=__version__,
        lifespan=lifespan,
        default_response_class=SafeJSON,
        description="A character-level language model over HTTP: generate (streamed or not), score, "
        "and the next characters' probabilities.",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body)
    _errors(app)
    _routes(app, loaded, max_batch=max_batch, max_length=max_length)
    return app


def _deliver(outputs: list[Output]) -> None:
    """On the event loop: each job's text to its response's queue."""
    for out in outputs:
        out.job.handle.put_nowait(out)


def _check_length(what: str, n: int, max_length: int) -> None:
    if n > max_length:
        raise ApiError(422, f"{what}: {n} characters is over this server's limit of {max_length} (--max-length)")


# long: one closure per route, each short; they share the loaded model and the limits
def _routes(app: FastAPI, loaded: LoadedModel, *, max_batch: int, max_length: int) -> None:
    vocab, model = loaded.vocab, loaded.model

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        engine = request.app.state.engine
        return {"status": "ok", "streams": engine.streams, "waiting": engine.waiting}

    @app.get("/v1/model")
    async def model_info() -> dict:
        cfg = loaded.model_cfg
        symbols = list(vocab.symbols) if vocab.bytes_mode else [chr(s) for s in vocab.symbols]
        val = loaded.val_loss
        return {
            "checkpoint": loaded.path.name,
            "step": loaded.step,
            "model": to_dict(cfg),
            "parameters": num_parameters(cfg, len(vocab)),
            "vocab_size": len(vocab),
            "bytes": vocab.bytes_mode,
            "vocab": symbols,
            "val_loss": val,
            "val_bpc": None if val is None else val / math.log(2),
            "eval_segment": loaded.eval_segment,
            "max_batch": max_batch,
            "max_length": max_length,
            "charnn_version": __version__,
        }

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
    )
    async def generate(body: GenerateRequest, request: Request):
        _check_length("length", body.length, max_length)
        _check_length("prime", len(body.prime or ""), max_length)
        if body.num_samples > max_batch:
            raise ApiError(422, f"num_samples: at most {max_batch} (this server's --max-batch)")
        ids = text_ids(body.prime, vocab, what="prime")[0].tolist() if body.prime else default_prime(vocab)
        job = Job(body.config(), ids, stream=body.stream, handle=asyncio.Queue())
        request.app.state.engine.submit(job)
        if body.stream:
            return StreamingResponse(
                _events(job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _collect(job, request)

    @app.post("/v1/score", response_model=ScoreResponse, response_model_exclude_unset=True)
    async def score(body: ScoreRequest, request: Request) -> dict:
        _check_length("text", len(body.text), max_length)
        ids, unknown = text_ids(
            as_file_text(body.text, loaded.data_cfg), vocab, what="text", skip_unknown=body.skip_unknown
        )
        segment = loaded.eval_segment
        res = await _on_engine(request, lambda: evaluate_ids(model, ids, segment=segment))
        figures = {k: _finite(v) if isinstance(v, float) else v for k, v in res.as_dict().items()}
        bits = await _on_engine(request, lambda: _surprise(model, ids.tolist())) if body.per_char else None
        return {**figures, "unknown_chars": unknown, **({"bits": bits} if body.per_char else {})}

    @app.post("/v1/next", response_model=NextResponse)
    async def next_chars(body: NextRequest, request: Request) -> dict:
        _check_length("text", len(body.text), max_length)
        ids = text_ids(body.text, vocab, what="text")[0].tolist() if body.text else default_prime(vocab)
        k = min(body.k, len(vocab))
        probs, top = await _on_engine(request, lambda: _next(model, ids, k))
        return {
            "next": [
                {"char": _char(vocab, i), "symbol": vocab.symbols[i], "prob": p}
                for p, i in zip(probs, top, strict=True)
            ]
        }

    page = build_page(loaded, server={"max_length": max_length, "max_batch": max_batch})

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        """The playground page of `charnn export`, asking this server instead of holding the weights."""
        return HTMLResponse(page)


async def _on_engine(request: Request, fn: Any) -> Any:
    return await asyncio.wrap_future(request.app.state.engine.call(fn))


def _next(model: Any, ids: list[int], k: int) -> tuple[list[float], list[int]]:
    """The k most likely next symbols after `ids` (one pass), with their probabilities at temperature 1."""
    import torch

    with torch.inference_mode():
        logits, _ = model(torch.tensor([ids], device=model.head.weight.device))
        top = logits[0, -1].float().softmax(-1).topk(k)
    return top.values.tolist(), top.indices.tolist()


def _surprise(model: Any, ids: list[int]) -> list[float | None]:
    """Each symbol's surprise in bits, -log2 p(symbol | the symbols before it), from the second symbol on."""
    import torch

    if len(ids) < 2:
        return []
    with torch.inference_mode():
        logits, _ = model(torch.tensor([ids], device=model.head.weight.device))
        logp = logits[0, :-1].float().log_softmax(-1)
        nats = -logp.gather(1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0]
    return [_finite(b) for b in (nats / math.log(2)).tolist()]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _char(vocab: Any, i: int) -> str:
    text = vocab.decode([i])
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


async def _collect(job: Job, request: Request) -> dict:
    """The whole answer of a non-streamed request; a client that leaves while it waits cancels the job."""
    texts = [""] * job.cfg.num_samples
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
            if out.end == "complete":
                return {"texts": texts, "chars": sum(map(len, texts))}
            if out.end is not None:
                raise ApiError(503 if out.end == "shutdown" else 500, out.message or out.end)
    finally:
        job.cancelled = True  # a no-op once it ended; frees the rows if this handler was cancelled


async def _events(job: Job) -> AsyncIterator[bytes]:
    """Server-Sent Events: `data: {"index": i, "text": ...}` per stream and chunk, then `event: done` with
    `{"chars": N, "complete": bool}` (or `event: error`). Leaving early (the client is gone) cancels the job."""
    chars = 0
    try:
        while True:
            out: Output = await job.handle.get()  # Starlette cancels this when the client disconnects
            for index, text in enumerate(out.texts):
                if text:
                    chars += len(text)
                    yield b"data: " + to_json({"index": index, "text": text}) + b"\n\n"
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
