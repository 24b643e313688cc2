"""`charnn serve`: loaded models behind an HTTP API (FastAPI + uvicorn + prometheus-client, the optional `serve`
extra; native and OpenAI-compatible endpoints, Prometheus metrics), with concurrent generation requests batched
into one recurrent step per model (continuous batching, charnn.serve.engine).

Importing this package imports neither FastAPI nor torch; `serve` and `create_app` need the extra installed.
"""

from __future__ import annotations

from typing import Any

from charnn.errors import CharnnError

# After a stop signal, requests generating have this long to finish (`--grace`): within what container platforms
# wait before they kill (Docker's stop 10 s, Kubernetes 30 s by default), as a rolling restart needs.
GRACE_S = 5.0
MISSING = "charnn serve needs FastAPI, uvicorn and fastapi-offline: pip install 'charnn[serve]'"
NO_METRICS = "charnn serve needs prometheus-client for /metrics: pip install 'charnn[serve]'"


def require_server() -> None:
    """A CharnnError with the install command when FastAPI, uvicorn, fastapi-offline (/docs without a CDN) or
    prometheus-client is missing."""
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CharnnError(MISSING) from None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise CharnnError(NO_METRICS) from None


def create_app(loaded: Any, *, max_batch: int = 64, max_length: int = 10_000, **options: Any) -> Any:
    """The FastAPI app serving `loaded` (a `charnn.store.checkpoint.LoadedModel`, or a mapping of names to
    them); run it with any ASGI server, or use FastAPI's TestClient. Options: charnn.serve.app.create_app."""
    require_server()
    from charnn.serve.app import create_app as build

    return build(loaded, max_batch=max_batch, max_length=max_length, **options)


def serve(
    loaded: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 64,
    max_length: int = 10_000,
    **options: Any,
) -> None:
    """Serve `loaded` (one model, or a mapping of names to models) on http://host:port until SIGINT or SIGTERM,
    then return (charnn.serve.server.serve)."""
    require_server()
    from charnn.serve.server import serve as run

    run(loaded, host=host, port=port, max_batch=max_batch, max_length=max_length, **options)
