"""``trail worker``: the streaming side of TRAIL on Kafka (see :mod:`streams.kafka`).

One process; several processes form one consumer group and split the partitions. The
:class:`Worker` creates the topics, starts its producer and readers from its
:class:`~streams.kafka.clients.KafkaClients`, and lets its
:class:`~streams.kafka.runtimes.GroupRuntime` feed it rounds. A round: apply the items records
that arrived (:mod:`streams.kafka.items`), apply one fetch per partition
(:class:`~streams.kafka.processor.PartitionProcessor`), feed the trending merge
(:mod:`streams.kafka.trending`), hand every output to the producer, capture the checkpoints that
are due, and queue the step that makes it all durable (:mod:`streams.kafka.durability`).

On assignment (start, rebalance) each partition's engine is rebuilt from its checkpoint
(:mod:`streams.kafka.state`) and the consumer seeks to ``offset + 1``; without a checkpoint a
partition starts from its beginning. On revocation and on shutdown the pipeline is drained and
every partition is checkpointed and committed before the partitions are let go.

A scorer that raises does not stop the worker: that window is ranked by the ewma-1 baseline
and published under its version (:class:`~streams.scoring.FallbackScorer`), and the failure is
logged and counted (``trail_scorer_failures_total``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from schemas import ItemMeta, encode
from streams.engine import EngineConfig
from streams.kafka.clients import (
    CommitFailed,
    Fetched,
    KafkaClients,
    Producer,
    Reader,
    TopicPartition,
)
from streams.kafka.durability import Capture, DurabilityPipeline, Step, stamp_acked
from streams.kafka.items import catalog_fingerprint, catch_up_items, poll_items
from streams.kafka.processor import (
    ClosedWindowNote,
    PartitionContext,
    PartitionProcessor,
    TimedScorer,
)
from streams.kafka.runtimes import ConsumerRuntime, GroupRuntime
from streams.kafka.sender import BatchSender
from streams.kafka.state import Checkpoint, CheckpointContext, StateStore, changelog_topic
from streams.kafka.topics import ensure_worker_topics
from streams.kafka.trending import (
    GLOBAL_KEY,
    TrendingMerger,
    partials_topic,
    restore_merger,
    trending_partition,
)
from streams.scoring import FallbackScorer
from streams.settings import Settings
from streams.trend.windows import parse_duration

if TYPE_CHECKING:
    from streams.metrics import WorkerMetrics

log = logging.getLogger("trail.worker")


def make_runtime(name: str, clients: KafkaClients) -> GroupRuntime:
    """The consumer group of a ``--runtime`` name (Faust imported only when it is asked for)."""
    if name == "aiokafka":
        return ConsumerRuntime(clients)
    if name == "faust":
        from streams.kafka.faust_runtime import FaustRuntime

        return FaustRuntime()
    raise ValueError(f"unknown runtime {name!r}: use aiokafka or faust")


class Worker:
    """One ``trail worker`` process (see the module documentation).

    Parameters
    ----------
    settings : Settings
        Topics, windows, scorer, batch size, intervals, the runtime's name.
    scorer_factory : callable
        Makes each partition's scorer.
    items : mapping, optional
        The catalog file's metadata (``--items``).
    metrics : WorkerMetrics, optional
        Its own registry when not given.
    worker_id : str, optional
        The name in logs and dead letters (default ``host:pid``).
    until_idle, max_seconds : float, optional
        Stop once caught up and idle that long / after that long.
    clients : KafkaClients, optional
        Where the Kafka clients come from (default: aiokafka's, on the settings' broker).
    runtime : GroupRuntime, optional
        The consumer group (default: the one ``settings.runtime`` names).
    after_published : callable, optional
        The kill -9 tests' fault injection (:mod:`streams.kafka.faults`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        scorer_factory: Callable[[], Any],
        items: Mapping[str, ItemMeta] | None = None,
        metrics: WorkerMetrics | None = None,
        worker_id: str | None = None,
        until_idle: float | None = None,
        max_seconds: float | None = None,
        clients: KafkaClients | None = None,
        runtime: GroupRuntime | None = None,
        after_published: Callable[[], None] | None = None,
    ) -> None:
        if clients is None:
            from streams.kafka.aiokafka_clients import AiokafkaClients

            clients = AiokafkaClients()
        if metrics is None:
            from streams.metrics import WorkerMetrics

            metrics = WorkerMetrics()
        self.settings = settings
        self.config: EngineConfig = settings.engine_config()
        self.scorer_factory = scorer_factory
        self.items = dict(items or {})
        self.items_fingerprint = catalog_fingerprint(self.items)
        self.metrics = metrics
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.until_idle = until_idle
        self.max_seconds = max_seconds
        self.clients = clients
        self.runtime = runtime if runtime is not None else make_runtime(settings.runtime, clients)
        self.after_published = after_published
        self.checkpoint_interval = float(parse_duration(settings.checkpoint_interval))
        self.progress_interval = float(max(1, parse_duration(settings.progress_interval)))
        self.merge_idle_timeout = float(parse_duration(settings.merge_idle_timeout))
        self.max_event_time_skew = float(parse_duration(settings.max_event_time_skew))
        self.partials_topic = partials_topic(settings)
        self.store = StateStore(settings, changelog_topic(settings), clients)
        self.processors: dict[int, PartitionProcessor] = {}
        self.merger: TrendingMerger | None = None
        self.topic_partitions: dict[str, int] = {}
        self.events_partitions = 0
        self.events_applied = 0
        self.first_record_at: float | None = None
        self.last_record_at: float | None = None
        self.started_at = time.monotonic()
        self.lock = asyncio.Lock()
        self._generation = 0
        self._stop = asyncio.Event()
        self._last_progress = 0.0
        self._last_rate = (time.monotonic(), 0)
        self._producer: Producer | None = None
        self._reader: Reader | None = None
        self._items_reader: Reader | None = None  # reads the items partitions of self.processors
        self.sender: BatchSender = None  # type: ignore[assignment]
        self.pipeline: DurabilityPipeline = None  # type: ignore[assignment]
        self.warned_scorer_state = False

    # -------------------------------------------------------------- lifecycle
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def stopping(self) -> asyncio.Event:
        return self._stop

    @property
    def reader(self) -> Reader:
        """The started consumer without a group (changelog, trending topic)."""
        if self._reader is None:
            raise RuntimeError("the worker has not started")
        return self._reader

    def stop(self) -> None:
        self._stop.set()

    async def _prepare(self) -> None:
        """Create the topics and start the producer and the group-less readers."""
        settings, clients = self.settings, self.clients
        await clients.verify(settings)  # refused credentials: one clear error, no retries
        self.topic_partitions = await ensure_worker_topics(
            clients, settings, changelog=self.store.topic, partials=self.partials_topic
        )
        self.events_partitions = self.topic_partitions[settings.events_topic]
        self._producer = await clients.start_producer(settings, f"trail-{self.worker_id}")
        self.sender = BatchSender(self._producer)
        self.pipeline = DurabilityPipeline(
            store=self.store,
            sender=BatchSender(self._producer),
            metrics=self.metrics,
            events_topic=settings.events_topic,
            partials_topic=self.partials_topic,
            commit=self._commit,
            after_published=self.after_published,
        )
        self._reader = await clients.start_reader(settings)
        if settings.items_topic:
            self._items_reader = await clients.start_reader(settings)

    async def run(self) -> int:
        try:
            await self._prepare()
            await self.runtime.serve(self)
        finally:
            await self._shutdown()
        return 0

    async def apply_fetch(self, generation: int, batches: Fetched) -> None:
        async with self.lock:
            if generation != self._generation:
                await self._rewind(batches)
                return
            await self.round(batches)

    async def _rewind(self, batches: Fetched) -> None:
        """Records fetched across a rebalance: put the positions back where the state is."""
        for tp in batches:
            if tp.topic == self.settings.events_topic and tp.partition in self.processors:
                await self.runtime.seek(tp, self.processors[tp.partition].offset + 1)
            elif tp.topic == self.partials_topic and self.merger is not None:
                await self.runtime.seek(tp, self.merger.position)

    def finished(self) -> bool:
        now = time.monotonic()
        if self.max_seconds is not None and now - self.started_at >= self.max_seconds:
            return True
        if self.until_idle is None or not self.processors or self.first_record_at is None:
            return False
        idle_since = max(p.last_record_at for p in self.processors.values())
        if now - idle_since < self.until_idle:
            return False
        return all(lag == 0 for lag in self._lags().values())

    async def _shutdown(self) -> None:
        try:
            if self.runtime.consuming() and self.sender is not None:
                async with self.lock:
                    await self._checkpoint_all()
        except Exception:
            log.exception("final checkpoint failed; the next owner resumes from the last one")
        finally:
            await self.runtime.stop()
            for client in (self._producer, self._reader, self._items_reader):
                if client is not None:
                    await client.stop()

    # -------------------------------------------------------------- one round
    async def round(self, batches: Fetched) -> None:
        """Apply one fetch, hand its outputs to the producer, and queue the step that makes it
        durable (outputs acked -> checkpoints written -> offsets committed) without waiting
        for it: the next fetch is processed while the broker acknowledges this one."""
        events_topic = self.settings.events_topic
        if self._items_reader is not None:
            await poll_items(self._items_reader, self.processors)
        now = time.monotonic()
        fetched = time.perf_counter()
        got = False
        futures: list[Any] = []
        notes: list[ClosedWindowNote] = []
        for tp, records in batches.items():
            if not records:
                continue
            if tp.topic == events_topic:
                processor = self.processors.get(tp.partition)
                if processor is not None:
                    got = True
                    self.events_applied += processor.process(records)
                    if processor.closed:
                        # Windows closed: send their updates now, before the next partition's
                        # work, and let the producer put them on the wire.
                        sent = await self.sender.send()
                        stamp_acked(sent, processor.closed)
                        futures += sent
                        notes += processor.closed
                        processor.closed = []
                        await asyncio.sleep(0)
            elif tp.topic == self.partials_topic and self.merger is not None:
                self.merger.feed(records)
        if got and self.first_record_at is None:
            self.first_record_at = fetched
        if now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            for processor in self.processors.values():
                self.sender.add(self.partials_topic, 0, GLOBAL_KEY, processor.progress_record(now))
        published = self._publish_trending(now)
        futures += await self.sender.send()
        checkpoints = [
            self._capture(p, now) for p in self.processors.values() if p.checkpoint_due(now)
        ]
        merger_offset = self.merger.commit_offset() if published and self.merger else None
        if futures or checkpoints or merger_offset is not None:
            step = Step(futures, notes, checkpoints, self.merger, merger_offset)
            await self.pipeline.enqueue(step)
        self._update_gauges(now)
        if got:
            self.last_record_at = time.perf_counter()

    def _capture(self, processor: PartitionProcessor, now: float) -> Capture:
        raw = self.store.encode(processor.checkpoint_payload())
        processor.mark_scheduled(now)
        return Capture(processor, processor.offset, processor.items_offset, raw)

    def _publish_trending(self, now: float) -> int:
        if self.merger is None:
            return 0
        snapshots = self.merger.ready(now)
        trending = trending_partition(self.settings, self.topic_partitions)
        for snapshot in snapshots:
            self.sender.add(trending.topic, trending.partition, GLOBAL_KEY, encode(snapshot))
            self.metrics.trending_published.inc()
        return len(snapshots)

    async def _checkpoint_all(self) -> None:
        """Make everything applied so far durable (revocation, shutdown)."""
        await self.pipeline.drain()
        now = time.monotonic()
        futures = await self.sender.send()
        notes = [note for p in self.processors.values() for note in p.closed]
        for processor in self.processors.values():
            processor.closed.clear()
        checkpoints = [self._capture(p, now) for p in self.processors.values() if p.dirty]
        merger_offset = self.merger.commit_offset() if self.merger is not None else None
        await self.pipeline.run(Step(futures, notes, checkpoints, self.merger, merger_offset))

    async def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            await self.runtime.commit(offsets)
        except CommitFailed as exc:
            # The checkpoint is the truth; a failed commit only leaves the group's offsets
            # (used for lag monitoring) behind.
            log.warning("offset commit failed (%s); state checkpoints are unaffected", exc)

    def _lags(self) -> dict[int, int]:
        lags = {}
        for partition, processor in self.processors.items():
            tp = TopicPartition(self.settings.events_topic, partition)
            try:
                highwater = self.runtime.highwater(tp)
            except Exception:
                highwater = None
            if highwater is None:
                lags[partition] = -1
            else:
                lags[partition] = max(0, highwater - (processor.offset + 1))
        return lags

    def _update_gauges(self, now: float) -> None:
        for partition, lag in self._lags().items():
            if lag >= 0:
                self.metrics.lag.labels(str(partition)).set(lag)
        since, count = self._last_rate
        if now - since >= 1.0:
            self.metrics.events_per_second.set((self.events_applied - count) / (now - since))
            self._last_rate = (now, self.events_applied)

    # -------------------------------------------------------------- rebalancing
    def position(self, partition: int) -> int | None:
        processor = self.processors.get(partition)
        return None if processor is None else processor.offset

    async def beginning(self, tp: TopicPartition) -> int:
        return int((await self.reader.beginning_offsets([tp]))[tp])

    async def on_revoked(self, revoked: Sequence[Any]) -> None:
        async with self.lock:
            self._generation += 1
            try:
                await self._checkpoint_all()
            finally:
                for processor in self.processors.values():
                    try:
                        self.metrics.lag.remove(processor.label)
                    except KeyError:
                        pass
                self.processors.clear()
                self.merger = None
                self.metrics.assigned.set(0)
            log.info(
                "partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)
            )

    async def on_assigned(self, assigned: Sequence[Any]) -> None:
        async with self.lock:
            self._generation += 1
            events = sorted(
                tp.partition for tp in assigned if tp.topic == self.settings.events_topic
            )
            started = time.perf_counter()
            checkpoints = await self.store.load(events, self._reader)
            for partition in events:
                self.processors[partition] = self._processor(partition, checkpoints[partition])
                tp = TopicPartition(self.settings.events_topic, partition)
                offset = self.processors[partition].offset
                if offset >= 0:
                    await self.runtime.seek(tp, offset + 1)
                else:
                    await self.runtime.seek_to_beginning(tp)
            if self._items_reader is not None:
                await catch_up_items(self._items_reader, self.settings.items_topic, self.processors)
            self.metrics.assigned.set(len(self.processors))
            if events:
                self.metrics.restore_seconds.observe(time.perf_counter() - started)
            if any(tp.topic == self.partials_topic for tp in assigned):
                self.merger = await restore_merger(
                    self.runtime,
                    self.reader,
                    partials=TopicPartition(self.partials_topic, 0),
                    trending=trending_partition(self.settings, self.topic_partitions),
                    top_n=self.config.top_n,
                    idle_timeout=self.merge_idle_timeout,
                    window=self.config.trend.window,
                )
            log.info(
                "assigned events partitions %s%s (restored in %.2fs)",
                events,
                " + trending merge" if self.merger is not None else "",
                time.perf_counter() - started,
            )

    def _context(self) -> PartitionContext:
        return PartitionContext(
            settings=self.settings,
            sender=self.sender,
            metrics=self.metrics,
            checkpoints=CheckpointContext(
                events_topic=self.settings.events_topic,
                items_topic=self.settings.items_topic,
                config=self.config,
                file_items=self.items,
                file_fingerprint=self.items_fingerprint,
                worker_id=self.worker_id,
            ),
            topic_partitions=self.topic_partitions,
            events_partitions=self.events_partitions,
            partials_topic=self.partials_topic,
            checkpoint_interval=self.checkpoint_interval,
            max_event_time_skew=self.max_event_time_skew,
            worker_id=self.worker_id,
        )

    def _processor(self, partition: int, checkpoint: Checkpoint | None) -> PartitionProcessor:
        from model.baselines import EWMA

        def failed(stage: str, exc: BaseException) -> None:
            self.metrics.scorer_failures.labels(stage).inc()

        # A scorer that raises must neither stop the stream nor crash-loop on the same records.
        scorer = TimedScorer(FallbackScorer(self.scorer_factory(), EWMA(1), on_failure=failed))
        processor, lost = PartitionProcessor.start(self._context(), partition, scorer, checkpoint)
        if lost and not self.warned_scorer_state:
            self.warned_scorer_state = True
            log.warning(
                "scorer %s learns online but has no state_dict(): its learning restarts here",
                getattr(scorer, "name", "?"),
            )
        return processor

    # -------------------------------------------------------------- reporting
    def summary(self) -> dict[str, Any]:
        span = (
            (self.last_record_at - self.first_record_at)
            if self.first_record_at is not None and self.last_record_at is not None
            else 0.0
        )
        return {
            "worker": self.worker_id,
            "events_applied": self.events_applied,
            "processing_seconds": span,
            "publish_latency_ms": {} if self.pipeline is None else self.pipeline.latency_stats_ms(),
            "metrics": self.metrics.snapshot(),
        }
