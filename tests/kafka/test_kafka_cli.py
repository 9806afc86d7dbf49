"""``trail produce``: an event log into the events topic, keyed, in event-time order, paced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from kafka_support import REPO_ROOT, read_topics, unique_settings

from streams.partitioning import partition_for

pytestmark = pytest.mark.kafka


def _produce(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "produce", *args, "--no-progress"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TRAIL_CACHE": str(tmp / "cache")},
    )


#: Event times of the paced log: 40 events half a second apart, a 20 s gap, 21 more; a pacer
#: that sent at a constant rate, or paced by event count, would not follow the gap.
TIMES = [1_000_000 + i * 0.5 for i in range(40)] + [1_000_040 + i * 0.5 for i in range(21)]
SPEED = 10.0
#: How early a record may be sent: the producer sleeps only for delays over 1 ms, the record
#: timestamps are whole milliseconds, and the first record is appended a moment after the
#: pacing clock starts (generous: a loaded machine is only ever later, never earlier).
EARLY_S = 0.25


def test_produce_paces_events_in_time_order_keyed_by_item(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``--speed 10`` sends each event no earlier than its event time (from the first event)
    divided by ten, by the records' own timestamps (when the producer appended them): the
    pacing follows event time. It replaces a test of the whole run's wall time (issue 15
    item 6); it catches a producer that ignores ``--speed``, or paces by record count."""
    settings = unique_settings(kafka_bootstrap, "produce")
    csv_path = tmp_path / "events.csv"
    rows = ["user_id,item_id,timestamp"]
    # Written out of order: produce sorts them.
    for i in reversed(range(len(TIMES))):
        rows.append(f"u{i % 7},{i % 13},{TIMES[i]}")
    csv_path.write_text("\n".join(rows) + "\n")
    result = _produce(
        [
            str(csv_path),
            "--broker",
            kafka_bootstrap,
            "--topic",
            settings.events_topic,
            "--speed",
            str(SPEED),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "produced 61 events" in result.stderr
    records = read_topics(kafka_bootstrap, settings.events_topic)[settings.events_topic]
    assert len(records) == len(TIMES)
    sent = sorted((orjson.loads(r.value)["ts"], r.timestamp / 1000.0) for r in records)
    assert [ts for ts, _ in sent] == TIMES
    first_ts, first_sent = sent[0]
    for ts, at in sent:
        assert at - first_sent >= (ts - first_ts) / SPEED - EARLY_S, (ts, at - first_sent)
    by_partition: dict[int, list[float]] = {}
    for record in records:
        event = orjson.loads(record.value)
        assert set(event) == {"user_id", "item_id", "ts"}
        assert record.key == event["item_id"].encode()
        assert record.partition == partition_for(event["item_id"], 4)
        by_partition.setdefault(record.partition, []).append(event["ts"])
    for times in by_partition.values():
        assert times == sorted(times)

    fast = unique_settings(kafka_bootstrap, "produce-max")
    result = _produce(
        [
            str(csv_path),
            "--broker",
            kafka_bootstrap,
            "--topic",
            fast.events_topic,
            "--speed",
            "max",
            "--skip",
            "10",
            "--limit",
            "20",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = read_topics(kafka_bootstrap, fast.events_topic)[fast.events_topic]
    times = sorted(orjson.loads(r.value)["ts"] for r in records)
    assert times == TIMES[10:30]
