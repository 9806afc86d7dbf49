"""The hub without a browser: rank changes, history, bounded per-client queues, slow clients."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from typing import Any

import pytest

from schemas import TrendingItem, TrendingSnapshot
from streams.widget import Subscriber, SubscriberClosed, TrendingHub, sse_message

WEEK = 604_800


def make_snapshot(window: int, order: list[str], model: str = "m@1") -> TrendingSnapshot:
    return TrendingSnapshot(
        window_start=(window - 1) * WEEK,
        window_end=window * WEEK,
        model_version=model,
        changed_items=len(order),
        events=10.0,
        items=tuple(
            TrendingItem(
                item_id=item_id,
                rank=rank,
                score=10.0 - rank,
                recent_counts=(float(window), float(window + rank)),
            )
            for rank, item_id in enumerate(order, start=1)
        ),
    )


def changes(hub: TrendingHub) -> dict[str, tuple[str | None, int | None]]:
    return {i["item_id"]: (i["change"], i["previous_rank"]) for i in hub.view()["items"]}


def test_rank_changes_against_the_previous_window() -> None:
    hub = TrendingHub()
    assert hub.view()["items"] == []
    hub.apply_snapshot(make_snapshot(1, ["a", "b", "c"]))
    assert changes(hub) == {"a": (None, None), "b": (None, None), "c": (None, None)}
    hub.apply_snapshot(make_snapshot(2, ["b", "a", "d"]))
    assert changes(hub) == {"b": ("up", 2), "a": ("down", 1), "d": ("new", None)}
    # A redelivered or corrected snapshot of the same window keeps the same baseline.
    hub.apply_snapshot(make_snapshot(2, ["b", "a", "d"], model="m@2"))
    assert changes(hub)["b"] == ("up", 2)
    assert hub.view()["model_version"] == "m@2"
    # An older window is stale: ignored and counted.
    assert hub.apply_snapshot(make_snapshot(1, ["c"])) is False
    assert hub.stats.stale == 1 and hub.view()["window_end"] == 2 * WEEK


def test_history_merges_recent_counts_and_scores_and_is_bounded() -> None:
    hub = TrendingHub(history_windows=3, max_items=2)
    for window in range(1, 6):
        hub.apply_snapshot(make_snapshot(window, ["a"]))
    history = hub.history("a")
    assert history is not None
    points = history["history"]
    assert [p["window_end"] for p in points] == [3 * WEEK, 4 * WEEK, 5 * WEEK]
    assert [p["count"] for p in points] == [4.0, 5.0, 6.0]  # window + rank of each window
    assert all(p["rank"] == 1 for p in points)
    hub.apply_snapshot(make_snapshot(6, ["b", "c"]))
    assert hub.history("a") is None, "least recently updated items are forgotten first"


def test_subscriber_coalesces_and_is_cut_when_lagging(in_thread) -> None:
    async def scenario() -> None:
        sub = Subscriber(maxsize=2, max_lag=3)
        assert sub.offer("trending", b"1")
        assert sub.offer("trending", b"2")  # replaces the pending snapshot
        assert len(sub) == 1 and sub.dropped == 1
        assert await sub.get(0.1) == b"2" and sub.lag == 0
        assert await sub.get(0.01) is None  # heartbeat timeout
        for n in range(4):
            sub.offer("trending", str(n).encode())
        assert sub.lag == 3 and not sub.closed
        assert sub.offer("trending", b"x") is False
        assert sub.closed_reason == "lagging"
        with pytest.raises(SubscriberClosed):
            await sub.get(0.1)

    in_thread(scenario)


def test_a_stalled_subscriber_never_blocks_the_others(in_thread) -> None:
    async def scenario() -> None:
        hub = TrendingHub(client_queue=2, max_lag=5)
        stuck = hub.subscribe()
        healthy = hub.subscribe()
        assert stuck is not None and healthy is not None
        received = []
        started = time.perf_counter()
        for window in range(1, 51):
            hub.apply_snapshot(make_snapshot(window, ["a", "b"]))
            message = await healthy.get(1.0)
            assert message is not None
            received.append(message)
        assert time.perf_counter() - started < 2.0
        assert len(received) == 50
        assert stuck.closed_reason == "lagging"
        assert hub.clients == 1 and hub.stats.lagging_disconnects == 1

    in_thread(scenario)


def test_subscribers_are_bounded_and_primed_with_the_current_state(in_thread) -> None:
    async def scenario() -> None:
        hub = TrendingHub(max_clients=1)
        hub.apply_snapshot(make_snapshot(1, ["a"]))
        first = hub.subscribe()
        assert first is not None
        message = await first.get(0.1)
        assert message is not None and message.startswith(b"event: trending\nid: 1\ndata: {")
        assert hub.subscribe() is None and hub.stats.rejected_connections == 1

    in_thread(scenario)


def test_sse_message_is_one_event() -> None:
    assert sse_message("trending", b'{"a":1}', event_id="7") == (
        b'event: trending\nid: 7\ndata: {"a":1}\n\n'
    )
    with pytest.raises(ValueError):
        sse_message("trending", b"two\nlines")


def _big_snapshot(window: int) -> dict[str, Any]:
    record = make_snapshot(window, [f"item-{n}" for n in range(10)]).model_dump(mode="json")
    for item in record["items"]:
        item["explanation"] = "x" * 5000  # ~50 KB per snapshot: fills socket buffers quickly
    return record


class _Reader(threading.Thread):
    """A well-behaved SSE client on a raw socket: records the ids of the events it reads."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        self.ids: list[int] = []
        self.buffer = b""

    def run(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
                *lines, self.buffer = self.buffer.split(b"\n")
                self.ids += [int(line[4:]) for line in lines if line.startswith(b"id: ")]
        except OSError:
            return


@pytest.mark.timeout(60)
def test_vanished_browser_is_cut_and_others_keep_up(widget_server) -> None:
    """One client stops reading (a frozen tab): the server drops and then cuts it."""
    server = widget_server(
        "--no-source", "--allow-publish", "--client-queue", "2", "--max-lag", "4",
        "--send-timeout", "5",
    )  # fmt: skip
    parts = urllib.parse.urlsplit(server.url)
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect((parts.hostname, parts.port))
    frozen.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")  # ... and never reads
    reader = _Reader(server.url)
    reader.start()
    deadline = time.monotonic() + 10
    while server.get_json("/healthz")["clients"] < 2:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)

    started = time.perf_counter()
    last = 0
    for window in range(1, 201):
        last = server.publish("trending", _big_snapshot(window))["seq"]
    publish_seconds = time.perf_counter() - started
    deadline = time.monotonic() + 15
    while not reader.ids or reader.ids[-1] != last:
        assert time.monotonic() < deadline, f"healthy client stuck at {reader.ids[-1:]}"
        time.sleep(0.05)
    health = server.get_json("/healthz")
    assert health["lagging_disconnects"] + health["stalled_disconnects"] >= 1, health
    assert health["clients"] == 1, health
    assert publish_seconds < 20, "publishing must not wait for the frozen client"
    # The healthy client may skip snapshots (coalescing) but never goes backwards.
    assert reader.ids == sorted(reader.ids)
    frozen.close()
    reader.sock.close()
    assert "without completing response" not in server.log()
