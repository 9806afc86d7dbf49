"""``trail widget`` (or ``python -m streams.widget``): arguments, sources, and the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from schemas import ItemMeta, ScoreUpdate, TrendingSnapshot
from streams.trend.windows import DEFAULT_WINDOW
from streams.widget.app import WidgetOptions, create_app
from streams.widget.hub import (
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_HEARTBEAT,
    DEFAULT_HISTORY,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_LAG,
    DEFAULT_SEND_TIMEOUT,
    TrendingHub,
)
from streams.widget.protocol import MAX_REQUEST_HEAD_BYTES, http_protocol
from streams.widget.sources import DemoSource, KafkaSource

if TYPE_CHECKING:  # pragma: no cover
    from streams.settings import Settings

log = logging.getLogger("trail.widget")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080; 0 = any free port)")
    source = parser.add_argument_group("source (default: Kafka)")
    source.add_argument("--broker", default=None, help="Kafka bootstrap servers (TRAIL_BROKER)")
    source.add_argument("--trending-topic", default=None, help="trending topic (trending)")
    source.add_argument("--scores-topic", default=None, help="scores topic (scores)")
    source.add_argument(
        "--demo",
        metavar="DATASET",
        default=None,
        help="replay a dataset (e.g. ml-100k) instead of following Kafka",
    )
    source.add_argument(
        "--items",
        metavar="FILE",
        default=None,
        help="item catalog (CSV, Parquet or JSON lines): titles for items that come without one",
    )
    source.add_argument(
        "--no-source",
        action="store_true",
        help="no source at all (with --allow-publish, for tests and benchmarks)",
    )
    demo = parser.add_argument_group("demo")
    demo.add_argument(
        "--window", default=DEFAULT_WINDOW, help=f"demo window length ({DEFAULT_WINDOW})"
    )
    demo.add_argument("--scorer", default="ewma-1", help="demo scorer (ewma-1)")
    demo.add_argument(
        "--interval", type=float, default=1.0, help="seconds between demo windows (1.0)"
    )
    demo.add_argument(
        "--demo-windows",
        type=int,
        default=None,
        help="replay only the first N windows of the dataset",
    )
    demo.add_argument("--loop", action="store_true", help="start the demo over when it ends")
    tuning = parser.add_argument_group("serving")
    tuning.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        help=f"windows of history per item ({DEFAULT_HISTORY})",
    )
    tuning.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        help=f"seconds between SSE heartbeats ({DEFAULT_HEARTBEAT:g})",
    )
    tuning.add_argument(
        "--client-queue",
        type=int,
        default=DEFAULT_CLIENT_QUEUE,
        help=f"pending updates per client ({DEFAULT_CLIENT_QUEUE})",
    )
    tuning.add_argument(
        "--max-lag",
        type=int,
        default=DEFAULT_MAX_LAG,
        help=f"missed updates before a client is cut ({DEFAULT_MAX_LAG})",
    )
    tuning.add_argument(
        "--send-timeout",
        type=float,
        default=DEFAULT_SEND_TIMEOUT,
        help=f"seconds a stalled write may last ({DEFAULT_SEND_TIMEOUT:g})",
    )
    tuning.add_argument(
        "--max-clients",
        type=int,
        default=DEFAULT_MAX_CLIENTS,
        help=f"concurrent SSE clients ({DEFAULT_MAX_CLIENTS})",
    )
    tuning.add_argument(
        "--cors-origin",
        default="*",
        help="origin allowed to read the API and events cross-origin (*)",
    )
    tuning.add_argument(
        "--allow-publish",
        action="store_true",
        help="enable POST /api/publish/{trending,score} (tests/benchmarks only)",
    )
    tuning.add_argument("--log-level", default="info", help="logging level (info)")
    tuning.add_argument("--access-log", action="store_true", help="log every HTTP request")


class TitledHub(TrendingHub):
    """A hub that names items from a catalog when their records carry no title.

    >>> from schemas import ItemMeta, TrendingItem, TrendingSnapshot
    >>> hub = TitledHub({"7": ItemMeta(item_id="7", title="Toy Story")})
    >>> item = TrendingItem(item_id="7", rank=1, score=1.0)
    >>> hub.apply_snapshot(TrendingSnapshot(window_start=0, window_end=10, model_version="m",
    ...     items=(item,), changed_items=1, events=1.0))
    True
    >>> hub.view()["items"][0]["title"]
    'Toy Story'
    """

    def __init__(self, items: Mapping[str, ItemMeta], **options: Any) -> None:
        super().__init__(**options)
        self.titles = {item_id: meta.title for item_id, meta in items.items() if meta.title}

    def apply_snapshot(self, snapshot: TrendingSnapshot) -> bool:
        if any(item.title is None and item.item_id in self.titles for item in snapshot.items):
            items = tuple(
                item.model_copy(update={"title": self.titles[item.item_id]})
                if item.title is None and item.item_id in self.titles
                else item
                for item in snapshot.items
            )
            snapshot = snapshot.model_copy(update={"items": items})
        return super().apply_snapshot(snapshot)

    def apply_score(self, update: ScoreUpdate) -> None:
        title = self.titles.get(update.item_id)
        if update.features.title is None and title is not None:
            features = update.features.model_copy(update={"title": title})
            update = update.model_copy(update={"features": features})
        super().apply_score(update)


class _CutClientFilter(logging.Filter):
    """Drops uvicorn's error for a stream we cut on purpose (a lagging or stalled client):
    we already logged a warning, and ending such a response unfinished is the point."""

    MESSAGE = "ASGI callable returned without completing response."

    def __init__(self, hub: TrendingHub) -> None:
        super().__init__()
        self.hub = hub

    def filter(self, record: logging.LogRecord) -> bool:
        if self.hub.cut_responses > 0 and record.getMessage() == self.MESSAGE:
            self.hub.cut_responses -= 1
            return False
        return True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _settings(args: argparse.Namespace) -> Settings:
    from streams.settings import Settings

    values = {
        "broker": args.broker,
        "trending_topic": args.trending_topic,
        "scores_topic": args.scores_topic,
        "window": args.window if args.demo else None,
        "scorer": args.scorer if args.demo else None,
    }
    return Settings(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    import uvicorn

    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.demo and args.no_source:
        print("error: --demo and --no-source exclude each other", file=sys.stderr)
        return 2
    if args.interval < 0 or args.history < 1 or args.client_queue < 1:
        print("error: --interval must be >= 0, --history and --client-queue >= 1", file=sys.stderr)
        return 2
    settings = _settings(args)
    hub_options: dict[str, Any] = {
        "history_windows": args.history,
        "client_queue": args.client_queue,
        "max_lag": args.max_lag,
        "max_clients": args.max_clients,
    }
    hub = TrendingHub(**hub_options)
    if args.items:
        from streams.eventlog import DatasetError, load_items

        try:
            catalog = load_items(args.items)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in catalog.report():
            print(line, file=sys.stderr)
        hub = TitledHub(catalog.items, **hub_options)
    options = WidgetOptions(
        heartbeat_s=args.heartbeat,
        send_timeout_s=args.send_timeout,
        allow_publish=args.allow_publish,
        cors_origin=args.cors_origin,
    )
    demo: DemoSource | None = None
    kafka: KafkaSource | None = None
    tasks: list[asyncio.Task[Any]] = []
    if args.demo:
        if args.scorer not in _scorer_names():
            print(f"error: unknown scorer {args.scorer!r}", file=sys.stderr)
            return 2
        hub.source = f"demo:{args.demo}"
        demo = DemoSource(
            hub,
            dataset=args.demo,
            settings=settings,
            scorer=args.scorer,
            interval=args.interval,
            windows=args.demo_windows,
            loop_forever=args.loop,
        )
    elif args.no_source:
        hub.source_ready = True
    else:
        from streams.kafka.options import KafkaSecurityError, verify_connection

        # Settings or credentials the broker refuses: one error now, not a source that
        # retries them for ever behind a page that never fills.
        try:
            asyncio.run(verify_connection(settings))
        except KafkaSecurityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        hub.source = f"kafka:{settings.broker}"
        kafka = KafkaSource(
            hub,
            settings,
            trending_topic=settings.trending_topic,
            scores_topic=settings.scores_topic,
        )
    server: Any = None

    async def startup() -> None:
        if demo is not None:
            demo.start()
        if kafka is not None:
            tasks.append(asyncio.create_task(kafka.run(), name="trail-widget-kafka"))
        tasks.append(asyncio.create_task(_close_streams_on_exit(), name="trail-widget-exit"))

    async def shutdown() -> None:
        if demo is not None:
            await asyncio.to_thread(demo.stop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_streams_on_exit() -> None:
        # uvicorn waits for open responses before the lifespan ends: end the streams first.
        while server is None or not server.should_exit:
            await asyncio.sleep(0.2)
        hub.close_all()

    app = create_app(hub, options, startup=startup, shutdown=shutdown)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level=level,
        access_log=args.access_log,
        timeout_graceful_shutdown=3,
        lifespan="on",
        http=http_protocol(MAX_REQUEST_HEAD_BYTES),
        # h11 refuses a head still incomplete past this size; Guard the rest.
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_CutClientFilter(hub))
    # One line that scripts can wait for (and learn the port from, with --port 0).
    print(f"TRAIL_WIDGET_URL=http://{shown}:{port}", flush=True)
    log.info("serving the trending widget on http://%s:%s (source: %s)", shown, port, hub.source)
    server.run(sockets=[sock])
    return 0


def _scorer_names() -> tuple[str, ...]:
    from streams.registry import SCORER_NAMES

    return SCORER_NAMES
