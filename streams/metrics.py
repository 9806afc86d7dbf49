"""Prometheus metrics of the Kafka worker (prometheus-client, text format over HTTP).

One :class:`WorkerMetrics` per worker, on its own registry (so tests can run several in one
process). ``serve(port)`` exposes ``/metrics``; ``snapshot()`` returns the same numbers as a
dict for summaries and tests.

=====================================  ==========================================================
``trail_records_total{partition}``     records consumed from the events topic
``trail_events_total{partition}``      good events applied to the engine (``rate()`` = events/s)
``trail_events_per_second``            events/s over the last reporting interval
``trail_consumer_lag{partition}``      high watermark minus the next offset to process
``trail_windows_closed_total{...}``    windows closed (and published) per partition
``trail_late_events_total{...}``       events whose window had closed (dead-lettered)
``trail_malformed_total{category}``    malformed records by category (dead-lettered)
``trail_dead_letters_total{kind}``     records written to the DLQ (``malformed`` / ``late``)
``trail_window_scoring_seconds``       scorer time per window (score + explain)
``trail_window_publish_seconds``       window close to the broker's ack of its last update
``trail_checkpoints_total{partition}`` state checkpoints written to the changelog
``trail_checkpoint_bytes``             size of the last checkpoint (compressed)
``trail_state_restore_seconds``        time to rebuild a partition's engine from the changelog
``trail_skipped_duplicates_total``     re-delivered records at or below the stored offset
``trail_trending_published_total``     merged global trending snapshots published
``trail_assigned_partitions``          events partitions this worker owns
``trail_item_records_total{...}``      items-topic records by partition and outcome
                                       (``applied``, ``removed``, ``malformed``)
=====================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "trail_records", "Records consumed from the events topic", ["partition"], registry=r
        )
        self.events = Counter(
            "trail_events", "Good events applied to the engine", ["partition"], registry=r
        )
        self.events_per_second = Gauge(
            "trail_events_per_second", "Events applied per second (last interval)", registry=r
        )
        self.lag = Gauge(
            "trail_consumer_lag", "High watermark minus next offset", ["partition"], registry=r
        )
        self.windows_closed = Counter(
            "trail_windows_closed", "Windows closed and published", ["partition"], registry=r
        )
        self.late = Counter(
            "trail_late_events", "Events whose window had closed", ["partition"], registry=r
        )
        self.malformed = Counter(
            "trail_malformed", "Malformed records by category", ["category"], registry=r
        )
        self.dead_letters = Counter(
            "trail_dead_letters", "Records written to the dead-letter topic", ["kind"], registry=r
        )
        self.scoring_seconds = Histogram(
            "trail_window_scoring_seconds",
            "Scorer time per window (score + explain)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "trail_window_publish_seconds",
            "Window close to broker ack of its last ScoreUpdate",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.checkpoints = Counter(
            "trail_checkpoints", "State checkpoints written", ["partition"], registry=r
        )
        self.checkpoint_bytes = Gauge(
            "trail_checkpoint_bytes", "Size of the last checkpoint (compressed)", registry=r
        )
        self.restore_seconds = Histogram(
            "trail_state_restore_seconds",
            "Time to rebuild a partition's engine from the changelog",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duplicates = Counter(
            "trail_skipped_duplicates",
            "Re-delivered records at or below the stored offset",
            registry=r,
        )
        self.assigned = Gauge(
            "trail_assigned_partitions", "Events partitions this worker owns", registry=r
        )
        self.trending_published = Counter(
            "trail_trending_published", "Merged global trending snapshots published", registry=r
        )
        self.scorer_failures = Counter(
            "trail_scorer_failures",
            "Windows whose scorer raised (score: ranked by the ewma-1 fallback instead; "
            "explain: left unexplained)",
            ["stage"],
            registry=r,
        )
        self.item_records = Counter(
            "trail_item_records",
            "Records of the items topic by outcome (applied, removed, malformed)",
            ["partition", "outcome"],
            registry=r,
        )
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - a metrics port
        """Expose ``/metrics`` on ``port`` (0 picks a free one); returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> dict[str, float]:
        """Every sample as ``{"name{label=value}": value}`` (counters as ``*_total``)."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def total(self, name: str) -> float:
        """Sum of a metric's samples over all labels, e.g. ``total("trail_events_total")``."""
        return sum(
            value
            for key, value in self.snapshot().items()
            if key == name or key.startswith(name + "{")
        )
