"""``partition_for`` is Kafka's default partitioner: checked against aiokafka's murmur2 and
against where a real broker put records produced with ``key=item_id.encode()``.

Only the broker round trip carries the ``kafka`` marker: murmur2 and ``split_log`` need none.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import numpy as np
import pytest

from streams.eventlog import EventLog
from streams.partitioning import murmur2, partition_for, partitions_of, split_log


def test_murmur2_matches_aiokafka_and_the_java_client() -> None:
    from aiokafka.partitioner import murmur2 as reference

    rng = random.Random(1)
    for _ in range(5000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        assert murmur2(data) == reference(data) & 0xFFFFFFFF
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    cases = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536}
    for text, java_int in cases.items():
        assert murmur2(text.encode()) == java_int & 0xFFFFFFFF


async def _round_trip(bootstrap: str, topic: str, keys: list[str]) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)  # DefaultPartitioner
    await producer.start()
    try:
        futures = [await producer.send(topic, value=b"x", key=k.encode()) for k in keys]
        sent = {k: (await f).partition for k, f in zip(keys, futures, strict=True)}
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    read: dict[str, int] = {}
    try:
        while len(read) < len(keys):
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    read[record.key.decode()] = tp.partition
    finally:
        await consumer.stop()
    assert read == sent
    return read


@pytest.mark.kafka
@pytest.mark.parametrize("partitions", [1, 3, 4, 7])
def test_partition_for_is_where_the_broker_puts_the_key(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], partitions: int
) -> None:
    topic = kafka_topic_factory(partitions=partitions, prefix="murmur")
    keys = [str(i) for i in range(1, 301)] + ["item-é", "x" * 40, "Toy Story (1995)"]
    landed = asyncio.run(_round_trip(kafka_bootstrap, topic, keys))
    assert {k: partition_for(k, partitions) for k in keys} == landed
    assert len(set(landed.values())) == partitions


def test_split_log_keeps_order_and_metadata() -> None:
    ids = np.array([str(i % 50) for i in range(1000)], dtype=object)
    log = EventLog("demo", ids.copy(), ids, np.arange(1000, dtype=np.float64))
    parts = split_log(log, 4)
    assert sum(len(p) for p in parts) == len(log)
    where = partitions_of(log.item_ids, 4)
    for partition, part in enumerate(parts):
        assert list(part.timestamps) == [float(i) for i in np.flatnonzero(where == partition)]
        assert all(partition_for(i, 4) == partition for i in part.item_ids)
        assert part.items == log.items
    assert [len(p) for p in split_log(log, 1)] == [len(log)]
