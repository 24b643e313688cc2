"""The HTTP API of `charnn serve` (FastAPI): the app and its routes. Every model call goes to the engine's worker
thread, so the event loop never waits on the model. Not how answers and refusals are encoded (JSON, Server-Sent
Events, `{"error": "one line"}`: charnn.serve.replies), nor the process (uvicorn, signals): charnn.serve.server.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from charnn.config import to_dict
from charnn.evaluate import evaluate_ids
from charnn.export.html import build_page
from charnn.model import num_parameters
from charnn.novelty.run import RunNovelty
from charnn.sampling.generate import default_prime
from charnn.serve.engine import Engine
from charnn.serve.jobs import Job, Output
from charnn.serve.replies import ApiError, BodyLimit, SafeJSON, add_error_handlers, collect, events
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
    add_error_handlers(app)
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
    novelty = RunNovelty(loaded)  # the index is found at the first request that asks for novelty

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
        response_model_exclude_unset=True,
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
                events(job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        answer = await collect(job, request)
        if body.novelty and isinstance(answer, dict):
            answer["novelty"] = await asyncio.to_thread(novelty.texts, answer["texts"])
        return answer

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
