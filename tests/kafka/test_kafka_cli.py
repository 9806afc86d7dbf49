"""``trail produce``: an event log into the events topic, keyed, in event-time order, paced."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_produce_paces_events_in_time_order_keyed_by_item(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(kafka_bootstrap, "produce")
    csv_path = tmp_path / "events.csv"
    rows = ["user_id,item_id,timestamp"]
    # 61 events over 30 s of event time, written out of order: produce sorts them.
    for i in reversed(range(61)):
        rows.append(f"u{i % 7},{i % 13},{1_000_000 + i * 0.5}")
    csv_path.write_text("\n".join(rows) + "\n")
    started = time.monotonic()
    result = _produce(
        [
            str(csv_path),
            "--broker",
            kafka_bootstrap,
            "--topic",
            settings.events_topic,
            "--speed",
            "10",
        ],
        tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "produced 61 events" in result.stderr
    assert elapsed >= 3.0  # 30 s of event time at 10x
    records = read_topics(kafka_bootstrap, settings.events_topic)[settings.events_topic]
    assert len(records) == 61
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
    assert times == [1_000_000 + i * 0.5 for i in range(10, 30)]
