"""The HTTP API of `charnn serve` (FastAPI): the app and its native routes, for one model or several (each
with its own engine: charnn.serve.models). Every model call goes to an engine's worker thread, so the event loop
never waits on the model. Not how a body is read (strict JSON: charnn.serve.bodies), how answers and refusals
are encoded (JSON, Server-Sent Events, `{"error": "one line"}`: charnn.serve.replies), the OpenAI-compatible
routes (charnn.serve.openai_api), nor the process (uvicorn, signals): charnn.serve.server.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline

from charnn.config import to_dict
from charnn.evaluate import evaluate_ids
from charnn.export.html import build_page
from charnn.sampling.generate import default_prime
from charnn.serve.bodies import StrictRoute
from charnn.serve.jobs import Job
from charnn.serve.metrics import CountRequests, Metrics
from charnn.serve.middleware import Bugs, HeadAsGet
from charnn.serve.models import Models, serving
from charnn.serve.openai_api import add_openai_routes
from charnn.serve.replies import ApiError, BodyLimit, SafeJSON, add_error_handlers, b64, collect, events
from charnn.serve.schemas import (
    GenerateRequest,
    GenerateResponse,
    NextRequest,
    NextResponse,
    ScoreRequest,
    ScoreResponse,
    as_file_text,
    check_length,
    text_ids,
)
from charnn.shapes import num_parameters
from charnn.store.checkpoint import LoadedModel
from charnn.version import __version__


def create_app(
    loaded: LoadedModel | Mapping[str, LoadedModel],
    *,
    max_batch: int = 64,
    max_length: int = 10_000,
    max_body: int = 1 << 20,
    **engine_options: Any,
) -> FastAPI:
    """The API for one loaded model, or several by name (the first answers requests that name none); each
    model's engine thread starts and stops with the app's lifespan. `engine_options` go to
    `charnn.serve.engine.Engine` (sizes, max_waiting, flush_every, tuning)."""
    models, metrics = Models(loaded), Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        try:
            for served in models:
                served.start(loop, metrics, max_batch=max_batch, **engine_options)
            app.state.engine = models.default.engine
            yield
        finally:
            for engine in models.engines():
                engine.close()
            for engine in models.engines():
                await asyncio.to_thread(engine.join, 5.0)

    app = FastAPIOffline(  # /docs and /redoc with their scripts from the installed package: no CDN
        title="charnn",
        version=__version__,
        lifespan=lifespan,
        default_response_class=SafeJSON,
        description="A character-level language model over HTTP: generate (streamed or not), score, "
        "and the next characters' probabilities.",
    )
    app.state.models, app.state.metrics = models, metrics
    app.router.route_class = StrictRoute  # every JSON body read strictly (charnn.serve.bodies)
    app.add_middleware(Bugs)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_middleware(CountRequests, metrics=metrics)
    app.add_middleware(HeadAsGet)
    add_error_handlers(app)
    _routes(app, models.default.loaded, max_batch=max_batch, max_length=max_length)
    add_openai_routes(app, max_batch=max_batch, max_length=max_length)
    return app


# long: one closure per route, each short; they share the limits (and the page, the default model's)
def _routes(app: FastAPI, default: LoadedModel, *, max_batch: int, max_length: int) -> None:
    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        engines = request.app.state.models.engines()
        return {"status": "ok", "streams": sum(e.streams for e in engines), "waiting": sum(e.waiting for e in engines)}

    @app.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (docs/serve.md says what each means)."""
        body, content_type = request.app.state.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/model")
    async def model_info(request: Request, model: str | None = None) -> dict:
        loaded = serving(request, model).loaded
        vocab, cfg = loaded.vocab, loaded.model_cfg
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
        response_model_exclude_unset=True,
        responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
    )
    async def generate(body: GenerateRequest, request: Request):
        served = serving(request, body.model)
        vocab = served.loaded.vocab
        check_length("length", body.length, max_length, unit="bytes" if vocab.bytes_mode else "characters")
        if body.num_samples > max_batch:
            raise ApiError(422, f"num_samples: at most {max_batch} (this server's --max-batch)")
        prime = text_ids(body.prime, vocab, what="prime", max_length=max_length)[0] if body.prime else None
        ids = default_prime(vocab) if prime is None else prime.tolist()
        job = Job(body.config(), ids, stream=body.stream, handle=asyncio.Queue())
        served.submit(job)
        if body.stream:
            return StreamingResponse(
                events(job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        answer = await collect(job, request)
        if body.novelty and isinstance(answer, dict):
            answer["novelty"] = await asyncio.to_thread(served.novelty.texts, answer["texts"])
        return answer

    @app.post("/v1/score", response_model=ScoreResponse, response_model_exclude_unset=True)
    async def score(body: ScoreRequest, request: Request) -> dict:
        served = serving(request, body.model)
        loaded, model = served.loaded, served.loaded.model
        text = as_file_text(body.text, loaded.data_cfg)  # the limit counts what is read, after normalisation
        ids, unknown = text_ids(text, loaded.vocab, what="text", max_length=max_length, skip_unknown=body.skip_unknown)
        segment = loaded.eval_segment
        res = await served.call(lambda: evaluate_ids(model, ids, segment=segment))
        figures = {k: _finite(v) if isinstance(v, float) else v for k, v in res.as_dict().items()}
        bits = await served.call(lambda: _surprise(model, ids.tolist())) if body.per_char else None
        return {**figures, "unknown_chars": unknown, **({"bits": bits} if body.per_char else {})}

    @app.post("/v1/next", response_model=NextResponse, response_model_exclude_unset=True)
    async def next_chars(body: NextRequest, request: Request) -> dict:
        served = serving(request, body.model)
        vocab, model = served.loaded.vocab, served.loaded.model
        text = text_ids(body.text, vocab, what="text", max_length=max_length)[0] if body.text else None
        ids = default_prime(vocab) if text is None else text.tolist()
        k = min(body.k, len(vocab))
        probs, top = await served.call(lambda: _next(model, ids, k))
        return {"next": [{**_candidate(vocab, i), "prob": p} for p, i in zip(probs, top, strict=True)]}

    page = build_page(default, server={"max_length": max_length, "max_batch": max_batch})

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        """The playground page of `charnn export`, asking this server instead of holding the weights."""
        return HTMLResponse(page)


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


def _candidate(vocab: Any, i: int) -> dict:
    """A next symbol: its character; for a byte-level model the byte (base64, which tells the bytes of one
    character apart) and the character only when the byte is one by itself (ASCII)."""
    symbol = vocab.symbols[i]
    if not vocab.bytes_mode:
        return {"char": chr(symbol), "symbol": symbol}
    return {"char": chr(symbol) if symbol < 0x80 else None, "symbol": symbol, "bytes": b64(bytes([symbol]))}
