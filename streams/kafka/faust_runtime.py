"""``trail worker --runtime faust``: the same worker, its consumer group a Faust app.

The Faust app owns the consumer group: membership, partition assignment and rebalances, the
stream of records, and the offset commits. Its parts:

- **One agent** on the events topic and the trending-partials topic. It takes the records in
  batches (``noack_take``, up to ``batch_size`` within 50 ms) and hands them, grouped by
  partition, to the very same round as the aiokafka runtime
  (:meth:`~streams.kafka.runtimes.GroupMember.round`): one :class:`~streams.engine.Engine` per
  events partition, the same outputs, the same trending merge.
- **One timer** (every 200 ms) runs an empty round, so that idle partitions still report
  progress, due checkpoints are taken and the trending merge publishes windows held back only
  by an idle partition.
- **Manual commits.** Events are taken with acks disabled and acknowledged only once the
  checkpoint that covers them is durable; Faust then commits the acknowledged offsets. A
  crash re-delivers everything after the last checkpoint, and records at or below it are
  skipped, exactly as in the aiokafka runtime.
- **State.** Each partition's state is the same checkpoint in the same compacted
  ``<app_id>-state-changelog`` topic (:class:`~streams.kafka.state.StateStore`), restored in
  the app's ``on_partitions_assigned`` signal and written on revocation
  (``on_partitions_revoked``). A Faust ``Table`` holds one value per key in one Kafka record;
  a partition's trend state can be far larger than a record, so the chunked store is kept.
- **Item metadata.** The items topic is not one of the app's topics: as in the aiokafka
  runtime, the worker's own group-less consumer follows the items partitions of the events
  partitions the app assigned (read up to their end at assignment, then at every round,
  including the timer's), so both runtimes keep the same metadata in the same checkpoints.

Throughput: Faust handles every record as an event object (decode, buffer, ack), which costs
far more than the engine's batched work; ``bench/kafka.py --runtime faust`` measures it. The
aiokafka runtime is the default for that reason; the two share everything else and keep the
same checkpoints, so one can take over a group's state from the other (stop every worker of
the group first: the two do not join one group together).

Faust needs a real broker: this runtime has no in-memory counterpart.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from streams.kafka.clients import Fetched, TopicPartition
from streams.kafka.options import client_options, faust_credentials
from streams.kafka.runtimes import GroupMember
from streams.settings import Settings

log = logging.getLogger("trail.worker.faust")

#: How long the agent waits to fill a batch before it processes what it has.
TAKE_WITHIN_S = 0.05
#: How often the timer runs an empty round (progress, due checkpoints, trending merge).
TICK_S = 0.2


def faust_app(settings: Settings, client_id: str) -> Any:
    """The Faust app of a worker: our consumer group, no web server, topics created by us."""
    import faust

    options: dict[str, Any] = {}
    if settings.security_protocol != "PLAINTEXT":
        options["broker_credentials"] = faust_credentials(settings)
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.broker.split(",")],
        autodiscover=False,
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,  # the worker creates its topics with their settings
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_client_id=client_id,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.3, settings.session_timeout_ms / 5000),
        broker_commit_interval=1.0,
        broker_max_poll_records=settings.batch_size,
        stream_buffer_maxsize=max(4096, settings.batch_size),
        # Events are acknowledged only after their checkpoint: a rebalance must not wait for
        # acks (the revocation handler writes the checkpoints and acks them itself).
        stream_wait_empty=False,
        producer_acks=-1,
        **options,
    )


def _faust_tp(tp: TopicPartition) -> Any:
    from faust.types import TP

    return TP(tp.topic, tp.partition)


class FaustRuntime:
    """A worker's consumer group as a Faust app (:class:`~streams.kafka.runtimes.GroupRuntime`)."""

    def __init__(self) -> None:
        self.app: Any = None
        self._member: GroupMember | None = None
        self._stream: Any = None
        self._unacked: dict[Any, deque[Any]] = defaultdict(deque)
        self._failure: BaseException | None = None

    def _host(self) -> GroupMember:
        if self._member is None:
            raise RuntimeError("the Faust app serves no worker")
        return self._member

    async def serve(self, member: GroupMember) -> None:
        self._member = member
        settings = member.settings
        self.app = app = faust_app(settings, f"trail-{member.worker_id}")
        topic = app.topic(
            settings.events_topic,
            member.partials_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            allow_empty=True,
        )
        app.agent(topic, name="trail.events")(self._agent)
        app.timer(TICK_S, name="trail.tick")(self._tick)
        app.on_partitions_revoked.connect(self._revoked)
        app.on_partitions_assigned.connect(self._assigned)
        await app.start()
        log.info(
            "worker %s (Faust app %s) consuming %s (%d partitions)",
            member.worker_id,
            settings.app_id,
            settings.events_topic,
            member.events_partitions,
        )
        await member.stopping.wait()
        if self._failure is not None:
            raise self._failure

    # -------------------------------------------------------------- the app's parts
    async def _agent(self, stream: Any) -> None:
        self._stream = stream
        member = self._host()
        try:
            async for events in stream.noack_take(member.settings.batch_size, TAKE_WITHIN_S):
                await self._on_events(events)
        except Exception as exc:  # the worker must stop, not the agent alone
            self._fail(exc)
            raise

    async def _tick(self) -> None:
        member = self._host()
        if member.stopping.is_set() or member.lock.locked():
            return  # a round is running: it does the tick's work too
        try:
            async with member.lock:
                await member.round({})
            if member.finished():
                member.stop()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        log.error("stopping: %r", exc)
        self._failure = exc
        self._host().stop()

    async def _on_events(self, events: Sequence[Any]) -> None:
        member = self._host()
        batches: dict[Any, list[Any]] = defaultdict(list)
        for event in events:
            batches[event.message.tp].append(event.message)
            self._unacked[event.message.tp].append(event)
        async with member.lock:
            for tp, records in list(batches.items()):
                if tp.topic != member.settings.events_topic:
                    continue
                position = member.position(tp.partition)
                if position is None:
                    # Not ours (any more): its owner resumes from its own checkpoint.
                    del batches[tp]
                elif records[0].offset > position + 1 and position >= 0:
                    # A gap after the state's position (records fetched before a rebalance
                    # and dropped by Faust): read them again from there.
                    log.warning(
                        "partition %d: got offset %d after %d; seeking back",
                        tp.partition,
                        records[0].offset,
                        position,
                    )
                    await self.seek(tp, position + 1)
                    del batches[tp]
            fetched: Fetched = batches
            await member.round(fetched)
        if member.finished():
            member.stop()

    async def _revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        await self._host().on_revoked(list(revoked))
        for tp in revoked:
            self._unacked.pop(tp, None)

    async def _assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        await self._host().on_assigned(list(assigned))

    # -------------------------------------------------------------- the group consumer
    async def seek(self, tp: TopicPartition, offset: int) -> None:
        await self.app.consumer.seek(_faust_tp(tp), offset)

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        await self.seek(tp, await self._host().beginning(tp))

    async def committed(self, tp: TopicPartition) -> int | None:
        from aiokafka import TopicPartition as AiokafkaTopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        settings = self._host().settings
        theirs = AiokafkaTopicPartition(tp.topic, tp.partition)
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=30_000)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(settings.app_id, partitions=[theirs])
        finally:
            await admin.close()
        found = offsets.get(theirs)
        return None if found is None or found.offset < 0 else int(found.offset)

    def highwater(self, tp: TopicPartition) -> int | None:
        try:
            highwater = self.app.consumer.highwater(_faust_tp(tp))
        except Exception:
            return None
        return None if highwater is None else int(highwater)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Acknowledge every event below each offset: Faust commits acknowledged offsets."""
        if self._stream is None:
            return
        for tp, offset in offsets.items():
            pending = self._unacked.get(tp)
            while pending and pending[0].message.offset < offset:
                await self._stream.ack(pending.popleft())

    def consuming(self) -> bool:
        return self.app is not None

    async def stop(self) -> None:
        if self.app is not None:
            try:
                await self.app.stop()
            except Exception:
                log.exception("the Faust app did not stop cleanly")
