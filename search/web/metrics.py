"""Prometheus metrics of one app: requests and latency per endpoint, model and store time per
query, images per forward pass."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from search.service import Answer


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "Requests by endpoint and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.model = Histogram(
            "search_model_seconds",
            "Model time per query (decode + forward).",
            registry=self.registry,
        )
        self.store = Histogram(
            "search_store_seconds", "Store time per query.", registry=self.registry
        )
        self.body_bytes = Counter(
            "http_request_body_bytes", "Request body bytes read.", registry=self.registry
        )
        self.batch = Histogram(
            "model_batch_images",
            "Images per forward pass.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )

    def observe(self, answer: Answer) -> None:
        self.model.observe(answer.seconds.get("model", 0.0))
        self.store.observe(answer.seconds.get("store", 0.0))

    def on_batch(self, images: int, _seconds: float) -> None:
        self.batch.observe(images)
