"""An in-memory Kafka for the worker's unit tests: topics, acks, one consumer group, rebalances.

:class:`MemoryBroker` is the cluster; ``broker.clients(name)`` is what one worker process
gets (:class:`MemoryClients`, a :class:`~streams.kafka.clients.KafkaClients`), so several
workers can share a broker in one event loop. What it keeps of Kafka's behaviour, because
the worker's guarantees rest on it:

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
from typing import Any, Literal

from streams.kafka.clients import (
    CommitFailed,
    Fetched,
    GroupConsumer,
    Producer,
    Reader,
    RebalanceListener,
    TopicPartition,
)
from streams.kafka.options import TopicSpec
from streams.settings import Settings

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


@dataclass
class _Group:
    members: dict[int, MemoryGroupConsumer] = field(default_factory=dict)  # in join order
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
        self._groups: dict[str, _Group] = {}
        self._in_flight: deque[_InFlight] = deque()
        self._holding = False
        self._dead: set[str] = set()
        self._appended: asyncio.Event | None = None
        self._ids = itertools.count()
        self._clock = itertools.count(1_000_000)
        #: Fetches of every group member so far: a test counts rounds by them.
        self.fetches = 0

    # -------------------------------------------------------------- what tests do
    def clients(self, process: str) -> MemoryClients:
        """The clients of one worker process called ``process``."""
        return MemoryClients(self, process)

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
        if process in self._dead:
            raise KilledError(f"{process} was killed")

    def _log(self, topic: str, partition: int) -> list[MemoryRecord]:
        try:
            return self.logs[topic][partition]
        except (KeyError, IndexError):
            raise ValueError(f"no partition {partition} of topic {topic!r}") from None

    def _append(self, topic: str, partition: int, records: Sequence[tuple[Any, ...]]) -> int:
        log = self._log(topic, partition)
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
        self._log(topic, partition)
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

    def group(self, name: str) -> _Group:
        return self._groups.setdefault(name, _Group())

    def join(self, name: str, member: MemoryGroupConsumer) -> int:
        group = self.group(name)
        member_id = next(self._ids)
        group.members[member_id] = member
        self._rebalance(group)
        return member_id

    def leave(self, name: str, member_id: int) -> None:
        group = self.group(name)
        if group.members.pop(member_id, None) is not None:
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        group.generation += 1
        group.revoked = set()
        group.assignment = {}
        group.synced.set()  # wake members waiting for the previous generation: they start over
        group.synced = asyncio.Event()

    def synced(self, group: _Group, member_id: int) -> None:
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


class MemoryProducer:
    """A producer of one process (:class:`~streams.kafka.clients.Producer`)."""

    def __init__(self, broker: MemoryBroker, process: str) -> None:
        self._broker = broker
        self.process = process

    def create_batch(self) -> MemoryBatch:
        self._broker.check(self.process)
        return MemoryBatch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._broker.send(self.process, batch, topic, partition)
        return future

    async def stop(self) -> None:
        return None


class MemoryReader:
    """A consumer without a group (:class:`~streams.kafka.clients.Reader`)."""

    def __init__(self, broker: MemoryBroker, process: str) -> None:
        self._broker = broker
        self.process = process
        self._positions: dict[TopicPartition, int] = {}
        self._next = 0  # where the next fetch starts among the partitions (fairness)

    def _tp(self, tp: Any) -> TopicPartition:
        return TopicPartition(tp.topic, tp.partition)

    def _owned(self, tp: Any) -> TopicPartition:
        mine = self._tp(tp)
        if mine not in self._positions:
            raise ValueError(f"{mine.topic}/{mine.partition} is not assigned")
        return mine

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self._positions = {self._tp(tp): 0 for tp in partitions}

    def unsubscribe(self) -> None:
        self._positions = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[self._owned(tp)] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self._positions[self._owned(tp)] = 0

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> Mapping[Any, int]:
        return {self._tp(tp): 0 for tp in tps}

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> Mapping[Any, int]:
        return {self._tp(tp): len(self._broker._log(tp.topic, tp.partition)) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self._positions[self._owned(tp)]

    def _take(self, tps: Sequence[TopicPartition], max_records: int | None) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        room = max_records if max_records is not None else None
        start = self._next % max(1, len(tps))
        self._next += 1
        for tp in [*tps[start:], *tps[:start]]:
            if room is not None and room <= 0:
                break
            log = self._broker._log(tp.topic, tp.partition)
            position = self._positions[tp]
            stop = len(log) if room is None else min(len(log), position + room)
            if stop > position:
                out[tp] = log[position:stop]
                self._positions[tp] = stop
                if room is not None:
                    room -= stop - position
        return out

    async def _fetch(
        self, tps: Sequence[TopicPartition], timeout_ms: int, max_records: int | None
    ) -> Fetched:
        self._broker.check(self.process)
        out = self._take(tps, max_records)
        if not out and timeout_ms > 0:
            await self._broker.wait_for_records(timeout_ms / 1000)
            self._broker.check(self.process)
            out = self._take([tp for tp in tps if tp in self._positions], max_records)
        return out

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> Fetched:
        wanted = [self._owned(tp) for tp in tps] if tps else list(self._positions)
        return await self._fetch(wanted, timeout_ms, None)

    async def stop(self) -> None:
        self._positions = {}


class MemoryGroupConsumer(MemoryReader):
    """A member of the worker's group (:class:`~streams.kafka.clients.GroupConsumer`)."""

    def __init__(self, broker: MemoryBroker, process: str, group: str) -> None:
        super().__init__(broker, process)
        self.group = group
        self.topics: list[str] = []
        self._listener: RebalanceListener | None = None
        self._member: int | None = None
        self._generation = 0
        self._rebalancing: asyncio.Future[None] | None = None

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self.topics = list(topics)
        self._listener = listener

    async def start(self) -> None:
        self._broker.check(self.process)
        self._member = self._broker.join(self.group, self)

    async def _sync(self) -> None:
        """Take part in the group's rebalances until this member holds the current assignment."""
        broker, group = self._broker, self._broker.group(self.group)
        if self._listener is None or self._member is None:
            raise RuntimeError("subscribe and start first")
        while self._generation != group.generation:
            target = group.generation
            # Still the owner while it revokes: its last checkpoints' commits are taken.
            await self._listener.on_partitions_revoked(list(self._positions))
            self._positions = {}
            broker.check(self.process)
            broker.synced(group, self._member)
            await group.synced.wait()
            if group.generation != target:
                continue  # someone joined or left meanwhile: revoke (nothing) and sync again
            assigned = group.assignment.get(self._member, [])
            self._positions = {tp: group.committed.get(tp, 0) for tp in assigned}
            self._generation = target
            await self._listener.on_partitions_assigned(assigned)

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int = 0
    ) -> Fetched:
        self._broker.check(self.process)
        self._broker.fetches += 1
        group = self._broker.group(self.group)
        if self._generation != group.generation:
            # Shielded: a fetch cancelled at shutdown must not cut a revocation in half.
            if self._rebalancing is None or self._rebalancing.done():
                self._rebalancing = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._rebalancing)
        return await self._fetch(list(self._positions), timeout_ms, max_records or None)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._broker.group(self.group).committed.get(self._tp(tp))

    def highwater(self, tp: TopicPartition) -> int | None:
        tp = self._tp(tp)
        if tp not in self._positions:
            return None
        return len(self._broker._log(tp.topic, tp.partition))

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        broker, group = self._broker, self._broker.group(self.group)
        if self.process in broker._dead or self._member not in group.members:
            raise CommitFailed(f"{self.process} is not a member of group {self.group}")
        for tp, offset in offsets.items():
            tp = self._tp(tp)
            if tp in self._positions:
                group.committed[tp] = offset
                broker.journal.append(
                    Entry("commit", self.process, tp.topic, tp.partition, offset, 0)
                )

    async def stop(self) -> None:
        if self._member is not None and self.process not in self._broker._dead:
            self._broker.leave(self.group, self._member)
        self._member = None
        self._positions = {}


class MemoryClients:
    """The Kafka clients of one process on a :class:`MemoryBroker`
    (:class:`~streams.kafka.clients.KafkaClients`)."""

    def __init__(self, broker: MemoryBroker, process: str) -> None:
        self.broker = broker
        self.process = process

    async def verify(self, settings: Settings) -> None:
        self.broker.check(self.process)

    async def ensure_topics(self, settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, int]:
        self.broker.check(self.process)
        for spec in specs:
            self.broker.create_topic(spec.name, spec.partitions, spec.config)
        return {spec.name: len(self.broker.logs[spec.name]) for spec in specs}

    async def start_producer(self, settings: Settings, client_id: str) -> Producer:
        self.broker.check(self.process)
        return MemoryProducer(self.broker, self.process)

    async def start_reader(self, settings: Settings) -> Reader:
        self.broker.check(self.process)
        return MemoryReader(self.broker, self.process)

    def group_consumer(self, settings: Settings, client_id: str) -> GroupConsumer:
        return MemoryGroupConsumer(self.broker, self.process, settings.app_id)
