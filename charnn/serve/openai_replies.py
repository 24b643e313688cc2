"""How the OpenAI-compatible endpoints run and answer: one engine job per prompt (its n choices its streams),
each choice's text cut before its first stop text, each character's log probability with the likeliest
alternatives, and the answers in OpenAI's shapes (a text or chat completion, whole or as stream chunks, and
`{"error": {...}}`). Not the routes nor what they accept: charnn.serve.openai_api, charnn.serve.openai_schemas.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import Request

from charnn.config import SampleConfig
from charnn.serve.jobs import Job, Output
from charnn.serve.models import Served
from charnn.serve.replies import SafeJSON


class OpenAIError(Exception):
    """A refusal in OpenAI's shape: status, message, the field it concerns and a code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        message = " ".join(str(self).split()) or "error"
        return {"error": {"message": message, "type": kind, "param": self.param, "code": self.code}}

    def reply(self) -> SafeJSON:
        return SafeJSON(self.body(), self.status)


class Choice:
    """One choice's text: what arrives, cut before its first stop text (text that could begin one is held
    back until it is known not to), and why it finished ("stop" or "length")."""

    def __init__(self, index: int, job: Job, row: int, stops: tuple[str, ...]) -> None:
        self.index, self.job, self.row, self.stops = index, job, row, stops
        self.text = ""
        self.held = ""
        self.sent = 0  # characters of `text` already streamed
        self.finish: str | None = None
        self.finish_sent = False

    def feed(self, new: str) -> None:
        if self.finish is not None:
            return
        text = self.held + new
        cuts = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if cuts:
            self.text, self.held, self.finish = self.text + text[: min(cuts)], "", "stop"
            return
        keep = max((k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        self.text, self.held = self.text + text[: len(text) - keep], text[len(text) - keep :]

    def end(self) -> None:
        """Its job generated all it was asked for."""
        if self.finish is None:
            self.text, self.held, self.finish = self.text + self.held, "", "length"


class Generation:
    """One request's jobs on a served model: a job per prompt, its n streams the choices (index prompt * n +
    stream). `updates` yields as text arrives; leaving it early, or every choice stopping, cancels the jobs."""

    def __init__(
        self, served: Served, prompts: list[list[int]], cfg: SampleConfig, *, stops: tuple[str, ...], logits: bool
    ) -> None:
        self.served, self.queue = served, asyncio.Queue()
        stream = bool(stops)  # text as it comes only when it must be scanned for stops
        self.jobs = [Job(cfg, ids, stream=stream, handle=self.queue, keep_logits=logits) for ids in prompts]
        self.n = n = cfg.num_samples
        self.choices = [Choice(j * n + k, job, k, stops) for j, job in enumerate(self.jobs) for k in range(n)]
        self.prompt_tokens = sum(map(len, prompts))

    def submit(self, *, stream: bool) -> None:
        try:
            for job in self.jobs:
                job.stream = job.stream or stream
                self.served.submit(job)
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True  # a no-op for a job that ended

    async def updates(self, request: Request | None = None) -> AsyncIterator[None]:
        """After each output, until every choice has finished; with `request`, its client leaving is noticed
        within a second (a streamed answer is cancelled by Starlette instead)."""
        running = set(self.jobs)
        try:
            while running:
                out = await self._next(request)
                if out.job not in running:
                    continue
                mine = [c for c in self.choices if c.job is out.job]
                for choice, text in zip(mine, out.texts, strict=True):
                    choice.feed(text)
                if out.end == "complete":
                    for choice in mine:
                        choice.end()
                elif out.end is not None:
                    raise OpenAIError(503 if out.end == "shutdown" else 500, out.message or out.end)
                if all(c.finish for c in mine):
                    out.job.cancelled = True  # every choice stopped: free its rows
                    running.discard(out.job)
                yield
        finally:
            self.cancel()

    async def _next(self, request: Request | None) -> Output:
        while True:
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise OpenAIError(499, "client disconnected") from None

    def usage(self) -> dict:
        completion = sum(len(c.text) for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def logprobs_of(choice: Choice, start: int, text: str, vocab: Any, top: int) -> list[tuple[str, float, dict]]:
    """(character, its log probability, {alternative: log probability} of the `top` likeliest) for the
    characters `text` of a choice from position `start`: the model's own probabilities (temperature 1)."""
    if not text:
        return []
    logits = torch.stack([choice.job.logits[p][choice.row] for p in range(start, start + len(text))])  # (m, V)
    logp = logits.float().cpu().log_softmax(-1)  # kept on the model's device; the ids and the reply are on the host
    ids = torch.from_numpy(vocab.encode(text).astype("int64"))
    chosen = logp.gather(1, ids[:, None])[:, 0].tolist()
    best = logp.topk(min(top, logp.shape[1])) if top else None
    alternatives: list[dict] = [{} for _ in text]
    if best is not None:
        for row, (values, indices) in enumerate(zip(best.values.tolist(), best.indices.tolist(), strict=True)):
            alternatives[row] = {chr(vocab.symbols[i]): v for v, i in zip(values, indices, strict=True)}
    return list(zip(text, chosen, alternatives, strict=True))


class Shape:
    """The answer in `/v1/completions`' shape (`object` text_completion); ChatShape for chat."""

    object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, model: str) -> None:
        self.model, self.id, self.created = model, self.id_prefix + uuid.uuid4().hex, int(time.time())

    def head(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": choices}

    def choice(self, index: int, text: str, logprobs: list | None, finish: str | None, *, whole: bool = False) -> dict:
        """One choice `whole`, or one chunk of it (finish None while more is to come)."""
        return {"index": index, "text": text, "logprobs": self.logprobs(logprobs), "finish_reason": finish}

    def opening(self, index: int) -> dict | None:
        """A chunk each choice starts with, if any."""
        return None

    def logprobs(self, entries: list | None) -> dict | None:
        if entries is None:
            return None
        offsets, at = [], 0
        for char, _, _ in entries:
            offsets.append(at)
            at += len(char)
        return {
            "tokens": [c for c, _, _ in entries],
            "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [alt for _, _, alt in entries],
            "text_offset": offsets,
        }

    def chunk_object(self) -> str:
        return self.object


class ChatShape(Shape):
    """`/v1/chat/completions`' shape: a message (or deltas) from the assistant."""

    object = "chat.completion"
    id_prefix = "chatcmpl-"

    def choice(self, index: int, text: str, logprobs: list | None, finish: str | None, *, whole: bool = False) -> dict:
        body: dict[str, Any] = {"index": index}
        if whole:
            body["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            body["delta"] = {"content": text} if finish is None else {}
        return {**body, "logprobs": self.logprobs(logprobs), "finish_reason": finish}

    def opening(self, index: int) -> dict | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def logprobs(self, entries: list | None) -> dict | None:
        if entries is None:
            return None

        def token(char: str, logprob: float) -> dict:
            return {"token": char, "logprob": logprob, "bytes": list(char.encode("utf-8", "surrogatepass"))}

        return {
            "content": [
                {**token(c, lp), "top_logprobs": [token(a, v) for a, v in alt.items()]} for c, lp, alt in entries
            ],
            "refusal": None,
        }

    def chunk_object(self) -> str:
        return "chat.completion.chunk"
