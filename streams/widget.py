"""``trail widget``: a live "trending now" page and an embeddable web component.

A small ASGI server (Starlette on uvicorn) follows the ``trending`` and ``scores`` topics (or
runs the embedded replay on a dataset in demo mode) and pushes every new top-N to browsers with
Server-Sent Events.

Pieces
------
- :class:`TrendingHub` keeps the current top-N, each item's recent history (per-window counts,
  scores and ranks: the sparkline data) and the rank changes against the previous window, and
  fans each update out to subscribers. Every subscriber has its own small bounded queue: a
  newer snapshot replaces a pending one (snapshots are full states, so a slow browser simply
  skips intermediate windows), and a subscriber that falls too far behind is disconnected (its
  browser reconnects and gets the current state). Publishing never waits for any browser.
- Sources: :class:`KafkaSource` (aiokafka, no consumer group: every widget sees everything;
  undecodable records are logged and counted, never fatal) and :class:`DemoSource` (the
  embedded replay on a dataset, in a background thread, one window every ``--interval``
  seconds). ``--no-source --allow-publish`` leaves the hub to ``POST /api/publish/...``, for
  tests and benchmarks only: that endpoint does not exist unless the flag is given.
- HTTP: ``/`` (the page, with a strict Content-Security-Policy), ``/embed.js`` (the
  ``<trail-trending>`` custom element), ``/api/trending``, ``/api/history/{item_id}``,
  ``/events`` (SSE: ``event: trending``, heartbeats, ``retry:``) and ``/healthz``. The API and
  the event stream answer cross-origin GETs, so the component can be embedded anywhere. Every
  response, errors included, carries ``X-Content-Type-Options: nosniff``; a request head over
  :data:`MAX_REQUEST_HEAD_BYTES` gets 431 (and the client can read it: no reset).

Only the standard library and :mod:`schemas` are imported at module level: ``trail --help``
imports every command module, and the widget's dependencies are an optional extra.

>>> hub = TrendingHub(history_windows=4)
>>> snapshot = TrendingSnapshot(window_start=0, window_end=10, model_version="m", changed_items=2,
...     events=5, items=(TrendingItem(item_id="a", rank=1, score=2.0, recent_counts=(1, 3)),))
>>> hub.apply_snapshot(snapshot)
True
>>> [(h["window_end"], h["count"]) for h in hub.view()["items"][0]["history"]]
[(0, 1.0), (10, 3.0)]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from schemas import ScoreUpdate, TrendingItem, TrendingSnapshot, decode
from schemas.records import MAX_RECORD_BYTES, RecordError

if TYPE_CHECKING:  # pragma: no cover
    from streams.engine import WindowResult
    from streams.settings import Settings

log = logging.getLogger("trail.widget")

#: Windows of history kept per item (sparkline points).
DEFAULT_HISTORY = 12
#: Items whose history is kept (least recently updated are forgotten first).
DEFAULT_MAX_ITEMS = 10_000
#: Pending messages per SSE client before the oldest is dropped.
DEFAULT_CLIENT_QUEUE = 8
#: Updates a client may miss (dropped or coalesced) in a row before it is disconnected.
DEFAULT_MAX_LAG = 32
#: Seconds one write to a client may stall before the client is disconnected.
DEFAULT_SEND_TIMEOUT = 10.0
DEFAULT_HEARTBEAT = 15.0
DEFAULT_RETRY_MS = 3000
DEFAULT_MAX_CLIENTS = 2000
#: Trending snapshots re-read from the topic at start, to rebuild rank changes and history.
KAFKA_BACKLOG_SNAPSHOTS = DEFAULT_HISTORY

#: Page, stylesheet and component, shipped as package data of ``streams``.
STATIC_FOLDER = "widget_static"

#: The page's policy: only our own script and stylesheet, no inline code, no eval, no
#: frames, and Trusted Types with no policy at all, so any innerHTML-style string sink throws.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_SECURITY_HEADER_LINES = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
#: Largest request head (request line and headers) served; a larger one gets 431. Browsers
#: send a few KiB; 32 KiB leaves room for many cookies on a shared host name.
MAX_REQUEST_HEAD_BYTES = 32 * 1024
#: After refusing a request, how long (seconds) and how much (bytes) of what the client
#: still sends is read and dropped before the socket closes (so it reads the answer).
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Fan-out


class SubscriberClosed(Exception):
    """Raised by :meth:`Subscriber.get` once the subscriber was closed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscriber:
    """One SSE client's bounded mailbox.

    ``offer`` never blocks: a message with the same ``key`` as a pending one replaces it in
    place (coalescing: a snapshot supersedes the previous one), and when ``maxsize`` distinct
    messages are pending the oldest is dropped. Every message the client misses this way adds
    to its ``lag``; taking a message resets it. Past ``max_lag`` the subscriber is closed as
    ``"lagging"`` and its stream task (when registered) is cancelled, even if it is stuck in a
    write to a socket nobody reads.
    """

    def __init__(self, maxsize: int = DEFAULT_CLIENT_QUEUE, max_lag: int = DEFAULT_MAX_LAG) -> None:
        if maxsize < 1 or max_lag < 0:
            raise ValueError("maxsize must be >= 1 and max_lag >= 0")
        self.maxsize = maxsize
        self.max_lag = max_lag
        self._pending: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self.lag = 0
        self.dropped = 0
        self.delivered = 0
        self.closed_reason: str | None = None
        self.task: asyncio.Task[Any] | None = None
        self.connected_at = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, key: str, message: bytes) -> bool:
        """Queue ``message``; False when the subscriber is (now) closed."""
        if self.closed:
            return False
        for index, (pending_key, _) in enumerate(self._pending):
            if pending_key == key:
                self._pending[index] = (key, message)
                self._missed()
                break
        else:
            if len(self._pending) >= self.maxsize:
                self._pending.popleft()
                self._missed()
            self._pending.append((key, message))
        if self.lag > self.max_lag:
            self.close("lagging")
            return False
        self._wake.set()
        return True

    def _missed(self) -> None:
        self.lag += 1
        self.dropped += 1

    async def get(self, timeout: float | None = None) -> bytes | None:
        """The next message, or None after ``timeout`` seconds without one."""
        while not self._pending:
            if self.closed_reason is not None:
                raise SubscriberClosed(self.closed_reason)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        if self.closed_reason is not None:
            raise SubscriberClosed(self.closed_reason)
        _, message = self._pending.popleft()
        self.lag = 0
        self.delivered += 1
        return message

    def close(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._pending.clear()
        self._wake.set()
        if reason == "lagging" and self.task is not None and not self.task.done():
            # The stream may be stuck in a write that never drains: cut it now.
            self.task.cancel()


@dataclass
class HubStats:
    snapshots: int = 0
    scores: int = 0
    stale: int = 0
    bad_records: int = 0
    source_errors: int = 0
    connections: int = 0
    rejected_connections: int = 0
    lagging_disconnects: int = 0
    stalled_disconnects: int = 0
    dropped_messages: int = 0


@dataclass
class _ItemHistory:
    counts: dict[int, float] = field(default_factory=dict)
    scores: dict[int, tuple[float, int | None]] = field(default_factory=dict)
    title: str | None = None
    trend: str | None = None
    window_seconds: int | None = None

    def trim(self, keep: int) -> None:
        for table in (self.counts, self.scores):
            if len(table) > keep:
                for window_end in sorted(table)[: len(table) - keep]:
                    del table[window_end]

    def points(self, keep: int) -> list[dict[str, Any]]:
        ends = sorted(set(self.counts) | set(self.scores))[-keep:]
        points = []
        for window_end in ends:
            score, rank = self.scores.get(window_end, (None, None))
            points.append(
                {
                    "window_end": window_end,
                    "count": self.counts.get(window_end),
                    "score": score,
                    "rank": rank,
                }
            )
        return points


class TrendingHub:
    """The current top-N, recent per-item history, and the SSE subscribers it feeds.

    Lives on the event loop: call its methods from the loop, or :meth:`submit_threadsafe`
    from another thread. Snapshots older than the current one are ignored (counted as
    ``stale``); a snapshot of the same window replaces the current one (a redelivery or a
    corrected model) and keeps the rank baseline of the window before.
    """

    def __init__(
        self,
        *,
        history_windows: int = DEFAULT_HISTORY,
        max_items: int = DEFAULT_MAX_ITEMS,
        client_queue: int = DEFAULT_CLIENT_QUEUE,
        max_lag: int = DEFAULT_MAX_LAG,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.history_windows = history_windows
        self.max_items = max_items
        self.client_queue = client_queue
        self.max_lag = max_lag
        self.max_clients = max_clients
        self.stats = HubStats()
        self.source = "none"
        #: Whether the source is following its input (Kafka assigned, demo running).
        self.source_ready = False
        self._subscribers: set[Subscriber] = set()
        self._history: OrderedDict[str, _ItemHistory] = OrderedDict()
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Streams we ended on purpose without finishing the response (cut clients).
        self.cut_responses = 0
        self.reset()

    def reset(self) -> None:
        """Forget the current snapshot and history (a demo replay starting over)."""
        self._current: TrendingSnapshot | None = None
        self._baseline: dict[str, int] | None = None  # ranks of the previous window
        self._baseline_window: int | None = None
        self._history.clear()
        self._view: dict[str, Any] | None = None
        self._view_json: bytes = b""
        self._message: bytes = b""
        self.updated_at: float | None = None

    # -- inputs ----------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def submit_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` (e.g. ``hub.apply_snapshot``) on the hub's loop."""
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("the hub is not bound to a running event loop")
        self._loop.call_soon_threadsafe(callback, *args)

    def apply_snapshot(self, snapshot: TrendingSnapshot) -> bool:
        """Take a new top-N; False (and counted as stale) when it is older than the current."""
        current = self._current
        if current is not None and snapshot.window_end < current.window_end:
            self.stats.stale += 1
            return False
        if current is not None and snapshot.window_end > current.window_end:
            self._baseline = {item.item_id: item.rank for item in current.items}
            self._baseline_window = current.window_end
        window_seconds = max(1, snapshot.window_end - snapshot.window_start)
        for item in snapshot.items:
            history = self._touch(item.item_id)
            history.window_seconds = window_seconds
            history.title = item.title or history.title
            history.trend = item.trend or history.trend
            history.scores[snapshot.window_end] = (item.score, item.rank)
            self._merge_counts(history, snapshot.window_end, window_seconds, item.recent_counts)
            history.trim(self.history_windows)
        self._current = snapshot
        self.stats.snapshots += 1
        self._rebuild()
        self._broadcast("trending", self._message)
        return True

    def apply_score(self, update: ScoreUpdate) -> None:
        """Record one item's score for one window (history and sparkline data only)."""
        history = self._touch(update.item_id)
        features = update.features
        history.window_seconds = features.window_seconds
        history.title = features.title or history.title
        history.trend = features.trend
        history.scores[update.window_end] = (update.score, update.rank)
        self._merge_counts(
            history, features.window_end, features.window_seconds, features.recent_counts
        )
        history.trim(self.history_windows)
        self.stats.scores += 1

    def _touch(self, item_id: str) -> _ItemHistory:
        history = self._history.get(item_id)
        if history is None:
            history = self._history[item_id] = _ItemHistory()
            while len(self._history) > self.max_items:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(item_id)
        return history

    @staticmethod
    def _merge_counts(
        history: _ItemHistory, window_end: int, window_seconds: int, recent: tuple[float, ...]
    ) -> None:
        # recent_counts are the last k windows, oldest first, the last one ending at window_end.
        last = len(recent) - 1
        for offset, count in enumerate(recent):
            history.counts[window_end - (last - offset) * window_seconds] = float(count)

    # -- outputs ---------------------------------------------------------------------------

    def _rebuild(self) -> None:
        snapshot = self._current
        if snapshot is None:
            return
        self._seq += 1
        self.updated_at = time.time()
        items = []
        for item in snapshot.items:
            items.append(self._item_view(item))
        self._view = {
            "seq": self._seq,
            "published_at": self.updated_at,
            "window_start": snapshot.window_start,
            "window_end": snapshot.window_end,
            "previous_window_end": self._baseline_window,
            "model_version": snapshot.model_version,
            "changed_items": snapshot.changed_items,
            "events": snapshot.events,
            "items": items,
        }
        self._view_json = orjson.dumps(self._view)
        self._message = sse_message("trending", self._view_json, event_id=str(self._seq))

    def _item_view(self, item: TrendingItem) -> dict[str, Any]:
        """One row of the view; ``change`` is ``"new"`` for an item not in the previous list
        and for an item whose trend is ``"new"`` (first seen a few windows ago): a row the
        scorer calls new must read "new", not "▲1", even when it was listed a window before.
        ``previous_rank`` stays the rank it had then (None when it was not listed)."""
        previous = None if self._baseline is None else self._baseline.get(item.item_id)
        if item.trend == "new":
            change: str | None = "new"
        elif self._baseline is None:
            change = None
        elif previous is None:
            change = "new"
        elif previous > item.rank:
            change = "up"
        elif previous < item.rank:
            change = "down"
        else:
            change = "same"
        history = self._history.get(item.item_id)
        return {
            "item_id": item.item_id,
            "rank": item.rank,
            "previous_rank": previous,
            "change": change,
            "score": item.score,
            "explanation": item.explanation,
            "title": item.title,
            "trend": item.trend,
            "recent_counts": list(item.recent_counts),
            "history": history.points(self.history_windows) if history else [],
        }

    def view(self) -> dict[str, Any]:
        """The current state as the API serves it (empty items before the first snapshot)."""
        if self._view is None:
            return {"seq": 0, "published_at": None, "window_end": None, "items": []}
        return self._view

    def view_json(self) -> bytes:
        return self._view_json if self._view is not None else orjson.dumps(self.view())

    def history(self, item_id: str) -> dict[str, Any] | None:
        history = self._history.get(item_id)
        if history is None:
            return None
        return {
            "item_id": item_id,
            "title": history.title,
            "trend": history.trend,
            "window_seconds": history.window_seconds,
            "history": history.points(self.history_windows),
        }

    # -- subscribers -----------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber | None:
        """A new subscriber primed with the current snapshot; None when the hub is full."""
        if len(self._subscribers) >= self.max_clients:
            self.stats.rejected_connections += 1
            return None
        subscriber = Subscriber(self.client_queue, self.max_lag)
        if self._view is not None:
            subscriber.offer("trending", self._message)
        self._subscribers.add(subscriber)
        self.stats.connections += 1
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            self.stats.dropped_messages += subscriber.dropped
        subscriber.close(subscriber.closed_reason or "gone")

    def close_all(self, reason: str = "shutdown") -> None:
        for subscriber in list(self._subscribers):
            subscriber.close(reason)

    def _broadcast(self, key: str, message: bytes) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.offer(key, message):
                if subscriber.closed_reason == "lagging":
                    self.stats.lagging_disconnects += 1
                    log.warning(
                        "disconnected an SSE client that missed %d updates in a row",
                        subscriber.lag,
                    )
                self.unsubscribe(subscriber)

    def health(self) -> dict[str, Any]:
        age = None if self.updated_at is None else round(time.time() - self.updated_at, 3)
        current = self._current
        return {
            "status": "ok",
            "source": self.source,
            "source_ready": self.source_ready,
            "clients": self.clients,
            "window_end": None if current is None else current.window_end,
            "last_update_age_s": age,
            **self.stats.__dict__,
        }


def sse_message(event: str, data: bytes, *, event_id: str | None = None) -> bytes:
    """One Server-Sent Events message; ``data`` must be one line (compact JSON is)."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("SSE data must be a single line")
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


# --------------------------------------------------------------------------------------------
# Sources


def _fallback_explanation(features: Any) -> str:
    trend = features.trend
    counts = " → ".join(f"{c:g}" for c in features.recent_counts)
    return f"{trend.capitalize()}: {features.count:g} events this window (recent windows {counts})."


def _explainer() -> Callable[[Any, float], str]:
    """Grounded explanations for scorers that do not explain themselves (the baselines)."""
    try:
        from model.explain import verbalize
    except Exception:  # the verbalizer is optional here: fall back to a plain sentence
        return lambda features, score: _fallback_explanation(features)

    def explain(features: Any, score: float) -> str:
        try:
            return str(verbalize(features, None, variant=0))
        except Exception:
            return _fallback_explanation(features)

    return explain


class _DemoStopped(Exception):
    pass


class DemoSource:
    """The embedded replay on a dataset, one window every ``interval`` seconds, in a thread."""

    def __init__(
        self,
        hub: TrendingHub,
        *,
        dataset: str,
        settings: Settings,
        scorer: str,
        interval: float,
        windows: int | None = None,
        loop_forever: bool = False,
    ) -> None:
        self.hub = hub
        self.dataset = dataset
        self.settings = settings
        self.scorer = scorer
        self.interval = interval
        self.windows = windows
        self.loop_forever = loop_forever
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.error: str | None = None

    def start(self) -> None:
        self.hub.source_ready = True
        self._thread = threading.Thread(target=self._run, name="trail-widget-demo", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._replay_loop()
        except _DemoStopped:
            return
        except Exception as exc:  # keep serving what was published; say what went wrong
            self.error = f"{type(exc).__name__}: {exc}"
            self.hub.stats.source_errors += 1
            self.hub.source_ready = False
            log.exception("demo source failed")

    def _replay_loop(self) -> None:
        from model.registry import scorer_factory
        from streams.datasets import load_events
        from streams.engine import Engine
        from streams.replay import EvaluationWindows, replay

        config = self.settings.engine_config()
        length = config.trend.window.length
        log_ = load_events(self.dataset, progress=False)
        if self.windows is not None:
            first = int(log_.timestamps.min() // length)
            # Keep `windows` complete windows; the window after them is the log's partial end.
            log_ = log_.slice_time(None, float((first + self.windows + 1) * length))
        windows = EvaluationWindows.of(log_.timestamps, length, None)
        make = scorer_factory(self.scorer, self.settings)
        publisher = _HubPublisher(self, _explainer())
        while True:
            engine = Engine(config, make())
            replay(log_, engine, [publisher], windows, progress=False)
            if not self.loop_forever:
                log.info("demo replay finished after %d windows", self.published)
                return
            if self._stop.wait(self.interval):
                raise _DemoStopped
            self.hub.submit_threadsafe(self.hub.reset)


class _HubPublisher:
    """A replay publisher that hands each scored window's top-N to the hub, then pauses."""

    def __init__(self, source: DemoSource, explain: Callable[[Any, float], str]) -> None:
        self.source = source
        self.explain = explain

    def publish(self, result: WindowResult) -> None:
        if self.source._stop.is_set():
            raise _DemoStopped
        if not result.scored:
            return
        snapshot = result.trending()
        positions = result.order[: result.top_n].tolist()
        items = []
        for item, position in zip(snapshot.items, positions, strict=True):
            if item.explanation is None:
                text = self.explain(result.features.record(int(position)), item.score)
                item = item.model_copy(update={"explanation": text})
            items.append(item)
        snapshot = snapshot.model_copy(update={"items": tuple(items)})
        self.source.hub.submit_threadsafe(self.source.hub.apply_snapshot, snapshot)
        self.source.published += 1
        if self.source._stop.wait(self.source.interval):
            raise _DemoStopped

    def close(self) -> None:
        return None


class KafkaSource:
    """Follows the trending and scores topics with aiokafka (no group, manual assignment).

    At start the last few snapshots of the trending topic are re-read (rank changes and
    history need the window before); scores are followed from the end. Topics or partitions
    that appear later are picked up from their beginning. Records that do not decode are
    logged and counted; a broker outage is retried with backoff.
    """

    REFRESH_S = 10.0

    def __init__(
        self,
        hub: TrendingHub,
        settings: Settings,
        *,
        trending_topic: str,
        scores_topic: str,
        backlog: int = KAFKA_BACKLOG_SNAPSHOTS,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.trending_topic = trending_topic
        self.scores_topic = scores_topic
        self.backlog = backlog
        self.assigned: set[Any] = set()
        self.ready = asyncio.Event()

    def _client_options(self) -> dict[str, Any]:
        from streams.kafka_options import client_options

        return {**client_options(self.settings), "client_id": "trail-widget"}

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self._consume()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.hub.stats.source_errors += 1
                log.warning("kafka source failed (%s); retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _wanted(self, consumer: Any) -> set[Any]:
        from aiokafka import TopicPartition

        # A fresh metadata fetch of every topic: consumer.partitions_for_topic() only knows the
        # topics of its cached metadata, which an assign-only consumer never extends.
        cluster = await consumer._client.fetch_all_metadata()
        wanted = set()
        for topic in (self.trending_topic, self.scores_topic):
            for partition in cluster.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, partition))
        return wanted

    async def _assign(self, consumer: Any, wanted: set[Any], *, initial: bool) -> None:
        positions = {tp: await consumer.position(tp) for tp in self.assigned & wanted}
        consumer.assign(list(wanted))
        new = sorted(wanted - self.assigned)
        ends = await consumer.end_offsets(new) if new else {}
        begins = await consumer.beginning_offsets(new) if new else {}
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        for tp in new:
            if not initial:
                consumer.seek(tp, begins[tp])
            elif tp.topic == self.trending_topic:
                consumer.seek(tp, max(begins[tp], ends[tp] - self.backlog))
            else:
                consumer.seek(tp, ends[tp])
        self.assigned = set(wanted)
        log.info("kafka source follows %s", ", ".join(f"{t.topic}[{t.partition}]" for t in new))

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            **self._client_options(),
        )
        self.assigned = set()
        try:
            await consumer.start()  # inside the try: a failed start must still be stopped
            warned = False
            while not self.assigned:
                wanted = await self._wanted(consumer)
                if any(tp.topic == self.trending_topic for tp in wanted):
                    await self._assign(consumer, wanted, initial=True)
                    break
                if not warned:
                    log.warning(
                        "waiting for topic %r on %s", self.trending_topic, self.settings.broker
                    )
                    warned = True
                await asyncio.sleep(1.0)
            self.ready.set()
            self.hub.source_ready = True
            refreshed = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    for record in records:
                        self._handle(record)
                if time.monotonic() - refreshed > self.REFRESH_S:
                    refreshed = time.monotonic()
                    wanted = await self._wanted(consumer)
                    if wanted - self.assigned:
                        await self._assign(consumer, wanted | self.assigned, initial=False)
        finally:
            self.ready.clear()
            self.hub.source_ready = False
            await consumer.stop()

    def _handle(self, record: Any) -> None:
        try:
            if record.value is None:
                raise RecordError("empty record (tombstone)")
            if record.topic == self.trending_topic:
                self.hub.apply_snapshot(decode(TrendingSnapshot, record.value))
            else:
                self.hub.apply_score(decode(ScoreUpdate, record.value))
        except RecordError as exc:
            self._bad(record, str(exc))
        except Exception as exc:  # never let one record stop the widget
            self._bad(record, f"{type(exc).__name__}: {exc}")

    def _bad(self, record: Any, reason: str) -> None:
        self.hub.stats.bad_records += 1
        count = self.hub.stats.bad_records
        if count <= 20 or count % 1000 == 0:
            log.warning(
                "skipped bad record %s[%s]@%s (%d so far): %s",
                record.topic,
                record.partition,
                record.offset,
                count,
                reason[:300],
            )


# --------------------------------------------------------------------------------------------
# HTTP


class EventStream:
    """The SSE response of one client: ``retry:``, the current snapshot, then updates and
    heartbeats. A plain ASGI callable, so a stalled write can be timed out or cut."""

    def __init__(
        self,
        hub: TrendingHub,
        subscriber: Subscriber,
        *,
        heartbeat_s: float,
        retry_ms: int,
        send_timeout_s: float,
    ) -> None:
        self.hub = hub
        self.subscriber = subscriber
        self.heartbeat_s = heartbeat_s
        self.retry_ms = retry_ms
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        subscriber = self.subscriber
        subscriber.task = asyncio.current_task()
        if scope.get("method") == "HEAD":  # headers only: never hold the connection open
            self.hub.unsubscribe(subscriber)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
            *_SECURITY_HEADER_LINES,
        ]

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    subscriber.close("disconnected")
                    return

        watcher = asyncio.create_task(watch_disconnect())

        async def write(chunk: bytes, more: bool = True) -> None:
            body = {"type": "http.response.body", "body": chunk, "more_body": more}
            await asyncio.wait_for(send(body), self.send_timeout_s)

        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await write(f"retry: {self.retry_ms}\n: trail widget\n\n".encode())
            while True:
                try:
                    message = await subscriber.get(timeout=self.heartbeat_s)
                except SubscriberClosed:
                    break
                await write(message if message is not None else b": heartbeat\n\n")
            if subscriber.closed_reason not in ("disconnected", "lagging"):
                await write(b"", more=False)
        except TimeoutError:
            self.hub.stats.stalled_disconnects += 1
            self.hub.cut_responses += 1
            log.warning(
                "disconnected an SSE client whose socket stalled for %.0f s", self.send_timeout_s
            )
        except asyncio.CancelledError:
            if subscriber.closed_reason != "lagging":
                raise
            # Cut by the hub for lagging: swallow our own cancellation and end the response.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.hub.cut_responses += 1
        except OSError:
            pass
        finally:
            watcher.cancel()
            self.hub.unsubscribe(subscriber)


@dataclass(frozen=True)
class WidgetOptions:
    heartbeat_s: float = DEFAULT_HEARTBEAT
    retry_ms: int = DEFAULT_RETRY_MS
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT
    allow_publish: bool = False
    cors_origin: str = "*"


def _static(name: str) -> bytes:
    return resources.files("streams").joinpath(STATIC_FOLDER, name).read_bytes()


def _head_size(scope: dict[str, Any]) -> int:
    """Bytes of a request's head as sent: request line, ``name: value`` lines, blank line."""
    line = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + 12
    query = scope.get("query_string") or b""
    line += len(query) + 1 if query else 0
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2


class _Guard:
    """The outermost ASGI layer: every response gets :data:`SECURITY_HEADERS` (Starlette's
    own 404, 405 and 500 included, which no route adds them to), and a request whose head
    exceeds ``max_head`` gets 431.

    The HTTP server refuses a head that arrives in pieces once the pieces pass the limit
    (:func:`_http_protocol`); a head that arrives whole in one read reaches the app, and this
    is where it is refused, so the limit holds however the bytes were split.
    """

    def __init__(self, app: Any, max_head: int = MAX_REQUEST_HEAD_BYTES) -> None:
        self.app = app
        self.max_head = max_head

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _head_size(scope) > self.max_head:
            body = b"request header fields too large\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *_SECURITY_HEADER_LINES,
            ]
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                missing = [(k, v) for k, v in _SECURITY_HEADER_LINES if k not in present]
                if missing:
                    message = {**message, "headers": [*message.get("headers", ()), *missing]}
            await send(message)

        await self.app(scope, receive, send_secured)


def _http_protocol(max_head: int = MAX_REQUEST_HEAD_BYTES) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, changed where it answers a request it cannot parse.

    uvicorn answers 400 without :data:`SECURITY_HEADERS` and closes the socket at once; a
    client still sending (an oversized header, say) then gets a TCP reset, usually before it
    can read the answer. Here a head over ``max_head`` bytes gets 431, any other parse error
    400, both with the security headers; then the connection is half-closed and what the
    client still sends is read and discarded (for up to :data:`LINGER_S` seconds and
    :data:`LINGER_BYTES` bytes), so the answer arrives instead of a reset.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class WidgetH11Protocol(H11Protocol):
        lingering = False
        discarded = 0

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                self.discarded += len(data)
                if self.discarded > LINGER_BYTES:
                    self.transport.close()
                return
            super().data_received(data)

        def eof_received(self) -> None:
            if self.lingering:
                self.transport.close()

        def shutdown(self) -> None:
            if self.lingering:
                self.transport.close()
                return
            super().shutdown()

        def send_400_response(self, msg: str) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                # A response is already on the wire (garbage pipelined behind a request):
                # there is no room for another one; end the connection.
                self.transport.close()
                return
            if len(self.conn.trailing_data[0]) > max_head:
                status, body = 431, b"request header fields too large\n"
            else:
                status, body = 400, b"invalid HTTP request\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *_SECURITY_HEADER_LINES,
            ]
            events = (h11.Response(status_code=status, headers=headers), h11.Data(data=body))
            output = b"".join(self.conn.send(e) or b"" for e in (*events, h11.EndOfMessage()))
            self.transport.write(output)
            self.lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()  # FIN once the answer is flushed; keep reading
            self.loop.call_later(LINGER_S, self.transport.close)

    return WidgetH11Protocol


def create_app(
    hub: TrendingHub,
    options: WidgetOptions | None = None,
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """The Starlette application around ``hub``; ``startup``/``shutdown`` start the sources."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    opts = options or WidgetOptions()
    page = _static("index.html")
    page_js = _static("page.js")
    page_css = _static("page.css")
    embed_js = _static("trail-trending.js")

    def json_bytes(body: bytes, status: int = 200) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def asset(body: bytes, media_type: str, *, cross_origin: bool = False) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        if cross_origin:
            headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        return Response(body, media_type=media_type, headers=headers)

    async def index(request: Request) -> Response:
        headers = {
            **SECURITY_HEADERS,
            "Content-Security-Policy": PAGE_CSP,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache",
        }
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def embed(request: Request) -> Response:
        return asset(embed_js, "text/javascript; charset=utf-8", cross_origin=True)

    async def static_js(request: Request) -> Response:
        return asset(page_js, "text/javascript; charset=utf-8")

    async def static_css(request: Request) -> Response:
        return asset(page_css, "text/css; charset=utf-8")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def trending(request: Request) -> Response:
        return json_bytes(hub.view_json())

    async def item_history(request: Request) -> Response:
        history = hub.history(request.path_params["item_id"])
        if history is None:
            return json_bytes(orjson.dumps({"error": "unknown item"}), status=404)
        return json_bytes(orjson.dumps(history))

    async def events(request: Request) -> Any:
        subscriber = hub.subscribe()
        if subscriber is None:
            return PlainTextResponse(
                "too many clients", status_code=503, headers={"Retry-After": "10"}
            )
        return EventStream(
            hub,
            subscriber,
            heartbeat_s=opts.heartbeat_s,
            retry_ms=opts.retry_ms,
            send_timeout_s=opts.send_timeout_s,
        )

    async def health(request: Request) -> Response:
        return json_bytes(orjson.dumps(hub.health()))

    def publisher(kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def publish(request: Request) -> Response:
            # JSON only: a cross-origin page cannot send it without a preflight, which is
            # refused (CORS allows GET only), so no website can publish through a browser.
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return PlainTextResponse("expected application/json", status_code=415)
            origin = request.headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
                return PlainTextResponse("cross-origin publish refused", status_code=403)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_RECORD_BYTES:
                    return PlainTextResponse("record too large", status_code=413)
            try:
                if kind == "trending":
                    accepted = hub.apply_snapshot(decode(TrendingSnapshot, bytes(body)))
                else:
                    hub.apply_score(decode(ScoreUpdate, bytes(body)))
                    accepted = True
            except RecordError as exc:
                hub.stats.bad_records += 1
                return JSONResponse({"error": str(exc)}, status_code=422)
            return JSONResponse({"accepted": accepted, "seq": hub.view()["seq"]}, status_code=202)

        return publish

    routes = [
        Route("/", index),
        Route("/embed.js", embed),
        Route("/static/page.js", static_js),
        Route("/static/page.css", static_css),
        Route("/favicon.ico", favicon),
        Route("/api/trending", trending),
        Route("/api/history/{item_id:path}", item_history),
        Route("/events", events),
        Route("/healthz", health),
    ]
    if opts.allow_publish:
        routes += [
            Route("/api/publish/trending", publisher("trending"), methods=["POST"]),
            Route("/api/publish/score", publisher("score"), methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        if startup is not None:
            await startup()
        try:
            yield
        finally:
            hub.close_all()
            if shutdown is not None:
                await shutdown()

    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=[opts.cors_origin],
            allow_methods=["GET"],
            allow_headers=["Last-Event-ID", "Cache-Control"],
            max_age=600,
        )
    ]
    return _Guard(Starlette(routes=routes, middleware=middleware, lifespan=lifespan))


# --------------------------------------------------------------------------------------------
# Command line


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
        "--no-source",
        action="store_true",
        help="no source at all (with --allow-publish, for tests and benchmarks)",
    )
    demo = parser.add_argument_group("demo")
    demo.add_argument("--window", default="7d", help="demo window length (7d)")
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
    hub = TrendingHub(
        history_windows=args.history,
        client_queue=args.client_queue,
        max_lag=args.max_lag,
        max_clients=args.max_clients,
    )
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
        from streams.kafka_options import KafkaSecurityError, verify_connection

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
        http=_http_protocol(MAX_REQUEST_HEAD_BYTES),
        # h11 refuses a head still incomplete past this size; _Guard the rest.
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
    from model.registry import SCORER_NAMES

    return SCORER_NAMES


if __name__ == "__main__":  # python -m streams.widget ...
    _parser = argparse.ArgumentParser(prog="trail widget")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
