"""The fan-out: the current top-N, per-item history, and one bounded mailbox per SSE client.

Lives on the event loop; sources feed it (:mod:`streams.widget.sources`), the HTTP layer reads
it (:mod:`streams.widget.app`).

>>> hub = TrendingHub(history_windows=4)
>>> snapshot = TrendingSnapshot(window_start=0, window_end=10, model_version="m", changed_items=2,
...     events=5, items=(TrendingItem(item_id="a", rank=1, score=2.0, recent_counts=(1, 3)),))
>>> hub.apply_snapshot(snapshot)
True
>>> [(h["window_end"], h["count"]) for h in hub.view()["items"][0]["history"]]
[(0, 1.0), (10, 3.0)]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas import ScoreUpdate, TrendingItem, TrendingSnapshot

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
