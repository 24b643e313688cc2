"""How `charnn serve` reads a request body: strict JSON (RFC 8259) before any field is looked at. UTF-8 only,
no duplicate keys, no NaN or Infinity, every number finite, every string Unicode text (no lone surrogates), the
body sent as `application/json`. One place for every route (`StrictRoute`); not what the fields mean:
charnn.serve.schemas.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from charnn.serve.replies import ApiError


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body, or an ApiError saying what is wrong with it in one line: 400 for a body
    that is not JSON (not UTF-8, a syntax error, a duplicate key, NaN), 422 for a value no field can take (a
    lone surrogate, a number too large to be finite), naming where it is."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"request body is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    try:  # RFC 8259 lets a parser ignore a leading byte order mark
        value = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_unique, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"malformed JSON: {err.msg} (line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError as err:  # _unique, _no_constant, an integer of thousands of digits
        raise ApiError(400, f"malformed JSON: {err}") from None
    _check_values(value)
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are unique: which of two values a parser keeps is not defined (RFC 8259 4)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {_shown(key)}")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_values(value: Any) -> None:
    """Every string (keys too) Unicode text and every number finite; an ApiError (422) naming the field."""
    todo: list[tuple[Any, str]] = [(value, "")]
    while todo:  # not recursive: the parser accepted the nesting, this walk adds no depth
        item, where = todo.pop()
        if isinstance(item, str):
            _text(item, where)
        elif isinstance(item, float) and not abs(item) < float("inf"):
            raise ApiError(422, f"{where or 'body'}: number out of range (not finite)")
        elif isinstance(item, dict):
            for key, sub in item.items():
                _text(key, f"{where}: key" if where else "key")
                todo.append((sub, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            todo.extend((sub, f"{where}.{k}" if where else str(k)) for k, sub in enumerate(item))


def _text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(
            422,
            f"{where or 'body'}: lone surrogate \\u{ord(text[err.start]):04x} at character {err.start} "
            "is not Unicode text",
        ) from None


def _shown(key: str) -> str:
    return json.dumps(key if len(key) <= 40 else key[:40] + "...")


def is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class StrictRequest(Request):
    """A request whose `json()` is `parse_body` of its body."""

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_body(await self.body())
        return self._strict_json


class StrictRoute(APIRoute):
    """A route that reads its JSON body with `parse_body`, and refuses a body in another media type (415) rather
    than pass it on as bytes. Routers of this app use it: `APIRouter(route_class=StrictRoute)`."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Any:
            request = StrictRequest(request.scope, request.receive)
            if self.body_field is not None and await request.body():
                if not is_json(request):
                    raise ApiError(415, "send the body as JSON, with Content-Type: application/json")
                await request.json()  # errors here, before FastAPI's own reading would turn them into its own
            return await handler(request)

        return strict
