"""Kafka worker throughput on a real broker: events/s through one worker process, window
close-to-publish latency, and raw aiokafka produce/consume rates of the same run as the ceiling.

Steps (one broker, one process):

1. load the events (ML-1M by default, sorted by time), encode them as the events topic carries
   them, and time a raw aiokafka produce of them into a new topic (batched, acks=all);
2. time a raw aiokafka consume of the whole topic (getmany, no processing): the ceiling;
3. run the worker (the same ``Worker`` as ``trail worker``) on the backlog until it is caught
   up: events/s = events / (first fetch .. last round done); it decodes, checks, applies,
   closes windows, scores, publishes every ScoreUpdate and partial trending list, dead-letters,
   checkpoints to the changelog and commits, exactly as in production;
4. live latency: a fresh worker on a fresh topic while a producer in another process sends
   events at a steady ``--live-rate``, well below capacity: window close -> broker ack of the
   window's last ScoreUpdate (``window_publish_ms`` = its p50). The same latency measured in
   step 3 is mostly queueing behind the backlog; it is reported as ``backlog_*``.

    .venv/bin/python bench/kafka.py [--bootstrap HOST:PORT] [--dataset ml-1m] [--window 7d]
                                    [--partitions 4] [--events N] [--runtime faust] [--json]

Without ``--bootstrap`` it starts a private broker with compose/kafka.sh and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, machine, record, today  # noqa: E402
from streams.eventlog import EventLog, load_events  # noqa: E402
from streams.kafka.options import TopicSpec, ensure_topics  # noqa: E402
from streams.kafka.sender import BatchSender  # noqa: E402
from streams.kafka.worker import Worker  # noqa: E402
from streams.kafka_cli import event_values  # noqa: E402
from streams.partitioning import partitions_of  # noqa: E402
from streams.registry import scorer_factory  # noqa: E402
from streams.settings import Settings  # noqa: E402

HEADER = (
    "| date | machine | command | worker events/s | raw consume/s | raw produce/s "
    "| window close→publish ms p50 / p95 | notes |\n|---|---|---|---|---|---|---|---|"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A private broker from compose/kafka.sh (or the one given)."""

    def __init__(self, bootstrap: str | None) -> None:
        self.bootstrap = bootstrap
        self.env: dict[str, str] | None = None

    def __enter__(self) -> str:
        if self.bootstrap:
            return self.bootstrap
        port = _free_port()
        data = tempfile.mkdtemp(prefix="trail-bench-kafka-")
        self.env = {
            **os.environ,
            "TRAIL_KAFKA_PORT": str(port),
            "TRAIL_KAFKA_CONTROLLER_PORT": str(_free_port()),
            "TRAIL_KAFKA_DATA": data,
            "TRAIL_PYTHON": sys.executable,
        }
        result = subprocess.run(
            ["bash", str(ROOT / "compose" / "kafka.sh"), "start"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"compose/kafka.sh start failed:\n{result.stderr}")
        self.bootstrap = next(
            line.split("=", 1)[1]
            for line in result.stdout.splitlines()
            if line.startswith("KAFKA_BOOTSTRAP=")
        )
        return self.bootstrap

    def __exit__(self, *exc: object) -> None:
        if self.env is not None:
            subprocess.run(
                ["bash", str(ROOT / "compose" / "kafka.sh"), "stop"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            shutil.rmtree(self.env["TRAIL_KAFKA_DATA"], ignore_errors=True)


async def raw_produce(settings: Settings, log: EventLog, topic: str) -> tuple[float, float]:
    """(events/s of the send alone, seconds to encode the values) with batched aiokafka."""
    from aiokafka import AIOKafkaProducer

    counts = await ensure_topics(settings, [TopicSpec(topic, settings.partitions)])
    started = time.perf_counter()
    values = event_values(log)
    keys = [i.encode() for i in log.item_ids.tolist()]
    where = partitions_of(log.item_ids, counts[topic]).tolist()
    encode_s = time.perf_counter() - started
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker,
        acks="all",
        linger_ms=10,
        max_batch_size=1 << 20,
        max_request_size=2 << 20,
        enable_idempotence=True,
    )
    await producer.start()
    try:
        sender = BatchSender(producer)
        started = time.perf_counter()
        for start in range(0, len(values), 50_000):
            for j in range(start, min(start + 50_000, len(values))):
                sender.add(topic, where[j], keys[j], values[j])
            await sender.flush()
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    return len(values) / seconds, encode_s


async def raw_consume(settings: Settings, topic: str, expected: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.broker,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    seen = 0
    first: float | None = None
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=settings.batch_size)
            if batches and first is None:
                first = time.perf_counter()
            seen += sum(len(r) for r in batches.values())
        last = time.perf_counter()
    finally:
        await consumer.stop()
    return seen / (last - (first or last)) if last > (first or last) else float("inf")


async def run_worker(settings: Settings, log: EventLog, until_idle: float = 2.0) -> Worker:
    worker = Worker(
        settings,
        scorer_factory=scorer_factory(settings.scorer, settings),
        items=dict(log.items),
        worker_id="bench",
        until_idle=until_idle,
    )
    await worker.run()
    return worker


def _slice(log: EventLog, start: int, stop: int | None) -> EventLog:
    return dataclasses.replace(
        log,
        user_ids=log.user_ids[start:stop],
        item_ids=log.item_ids[start:stop],
        timestamps=log.timestamps[start:stop],
    )


async def paced_produce(bootstrap: str, topic: str, log: EventLog, rate: float) -> float:
    """Send ``log`` at ``rate`` events/s, every 10 ms (the live phase's producer process)."""
    from aiokafka import AIOKafkaProducer

    values = event_values(log)
    keys = [i.encode() for i in log.item_ids.tolist()]
    counts = await ensure_topics(Settings(broker=bootstrap), [TopicSpec(topic, 4)])
    where = partitions_of(log.item_ids, counts[topic]).tolist()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        sender = BatchSender(producer)
        started = time.perf_counter()
        sent = 0
        while sent < len(values):
            due = min(len(values), int((time.perf_counter() - started) * rate) + 1)
            for j in range(sent, due):
                sender.add(topic, where[j], keys[j], values[j])
            sent = max(sent, due)
            await sender.flush()
            await asyncio.sleep(0.01)
        return len(values) / (time.perf_counter() - started)
    finally:
        await producer.stop()


def live_latency(
    settings: Settings, log: EventLog, dataset: str, rate: float, events: int
) -> tuple[dict[str, float], float]:
    """Window close -> publish latency (ms stats) of a fresh worker fed at a steady ``rate`` by
    a producer in another process; also returns the rate achieved."""
    tag = f"live-{uuid.uuid4().hex[:8]}"
    live = settings.model_copy(
        update={
            "events_topic": f"{tag}-events",
            "scores_topic": f"{tag}-scores",
            "trending_topic": f"{tag}-trending",
            "dlq_topic": f"{tag}-dlq",
            "app_id": f"{tag}-app",
        }
    )

    async def scenario() -> tuple[Worker, float]:
        await ensure_topics(live, [TopicSpec(live.events_topic, live.partitions)])
        task = asyncio.ensure_future(run_worker(live, log, until_idle=3.0))
        await asyncio.sleep(3.0)  # it joins the group and gets its partitions meanwhile
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--paced-producer",
            "--bootstrap",
            live.broker,
            "--topic",
            live.events_topic,
            "--dataset",
            dataset,
            "--events",
            str(events),
            "--live-rate",
            str(rate),
            stdout=asyncio.subprocess.PIPE,
        )
        output, _ = await producer.communicate()
        return await task, float(output.decode().split()[-1])

    worker, achieved = asyncio.run(scenario())
    return worker.summary()["publish_latency_ms"], achieved


def _ms(stats: dict[str, float], key: str) -> str:
    return f"{stats[key]:.1f}" if key in stats else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    parser.add_argument("--dataset", default="ml-1m", help="event log (default ml-1m)")
    parser.add_argument("--events", type=int, default=None, help="first N events by time")
    parser.add_argument("--window", default="7d", help="window length (default 7d)")
    parser.add_argument("--scorer", default="ewma-2", help="scorer (default ewma-2)")
    parser.add_argument("--partitions", type=int, default=4, help="events partitions")
    parser.add_argument("--batch-size", type=int, default=20_000, help="records per round")
    parser.add_argument(
        "--runtime",
        choices=("aiokafka", "faust"),
        default="aiokafka",
        help="the worker's group consumer (default aiokafka)",
    )
    parser.add_argument(
        "--live-rate", type=float, default=20_000, help="events/s of the live phase (20000)"
    )
    parser.add_argument(
        "--live-events", type=int, default=200_000, help="events of the live phase (0: skip)"
    )
    parser.add_argument("--paced-producer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    parser.add_argument("--no-record", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    full_log = load_events(args.dataset, progress=False).sorted_by_time()
    if args.paced_producer:
        log = _slice(full_log, 0, args.events)
        print(asyncio.run(paced_produce(args.bootstrap, args.topic, log, args.live_rate)))
        return 0
    log = full_log if args.events is None else _slice(full_log, 0, args.events)
    n = len(log)
    with Broker(args.bootstrap) as bootstrap:
        tag = f"bench-{uuid.uuid4().hex[:8]}"
        settings = Settings(
            broker=bootstrap,
            window=args.window,
            scorer=args.scorer,
            partitions=args.partitions,
            batch_size=args.batch_size,
            events_topic=f"{tag}-events",
            scores_topic=f"{tag}-scores",
            trending_topic=f"{tag}-trending",
            dlq_topic=f"{tag}-dlq",
            app_id=f"{tag}-app",
            metrics_port=0,
            runtime=args.runtime,
        )
        produce_rate, encode_s = asyncio.run(raw_produce(settings, log, settings.events_topic))
        consume_rate = asyncio.run(raw_consume(settings, settings.events_topic, n))
        wall = time.perf_counter()
        worker = asyncio.run(run_worker(settings, log))
        wall = time.perf_counter() - wall
        live: dict[str, float] = {}
        achieved = 0.0
        if args.live_events > 0:
            live, achieved = live_latency(
                settings, full_log, args.dataset, args.live_rate, args.live_events
            )
    load = os.getloadavg()[0]
    summary = worker.summary()
    span = summary["processing_seconds"]
    events_per_s = summary["events_applied"] / span if span > 0 else float("inf")
    backlog: dict[str, Any] = summary["publish_latency_ms"]
    metrics = summary["metrics"]
    windows = sum(v for k, v in metrics.items() if k.startswith("trail_windows_closed_total"))
    scoring_n = metrics.get("trail_window_scoring_seconds_count", 0.0)
    scoring_ms = 1000 * metrics.get("trail_window_scoring_seconds_sum", 0.0) / max(scoring_n, 1)
    checkpoints = sum(v for k, v in metrics.items() if k.startswith("trail_checkpoints_total"))
    nan = float("nan")
    results = {
        "events": n,
        "events_applied": summary["events_applied"],
        "events_per_s": round(events_per_s),
        "raw_consume_per_s": round(consume_rate),
        "raw_produce_per_s": round(produce_rate),
        "window_publish_ms": round(live.get("p50", nan), 2),
        "window_publish_ms_p95": round(live.get("p95", nan), 2),
        "live_windows": int(live.get("count", 0)),
        "live_events_per_s": round(achieved),
        "backlog_window_publish_ms": round(backlog.get("p50", nan), 2),
        "backlog_window_publish_ms_p95": round(backlog.get("p95", nan), 2),
        "windows_closed": int(windows),
        "scoring_ms_per_window": round(scoring_ms, 3),
        "checkpoints": int(checkpoints),
        "worker_wall_s": round(wall, 2),
        "processing_s": round(span, 3),
        "partitions": args.partitions,
        "window": args.window,
        "dataset": args.dataset,
        "runtime": args.runtime,
        "load_average": round(load, 2),
    }
    print(
        f"Kafka worker benchmark: {args.dataset}, {n:,} events, {args.partitions} partitions, "
        f"window {args.window}, scorer {args.scorer}, one {args.runtime} worker process "
        f"(load average {load:.1f} on {os.cpu_count()} cores)"
    )
    rows = [
        ("raw aiokafka produce (batched, acks=all)", f"{produce_rate:,.0f} events/s"),
        ("raw aiokafka consume (getmany, no work)", f"{consume_rate:,.0f} events/s"),
        ("worker: events through engine + outputs", f"{events_per_s:,.0f} events/s"),
        ("worker: share of the consume ceiling", f"{events_per_s / consume_rate:.0%}"),
        ("windows closed (all partitions)", f"{int(windows):,}"),
        (
            "window close -> publish, live (p50 / p95 / max)",
            f"{live.get('p50', 0):.1f} / {live.get('p95', 0):.1f} / {live.get('max', 0):.1f} ms"
            f" ({int(live.get('count', 0))} windows, fed at {achieved:,.0f} events/s)",
        ),
        (
            "window close -> publish, backlog run",
            f"{backlog.get('p50', 0):.1f} / {backlog.get('p95', 0):.1f} / "
            f"{backlog.get('max', 0):.1f} ms (queued behind the backlog)",
        ),
        ("scoring per window (mean)", f"{scoring_ms:.2f} ms"),
        ("checkpoints written", f"{int(checkpoints):,}"),
        ("worker wall time incl. start and group join", f"{wall:.1f} s"),
        ("(encoding the events for produce, not timed)", f"{encode_s:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if not args.no_record:
        row = (
            f"| {today()} | {machine()} | `{command_line()}` | {events_per_s:,.0f} "
            f"| {consume_rate:,.0f} | {produce_rate:,.0f} "
            f"| live {_ms(live, 'p50')} / {_ms(live, 'p95')}; backlog "
            f"{backlog.get('p50', 0):.0f} / {backlog.get('p95', 0):.0f} "
            f"| {args.runtime} runtime; {args.dataset} {n:,} events, {args.partitions} partitions, "
            f"window {args.window}, "
            f"{args.scorer}, {int(windows):,} windows; "
            + (
                f"live phase {int(live.get('count', 0))} windows at {achieved:,.0f} events/s; "
                if live
                else "no live phase; "
            )
            + f"load average {load:.1f} |"
        )
        record("kafka", HEADER, row)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
