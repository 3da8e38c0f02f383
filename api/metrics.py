"""Prometheus metrics: requests, queue depth, task durations, images by status."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

import workers.metrics  # noqa: F401  (task duration histogram)
from services.images.queries import count_by_status
from services.runtime import Runtime

REQUESTS = Counter("semtag_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("semtag_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):  # noqa: ANN001, ANN201
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(request.method, path, str(status)).inc()
            LATENCY.labels(request.method, path).observe(time.perf_counter() - start)


class StateCollector:
    """Read at scrape time: images by status (database) and queue depth (broker or in-process pool)."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self._counts: dict[str, int] | None = None
        self._counted_at = 0.0

    def _image_counts(self, rt: Runtime) -> dict[str, int]:
        """Images by status, read from the database at most once per SEMTAG_METRICS_CACHE_S."""
        now = time.monotonic()
        if self._counts is None or now - self._counted_at >= rt.settings.metrics_cache_s:
            with rt.session() as s:
                self._counts = count_by_status(s)
            self._counted_at = now
        return self._counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rt = self.runtime
        if rt is None:
            return
        images = GaugeMetricFamily("semtag_images", "Images by status", labels=["status"])
        try:
            for status, n in self._image_counts(rt).items():
                images.add_metric([status], n)
            yield images
        except Exception:  # noqa: BLE001  (a scrape must not fail because the database is down)
            pass
        depth = GaugeMetricFamily("semtag_queue_depth", "Tasks waiting", labels=["queue"])
        try:
            d = rt.queue.depth()  # type: ignore[attr-defined]  # Celery and in-process queues report it
            for queue, n in (d.items() if isinstance(d, dict) else [("in_process", d)]):
                depth.add_metric([queue], n)
            yield depth
        except Exception:  # noqa: BLE001
            pass


STATE = StateCollector()
REGISTRY.register(STATE)
