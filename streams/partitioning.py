"""Which partition of a keyed topic an item lands on, and an event log split the same way.

Partitions are the unit of scale: events are keyed by ``item_id`` and each partition of the
``events`` topic has its own engine. To reproduce a worker exactly, the embedded replay splits a
log with :func:`split_log` into the per-partition sub-logs the worker's partitions see, using
Kafka's default partitioner for keyed records (the Java client's ``murmur2`` of the key bytes,
sign bit cleared, modulo the partition count; aiokafka's ``DefaultPartitioner`` is the same).

Pure code: no Kafka client is imported here.

>>> partition_for("242", 4), partition_for("4", 4), partition_for("4", 1)
(0, 1, 0)
>>> murmur2(b"21") == -973932308 & 0xFFFFFFFF   # org.apache.kafka.common.utils.Utils.murmur2
True
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import pandas as pd

from streams.eventlog import EventLog

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit integer (the Java ``int``'s bits)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra:
        if extra >= 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null ``key``."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1 << 20)
def partition_for(item_id: str, partitions: int) -> int:
    """The partition of the ``events`` topic that carries ``item_id`` (key = its UTF-8 bytes)."""
    return partition_for_key(item_id.encode("utf-8"), partitions)


def partitions_of(item_ids: np.ndarray, partitions: int) -> np.ndarray:
    """Vectorised :func:`partition_for`: only distinct ids are hashed."""
    labels, uniques = pd.factorize(np.asarray(item_ids, dtype=object), sort=False)
    by_unique = np.fromiter(
        (partition_for(str(u), partitions) for u in uniques), dtype=np.int64, count=len(uniques)
    )
    result: np.ndarray = by_unique[labels]
    return result


def split_log(log: EventLog, partitions: int) -> list[EventLog]:
    """The sub-log of every partition, in the log's order (sort it by time first to get what a
    worker consumes from a topic filled by ``trail produce``).

    Each sub-log keeps the whole item metadata, as a worker given the same metadata does.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    where = partitions_of(log.item_ids, partitions)
    parts = []
    for partition in range(partitions):
        index = np.flatnonzero(where == partition)
        parts.append(
            dataclasses.replace(
                log,
                name=f"{log.name}[partition {partition}/{partitions}]",
                user_ids=log.user_ids[index],
                item_ids=log.item_ids[index],
                timestamps=log.timestamps[index],
            )
        )
    return parts
