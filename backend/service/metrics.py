"""Prometheus metrics of the API process; queue and engine figures are read from Redis at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backend.jobqueue import outbox
from backend.jobqueue import queues as rq_queue

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RedisCollector(Collector):
    """Job counts by queue and state, pushes waiting in the outbox, and engine seconds per image by method."""

    def __init__(self, connection: Callable[[], redis.Redis], prefix: str) -> None:
        self._connection = connection
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("gem_labeler_redis_up", "Whether Redis answered this scrape")
        try:
            conn = self._connection()
            counts = rq_queue.queue_counts(conn, self._prefix)
            engine = rq_queue.engine_totals(conn, self._prefix)
            waiting = outbox.pending(conn, self._prefix)
        except (redis.RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("gem_labeler_jobs", "Jobs by queue and state", labels=["queue", "state"])
        for queue, states in counts.items():
            for state, n in states.items():
                jobs.add_metric([queue, state], n)
        yield jobs
        pushes = GaugeMetricFamily("gem_labeler_outbox_pending",
                                   "Predictions waiting in the outbox to be pushed to Label Studio again")
        pushes.add_metric([], waiting)
        yield pushes
        seconds = CounterMetricFamily(
            "gem_labeler_engine_seconds", "Engine (heatmap) seconds spent, by method", labels=["method"]
        )
        images = CounterMetricFamily("gem_labeler_engine_images", "Images through the engine, by method",
                                     labels=["method"])
        per_image = GaugeMetricFamily("gem_labeler_engine_seconds_per_image",
                                      "Mean engine seconds per image, by method", labels=["method"])
        for method, (total_s, n) in sorted(engine.items()):
            seconds.add_metric([method], total_s)
            images.add_metric([method], n)
            per_image.add_metric([method], total_s / n if n else 0.0)
        yield seconds
        yield images
        yield per_image


class ApiMetrics:
    """The API process's registry: request figures plus the Redis-backed collector."""

    def __init__(self, connection: Callable[[], redis.Redis], prefix: str) -> None:
        self.registry = CollectorRegistry()
        self.predict_latency = Histogram(
            "gem_labeler_predict_seconds", "Latency of /predict", ["mode"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
        )
        self.predict_tasks = Counter(
            "gem_labeler_predict_tasks", "Tasks answered by /predict, by outcome", ["outcome"], registry=self.registry
        )
        self.registry.register(_RedisCollector(connection, prefix))

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
