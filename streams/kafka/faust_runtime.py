"""``trail worker --runtime faust``: the same worker, its consumer group a Faust app.

The Faust app owns the consumer group: membership, partition assignment and rebalances, the
fetching (its consumer thread), the flow control around rebalances, and the offset commits.
Its parts:

- **A batch drain.** The app's consumer hands each fetch, as aiokafka returns it (the records
  grouped by partition), to the very same round as the aiokafka runtime
  (:meth:`~streams.kafka.runtimes.GroupMember.apply_fetch`): one
  :class:`~streams.engine.Engine` per events partition, the same outputs, the same trending
  merge. Faust's own drain hands an agent one record at a time (two tasks, an event object, a
  queue and a decode call per record), which cost several times the rounds' own work, so the
  app has no agent: its topics are subscribed as they are, with Faust's acks off.
- **One timer** (every 200 ms) runs an empty round, so that idle partitions still report
  progress, due checkpoints are taken and the trending merge publishes windows held back only
  by an idle partition.
- **Manual commits.** Offsets are committed through the app's consumer only once the
  checkpoint that covers them is durable. A crash re-delivers everything after the last
  checkpoint, and records at or below it are skipped, exactly as in the aiokafka runtime.
- **State.** Each partition's state is the same checkpoint in the same compacted
  ``<app_id>-state-changelog`` topic (:class:`~streams.kafka.state.StateStore`), restored in
  the app's ``on_partitions_assigned`` signal and written on revocation
  (``on_partitions_revoked``). A Faust ``Table`` holds one value per key in one Kafka record;
  a partition's trend state can be far larger than a record, so the chunked store is kept.
- **Item metadata.** The items topic is not one of the app's topics: as in the aiokafka
  runtime, the worker's own group-less consumer follows the items partitions of the events
  partitions the app assigned (read up to their end at assignment, then at every round,
  including the timer's), so both runtimes keep the same metadata in the same checkpoints.

The aiokafka runtime stays the default (``bench/kafka.py --runtime faust`` measures the
difference: Faust fetches in its own thread and hands each fetch across); the two share
everything else and keep the same checkpoints, so one can take over a group's state from the
other (stop every worker of the group first: the two do not join one group together).

Faust needs a real broker: this runtime has no in-memory counterpart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from streams.kafka.clients import CommitFailed, Fetched, TopicPartition
from streams.kafka.options import client_options, faust_credentials
from streams.kafka.runtimes import GroupMember
from streams.settings import Settings

log = logging.getLogger("trail.worker.faust")

#: How often the timer runs an empty round (progress, due checkpoints, trending merge).
TICK_S = 0.2
#: How long one fetch of the drain waits for records (as long as Faust's own drain waits).
FETCH_TIMEOUT_S = 1.0

#: Drains the app's consumer: ``(consumer, fetcher)``, the Faust ``Fetcher`` service that runs it.
Drain = Callable[[Any, Any], Awaitable[None]]


def faust_app(settings: Settings, client_id: str) -> Any:
    """The Faust app of a worker: our consumer group, no web server, topics created by us."""
    import faust

    # Faust makes its data folder even with an in-memory store: by default "<app id>-data" in
    # the current folder, which a worker started from a checkout would litter. It keeps it in
    # the cache instead, one per app id, as Faust expects it to persist across restarts.
    datadir = settings.cache_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if settings.security_protocol != "PLAINTEXT":
        options["broker_credentials"] = faust_credentials(settings)
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.broker.split(",")],
        autodiscover=False,
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,  # the worker creates its topics with their settings
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_client_id=client_id,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.3, settings.session_timeout_ms / 5000),
        broker_max_poll_records=settings.batch_size,
        # No stream holds events: a rebalance has nothing to wait for (the revocation handler
        # writes the checkpoints and commits them itself).
        stream_wait_empty=False,
        producer_acks=-1,
        **options,
    )


def batch_draining(consumer_class: Any, drain: Drain) -> Any:
    """A Faust transport's ``consumer_class`` whose fetcher runs ``drain`` instead of Faust's
    per-record drain, with the two calls the drain and the commits need."""

    class BatchDrainingConsumer(consumer_class):  # type: ignore[misc]
        async def _drain_messages(self, fetcher: Any) -> None:
            await drain(self, fetcher)

        async def next_fetch(self, timeout: float) -> Fetched:
            """The next fetch of the active partitions (empty after ``timeout``); it waits while
            a rebalance has stopped the flow, as Faust's own drain does."""
            records, _ = await self._wait_next_records(timeout)
            return records or {}

        async def commit_offsets(self, offsets: Mapping[Any, int]) -> bool:
            """Commit ``offsets`` (each partition's next offset to read) now; False when the
            group rebalanced first."""
            return bool(await self._commit(offsets))

    return BatchDrainingConsumer


def _faust_tp(tp: TopicPartition) -> Any:
    from faust.types import TP

    return TP(tp.topic, tp.partition)


class FaustRuntime:
    """A worker's consumer group as a Faust app (:class:`~streams.kafka.runtimes.GroupRuntime`)."""

    def __init__(self) -> None:
        self.app: Any = None
        self._member: GroupMember | None = None
        self._failure: BaseException | None = None

    def _host(self) -> GroupMember:
        if self._member is None:
            raise RuntimeError("the Faust app serves no worker")
        return self._member

    async def serve(self, member: GroupMember) -> None:
        self._member = member
        settings = member.settings
        self.app = app = faust_app(settings, f"trail-{member.worker_id}")
        # The transport makes the app's consumer (on the app's first use of it) from this class.
        app.transport.Consumer = batch_draining(type(app.transport).Consumer, self._drain)
        app.topics.add(app.topic(settings.events_topic, member.partials_topic, acks=False))
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
    async def _drain(self, consumer: Any, fetcher: Any) -> None:
        """Hand each fetch to the round until the worker, the consumer or Faust's fetcher stops."""
        member = self._host()
        try:
            while not (member.stopping.is_set() or consumer.should_stop or fetcher.should_stop):
                # The generation is read under the lock, so never while an assignment is being
                # restored: a fetch that a rebalance then crosses is put back where the state is.
                async with member.lock:
                    generation = member.generation
                batches = await consumer.next_fetch(FETCH_TIMEOUT_S)
                if not batches or member.stopping.is_set():
                    continue
                if generation == member.generation:
                    batches = await self._seek_back_over_gaps(batches)
                await member.apply_fetch(generation, batches)
                if member.finished():
                    member.stop()
        except Exception as exc:  # the worker must stop, not hang with a dead fetcher
            if not member.stopping.is_set():
                self._fail(exc)

    async def _seek_back_over_gaps(self, batches: Fetched) -> Fetched:
        """The fetch without the owned events partitions whose records start past the state's
        position, which are sought back there: a seek from this thread can cross a fetch that
        the consumer's thread is completing, which then hands back the old position's records."""
        member = self._host()
        events_topic = member.settings.events_topic
        kept = {}
        for tp, records in batches.items():
            position = member.position(tp.partition) if tp.topic == events_topic else None
            if records and position is not None and 0 <= position < records[0].offset - 1:
                log.warning(
                    "partition %d: got offset %d after %d; seeking back",
                    tp.partition,
                    records[0].offset,
                    position,
                )
                await self.seek(tp, position + 1)
            else:
                kept[tp] = records
        return kept

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

    async def _revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        await self._host().on_revoked(list(revoked))

    async def _assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        await self._host().on_assigned(list(assigned))

    # -------------------------------------------------------------- the group consumer
    async def seek(self, tp: TopicPartition, offset: int) -> None:
        # In the consumer's own thread: a seek from this one deletes aiokafka's buffered records
        # of the partition while that thread may be iterating them (a KeyError there stopped
        # Faust's fetcher for good, an assignment's seeks racing the first fetch).
        await self.app.consumer.seek_wait({_faust_tp(tp): offset})

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
        if self.app is None or not offsets:
            return
        mine = {_faust_tp(tp): offset for tp, offset in offsets.items()}
        if not await self.app.consumer.commit_offsets(mine):
            raise CommitFailed(f"offsets {mine} not committed: the group rebalanced first")

    def consuming(self) -> bool:
        return self.app is not None

    async def stop(self) -> None:
        if self.app is not None:
            try:
                await self.app.stop()
            except Exception:
                log.exception("the Faust app did not stop cleanly")
