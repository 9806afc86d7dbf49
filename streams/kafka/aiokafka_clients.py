"""The worker's Kafka clients on a real broker: aiokafka's (see :mod:`streams.kafka.clients`).

aiokafka is imported only when a client is made, so ``trail replay`` never needs the Kafka
extra. aiokafka checks that partitions are its own ``TopicPartition`` type: the readers and the
group consumer here take the protocol's :class:`~streams.kafka.clients.TopicPartition` and
hand aiokafka its own (the two are equal named tuples).
"""

from __future__ import annotations

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
from streams.kafka.options import TopicSpec, client_options, ensure_topics, verify_connection
from streams.settings import Settings

#: Fetch limits of every consumer: whole batches, big enough for a round of many partitions.
_FETCH = {"max_partition_fetch_bytes": 4 * 1024 * 1024, "fetch_max_bytes": 32 * 1024 * 1024}
#: How long the broker holds a reader's empty fetch. A reader keeps fetching its assigned
#: partitions in the background, and the broker answers one connection's requests in order,
#: so each offset lookup of a reader with an idle assignment (the changelog after a restore,
#: the followed items partitions) waited out the 500 ms default: an assignment's ten or so
#: lookups took 5 to 6.7 s, inside the assignment callback, where no heartbeat is sent. At
#: 50 ms an idle reader asks about 20 times a second instead of twice.
_READER_FETCH_MAX_WAIT_MS = 50


def _theirs(tp: TopicPartition) -> Any:
    from aiokafka import TopicPartition as AiokafkaTopicPartition

    return AiokafkaTopicPartition(tp.topic, tp.partition)


class AiokafkaReader:
    """A started group-less ``AIOKafkaConsumer`` (:class:`~streams.kafka.clients.Reader`)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.assign([_theirs(tp) for tp in partitions])

    def unsubscribe(self) -> None:
        self._consumer.unsubscribe()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(_theirs(tp), offset)

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        await self._consumer.seek_to_beginning(_theirs(tp))

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> Mapping[Any, int]:
        offsets: Mapping[Any, int] = await self._consumer.beginning_offsets(
            [_theirs(tp) for tp in tps]
        )
        return offsets

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> Mapping[Any, int]:
        offsets: Mapping[Any, int] = await self._consumer.end_offsets([_theirs(tp) for tp in tps])
        return offsets

    async def position(self, tp: TopicPartition) -> int:
        return int(await self._consumer.position(_theirs(tp)))

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> Fetched:
        fetched: Fetched = await self._consumer.getmany(
            *(_theirs(tp) for tp in tps), timeout_ms=timeout_ms
        )
        return fetched

    async def stop(self) -> None:
        await self._consumer.stop()


class AiokafkaGroupConsumer:
    """The worker's ``AIOKafkaConsumer`` in its group
    (:class:`~streams.kafka.clients.GroupConsumer`)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        from aiokafka import ConsumerRebalanceListener

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
                await listener.on_partitions_revoked(revoked)

            async def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
                await listener.on_partitions_assigned(assigned)

        self._consumer.subscribe(list(topics), listener=_Listener())

    async def start(self) -> None:
        await self._consumer.start()

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Fetched:
        fetched: Fetched = await self._consumer.getmany(
            timeout_ms=timeout_ms, max_records=max_records
        )
        return fetched

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(_theirs(tp), offset)

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        await self._consumer.seek_to_beginning(_theirs(tp))

    async def committed(self, tp: TopicPartition) -> int | None:
        committed: int | None = await self._consumer.committed(_theirs(tp))
        return committed

    def highwater(self, tp: TopicPartition) -> int | None:
        highwater: int | None = self._consumer.highwater(_theirs(tp))
        return highwater

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        assigned = self._consumer.assignment()
        mine = {_theirs(tp): o for tp, o in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            raise CommitFailed(str(exc)) from exc

    async def stop(self) -> None:
        await self._consumer.stop()


class AiokafkaClients:
    """aiokafka's clients with the settings' connection options
    (:class:`~streams.kafka.clients.KafkaClients`)."""

    async def verify(self, settings: Settings) -> None:
        await verify_connection(settings)

    async def ensure_topics(self, settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, int]:
        return await ensure_topics(settings, specs)

    async def start_producer(self, settings: Settings, client_id: str) -> Producer:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # records are batched by BatchSender already
            max_batch_size=512 * 1024,
            max_request_size=2 * 1024 * 1024,
            request_timeout_ms=30_000,
            client_id=client_id,
        )
        await producer.start()
        started: Producer = producer
        return started

    async def start_reader(self, settings: Settings) -> Reader:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_READER_FETCH_MAX_WAIT_MS,
            **_FETCH,
        )
        await consumer.start()
        return AiokafkaReader(consumer)

    def group_consumer(self, settings: Settings, client_id: str) -> GroupConsumer:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=settings.app_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(300, settings.session_timeout_ms // 5),
            rebalance_timeout_ms=120_000,
            max_poll_interval_ms=300_000,
            **_FETCH,
        )
        return AiokafkaGroupConsumer(consumer)
