"""The hub without a browser: rank changes, history, bounded per-client queues, slow clients."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.parse
from typing import Any

import pytest

from schemas import TrendingItem, TrendingSnapshot
from streams.widget.hub import Subscriber, SubscriberClosed, TrendingHub, sse_message

WEEK = 604_800


def make_snapshot(
    window: int, order: list[str], model: str = "m@1", trends: dict[str, str] | None = None
) -> TrendingSnapshot:
    trends = trends or {}
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
                trend=trends.get(item_id),  # type: ignore[arg-type]
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


def test_an_item_the_scorer_calls_new_reads_new_not_a_rank_change() -> None:
    """Issue 11 item 7: an item whose trend is "new" (first seen a few windows ago) that was
    listed a window before showed its rank change (e.g. "up" from 3 to 2, drawn as ▲1) beside
    its "new" pill; it must read "new" only. Fails if ``_item_view`` ignores the trend."""
    hub = TrendingHub()
    hub.apply_snapshot(make_snapshot(1, ["a", "b", "c"], trends={"c": "new"}))
    # Even the first window (no baseline yet) calls a new item new.
    assert changes(hub) == {"a": (None, None), "b": (None, None), "c": ("new", None)}
    hub.apply_snapshot(make_snapshot(2, ["a", "c", "b", "d"], trends={"c": "new", "b": "steady"}))
    assert changes(hub) == {
        "a": ("same", 1),
        "c": ("new", 3),  # moved 3 -> 2, but new: "new", with the rank it had kept as data
        "b": ("down", 2),
        "d": ("new", None),  # not listed before
    }


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


def _event_id(message: bytes) -> int:
    found = re.search(rb"^id: (\d+)$", message, re.MULTILINE)
    assert found is not None, message
    return int(found.group(1))


def test_a_stalled_subscriber_never_blocks_the_others(in_thread) -> None:
    """A subscriber that never reads holds at most ``client_queue`` messages and is cut
    exactly when it has missed more than ``max_lag`` in a row; the reading one gets every
    snapshot, in order. (Publishing is synchronous: ``apply_snapshot`` cannot wait for
    anyone, so what is checked is what the stuck client costs the others: nothing.)"""

    async def scenario() -> None:
        hub = TrendingHub(client_queue=2, max_lag=5)
        stuck = hub.subscribe()
        healthy = hub.subscribe()
        assert stuck is not None and healthy is not None
        received: list[int] = []
        cut_at = None
        for window in range(1, 51):
            hub.apply_snapshot(make_snapshot(window, ["a", "b"]))
            assert len(stuck) <= 2, "a client's queue is bounded"
            if cut_at is None and stuck.closed:
                cut_at = window
            message = await healthy.get(0)  # already queued: no waiting needed
            assert message is not None
            received.append(_event_id(message))
        # Window 1 is queued; windows 2..6 each replace it (lag 1..5); window 7 is the 6th
        # miss in a row, past max_lag=5.
        assert cut_at == 7 and stuck.closed_reason == "lagging" and len(stuck) == 0
        assert received == list(range(1, 51)), "every snapshot, once, in order"
        assert healthy.lag == 0 and healthy.dropped == 0
        assert hub.clients == 1 and hub.stats.lagging_disconnects == 1

    in_thread(scenario)


def test_a_queue_of_distinct_messages_drops_the_oldest(in_thread) -> None:
    """Messages with different keys are not coalesced: the queue keeps the newest
    ``maxsize`` and counts each one dropped."""

    async def scenario() -> None:
        sub = Subscriber(maxsize=3, max_lag=100)
        for n in range(10):
            assert sub.offer(f"k{n}", str(n).encode())
            assert len(sub) <= 3
        assert sub.dropped == 7 and sub.lag == 7
        assert [await sub.get(0) for _ in range(3)] == [b"7", b"8", b"9"]
        assert sub.lag == 0 and sub.delivered == 3

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


@pytest.mark.timeout(90)
def test_vanished_browser_is_cut_and_others_keep_up(widget_server) -> None:
    """One client stops reading (a frozen tab): the server drops and then cuts it for lagging
    while publishing goes on, and the reading client gets the last snapshot, never going
    backwards. The send timeout is an hour, so only the lag rule can cut the frozen client:
    a publisher that waited for it would never finish (the test's timeout), and one cut by
    the send timeout instead would show up as ``stalled_disconnects``."""
    server = widget_server(
        "--no-source", "--allow-publish", "--client-queue", "2", "--max-lag", "4",
        "--send-timeout", "3600",
    )  # fmt: skip
    parts = urllib.parse.urlsplit(server.url)
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect((parts.hostname, parts.port))
    frozen.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")  # ... and never reads
    reader = _Reader(server.url)
    reader.start()
    _wait_for(lambda: server.get_json("/healthz")["clients"] >= 2, "both clients connect", server)

    last = 0
    for window in range(1, 201):  # ~10 MB: more than any socket buffer between us holds
        answer = server.publish("trending", _big_snapshot(window))
        assert answer["accepted"] is True
        last = answer["seq"]
    assert last == 200
    # Delivery: the reading client gets the newest snapshot.
    _wait_for(
        lambda: bool(reader.ids) and reader.ids[-1] == last, "the reader gets the last", server
    )
    health = server.get_json("/healthz")
    assert health["lagging_disconnects"] == 1 and health["stalled_disconnects"] == 0, health
    assert health["clients"] == 1 and health["snapshots"] == 200, health
    # The healthy client may skip snapshots (coalescing) but never goes backwards or repeats.
    assert reader.ids == sorted(set(reader.ids))
    frozen.close()
    reader.sock.close()
    assert "without completing response" not in server.log()


def _wait_for(condition: Any, what: str, server: Any, bound_s: float = 30.0) -> None:
    """Poll ``condition`` until true; a hang guard with the server's log, not a speed test."""
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}\n{server.log()}")
        time.sleep(0.05)
