"""ASGI layers around `charnn serve`'s routes: `HEAD` answered wherever `GET` is, and a bug answered as a JSON 500
that keeps the connection open. Not the answers themselves (charnn.serve.replies) nor the routes (charnn.serve.app).
"""

from __future__ import annotations

import logging
from typing import Any

from charnn.serve.replies import BUG, SafeJSON

log = logging.getLogger("charnn.serve")


class HeadAsGet:
    """`HEAD` runs the `GET` route and sends its status and headers without the body (RFC 9110 9.3.2), so every
    page and `GET` endpoint answers it, whoever added the route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: dict) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class Bugs:
    """A route that raises what no handler maps (a bug) gets `{"error": ...}` with 500 and its traceback in the
    log, and the connection stays usable: Starlette's outermost handler would re-raise to the server, which
    then closes a keep-alive connection under the client's next request. A bug after the answer started
    ends that answer (its connection closes), as it must."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise
            log.exception("internal error answering %s %s", scope["method"], scope["path"])
            await SafeJSON({"error": BUG}, 500)(scope, receive, send)
