"""What the OpenAI-compatible endpoints accept: the bodies of `/v1/completions` and `/v1/chat/completions` as
OpenAI's API reference has them, each field used, accepted and ignored, or refused with a 400 naming it
(`refusal`), and the plain template that turns chat messages into one prompt. Not the routes nor the answers'
shapes: charnn.serve.openai_api.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charnn.config import SampleConfig

COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
CHAT_TOKENS = 500  # without max_tokens a chat answer is `charnn sample`'s default length
# the chat template: one line per message, then the line the model continues
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
ANSWER = "Assistant:"


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool | None = Field(None, description="A last chunk with `usage` and no choices.")


class OpenAIRequest(BaseModel):
    """The fields both endpoints share. Types as JSON has them, as on the native endpoints; unknown fields are
    refused (a 400 naming the field)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = Field(None, description="A served model (GET /v1/models); none: the first served.")
    max_tokens: int | None = Field(None, ge=0, description="Characters to generate per choice.")
    temperature: float | None = Field(None, ge=0, le=100, description="0: greedy; none: 1.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; 1 or none: off.")
    top_k: int | None = Field(None, ge=1, description="charnn's own: sample from the k likeliest characters.")
    n: int | None = Field(None, ge=1, description="Choices per prompt, generated together.")
    stream: bool | None = Field(None, description="Server-Sent Events in OpenAI's chunk shape, then [DONE].")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="Up to 4 texts; generation ends before the first.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="The text `charnn sample --seed` gives.")
    frequency_penalty: float | None = Field(None, description="Only 0 (refused otherwise).")
    presence_penalty: float | None = Field(None, description="Only 0 (refused otherwise).")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty (refused otherwise).")
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop texts")
        return stop

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stops if s)

    def sample_config(self, *, length: int) -> SampleConfig:
        """`charnn sample`'s options for these fields (temperature 0: greedy; top_p 1: no cut)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        return SampleConfig(
            length=length,
            temperature=temperature or 1.0,
            greedy=temperature == 0,
            top_k=self.top_k,
            top_p=None if self.top_p in (None, 1) else self.top_p,
            seed=self.seed,
            num_samples=self.n or 1,
        )

    def refusal(self) -> tuple[str, str] | None:
        """(field, why) of the first field set to something a character model cannot do."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                return name, f"{name}: not supported (only 0)"
        if self.logit_bias:
            return "logit_bias", "logit_bias: not supported (only empty)"
        return None


class CompletionRequest(OpenAIRequest):
    prompt: Any = Field("", description="Text, or a list of texts (each gets n choices); token ids are refused.")
    logprobs: int | None = Field(None, ge=0, le=20, description="The likeliest alternatives per character.")
    echo: bool | None = Field(None, description="The prompt at the start of each choice's text.")
    suffix: str | None = Field(None, description="Refused (no insertion).")
    best_of: int | None = Field(None, ge=1, description="Only equal to n (refused otherwise).")

    def prompts(self) -> list[str]:
        """The prompts as texts; a ValueError for token ids or anything else that is not text."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("a text or a non-empty list of texts (token ids are not accepted: a character is a token)")
        return prompts

    def refusal(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix: not supported (a character model continues text, it does not insert)"
        if self.best_of is not None and self.best_of != (self.n or 1):
            return "best_of", "best_of: only equal to n (choices are not ranked)"
        if self.echo and self.logprobs is not None:
            return "echo", "echo: not supported together with logprobs"
        return super().refusal()


class ChatMessage(BaseModel):
    """A message; fields of an assistant message sent back (tool calls, refusal, annotations) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        if isinstance(content, list) and not all(
            p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
        ):
            raise ValueError(
                'only text parts, {"type": "text", "text": ...} (a character model reads no images or audio)'
            )
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, description="Characters per choice (max_tokens too).")
    logprobs: bool | None = Field(None, description="Each character's log probability.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: the likeliest alternatives.")
    response_format: dict[str, Any] | None = Field(None, description='Only {"type": "text"}.')
    tools: list[Any] | None = Field(None, description="Refused when not empty.")
    tool_choice: Any = Field(None, description="Only none or 'none'.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored.")
    metadata: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored (nothing is stored).")
    service_tier: str | None = Field(None, description="Accepted and ignored.")

    def refusal(self) -> tuple[str, str] | None:
        if self.tools:
            return "tools", "tools: not supported (a character model cannot call tools)"
        if self.tool_choice not in (None, "none"):
            return "tool_choice", "tool_choice: only 'none'"
        if self.response_format and self.response_format.get("type") != "text":
            return "response_format", 'response_format: only {"type": "text"}'
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            return "max_tokens", "max_tokens: give it or max_completion_tokens, not both"
        return super().refusal()

    def length(self) -> int | None:
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens

    def prompt(self) -> str:
        """The chat template: `Role: content` per message, one a line (system and developer as System),
        then `Assistant:`, which the model continues."""
        return "".join(f"{ROLES[m.role]}: {m.text()}\n" for m in self.messages) + ANSWER
