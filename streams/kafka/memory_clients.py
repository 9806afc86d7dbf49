"""The Kafka clients of one worker process on a :class:`~streams.kafka.memory.MemoryBroker`.

``MemoryClients(broker, process)`` is the process's
:class:`~streams.kafka.clients.KafkaClients`: a producer whose batches wait for the broker's
acknowledgement, readers without a group, and a member of the worker's consumer group that
takes part in the broker's eager rebalances (see :mod:`streams.kafka.memory`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from streams.kafka.clients import (
    CommitFailed,
    Fetched,
    GroupConsumer,
    Producer,
    Reader,
    RebalanceListener,
    TopicPartition,
)
from streams.kafka.memory import Entry, MemoryBatch, MemoryBroker
from streams.kafka.options import TopicSpec
from streams.settings import Settings


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
        return {self._tp(tp): len(self._broker.log(tp.topic, tp.partition)) for tp in tps}

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
            log = self._broker.log(tp.topic, tp.partition)
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
        return len(self._broker.log(tp.topic, tp.partition))

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        broker, group = self._broker, self._broker.group(self.group)
        if broker.killed(self.process) or self._member not in group.members:
            raise CommitFailed(f"{self.process} is not a member of group {self.group}")
        for tp, offset in offsets.items():
            tp = self._tp(tp)
            if tp in self._positions:
                group.committed[tp] = offset
                broker.journal.append(
                    Entry("commit", self.process, tp.topic, tp.partition, offset, 0)
                )

    async def stop(self) -> None:
        if self._member is not None and not self._broker.killed(self.process):
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
