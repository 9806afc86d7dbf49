"""The group-consumer runtimes: who owns the consumer group and feeds the worker its rounds.

A :class:`GroupRuntime` joins the group, hands partitions to the worker and takes them away
(:meth:`GroupMember.on_assigned` / :meth:`GroupMember.on_revoked`), delivers the fetched
records to the worker's round, and does the few things only the group's consumer can (seek,
committed offsets, high watermarks, commits). Two implement it:

- :class:`ConsumerRuntime` (``--runtime aiokafka``, the default): a batched ``getmany`` loop
  over the clients' group consumer (:class:`~streams.kafka.clients.GroupConsumer`: aiokafka's
  on a broker, :class:`~streams.kafka.memory.MemoryBroker`'s in unit tests);
- :class:`~streams.kafka.faust_runtime.FaustRuntime` (``--runtime faust``): a Faust app.

Both drive the very same worker: the same rounds, checkpoints, trending merge and outputs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from streams.kafka.clients import Fetched, GroupConsumer, KafkaClients, TopicPartition
from streams.settings import Settings

log = logging.getLogger("trail.worker")

#: The choices of ``--runtime``.
RUNTIMES = ("aiokafka", "faust")


class GroupMember(Protocol):
    """What a runtime drives: the worker (:class:`~streams.kafka.worker.Worker`)."""

    settings: Settings
    worker_id: str
    partials_topic: str
    events_partitions: int
    lock: asyncio.Lock

    @property
    def generation(self) -> int:
        """Bumped at every assignment and revocation."""
        ...

    @property
    def stopping(self) -> asyncio.Event: ...
    def stop(self) -> None: ...
    def finished(self) -> bool:
        """Done: ``--until-idle`` reached with no lag, or ``max_seconds`` spent."""
        ...

    def position(self, partition: int) -> int | None:
        """The last applied offset of an owned events partition (None: not owned)."""
        ...

    async def beginning(self, tp: TopicPartition) -> int: ...
    async def on_assigned(self, assigned: Sequence[Any]) -> None: ...
    async def on_revoked(self, revoked: Sequence[Any]) -> None: ...
    async def apply_fetch(self, generation: int, batches: Fetched) -> None:
        """One round under the lock, unless a rebalance came between fetch and round."""
        ...

    async def round(self, batches: Fetched) -> None:
        """One round; the caller holds :attr:`lock`."""
        ...


class GroupRuntime(Protocol):
    """The consumer group of a worker (see the module documentation)."""

    async def serve(self, member: GroupMember) -> None:
        """Join the group and feed ``member`` until it stops; raises what stopped it."""
        ...

    def consuming(self) -> bool: ...
    async def stop(self) -> None: ...
    async def seek(self, tp: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, tp: TopicPartition) -> None: ...
    async def committed(self, tp: TopicPartition) -> int | None: ...
    def highwater(self, tp: TopicPartition) -> int | None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...


class _Listener:
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        await self._member.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        await self._member.on_assigned(assigned)


class ConsumerRuntime:
    """The worker's group on the clients' group consumer: a batched ``getmany`` loop."""

    def __init__(self, clients: KafkaClients) -> None:
        self.clients = clients
        self._consumer: GroupConsumer | None = None

    def _group(self) -> GroupConsumer:
        if self._consumer is None:
            raise RuntimeError("the group consumer has not started")
        return self._consumer

    async def serve(self, member: GroupMember) -> None:
        settings = member.settings
        consumer = self.clients.group_consumer(settings, f"trail-{member.worker_id}")
        consumer.subscribe([settings.events_topic, member.partials_topic], _Listener(member))
        self._consumer = consumer
        await consumer.start()
        log.info(
            "worker %s consuming %s (%d partitions) in group %s",
            member.worker_id,
            settings.events_topic,
            member.events_partitions,
            settings.app_id,
        )
        stop_wait = asyncio.ensure_future(member.stopping.wait())
        try:
            while not member.stopping.is_set():
                generation = member.generation
                fetch = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=200, max_records=settings.batch_size)
                )
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batches = fetch.result()
                # Let the fetcher send its next requests before this batch's CPU-bound work,
                # so the broker's answer is on its way while the batch is processed.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                await member.apply_fetch(generation, batches)
                if member.finished():
                    break
        finally:
            stop_wait.cancel()

    def consuming(self) -> bool:
        return self._consumer is not None

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        self._group().seek(tp, offset)

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        await self._group().seek_to_beginning(tp)

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self._group().committed(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._group().highwater(tp)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._group().commit(offsets)
