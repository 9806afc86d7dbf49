"""``trail produce EVENTS``: replay an event log into the events topic in event-time order.

Events are keyed by ``item_id`` and written to the partition Kafka's default partitioner would
pick (:func:`streams.partitioning.partition_for`), in producer batches. ``--speed X`` paces them
X times faster than real time (event time); ``--speed max`` sends as fast as the broker takes
them. Each record is ``{"user_id", "item_id", "ts"}`` JSON (``ts`` an integer when whole).

``trail tail`` lives in :mod:`streams.kafka_tail`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streams.datasets import EventLog
from streams.partitioning import partitions_of
from streams.settings import Settings

#: Records per flush (bounded memory; one broker round trip per partition per flush).
FLUSH_RECORDS = 50_000


@dataclass(frozen=True)
class ProduceSummary:
    records: int
    seconds: float
    partitions: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


def event_values(log: EventLog, start: int = 0, stop: int | None = None) -> list[bytes]:
    """The JSON value of every event of ``log[start:stop]``."""
    stop = len(log) if stop is None else stop
    users = log.user_ids[start:stop].tolist()
    items = log.item_ids[start:stop].tolist()
    times = log.timestamps[start:stop].tolist()
    dumps = orjson.dumps
    return [
        dumps({"user_id": u, "item_id": i, "ts": int(t) if t.is_integer() else t})
        for u, i, t in zip(users, items, times, strict=True)
    ]


async def produce_log(
    settings: Settings,
    log: EventLog,
    *,
    topic: str | None = None,
    speed: float | None = None,
    start: int = 0,
    stop: int | None = None,
    extra: list[tuple[int, bytes | None, bytes | None, int | None]] | None = None,
) -> ProduceSummary:
    """Produce ``log[start:stop]`` (in the log's order: sort it by time first) to ``topic``.

    ``speed`` None means as fast as possible. ``extra`` inserts raw records ``(before_index,
    key, value, partition)`` among the events (tests use it for malformed records; a None
    partition means partition 0).
    """
    from aiokafka import AIOKafkaProducer

    from streams.kafka_io import BatchSender, TopicSpec, client_options, ensure_topics
    from streams.kafka_options import verify_connection

    await verify_connection(settings)  # refused credentials: one clear error, no retries
    topic = topic or settings.events_topic
    counts = await ensure_topics(settings, [TopicSpec(topic, settings.partitions)])
    partitions = counts[topic]
    stop = len(log) if stop is None else min(stop, len(log))
    where = partitions_of(log.item_ids[start:stop], partitions).tolist()
    keys = [i.encode("utf-8") for i in log.item_ids[start:stop].tolist()]
    values = event_values(log, start, stop)
    times = np.asarray(log.timestamps[start:stop], dtype=np.float64)
    inserts: dict[int, list[tuple[bytes | None, bytes | None, int]]] = {}
    for before, key, value, partition in extra or []:
        inserts.setdefault(before, []).append((key, value, partition or 0))
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=10,
        max_batch_size=1024 * 1024,
        max_request_size=2 * 1024 * 1024,
        enable_idempotence=True,
    )
    await producer.start()
    sender = BatchSender(producer)
    started = time.perf_counter()
    sent = 0
    try:
        first_ts = float(times[0]) if times.size else 0.0
        for j in range(len(values)):
            index = start + j
            for key, value, partition in inserts.get(index, ()):
                sender.add(topic, partition, key, value)
                sent += 1
            if speed is not None:
                due = started + (float(times[j]) - first_ts) / speed
                delay = due - time.perf_counter()
                if delay > 0.001:
                    await sender.flush()
                    await asyncio.sleep(delay)
            sender.add(topic, where[j], keys[j], values[j])
            sent += 1
            if sender.pending >= FLUSH_RECORDS:
                await sender.flush()
        for before in sorted(b for b in inserts if b >= start + len(values)):
            for key, value, partition in inserts[before]:
                sender.add(topic, partition, key, value)
                sent += 1
        await sender.flush()
    finally:
        await producer.stop()
    return ProduceSummary(sent, time.perf_counter() - started, partitions)


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("speed must be a positive number or 'max'")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "events",
        help="event log: a user_id,item_id,timestamp CSV, Parquet, .inter file or dataset name",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="X times faster than real time, or 'max' (default max)",
    )
    parser.add_argument("--topic", default=None, help="topic (default TRAIL_EVENTS_TOPIC)")
    parser.add_argument("--broker", default=None, help="bootstrap servers (TRAIL_BROKER)")
    parser.add_argument(
        "--partitions", type=int, default=None, help="partitions when creating the topic"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N events")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N events")
    parser.add_argument("--no-progress", action="store_true", help="quiet")


def run(args: argparse.Namespace) -> int:
    from streams.datasets import load_events

    overrides: dict[str, Any] = {}
    if args.broker:
        overrides["broker"] = args.broker
    if args.partitions:
        overrides["partitions"] = args.partitions
    settings = Settings(**overrides)
    log = load_events(args.events, progress=not args.no_progress).sorted_by_time()
    stop = None if args.limit is None else args.skip + args.limit
    summary = asyncio.run(
        produce_log(settings, log, topic=args.topic, speed=args.speed, start=args.skip, stop=stop)
    )
    print(
        f"produced {summary.records:,} events to {args.topic or settings.events_topic} "
        f"({summary.partitions} partitions) in {summary.seconds:.1f} s "
        f"({summary.rate:,.0f} events/s)",
        file=sys.stderr,
    )
    return 0
