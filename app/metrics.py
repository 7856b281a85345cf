"""Prometheus metrics of one app process, served at ``/metrics``.

Each app (and each test) gets its own registry, so that counts never mix. It knows nothing
of what it counts: callers pass names (a backend's, a failure's ``kind``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "playground_replies", "Replies asked for, by model and how they ended "
            "(stop, length, stopped, interrupted, error)", ["model", "outcome"], registry=r,
        )
        self.active_streams = Gauge(
            "playground_active_streams", "Replies streaming right now", registry=r
        )
        self.time_to_first_token = Histogram(
            "playground_time_to_first_token_seconds",
            "Seconds from asking the backend to its first token", ["backend"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.tokens_per_second = Histogram(
            "playground_tokens_per_second", "Generation speed of each finished reply",
            ["backend"], registry=r, buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        )
        self.errors = Counter(
            "playground_backend_errors", "Failed backend requests, by backend and kind of "
            "error (unreachable, timeout, overloaded, validation, generation, stream, "
            "no_backend, other)", ["backend", "kind"], registry=r,
        )
        self.backend_up = Gauge(
            "playground_backend_up", "1 while the backend answers, 0 while it is marked down",
            ["backend"], registry=r,
        )
        self.backend_slots = Gauge(
            "playground_backend_slots", "Requests the backend serves at once, where it says "
            "(llama-server's slots)", ["backend"], registry=r,
        )
        self.backend_requests = Gauge(
            "playground_backend_requests", "This process's requests open on the backend, by "
            "state: served, or waiting for one of its slots", ["backend", "state"], registry=r,
        )
        self.cache = Counter(
            "playground_response_cache", "Response cache lookups, by result (hit, miss)",
            ["result"], registry=r,
        )

    def error(self, backend: str, kind: str) -> None:
        """One failed request to ``backend``; ``kind`` names the failure (the metric's help
        lists them)."""
        self.errors.labels(backend=backend, kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
