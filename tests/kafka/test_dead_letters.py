"""1,000 malformed records (and a few late events) mixed into ML-100K's 100,000 good ones:
every bad one lands in the DLQ with its reason and original bytes, every good one is counted,
and the scores are those of the clean log."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka_support import (
    REPO_ROOT,
    RUNTIMES,
    WorkerProcess,
    assert_same_updates,
    dedupe,
    expected_outputs,
    ml100k,
    read_topics,
    score_updates,
    unique_settings,
)

from schemas import MAX_RECORD_BYTES
from streams.kafka.deadletters import read_dead_letter
from streams.kafka_cli import produce_log
from streams.partitioning import partition_for

pytestmark = pytest.mark.kafka

N_BAD = 1_000
N_LATE = 20
PARTITIONS = 4


def _bad_record(i: int, rng: random.Random) -> tuple[bytes | None, bytes | None, str]:
    """(key, value, expected category); every (key, value) is unique."""
    marker = f"bad-{i}"
    kind = i % 12
    if kind == 0:
        return b"1", b'{"user_id": "' + marker.encode() + b'", "item_id": "1', "bad_json"
    if kind == 1:
        value = {"user_id": marker, "item_id": "1", "ts": 1, "colour": "red"}
        return b"1", orjson.dumps(value), "unknown_field"
    if kind == 2:
        return b"1", orjson.dumps({"user_id": marker, "item_id": "1", "ts": "soon"}), "invalid"
    if kind == 3:
        value = {"user_id": marker, "item_id": "1", "ts": 5, "weight": -2}
        return b"1", orjson.dumps(value), "invalid"
    if kind == 4:
        value = {"user_id": marker, "item_id": "1", "ts": 5, "pad": "x" * (MAX_RECORD_BYTES + 10)}
        return b"1", orjson.dumps(value), "too_large"
    if kind == 5:
        return None, orjson.dumps({"user_id": marker, "item_id": "1", "ts": 5}), "missing_key"
    if kind == 6:
        return b"2", orjson.dumps({"user_id": marker, "item_id": "3", "ts": 5}), "key_mismatch"
    if kind == 7:
        return b"1", orjson.dumps([marker, "1", 5]), "not_object"
    if kind == 8:
        return b"", orjson.dumps({"user_id": marker, "item_id": "", "ts": 5}), "invalid"
    if kind == 9:
        return b"1", orjson.dumps({"user_id": marker, "item_id": "1", "ts": True}), "invalid"
    if kind == 10:
        return marker.encode(), None, "missing_value"
    return b"1", b"\xff\xfe" + marker.encode() + bytes([rng.randrange(128, 256)]), "bad_json"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_malformed_records_are_dead_lettered_and_good_ones_counted(
    kafka_bootstrap: str, tmp_path: Path, runtime: str
) -> None:
    log = ml100k()
    assert len(log) == 100_000
    settings = unique_settings(kafka_bootstrap, "dlq", runtime=runtime)
    rng = random.Random(3)
    positions = rng.sample(range(1, len(log)), N_BAD)
    extra: list[tuple[int, bytes | None, bytes | None, int | None]] = []
    wanted: dict[tuple[bytes | None, bytes | None], str] = {}
    for i, position in enumerate(positions):
        key, value, category = _bad_record(i, rng)
        extra.append((position, key, value, rng.randrange(PARTITIONS)))
        wanted[(key, value)] = category
    # Late events: valid, but their window closed long ago in their partition.
    late: set[tuple[bytes, bytes]] = set()
    for j, position in enumerate(rng.sample(range(60_000, len(log)), N_LATE)):
        item = str(log.item_ids[j])
        value = orjson.dumps(
            {"user_id": f"late-{j}", "item_id": item, "ts": float(log.timestamps[0])}
        )
        extra.append((position, item.encode(), value, partition_for(item, PARTITIONS)))
        late.add((item.encode(), value))
    summary = asyncio.run(produce_log(settings, log, extra=extra))
    assert summary.records == len(log) + N_BAD + N_LATE

    worker = WorkerProcess(settings, tmp_path, "dlq", "--until-idle", "3")
    try:
        assert worker.wait(240) == 0, worker.log_text()
    finally:
        worker.close()
    # Faust's data folder goes to the cache, not "<app id>-data" in the worker's folder.
    assert not (REPO_ROOT / f"{settings.app_id}-data").exists()

    records = read_topics(kafka_bootstrap, settings.dlq_topic, settings.scores_topic)
    letters = [read_dead_letter(r) for r in records[settings.dlq_topic]]
    by_source = {letter.source: letter for letter in letters}
    assert len(by_source) == len(letters) == N_BAD + N_LATE
    malformed = [x for x in letters if x.kind == "malformed"]
    assert len(malformed) == N_BAD
    found: dict[tuple[bytes | None, bytes | None], str] = {}
    for letter in malformed:
        assert letter.reason, letter
        assert letter.topic == settings.events_topic and letter.offset >= 0
        assert letter.truncated_from is None
        found[(letter.key, letter.value)] = letter.category
    assert found == wanted  # every bad record, its original bytes and the right category
    reasons = Counter(found.values())
    assert set(reasons) == set(wanted.values())
    too_large = next(x for x in malformed if x.category == "too_large")
    assert str(MAX_RECORD_BYTES) in too_large.reason
    unknown = next(x for x in malformed if x.category == "unknown_field")
    assert "colour" in unknown.reason and "unknown field" in unknown.reason

    late_letters = [x for x in letters if x.kind == "late"]
    assert {(x.key, x.value) for x in late_letters} == late
    assert all("already closed" in x.reason for x in late_letters)

    counted = orjson.loads(worker.summary_path.read_bytes())["metrics"]

    def total(name: str) -> float:
        return sum(v for k, v in counted.items() if k == name or k.startswith(name + "{"))

    assert total("trail_events_total") == len(log)  # every good event applied and counted
    assert total("trail_late_events_total") == N_LATE
    assert total("trail_malformed_total") == N_BAD
    assert total("trail_records_total") == len(log) + N_BAD + N_LATE
    assert total("trail_dead_letters_total") == N_BAD + N_LATE
    for category, count in reasons.items():
        assert counted[f"trail_malformed_total{{category={category}}}"] == count

    # The bad and late records changed nothing: the scores are those of the clean log.
    got, repeats = dedupe(score_updates(records[settings.scores_topic]))
    assert repeats == 0
    assert_same_updates(got, expected_outputs(log, PARTITIONS, settings))
