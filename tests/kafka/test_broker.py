"""The local Apache Kafka broker (compose/kafka.sh) works end to end with aiokafka."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "compose" / "kafka.sh"

N_RECORDS = 1_000
N_PARTITIONS = 4
N_KEYS = 37

# (key, value) -> where the producer says it landed
Sent = dict[tuple[bytes, bytes], tuple[int, int]]
# partition -> [(offset, key, value)] in consumption order
Consumed = dict[int, list[tuple[int, bytes, bytes]]]


async def _produce(bootstrap: str, topic: str) -> Sent:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = []
        for i in range(N_RECORDS):
            key = f"item-{i % N_KEYS}".encode()
            value = f"{i:06d}".encode()
            futures.append(((key, value), await producer.send(topic, value=value, key=key)))
        await producer.flush()
        sent: Sent = {}
        for kv, fut in futures:
            md = await fut
            sent[kv] = (md.partition, md.offset)
        return sent
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float) -> Consumed:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-broker-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    consumed: Consumed = defaultdict(list)
    count = 0
    try:
        deadline = time.monotonic() + timeout_s
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                for r in records:
                    assert r.key is not None and r.value is not None
                    consumed[tp.partition].append((r.offset, r.key, r.value))
                    count += 1
        await consumer.commit()
    finally:
        await consumer.stop()
    return dict(consumed)


def test_produce_and_consume_1000_records_keys_and_partition_order(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(partitions=N_PARTITIONS, prefix="roundtrip")

    sent = asyncio.run(_produce(kafka_bootstrap, topic))
    consumed = asyncio.run(_consume(kafka_bootstrap, topic, N_RECORDS, timeout_s=60))

    got = [(k, v) for recs in consumed.values() for _, k, v in recs]
    assert len(got) == N_RECORDS, f"consumed {len(got)} of {N_RECORDS}"
    assert set(got) == set(sent), "consumed records differ from produced ones"
    assert len(set(got)) == N_RECORDS, "duplicates consumed"

    # The topic really has 4 partitions and the keyed records spread over all of them.
    assert set(consumed) <= set(range(N_PARTITIONS))
    assert len(consumed) == N_PARTITIONS

    key_partitions: dict[bytes, set[int]] = defaultdict(set)
    for partition, recs in consumed.items():
        offsets = [o for o, _, _ in recs]
        # Per-partition order: offsets consecutive from 0, values in production order.
        assert offsets == list(range(len(recs)))
        values = [v for _, _, v in recs]
        assert values == sorted(values), f"partition {partition} out of production order"
        for offset, key, value in recs:
            # Keys preserved, and each record sits where the producer was told it landed.
            assert sent[(key, value)] == (partition, offset)
            key_partitions[key].add(partition)

    # Same key -> same partition (default murmur2 partitioner).
    assert len(key_partitions) == N_KEYS
    assert all(len(parts) == 1 for parts in key_partitions.values())


@pytest.fixture
def own_broker_env(kafka_bootstrap: str, kafka_script_env: dict[str, str]) -> dict[str, str]:
    if os.environ.get("TRAIL_KAFKA_BOOTSTRAP"):
        pytest.skip("TRAIL_KAFKA_BOOTSTRAP is set: the broker was not started by compose/kafka.sh")
    return kafka_script_env


def test_script_status_reports_running(
    kafka_bootstrap: str, own_broker_env: dict[str, str], kafka_script
) -> None:
    result = kafka_script("status", own_broker_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running" in result.stdout
    assert f"KAFKA_BOOTSTRAP={kafka_bootstrap}" in result.stdout


def test_script_start_is_idempotent(
    kafka_bootstrap: str, own_broker_env: dict[str, str], kafka_script
) -> None:
    pid_file = Path(own_broker_env["TRAIL_KAFKA_DATA"]) / "kafka.pid"
    pid_before = pid_file.read_text().strip()
    result = kafka_script("start", own_broker_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already running" in result.stderr
    assert f"KAFKA_BOOTSTRAP={kafka_bootstrap}" in result.stdout.splitlines()
    assert pid_file.read_text().strip() == pid_before
