"""An in-memory Kafka for the worker's unit tests: topics, acks, one consumer group, rebalances.

:class:`MemoryBroker` is the cluster; ``MemoryClients(broker, name)``
(:mod:`streams.kafka.memory_clients`, a :class:`~streams.kafka.clients.KafkaClients`) is what
one worker process gets, so several workers can share a broker in one event loop. What it
keeps of Kafka's behaviour, because the worker's guarantees rest on it:

- **Logs.** Every partition is a list; a record's offset is its index. Nothing is compacted
  (a reader of a compacted topic keeps the last value per key, so the result is the same).
- **Acknowledgements.** A sent batch is appended, and its future done, only when the broker
  acknowledges it: on the next turn of the event loop, or, after :meth:`MemoryBroker.hold`,
  only when the test calls :meth:`MemoryBroker.release`. The :attr:`MemoryBroker.journal`
  records every send, acknowledgement and offset commit in order.
- **The group.** Members join on ``start()`` and leave on ``stop()``; each join or leave
  starts a rebalance: every member revokes its partitions at its next ``getmany``, and only
  once all have revoked are the partitions handed out again (round robin over the members in
  join order), as in Kafka's eager protocol. A new owner starts at the group's committed
  offset (or the beginning).
- **kill -9.** :meth:`MemoryBroker.kill` cuts a process off: what it sends from then on is
  refused, its unacknowledged batches are lost, and its group membership ends at once.

No Faust here: the Faust runtime needs a real broker.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from streams.kafka.clients import TopicPartition

#: Bytes a producer batch holds before it is full (aiokafka's max_batch_size of the worker).
BATCH_BYTES = 512 * 1024


class KilledError(ConnectionError):
    """A client of a process that :meth:`MemoryBroker.kill` cut off was used."""


@dataclass(frozen=True)
class MemoryRecord:
    """A record in a partition's log (the attributes of aiokafka's ``ConsumerRecord``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_type: int = 0


@dataclass(frozen=True)
class Entry:
    """One thing the broker saw, in order (:attr:`MemoryBroker.journal`).

    ``sent``: a batch handed over (``count`` records, ``offset`` -1); ``acked``: the batch
    appended at ``offset``; ``commit``: the group's next offset of the partition set to
    ``offset``."""

    kind: Literal["sent", "acked", "commit"]
    process: str
    topic: str
    partition: int
    offset: int
    count: int


class MemoryBatch:
    """A producer batch (aiokafka's ``BatchBuilder``): the first record always fits."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None, int | None, tuple[Any, ...]]] = []
        self._bytes = 0
        self.closed = False

    def append(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> object | None:
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        if self.closed or (self.records and self._bytes + size > BATCH_BYTES):
            return None
        self.records.append((key, value, timestamp, tuple(headers)))
        self._bytes += size
        return len(self.records)

    def record_count(self) -> int:
        return len(self.records)

    def close(self) -> None:
        self.closed = True


@dataclass
class _InFlight:
    process: str
    topic: str
    partition: int
    batch: MemoryBatch
    future: asyncio.Future[Any]


class Member(Protocol):
    """What a group reads of its members
    (:class:`~streams.kafka.memory_clients.MemoryGroupConsumer`)."""

    process: str
    topics: list[str]


@dataclass
class ConsumerGroup:
    """One consumer group: its members, the generation they sync to, its committed offsets."""

    members: dict[int, Member] = field(default_factory=dict)  # in join order
    generation: int = 0
    revoked: set[int] = field(default_factory=set)
    assignment: dict[int, list[TopicPartition]] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBroker:
    """The in-memory cluster (see the module documentation)."""

    def __init__(self) -> None:
        self.logs: dict[str, list[list[MemoryRecord]]] = {}
        self.configs: dict[str, dict[str, str]] = {}
        self.journal: list[Entry] = []
        self._groups: dict[str, ConsumerGroup] = {}
        self._in_flight: deque[_InFlight] = deque()
        self._holding = False
        self._dead: set[str] = set()
        self._appended: asyncio.Event | None = None
        self._ids = itertools.count()
        self._clock = itertools.count(1_000_000)
        #: Fetches of every group member so far: a test counts rounds by them.
        self.fetches = 0

    # -------------------------------------------------------------- what tests do
    def create_topic(
        self, name: str, partitions: int, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``name`` unless it exists (an existing topic keeps its partitions)."""
        if name not in self.logs:
            self.logs[name] = [[] for _ in range(partitions)]
            self.configs[name] = dict(config or {})

    def produce(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp: int | None = None,
    ) -> int:
        """Append one record now (a producer outside the workers); returns its offset."""
        return self._append(topic, partition, [(key, value, timestamp, ())])

    def records(self, topic: str, partition: int | None = None) -> list[MemoryRecord]:
        """Every record of ``topic`` (of one partition, or of all in partition order)."""
        logs = self.logs[topic]
        if partition is not None:
            return list(logs[partition])
        return [record for log in logs for record in log]

    def hold(self) -> None:
        """From now on, acknowledge nothing until :meth:`release`."""
        self._holding = True

    def release(self, topics: Sequence[str] | None = None) -> int:
        """Acknowledge the held batches (of ``topics`` only, when given) in the order they were
        sent, and acknowledge as they come again when every topic is released. Returns how
        many batches were acknowledged."""
        if topics is None:
            self._holding = False
        return self._ack(None if topics is None else set(topics))

    def held(self, topic: str | None = None) -> int:
        """Batches sent and not yet acknowledged (of ``topic``)."""
        return sum(1 for f in self._in_flight if topic is None or f.topic == topic)

    def kill(self, process: str) -> None:
        """kill -9 of ``process``: its unacknowledged batches are lost, its clients refused
        from now on, its group membership ends (a rebalance starts)."""
        self._dead.add(process)
        for flight in [f for f in self._in_flight if f.process == process]:
            self._in_flight.remove(flight)
            if not flight.future.done():
                flight.future.set_exception(KilledError(f"{process} was killed"))
        for group in self._groups.values():
            for member_id, member in list(group.members.items()):
                if member.process == process:
                    del group.members[member_id]
                    self._rebalance(group)

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp``."""
        found = self._groups.get(group)
        return None if found is None else found.committed.get(tp)

    # -------------------------------------------------------------- the broker's side
    def check(self, process: str) -> None:
        if self.killed(process):
            raise KilledError(f"{process} was killed")

    def killed(self, process: str) -> bool:
        return process in self._dead

    def log(self, topic: str, partition: int) -> list[MemoryRecord]:
        """The log of one partition (raises ValueError for a partition that does not exist)."""
        try:
            return self.logs[topic][partition]
        except (KeyError, IndexError):
            raise ValueError(f"no partition {partition} of topic {topic!r}") from None

    def _append(self, topic: str, partition: int, records: Sequence[tuple[Any, ...]]) -> int:
        log = self.log(topic, partition)
        first = len(log)
        for key, value, timestamp, headers in records:
            stamp = next(self._clock) if timestamp is None else int(timestamp)
            log.append(MemoryRecord(topic, partition, len(log), key, value, stamp, headers))
        if self._appended is not None:
            self._appended.set()
            self._appended = None
        return first

    async def wait_for_records(self, timeout_s: float) -> None:
        """Return once anything is appended, or after ``timeout_s``."""
        if timeout_s <= 0:
            await asyncio.sleep(0)
            return
        if self._appended is None:
            self._appended = asyncio.Event()
        try:
            await asyncio.wait_for(self._appended.wait(), timeout_s)
        except TimeoutError:
            pass

    def send(self, process: str, batch: MemoryBatch, topic: str, partition: int) -> Any:
        self.check(process)
        self.log(topic, partition)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight.append(_InFlight(process, topic, partition, batch, future))
        self.journal.append(Entry("sent", process, topic, partition, -1, batch.record_count()))
        if not self._holding:
            asyncio.get_running_loop().call_soon(self._ack, None)
        return future

    def _ack(self, topics: set[str] | None) -> int:
        acked = 0
        for flight in list(self._in_flight):
            if topics is not None and flight.topic not in topics:
                continue
            self._in_flight.remove(flight)
            offset = self._append(flight.topic, flight.partition, flight.batch.records)
            count = flight.batch.record_count()
            self.journal.append(
                Entry("acked", flight.process, flight.topic, flight.partition, offset, count)
            )
            if not flight.future.done():
                flight.future.set_result(offset)
            acked += 1
        return acked

    def group(self, name: str) -> ConsumerGroup:
        return self._groups.setdefault(name, ConsumerGroup())

    def join(self, name: str, member: Member) -> int:
        group = self.group(name)
        member_id = next(self._ids)
        group.members[member_id] = member
        self._rebalance(group)
        return member_id

    def leave(self, name: str, member_id: int) -> None:
        group = self.group(name)
        if group.members.pop(member_id, None) is not None:
            self._rebalance(group)

    def _rebalance(self, group: ConsumerGroup) -> None:
        group.generation += 1
        group.revoked = set()
        group.assignment = {}
        group.synced.set()  # wake members waiting for the previous generation: they start over
        group.synced = asyncio.Event()

    def synced(self, group: ConsumerGroup, member_id: int) -> None:
        """``member_id`` has revoked its partitions: hand them out once every member has."""
        group.revoked.add(member_id)
        if not set(group.members) <= group.revoked:
            return
        topics = sorted({t for m in group.members.values() for t in m.topics})
        partitions = [
            TopicPartition(t, p) for t in topics if t in self.logs for p in range(len(self.logs[t]))
        ]
        members = list(group.members)
        group.assignment = {m: partitions[i :: len(members)] for i, m in enumerate(members)}
        group.synced.set()
