"""``trail produce EVENTS``: replay an event log into the events topic in event-time order.

Events are keyed by ``item_id`` and written to the partition Kafka's default partitioner would
pick (:func:`streams.partitioning.partition_for`), in producer batches. ``--speed X`` paces them
X times faster than real time (event time); ``--speed max`` sends as fast as the broker takes
them. Each record is ``{"user_id", "item_id", "ts"}`` JSON (``ts`` an integer when whole).

``trail produce --items FILE`` publishes a catalog (CSV, Parquet or JSON lines, see
:mod:`streams.eventlog.items`) to the compacted items topic: one :class:`schemas.ItemMeta` per
item (key = item_id, fields left at their defaults omitted), in the partition of its key, which
is the partition of its events. ``--delete-item ID`` publishes a tombstone (the worker forgets
that item's metadata). With an event log too, the catalog goes first.

``trail tail`` lives in :mod:`streams.kafka_tail`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from schemas import ItemMeta
from streams.eventlog import EventLog
from streams.partitioning import partition_for, partition_for_key, partitions_of
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.kafka.sender import BatchSender

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


@contextlib.asynccontextmanager
async def _sender(settings: Settings) -> AsyncIterator[BatchSender]:
    """A sender on an idempotent producer that waits for every replica's ack: flushed when
    the block ends, its producer stopped however it ends."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka.options import client_options
    from streams.kafka.sender import BatchSender

    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=10,
        max_batch_size=1024 * 1024,
        max_request_size=2 * 1024 * 1024,
        enable_idempotence=True,
    )
    await producer.start()
    try:
        sender = BatchSender(producer)
        yield sender
        await sender.flush()
    finally:
        await producer.stop()


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
    from streams.kafka.options import TopicSpec, ensure_topics, verify_connection

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
    async with _sender(settings) as sender:
        started = time.perf_counter()
        sent = 0
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
    return ProduceSummary(sent, time.perf_counter() - started, partitions)


async def produce_items(
    settings: Settings,
    items: Iterable[ItemMeta] = (),
    *,
    topic: str | None = None,
    deletes: Iterable[str] = (),
    raw: Sequence[tuple[bytes | None, bytes | None, int | None]] = (),
) -> ProduceSummary:
    """Publish catalog records to the items topic (``settings.items_topic`` by default).

    Each item's record goes to its key's partition. The topic is created when missing,
    compacted, with the events topic's partition count (the events topic is created too when
    missing, with ``settings.partitions``). ``deletes`` are item ids to publish tombstones
    for; ``raw`` adds records as they are, ``(key, value, partition)`` (tests use it for
    malformed records; a None partition means the key's, or 0 without a key).

    Raises
    ------
    ValueError
        No items topic (``items_topic`` is empty) or its partition count differs from the
        events topic's.
    """
    from streams.kafka.options import TopicSpec, ensure_topics, items_topic_spec, verify_connection

    topic = topic if topic is not None else settings.items_topic
    if not topic:
        raise ValueError("no items topic: set --items-topic (TRAIL_ITEMS_TOPIC)")
    await verify_connection(settings)
    events = settings.events_topic
    counts = await ensure_topics(settings, [TopicSpec(events, settings.partitions)])
    wanted = counts[events]
    partitions = (await ensure_topics(settings, [items_topic_spec(topic, wanted)]))[topic]
    if partitions != wanted:
        raise ValueError(
            f"{topic} has {partitions} partitions but {events} has {wanted}: they must match"
        )
    async with _sender(settings) as sender:
        started = time.perf_counter()
        sent = 0
        for meta in items:
            value = orjson.dumps(meta.model_dump(mode="json", exclude_defaults=True))
            key = meta.item_id.encode("utf-8")
            sender.add(topic, partition_for(meta.item_id, partitions), key, value)
            sent += 1
            if sender.pending >= FLUSH_RECORDS:
                await sender.flush()
        for item_id in deletes:
            sender.add(topic, partition_for(item_id, partitions), item_id.encode("utf-8"), None)
            sent += 1
        for key, value, partition in raw:
            if partition is None:
                partition = partition_for_key(key, partitions) if key is not None else 0
            sender.add(topic, partition, key, value)
            sent += 1
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
        nargs="?",
        default=None,
        help="event log: a user_id,item_id,timestamp CSV, Parquet, .inter file or dataset name",
    )
    parser.add_argument(
        "--items",
        default=None,
        metavar="FILE",
        help="publish this item catalog (CSV, Parquet or JSON lines) to the items topic first",
    )
    parser.add_argument(
        "--delete-item",
        action="append",
        default=[],
        metavar="ID",
        help="publish a tombstone for this item id to the items topic (repeatable)",
    )
    parser.add_argument(
        "--items-topic", default=None, help="items topic (default TRAIL_ITEMS_TOPIC, items)"
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
    from streams.eventlog import DatasetError, load_events, load_items

    overrides: dict[str, Any] = {}
    if args.broker:
        overrides["broker"] = args.broker
    if args.partitions:
        overrides["partitions"] = args.partitions
    if args.items_topic is not None:
        overrides["items_topic"] = args.items_topic
    if args.topic:
        overrides["events_topic"] = args.topic
    settings = Settings(**overrides)
    if args.events is None and args.items is None and not args.delete_item:
        print("error: give an event log, --items FILE or --delete-item ID", file=sys.stderr)
        return 2
    if args.items is not None or args.delete_item:
        try:
            catalog = load_items(args.items) if args.items is not None else None
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in catalog.report() if catalog is not None else ():
            print(line, file=sys.stderr)
        items = catalog.items.values() if catalog is not None else ()
        published = asyncio.run(produce_items(settings, items, deletes=args.delete_item))
        print(
            f"produced {published.records:,} item records to {settings.items_topic} "
            f"({published.partitions} partitions) in {published.seconds:.1f} s",
            file=sys.stderr,
        )
    if args.events is None:
        return 0
    try:
        log = load_events(args.events, progress=not args.no_progress).sorted_by_time()
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
