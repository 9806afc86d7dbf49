"""Helpers for the worker tests: settings, expected outputs from the embedded replay, reading
topics, and running ``trail worker`` as a real subprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from schemas import ScoreUpdate, TrendingSnapshot, decode
from streams.engine import Engine
from streams.eventlog import EventLog, load_events
from streams.partitioning import split_log
from streams.publish import MemoryPublisher
from streams.registry import scorer_factory
from streams.replay import EvaluationWindows, replay
from streams.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
WINDOW = "7d"
SCORER = "ewma-2"


#: The worker's two group consumers: every worker test runs on both.
RUNTIMES = ("aiokafka", "faust")


def unique_settings(bootstrap: str, prefix: str, **overrides: Any) -> Settings:
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "broker": bootstrap,
        "window": WINDOW,
        "scorer": SCORER,
        "events_topic": f"{tag}-events",
        "scores_topic": f"{tag}-scores",
        "trending_topic": f"{tag}-trending",
        "dlq_topic": f"{tag}-events.dlq",
        "items_topic": f"{tag}-items",
        "app_id": f"{tag}-app",
        "partitions": 4,
        "metrics_port": 0,
        "merge_idle_timeout": "600s",
    }
    values.update(overrides)
    return Settings(**values)


def ml100k(limit: int | None = None) -> EventLog:
    """ML-100K sorted by time (stable), optionally its first ``limit`` events."""
    log = load_events("ml-100k", progress=False).sorted_by_time()
    if limit is None:
        return log
    return head(log, limit)


def head(log: EventLog, n: int) -> EventLog:
    return dataclasses.replace(
        log, user_ids=log.user_ids[:n], item_ids=log.item_ids[:n], timestamps=log.timestamps[:n]
    )


@dataclasses.dataclass
class Expected:
    """What the embedded replay of each partition's sub-log publishes."""

    updates: dict[str, ScoreUpdate]  # by idempotency key
    by_partition: list[list[ScoreUpdate]]
    trending: list[list[TrendingSnapshot]]  # per partition, per window

    def window_ends(self) -> set[int]:
        return {u.window_end for u in self.updates.values()}


def expected_outputs(
    log: EventLog, partitions: int, settings: Settings, *, metadata: bool = True
) -> Expected:
    """Embedded replays (Engine + replay()) of every partition's sub-log, same window and
    scorer: what the worker must publish."""
    if not metadata:
        log = dataclasses.replace(log, items={})
    make = scorer_factory(settings.scorer, settings)
    updates: dict[str, ScoreUpdate] = {}
    by_partition: list[list[ScoreUpdate]] = []
    trending: list[list[TrendingSnapshot]] = []
    for sub in split_log(log, partitions):
        windows = EvaluationWindows.of(sub.timestamps, settings.window_seconds, None)
        engine = Engine(settings.engine_config(), make(), score_from_window=windows.first)
        publisher = MemoryPublisher()
        replay(sub, engine, [publisher], windows, progress=False)
        by_partition.append(publisher.updates)
        trending.append(publisher.trending)
        for update in publisher.updates:
            assert update.idempotency_key not in updates
            updates[update.idempotency_key] = update
    return Expected(updates, by_partition, trending)


# ------------------------------------------------------------------------------ reading topics
async def _read(
    bootstrap: str, topics: Iterable[str], idle_s: float, timeout_s: float
) -> dict[str, list[Any]]:
    from aiokafka import AIOKafkaConsumer

    topics = list(topics)
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: dict[str, list[Any]] = {t: [] for t in topics}
    try:
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            batches = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for tp, records in batches.items():
                out[tp.topic].extend(records)
                if records:
                    last = time.monotonic()
    finally:
        await consumer.stop()
    return out


def read_topics(
    bootstrap: str, *topics: str, idle_s: float = 2.0, timeout_s: float = 60.0
) -> dict[str, list[Any]]:
    """Every record of ``topics`` from the beginning (until nothing new for ``idle_s``)."""
    return asyncio.run(_read(bootstrap, topics, idle_s, timeout_s))


def score_updates(records: Iterable[Any]) -> list[ScoreUpdate]:
    return [decode(ScoreUpdate, r.value) for r in records]


def dedupe(updates: Iterable[ScoreUpdate]) -> tuple[dict[str, ScoreUpdate], int]:
    """Keep the first update per idempotency key; assert that every repeat is identical."""
    kept: dict[str, ScoreUpdate] = {}
    repeats = 0
    for update in updates:
        first = kept.setdefault(update.idempotency_key, update)
        if first is not update:
            repeats += 1
            assert first == update, f"repeat of {update.idempotency_key} differs"
    return kept, repeats


def assert_same_updates(got: dict[str, ScoreUpdate], expected: Expected) -> None:
    missing = sorted(set(expected.updates) - set(got))
    extra = sorted(set(got) - set(expected.updates))
    assert not missing, f"{len(missing)} updates missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected updates, e.g. {extra[:5]}"
    different = [k for k in expected.updates if got[k] != expected.updates[k]]
    assert not different, (
        f"{len(different)} updates differ, e.g.\n{got[different[0]]}\n"
        f"{expected.updates[different[0]]}"
    )


def expected_trending_ends(expected: Expected) -> list[int]:
    """Windows the merge publishes when no partition is idle: those every partition closed."""
    complete_through = min(parts[-1].window_end for parts in expected.trending)
    ends = {t.window_end for parts in expected.trending for t in parts}
    return sorted(w for w in ends if w <= complete_through)


def trending_ends(bootstrap: str, topic: str) -> list[int]:
    records = read_topics(bootstrap, topic, idle_s=0.5, timeout_s=10)[topic]
    return [decode(TrendingSnapshot, r.value).window_end for r in records]


def windows_by_partition(updates: Iterable[ScoreUpdate], partitions: int) -> dict[int, set[int]]:
    from streams.partitioning import partition_for

    out: dict[int, set[int]] = defaultdict(set)
    for update in updates:
        out[partition_for(update.item_id, partitions)].add(update.window_end)
    return dict(out)


# ------------------------------------------------------------------------------ subprocesses
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """``trail worker`` in a subprocess, with its metrics endpoint and log file."""

    def __init__(
        self,
        settings: Settings,
        tmp: Path,
        name: str,
        *extra: str,
        env: dict[str, str] | None = None,
        items: str | None = "ml-100k",
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = tmp / f"{name}.log"
        self.summary_path = tmp / f"{name}.summary.json"
        command = [
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "--broker",
            settings.broker,
            "--app-id",
            settings.app_id,
            "--events-topic",
            settings.events_topic,
            "--scores-topic",
            settings.scores_topic,
            "--trending-topic",
            settings.trending_topic,
            "--dlq-topic",
            settings.dlq_topic,
            "--items-topic",
            settings.items_topic,
            "--partitions",
            str(settings.partitions),
            "--window",
            settings.window,
            "--scorer",
            settings.scorer,
            "--metrics-port",
            str(self.port),
            "--worker-id",
            name,
            "--summary-out",
            str(self.summary_path),
            "--runtime",
            settings.runtime,
            *extra,
        ]
        if items:
            command += ["--items", items]
        environment = dict(os.environ)
        environment.update(
            {
                "TRAIL_MERGE_IDLE_TIMEOUT": settings.merge_idle_timeout,
                "TRAIL_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
                "TRAIL_BATCH_SIZE": str(settings.batch_size),
                "TRAIL_CHECKPOINT_INTERVAL": settings.checkpoint_interval,
            }
        )
        environment.update(env or {})
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )

    def metrics(self) -> dict[str, float]:
        """Scrape ``/metrics``: ``{"name{labels}": value}`` (empty until it serves)."""
        try:
            with urllib.request.urlopen(  # noqa: S310 - a local test endpoint
                f"http://127.0.0.1:{self.port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
        return out

    def total(self, name: str) -> float:
        return sum(v for k, v in self.metrics().items() if re.match(rf"{name}(\{{|$)", k))

    def partitions(self) -> set[int]:
        """Partitions this worker has consumed records from."""
        owned = set()
        for key, value in self.metrics().items():
            match = re.match(r'trail_records_total\{partition="(\d+)"\}', key)
            if match and value > 0:
                owned.add(int(match.group(1)))
        return owned

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit in {timeout}s:\n{self.log_text()}"
            ) from None

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """kill -9."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        self._log.close()


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
