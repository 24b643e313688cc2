"""Prometheus metrics of `charnn serve` (`GET /metrics`, prometheus-client): requests by endpoint and status,
their duration, time to first character, characters generated, batch sizes, streams generating and requests
waiting, each labelled with the model it concerns. Not what is measured where: the served models
(charnn.serve.models) and the routes report to these.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds: a quick JSON answer to a long stream
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FIRST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """One app's metrics, in a registry of their own (two apps in one process do not share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "charnn_requests",
            "HTTP requests answered, by endpoint and status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "charnn_request_duration_seconds",
            "From a request's arrival to the last byte of its answer (a stream's end included).",
            ["model", "endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first = Histogram(
            "charnn_time_to_first_character_seconds",
            "From a generation request's arrival at the model to its first characters.",
            ["model"],
            buckets=FIRST_BUCKETS,
            registry=r,
        )
        self.chars = Counter("charnn_generated_characters", "Characters generated.", ["model"], registry=r)
        self.batch = Histogram(
            "charnn_batch_size",
            "Streams stepped together, once per step.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.streams = Gauge("charnn_streams_generating", "Streams generating now.", ["model"], registry=r)
        self.waiting = Gauge("charnn_requests_waiting", "Generation requests waiting for rows.", ["model"], registry=r)

    def watch(self, name: str, engine: Any) -> None:
        """The gauges of model `name` read from its engine when scraped."""
        self.streams.labels(name).set_function(lambda: engine.streams)
        self.waiting.labels(name).set_function(lambda: engine.waiting)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountRequests:
    """ASGI middleware: each HTTP request counted by the route it matched (`other` when none did), its status
    and model (`request.state.model`, set by the route; empty for none), and timed to its answer's last byte."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # unless an answer starts

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            model = str(scope.get("state", {}).get("model", ""))
            self.metrics.requests.labels(model, endpoint, str(status)).inc()
            self.metrics.duration.labels(model, endpoint).observe(time.perf_counter() - start)
