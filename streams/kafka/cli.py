"""The ``trail worker`` command: flags -> :class:`~streams.settings.Settings` -> a running
:class:`~streams.kafka.worker.Worker` until SIGTERM, SIGINT or ``--until-idle``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import orjson

from streams.kafka.runtimes import RUNTIMES
from streams.settings import Settings

log = logging.getLogger("trail.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=None, help="bootstrap servers (TRAIL_BROKER)")
    parser.add_argument("--app-id", default=None, help="consumer group / app id (TRAIL_APP_ID)")
    parser.add_argument("--events-topic", default=None, help="events topic (TRAIL_EVENTS_TOPIC)")
    parser.add_argument("--scores-topic", default=None, help="scores topic")
    parser.add_argument("--trending-topic", default=None, help="trending topic")
    parser.add_argument("--dlq-topic", default=None, help="dead-letter topic")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of topics this worker creates (existing ones are kept)",
    )
    parser.add_argument("--window", default=None, help="window length, e.g. 1h, 7d")
    parser.add_argument("--grace", default=None, help="grace period for late events")
    parser.add_argument("--scorer", default=None, help="scorer name (TRAIL_SCORER)")
    parser.add_argument(
        "--items",
        dest="items_source",
        default=None,
        metavar="FILE",
        help="item catalog to start from: CSV, Parquet or JSON lines (item_id, title, "
        "categories, ...), a dataset name or a .inter path (TRAIL_ITEMS_SOURCE)",
    )
    parser.add_argument(
        "--items-topic",
        default=None,
        help="compacted item-metadata topic, key = item_id (default items; '' for none)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="records per batch")
    parser.add_argument(
        "--max-event-time-skew",
        default=None,
        help="dead-letter events more than this ahead of the clock, e.g. 5m (0s: off)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (0 = off; default 9308)"
    )
    parser.add_argument(
        "--checkpoint-interval",
        default=None,
        help="checkpoint each partition at least this often (default 10s)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="group consumer: aiokafka (default, fastest) or a Faust app (TRAIL_RUNTIME)",
    )
    parser.add_argument("--worker-id", default=None, help="name in logs and dead letters")
    parser.add_argument(
        "--until-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once it has consumed events, caught up, and been idle this long",
    )
    parser.add_argument(
        "--summary-out",
        type=Path,
        default=None,
        help="write a JSON summary (counters, latencies) on exit",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


_SETTING_ARGS = (
    "broker",
    "app_id",
    "events_topic",
    "scores_topic",
    "trending_topic",
    "dlq_topic",
    "partitions",
    "window",
    "grace",
    "scorer",
    "items_source",
    "items_topic",
    "batch_size",
    "metrics_port",
    "checkpoint_interval",
    "runtime",
    "max_event_time_skew",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name) for name in _SETTING_ARGS if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(os.environ.get("TRAIL_AIOKAFKA_LOG_LEVEL", "WARNING"))
    from streams.eventlog import DatasetError
    from streams.kafka.faults import fault_hook
    from streams.kafka.items import load_items
    from streams.kafka.worker import Worker
    from streams.metrics import WorkerMetrics
    from streams.registry import scorer_factory

    settings = settings_from_args(args)
    factory = scorer_factory(settings.scorer, settings)
    try:
        items = load_items(settings.items_source)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = WorkerMetrics()
    if settings.metrics_port:
        port = metrics.serve(settings.metrics_port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    worker = Worker(
        settings,
        scorer_factory=factory,
        items=items,
        metrics=metrics,
        worker_id=args.worker_id,
        until_idle=args.until_idle,
        after_published=fault_hook(os.environ),
    )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        return await worker.run()

    try:
        return asyncio.run(main())
    finally:
        metrics.close()
        if args.summary_out is not None:
            args.summary_out.parent.mkdir(parents=True, exist_ok=True)
            args.summary_out.write_bytes(orjson.dumps(worker.summary(), option=orjson.OPT_INDENT_2))
