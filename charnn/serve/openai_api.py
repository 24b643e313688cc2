"""The OpenAI-compatible endpoints of `charnn serve`: GET /v1/models, POST /v1/completions and
/v1/chat/completions, every refusal in OpenAI's error shape, so OpenAI's client and the tools built on it talk to
a charnn model unchanged. Not what they accept (charnn.serve.openai_schemas) nor how answers are run and shaped
(charnn.serve.openai_replies); the native endpoints are charnn.serve.app's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from charnn.errors import CharnnError
from charnn.sampling.generate import default_prime
from charnn.serve.bodies import StrictRoute
from charnn.serve.jobs import ServerBusy
from charnn.serve.models import Served, UnknownModel, serving
from charnn.serve.openai_replies import ChatShape, Generation, OpenAIError, Shape, logprobs_of
from charnn.serve.openai_schemas import CHAT_TOKENS, COMPLETION_TOKENS, ChatRequest, CompletionRequest, OpenAIRequest
from charnn.serve.replies import ApiError, to_json
from charnn.serve.schemas import text_ids

log = logging.getLogger("charnn.serve")


class OpenAIRoute(StrictRoute):
    """A route that reads its body strictly (charnn.serve.bodies) and gives every refusal, FastAPI's own
    validation of the body included, in OpenAI's shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Any:
            try:
                return await handler(request)
            except Exception as err:
                return as_openai(err).reply()

        return answer


def as_openai(err: Exception) -> OpenAIError:
    """Any refusal (or bug: a logged 500) as an OpenAIError."""
    if isinstance(err, OpenAIError):
        return err
    if isinstance(err, UnknownModel):
        return OpenAIError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, RequestValidationError):
        return _invalid(err)
    if isinstance(err, ApiError):
        return OpenAIError(err.status, str(err))
    if isinstance(err, ServerBusy):
        return OpenAIError(503, str(err))
    if isinstance(err, CharnnError):  # a bad option (temperature under 0.01, ...)
        return OpenAIError(400, str(err))
    if isinstance(err, HTTPException):  # 413 while reading the body
        return OpenAIError(err.status_code, str(err.detail))
    log.error("OpenAI-compatible endpoint failed", exc_info=err)
    return OpenAIError(500, "internal server error (see the server log)")


def _invalid(err: RequestValidationError) -> OpenAIError:
    """The first validation error, as `field: what is wrong` with the field as `param`."""
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return OpenAIError(400, f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse the body')}")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return OpenAIError(400, f"{where}: {message}", param=loc[0] if loc else None)


def add_openai_routes(app: FastAPI, *, max_batch: int, max_length: int) -> None:
    """The OpenAI-compatible routes on `app` (whose `state.models` are the served models)."""
    router = APIRouter(route_class=OpenAIRoute, tags=["OpenAI-compatible"])

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict:
        """The served models, each `id` the name requests give as `model`."""
        return {"object": "list", "data": [_card(served) for served in request.app.state.models]}

    @router.get("/v1/models/{model}")
    async def get_model(model: str, request: Request) -> dict:
        return _card(serving(request, model))

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Text completions, as OpenAI's legacy endpoint (docs/serve.md says which fields are used)."""
        served = _checked(request, body, max_batch=max_batch)
        try:
            prompts = body.prompts()
        except ValueError as err:
            raise OpenAIError(400, f"prompt: {err}", param="prompt") from None
        ids = [_prompt_ids(served, p, max_length) for p in prompts]
        length = _length(body.max_tokens, COMPLETION_TOKENS, max_length, "max_tokens")
        top = _top(served, body.logprobs)
        gen = Generation(served, ids, body.sample_config(length=length), stops=body.stops(), logits=top is not None)
        echo = prompts if body.echo else None
        return await _answer(gen, Shape(served.name), body, request, top=top, echo=echo)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        """Chat: the messages rendered into one prompt by the plain template of docs/serve.md."""
        served = _checked(request, body, max_batch=max_batch)
        vocab = served.loaded.vocab
        prompt = body.prompt()
        if len(prompt) > max_length:
            raise _over("messages", len(prompt), max_length)
        ids = text_ids(prompt, vocab, what="messages", max_length=max_length, skip_unknown=True)[0].tolist()
        ids = ids or default_prime(vocab)
        param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
        length = _length(body.length(), min(CHAT_TOKENS, max_length), max_length, param)
        top = _top(served, (body.top_logprobs or 0) if body.logprobs else None)
        gen = Generation(served, [ids], body.sample_config(length=length), stops=body.stops(), logits=top is not None)
        return await _answer(gen, ChatShape(served.name), body, request, top=top)

    app.include_router(router)


def _card(served: Served) -> dict:
    try:
        created = int(Path(served.loaded.path).stat().st_mtime)
    except OSError:
        created = 0
    return {"id": served.name, "object": "model", "created": created, "owned_by": "charnn"}


def _checked(request: Request, body: OpenAIRequest, *, max_batch: int) -> Served:
    """The model a request names, once its fields are known to be ones this server does."""
    served = serving(request, body.model)
    refused = body.refusal()
    if refused is not None:
        raise OpenAIError(400, refused[1], param=refused[0])
    if (body.n or 1) > max_batch:
        raise OpenAIError(400, f"n: at most {max_batch} (this server's --max-batch)", param="n")
    return served


def _over(param: str, n: int, max_length: int) -> OpenAIError:
    message = f"{param}: {n} characters is over this server's limit of {max_length} (--max-length)"
    return OpenAIError(400, message, param=param)


def _length(asked: int | None, default: int, max_length: int, param: str) -> int:
    length = default if asked is None else asked
    if length > max_length:
        raise _over(param, length, max_length)
    return length


def _prompt_ids(served: Served, prompt: str, max_length: int) -> list[int]:
    if len(prompt) > max_length:
        raise _over("prompt", len(prompt), max_length)
    if not prompt:
        return default_prime(served.loaded.vocab)
    try:
        return text_ids(prompt, served.loaded.vocab, what="prompt", max_length=max_length)[0].tolist()
    except CharnnError as err:
        raise OpenAIError(400, str(err), param="prompt") from None


def _top(served: Served, top: int | None) -> int | None:
    if top is not None and served.loaded.vocab.bytes_mode:
        raise OpenAIError(400, "logprobs: not available for a byte-level model", param="logprobs")
    return top


async def _answer(
    gen: Generation, shape: Shape, body: OpenAIRequest, request: Request, *, top: int | None, echo: list | None = None
) -> Any:
    """The whole answer, or a stream of chunks ending with `data: [DONE]`."""
    gen.submit(stream=bool(body.stream))
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _chunks(gen, shape, top=top, echo=echo, usage=usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    async for _ in gen.updates(request):
        pass
    vocab = gen.served.loaded.vocab
    choices = []
    for c in gen.choices:
        logprobs = logprobs_of(c, 0, c.text, vocab, top) if top is not None else None
        text = echo[c.index // gen.n] + c.text if echo else c.text
        choices.append(shape.choice(c.index, text, logprobs, c.finish, whole=True))
    return {**shape.head(choices), "usage": gen.usage()}


async def _chunks(
    gen: Generation, shape: Shape, *, top: int | None, echo: list | None, usage: bool
) -> AsyncIterator[bytes]:
    """Each choice's new text as it comes (held back while it could begin a stop text), its finish reason,
    the usage if asked, then `[DONE]`; a failure is a last `data: {"error": ...}`."""
    vocab = gen.served.loaded.vocab

    def event(choices: list[dict], **extra: Any) -> bytes:
        return b"data: " + to_json({**shape.head(choices), "object": shape.chunk_object(), **extra}) + b"\n\n"

    try:
        opening = [o for c in gen.choices if (o := shape.opening(c.index)) is not None]
        if opening:
            yield event(opening)
        if echo:
            yield event([shape.choice(c.index, echo[c.index // gen.n], None, None) for c in gen.choices])
        async for _ in gen.updates():
            pieces = []
            for c in gen.choices:
                new = c.text[c.sent :]
                if new:
                    logprobs = logprobs_of(c, c.sent, new, vocab, top) if top is not None else None
                    pieces.append(shape.choice(c.index, new, logprobs, None))
                    c.sent = len(c.text)
                if c.finish and not c.finish_sent:
                    pieces.append(shape.choice(c.index, "", None, c.finish))
                    c.finish_sent = True
            if pieces:
                yield event(pieces)
        if usage:
            yield event([], usage=gen.usage())
        yield b"data: [DONE]\n\n"
    except OpenAIError as err:
        yield b"data: " + to_json(err.body()) + b"\n\n"
