"""What the HTTP API accepts: the request bodies (pydantic models, strict types, no unknown fields), with the
bounds and help of the sampling options read from `SampleConfig`'s fields, and text turned into symbol ids as
`charnn sample` (a prime) and `charnn eval` (a scored text) read them. Not the routes: charnn.serve.app.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from charnn.config import DataConfig, SampleConfig, default_of
from charnn.data import Vocab
from charnn.errors import CharnnError, VocabularyError


def _sampling(name: str, **extra: Any) -> Any:
    """A request field with `SampleConfig.<name>`'s default, bounds and help: one definition of each."""
    meta = next(f for f in dataclasses.fields(SampleConfig) if f.name == name).metadata
    return Field(
        default_of(SampleConfig, name), description=meta["help"], ge=meta["min"], le=meta["max"], gt=meta["gt"], **extra
    )


def _model() -> Any:
    """The optional `model` of a request: which served model answers it."""
    return Field(None, description="The served model to ask (GET /v1/models lists them); none: the first served.")


class Strict(BaseModel):
    """Types as JSON has them ("5" is not a number, 1 is not true), no unknown fields (a typo is an error, not an
    option silently ignored), and null as the default of any optional field (`"length": null` is 500, as if it
    were left out; `"top_k": null` is no top-k, its default)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if not (v is None and k in fields and not fields[k].is_required())}


class GenerateRequest(Strict):
    model: str | None = _model()
    prime: str | None = Field(
        None, description="Text to warm the state on (not repeated in the answer); none: a newline."
    )
    length: int = _sampling("length")
    temperature: float = _sampling("temperature")
    top_k: int | None = _sampling("top_k")
    top_p: float | None = _sampling("top_p")
    greedy: bool = _sampling("greedy")
    seed: int | None = _sampling("seed")
    num_samples: int = _sampling("num_samples")
    stream: bool = Field(False, description="Server-Sent Events: one event per few characters, then `done`.")
    novelty: bool = Field(False, description="Also how much each text copies from the training text (not streamed).")

    def config(self) -> SampleConfig:
        return SampleConfig(
            length=self.length,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            greedy=self.greedy,
            prime=self.prime,
            seed=self.seed,
            num_samples=self.num_samples,
        )


class ScoreRequest(Strict):
    model: str | None = _model()
    text: str = Field(description="Text to score, as `charnn eval` scores a file holding it.")
    skip_unknown: bool = Field(
        False, description="Drop characters outside the vocabulary (counted) instead of refusing the text."
    )
    per_char: bool = Field(
        False,
        description="Also each symbol's surprise in bits, from the second on (`bits`): what the playground colours.",
    )


class NextRequest(Strict):
    model: str | None = _model()
    text: str = Field("", description="The text so far; empty: the start of a text.")
    k: int = Field(5, ge=1, description="How many of the most likely next characters to return.")


class GenerateResponse(BaseModel):
    texts: list[str]
    chars: int
    bytes: list[str] | None = Field(
        None, description="A --bytes model's exact output, base64; `texts` are it decoded (U+FFFD for non-UTF-8)."
    )
    novelty: list[dict] | None = None  # with "novelty": true, one record per text (docs/novelty.md)


class ScoreResponse(BaseModel):
    chars: int
    nats_per_char: float | None
    bits_per_char: float | None
    perplexity: float | None
    unknown_chars: int
    bits: list[float | None] | None = None


class NextChar(BaseModel):
    char: str | None = Field(description="The character; for a --bytes model null unless the byte is one (ASCII).")
    symbol: int
    prob: float | None
    bytes: str | None = Field(None, description="A --bytes model's byte, base64: what tells bytes apart.")


class NextResponse(BaseModel):
    next: list[NextChar]


def symbols_of(text: str, vocab: Vocab) -> np.ndarray:
    """Code points of `text` (or its UTF-8 bytes for a byte-level model), as uint32. `text` is Unicode text:
    a request's lone surrogates were refused with its body (charnn.serve.bodies)."""
    if vocab.bytes_mode:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class TooLong(CharnnError):
    """A request over the server's --max-length."""


def check_length(what: str, n: int, max_length: int, *, unit: str = "characters") -> None:
    if n > max_length:
        raise TooLong(f"{what}: {n} {unit} is over this server's limit of {max_length} (--max-length)")


def text_ids(
    text: str, vocab: Vocab, *, what: str, max_length: int, skip_unknown: bool = False
) -> tuple[np.ndarray, int]:
    """Ids of `text` and how many unknown characters were dropped; a VocabularyError naming the field `what`
    (charnn.data's message) when there are some and `skip_unknown` is off, TooLong when it has more than
    `max_length` symbols (characters, or bytes for a byte-level model)."""
    symbols = symbols_of(text, vocab)
    check_length(what, len(symbols), max_length, unit="bytes" if vocab.bytes_mode else "characters")
    try:
        ids, unknown = vocab.map_symbols(symbols, skip_unknown=skip_unknown)
    except VocabularyError as err:
        raise VocabularyError(f"{what}: {err}") from None
    return ids, sum(unknown.values())


def as_file_text(text: str, data_cfg: DataConfig) -> str:
    """`text` as `charnn eval` would read it from a file: no leading BOM, CRLF and CR as LF (unless the
    model keeps line endings). A byte-level model reads the bytes as they are."""
    if data_cfg.bytes_mode:
        return text
    text = text.removeprefix("\ufeff")
    return text if data_cfg.keep_newlines else text.replace("\r\n", "\n").replace("\r", "\n")
