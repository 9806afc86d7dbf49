"""The Kafka clients of the worker, behind small protocols (as httpx does with transports).

The worker never builds a Kafka client itself: it asks its :class:`KafkaClients` for a
producer, for group-less readers (changelog, items, trending topics) and for the group
consumer. Two implementations exist:

- :class:`~streams.kafka.aiokafka_clients.AiokafkaClients` (the default): aiokafka's clients
  with the options of :func:`~streams.kafka.options.client_options`, on a real broker;
- :class:`~streams.kafka.memory_clients.MemoryClients` on a
  :class:`~streams.kafka.memory.MemoryBroker`: topics, acknowledgements, a consumer group and
  its rebalances in memory, in one process, so the worker's rounds, checkpoint order,
  rebalances and dead letters can be tested without a broker.

The protocols name only what the worker calls, with aiokafka's signatures; a partition is a
:class:`TopicPartition` (a named tuple, equal to aiokafka's for the same topic and partition).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from streams.kafka.options import TopicSpec
    from streams.settings import Settings


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


class CommitFailed(Exception):
    """The group did not take an offset commit (a rebalance, a fenced member, a lost broker).

    The checkpoints are the truth, so the worker logs it and goes on."""


class Record(Protocol):
    """A consumed record: what the decoders, the merger and the dead letters read of it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


#: One fetch: the records of each partition that has any, in offset order.
Fetched = Mapping[Any, Sequence[Any]]


class ProducerBatch(Protocol):
    """A batch of records for one partition (aiokafka's ``BatchBuilder``)."""

    def append(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> object | None:
        """Add a record; None when it does not fit (the batch is full)."""
        ...

    def record_count(self) -> int: ...
    def close(self) -> None: ...


class Producer(Protocol):
    """A started producer (acks from every in-sync replica, idempotent)."""

    def create_batch(self) -> Any: ...
    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        """Hand a closed batch over; the future is done once the broker acknowledged it."""
        ...

    async def stop(self) -> None: ...


class Reader(Protocol):
    """A started consumer without a group: it reads the partitions it is assigned, from where
    it is told (changelog, items and trending topics)."""

    def assign(self, partitions: Sequence[TopicPartition]) -> None: ...
    def unsubscribe(self) -> None: ...
    def seek(self, tp: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, tp: TopicPartition) -> None: ...
    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> Mapping[Any, int]: ...
    async def end_offsets(self, tps: Sequence[TopicPartition]) -> Mapping[Any, int]: ...
    async def position(self, tp: TopicPartition) -> int: ...
    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> Fetched: ...
    async def stop(self) -> None: ...


class RebalanceListener(Protocol):
    """What the group consumer calls when partitions are taken away and handed out."""

    async def on_partitions_revoked(self, revoked: Sequence[Any]) -> None: ...
    async def on_partitions_assigned(self, assigned: Sequence[Any]) -> None: ...


class GroupConsumer(Protocol):
    """The consumer of the worker's group (manual commits, ``auto_offset_reset=earliest``)."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...
    async def start(self) -> None: ...
    async def getmany(self, *, timeout_ms: int, max_records: int) -> Fetched: ...
    def seek(self, tp: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, tp: TopicPartition) -> None: ...
    async def committed(self, tp: TopicPartition) -> int | None: ...
    def highwater(self, tp: TopicPartition) -> int | None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit these offsets of the assigned partitions (others are left out); raises
        :class:`CommitFailed` when the group refuses."""
        ...

    async def stop(self) -> None: ...


class KafkaClients(Protocol):
    """Where the worker's clients come from (see the module documentation)."""

    async def verify(self, settings: Settings) -> None:
        """Fail with one clear error when the broker refuses these settings' credentials."""
        ...

    async def ensure_topics(self, settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, int]:
        """Create the missing topics; every topic's partition count."""
        ...

    async def start_producer(self, settings: Settings, client_id: str) -> Producer: ...
    async def start_reader(self, settings: Settings) -> Reader: ...
    def group_consumer(self, settings: Settings, client_id: str) -> GroupConsumer: ...
