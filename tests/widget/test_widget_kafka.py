"""The widget following real Kafka topics, seen in headless Chromium.

The records are what the worker publishes: the engine runs over the first windows of ML-100K
(the same code the worker drives) and each window's TrendingSnapshot goes to the trending
topic (key "global"), its ScoreUpdates to the scores topic (key item_id). Bad records are
mixed in: the widget logs and counts them and carries on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas import ScoreUpdate, TrendingSnapshot, encode

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def engine_windows(windows: int = 5) -> list[tuple[TrendingSnapshot, list[ScoreUpdate]]]:
    from model.baselines import BASELINES
    from streams.engine import Engine
    from streams.eventlog import load_events
    from streams.publish import MemoryPublisher
    from streams.replay import EvaluationWindows, replay
    from streams.settings import Settings

    config = Settings(window="7d").engine_config()
    length = config.trend.window.length
    log = load_events("ml-100k", progress=False)
    first = int(log.timestamps.min() // length)
    log = log.slice_time(None, float((first + windows + 1) * length))
    memory = MemoryPublisher()
    engine = Engine(config, BASELINES["ewma-1"]())
    replay(log, engine, [memory], EvaluationWindows.of(log.timestamps, length, None),
           progress=False)  # fmt: skip
    by_window: dict[int, list[ScoreUpdate]] = {}
    for update in memory.updates:
        by_window.setdefault(update.window_end, []).append(update)
    return [(snap, by_window.get(snap.window_end, [])) for snap in memory.trending]


async def _produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def window_records(
    trending: str, scores: str, snapshot: TrendingSnapshot, updates: list[ScoreUpdate]
) -> list[tuple[str, bytes | None, bytes]]:
    records: list[tuple[str, bytes | None, bytes]] = [
        (scores, u.item_id.encode(), encode(u)) for u in updates[:200]
    ]
    records.append((trending, b"global", encode(snapshot)))
    return records


def wait_health(server: Any, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = server.get_json("/healthz")
        if check(health):
            return health
        assert time.monotonic() < deadline, f"{health}\n{server.log()}"
        time.sleep(0.1)


def test_kafka_topics_drive_the_page(
    kafka_bootstrap, kafka_topic_factory, widget_server, page, artifacts, ui, in_thread
) -> None:
    trending = kafka_topic_factory(partitions=1, prefix="trending")
    scores = kafka_topic_factory(partitions=2, prefix="scores")
    windows = engine_windows(5)
    assert len(windows) >= 4
    server = widget_server(
        "--broker", kafka_bootstrap, "--trending-topic", trending, "--scores-topic", scores
    )
    wait_health(server, lambda h: h["source_ready"])
    page.goto(server.url + "/")

    in_thread(_produce, kafka_bootstrap, window_records(trending, scores, *windows[0]))
    first = ui.wait_rows(page, 10)
    assert [row["id"] for row in first] == [item.item_id for item in windows[0][0].items]
    ui.settle(page)
    page.screenshot(path=str(artifacts / "kafka-filled.png"), full_page=True)

    # Garbage on both topics: counted, logged, and the widget keeps following.
    in_thread(
        _produce,
        kafka_bootstrap,
        [
            (trending, b"global", b"not json at all"),
            (trending, b"global", b'{"window_end": "soon"}'),
            (scores, b"1", b'{"item_id": "1"}'),
        ],
    )
    records = []
    for snapshot, updates in windows[1:]:
        records += window_records(trending, scores, snapshot, updates)
    in_thread(_produce, kafka_bootstrap, records)
    final = windows[-1][0]
    page.wait_for_function(
        f"(ids) => JSON.stringify(({ui.ROWS_JS})().map((r) => r.id)) === JSON.stringify(ids)",
        arg=[item.item_id for item in final.items],
        timeout=30_000,
    )
    shown = ui.rows(page)
    assert any(row["change"] in ("up", "down", "new") for row in shown)
    assert [row["id"] for row in shown] != [row["id"] for row in first]
    health = wait_health(server, lambda h: h["bad_records"] >= 3)
    assert health["bad_records"] == 3 and health["snapshots"] == len(windows)
    assert health["scores"] > 0 and health["window_end"] == final.window_end
    history = server.get_json(f"/api/history/{final.items[0].item_id}")
    assert any(point["score"] is not None for point in history["history"])
    ui.settle(page)
    page.screenshot(path=str(artifacts / "kafka-rank-change.png"), full_page=True)
    assert page.problems == []
