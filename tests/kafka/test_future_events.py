"""One fast clock must not silence a partition (issue 11 items 3 and 9), on the real broker and
both runtimes.

An event a few days ahead of the wall clock used to pass the 7-day skew check, move its
partition's watermark days ahead, close every empty 1-hour window up to it and make every later
on-time event late. With the default bound (minutes) it is dead-lettered as ``future``; the
on-time events after it are applied; no record moves the watermark past the clock plus the
bound; and a late event's reason quotes the watermark that closed its window.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest
from kafka_support import RUNTIMES, WorkerProcess, read_topics, unique_settings

from streams.kafka.deadletters import read_dead_letter, show_time
from streams.kafka.options import TopicSpec, client_options, ensure_topics
from streams.kafka.sender import BatchSender
from streams.kafka.trending import partials_topic
from streams.settings import Settings

pytestmark = pytest.mark.kafka


def _event(ts: float, n: int) -> tuple[bytes, bytes]:
    item = str(n % 5)
    return item.encode(), orjson.dumps({"user_id": f"u{n % 7}", "item_id": item, "ts": ts})


async def _produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    await ensure_topics(settings, [TopicSpec(settings.events_topic, 1)])
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sender = BatchSender(producer)
        for key, value in records:
            sender.add(settings.events_topic, 0, key, value)
        await sender.flush()
    finally:
        await producer.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_fast_clock_is_dead_lettered_and_the_partition_keeps_going(
    kafka_bootstrap: str, tmp_path: Path, runtime: str
) -> None:
    """Fails on the old 7-day default: the event three days ahead was applied, 72+ windows
    closed and the 41 on-time events after it were dead-lettered as late; the late event's
    reason quoted the watermark at the batch's end (three days ahead), not the one that
    closed its window."""
    settings = unique_settings(
        kafka_bootstrap, "future", window="1h", partitions=1, runtime=runtime
    )
    now = time.time()
    first = [now - 1200 + 10 * i for i in range(40)]  # on time, in order
    second = [now - 600 + 10 * i for i in range(40)]  # on time, after the fast clock
    within = now + 60  # a little ahead: inside the bound, accepted
    fast = now + 3 * 86400  # the fast clock
    stale = now - 2 * 86400  # late: its window closed before the first event here
    beyond = [now + 900, 4102444800000.0, 1e300]  # past the bound (a ms epoch; absurd)
    times = [*first, fast, stale, *second, within, *beyond]
    records = [_event(ts, n) for n, ts in enumerate(times)]
    asyncio.run(_produce(settings, records))

    worker = WorkerProcess(settings, tmp_path, "future", "--until-idle", "3", items=None)
    try:
        assert worker.wait(180) == 0, worker.log_text()
    finally:
        worker.close()

    summary = orjson.loads(worker.summary_path.read_bytes())
    on_time = len(first) + len(second) + 1
    assert summary["events_applied"] == on_time
    counted = summary["metrics"]

    def total(name: str) -> float:
        return sum(v for k, v in counted.items() if k == name or k.startswith(name + "{"))

    assert total("trail_late_events_total") == 1
    assert counted["trail_malformed_total{category=future}"] == 1 + len(beyond)
    # At most the one hour boundary the on-time events may straddle closed a window.
    assert total("trail_windows_closed_total") <= 1

    partials = partials_topic(settings)
    got = read_topics(kafka_bootstrap, settings.dlq_topic, partials)
    letters = {letter.offset: letter for letter in map(read_dead_letter, got[settings.dlq_topic])}
    future_offsets = [times.index(ts) for ts in (fast, *beyond)]
    late_offset = times.index(stale)
    assert sorted(letters) == sorted([*future_offsets, late_offset])
    for offset in future_offsets:
        letter = letters[offset]
        assert (letter.kind, letter.category) == ("malformed", "future"), letter
        assert letter.value == records[offset][1]
        assert "max_event_time_skew" in letter.reason
        # Bounded, readable reasons: no 300-digit number.
        assert len(letter.reason) <= 200, letter.reason
        assert max(len(run) for run in re.findall(r"\d+", letter.reason)) <= 16, letter.reason
    assert "1e+300" in letters[times.index(1e300)].reason
    late = letters[late_offset]
    assert (late.kind, late.category) == ("late", "late")
    assert f"event time {show_time(stale)}" in late.reason
    # The watermark that closed its window: the last on-time event before it.
    assert f"partition watermark {show_time(first[-1])} = max event time" in late.reason

    # No record moved the watermark past the clock plus the bound: the largest event time the
    # partition ever reported is the accepted event a minute ahead.
    reported = [orjson.loads(r.value) for r in got[partials]]
    progress = [m["max_ts"] for m in reported if m["kind"] == "progress" and m["max_ts"]]
    assert progress and max(progress) == within
