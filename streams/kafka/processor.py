"""One events partition in the worker: its engine, its position, its counters, its outputs.

Events are keyed by ``item_id``; every assigned partition of the events topic gets its own
:class:`PartitionProcessor` with its own :class:`~streams.engine.Engine` (its own
:class:`~streams.trend.state.TrendState` and scorer). Records arrive in batches, are decoded
column-wise (:func:`~streams.kafka.decode.decode_events`), and fed to the engine, which closes
windows on the partition's event time. Each closed window's ScoreUpdates go to ``scores``
(key = item_id) and its partial top-N to the internal ``<app_id>-trending-partials`` topic
(:class:`~streams.kafka.publisher.KafkaPublisher`). Malformed and late records go to
``events.dlq``, and so do events from the future: an event time more than
``max_event_time_skew`` (5 minutes by default) past the worker's clock would move the
partition's watermark ahead and close every window up to it, so no record moves the watermark
past the clock plus that bound. :func:`streams.partitioning.split_log` +
:func:`streams.replay.replay` reproduce a partition's output exactly.

A processor is handed what it shares with the other partitions (:class:`PartitionContext`:
the sender, the metrics, the topics' partition counts, ...), not the worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from schemas import ItemMeta
from streams.engine import Engine, WindowResult
from streams.kafka.deadletters import DeadLetter, dead_letter_record, late_letter, show_time
from streams.kafka.decode import decode_events, decode_item_records
from streams.kafka.publisher import KafkaPublisher
from streams.kafka.sender import BatchSender
from streams.kafka.state import Checkpoint, CheckpointContext, decode_checkpoint, encode_checkpoint
from streams.partitioning import partition_for_key
from streams.settings import Settings
from streams.trend.windows import WindowSpec

if TYPE_CHECKING:
    from streams.metrics import WorkerMetrics


class TimedScorer:
    """Wraps a scorer to time its work per window (score + explain)."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer
        self.timings: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    @property
    def inner(self) -> Any:
        """The wrapped scorer (whose ``state_dict`` a checkpoint keeps)."""
        return self._scorer

    @property
    def version(self) -> str:
        return str(self._scorer.version)

    def score(self, features: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._scorer.score(features)
        finally:
            self.timings.append(time.perf_counter() - started)

    def explain(self, features: Any, scores: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._scorer.explain(features, scores)
        finally:
            if self.timings:
                self.timings[-1] += time.perf_counter() - started

    def learn(self, features: Any, next_counts: Any) -> None:
        self._scorer.learn(features, next_counts)


@dataclass
class Counters:
    records: int = 0
    events: int = 0
    malformed: int = 0
    late: int = 0
    windows: int = 0
    duplicates: int = 0
    item_records: int = 0  # records read from the items topic, malformed ones included
    item_malformed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class ClosedWindowNote:
    partition: int
    window_end: int
    updates: int
    closed_at: float
    acked_at: float | None = None  # when the broker acknowledged its updates


@dataclass(frozen=True)
class PartitionContext:
    """What every partition processor of one worker shares (handed in, not looked up)."""

    settings: Settings
    sender: BatchSender
    metrics: WorkerMetrics
    checkpoints: CheckpointContext
    topic_partitions: dict[str, int]
    events_partitions: int
    partials_topic: str
    checkpoint_interval: float
    max_event_time_skew: float
    worker_id: str


class PartitionProcessor:
    """Everything one events partition needs: its engine, position and counters."""

    def __init__(
        self,
        context: PartitionContext,
        partition: int,
        engine: Engine,
        scorer: TimedScorer,
        offset: int,
        counters: Counters,
    ) -> None:
        self.context = context
        self.partition = partition
        self.engine = engine
        self.scorer = scorer
        self.offset = offset  # last applied offset (-1: nothing yet)
        self.counters = counters
        self.checkpointed_offset = offset  # durable in the changelog
        self.scheduled_offset = offset  # captured, on its way to the changelog
        # What this partition got from the items topic: each item's last value (None: a
        # tombstone), and the last offset of items partition `partition` applied (-1: none).
        self.topic_items: dict[str, ItemMeta | None] = {}
        self.items_offset = -1
        self.checkpointed_items_offset = -1
        self.scheduled_items_offset = -1
        self.records_since_checkpoint = 0
        self.closed_since_checkpoint = 0
        self.last_checkpoint_at = time.monotonic()
        self.last_record_at = time.monotonic()
        self.label = str(partition)
        self.closed: list[ClosedWindowNote] = []
        settings = context.settings
        self.publisher = KafkaPublisher(
            context.sender,
            scores_topic=settings.scores_topic,
            scores_partitions=context.topic_partitions[settings.scores_topic],
            partials_topic=context.partials_topic,
            partition=partition,
            partitions=context.events_partitions,
            on_published=self._on_published,
        )

    @classmethod
    def start(
        cls,
        context: PartitionContext,
        partition: int,
        scorer: TimedScorer,
        checkpoint: Checkpoint | None,
    ) -> tuple[PartitionProcessor, bool]:
        """A partition's processor: fresh (the catalog file's metadata) without a checkpoint,
        else rebuilt from it. The flag says that the scorer learns online but had no state to
        restore (its learning restarts here)."""
        config = context.checkpoints.config
        if checkpoint is None:
            engine = Engine(config, scorer)
            if context.checkpoints.file_items:
                engine.add_metadata(context.checkpoints.file_items.values())
            return cls(context, partition, engine, scorer, -1, Counters()), False
        restored = decode_checkpoint(context.checkpoints, partition, checkpoint, scorer.inner)
        engine = Engine(config, scorer, state=restored.state)
        engine.load_pending_state_dict(restored.pending)
        counters = Counters(**restored.counters)
        processor = cls(context, partition, engine, scorer, checkpoint.offset, counters)
        processor.restore_items(restored.items_offset, restored.topic_items)
        return processor, restored.scorer_state_lost

    def _on_published(self, result: WindowResult, updates: int) -> None:
        self.closed.append(
            ClosedWindowNote(self.partition, result.window.end, updates, time.perf_counter())
        )

    @property
    def dirty(self) -> bool:
        return (
            self.offset != self.checkpointed_offset
            or self.items_offset != self.checkpointed_items_offset
        )

    # -------------------------------------------------------------- the items topic
    def restore_items(self, items_offset: int, topic_items: dict[str, ItemMeta | None]) -> None:
        """Set what a checkpoint says this partition had read from the items topic."""
        self.topic_items = topic_items
        self.items_offset = self.checkpointed_items_offset = items_offset
        self.scheduled_items_offset = items_offset

    def apply_items(self, records: Sequence[Any]) -> int:
        """Apply records of items partition ``partition`` (those after :attr:`items_offset`,
        in order); malformed ones are dead-lettered. Returns how many metadata changed."""
        fresh = [r for r in records if r.offset > self.items_offset]
        if not fresh:
            return 0
        context = self.context
        decoded = decode_item_records(
            fresh, context.settings.items_topic, self.partition, context.events_partitions
        )
        state = self.engine.state
        changed = 0
        outcomes = context.metrics.item_records
        for item_id, meta in decoded.changes:
            self.topic_items[item_id] = meta
            changed += state.set_metadata(item_id, meta)
            outcomes.labels(self.label, "removed" if meta is None else "applied").inc()
        if decoded.dead:
            outcomes.labels(self.label, "malformed").inc(len(decoded.dead))
            for letter in decoded.dead:
                context.metrics.malformed.labels(letter.category).inc()
            self._dead_letters(decoded.dead)
        self.counters.item_records += len(fresh)
        self.counters.item_malformed += len(decoded.dead)
        self.items_offset = fresh[-1].offset
        return changed

    # -------------------------------------------------------------- the events topic
    def process(self, records: Sequence[Any]) -> int:
        """Apply the records after :attr:`offset`; returns how many events were applied."""
        context = self.context
        metrics = context.metrics
        if not records:
            return 0
        fresh = _fresh(records, self.offset)
        skipped = len(records) - len(fresh)
        if skipped:
            self.counters.duplicates += skipped
            metrics.duplicates.inc(skipped)
            if not fresh:
                return 0
        self.last_record_at = time.monotonic()
        topic = context.settings.events_topic
        # The future bound: event times past the wall clock plus the skew are dead-lettered, so
        # one fast producer clock cannot move the watermark (and close windows) past it.
        skew = context.max_event_time_skew
        max_ts = time.time() + skew if skew > 0 else math.inf
        decoded = decode_events(fresh, topic, self.partition, max_ts=max_ts)
        letters = list(decoded.dead)
        for letter in decoded.dead:
            metrics.malformed.labels(letter.category).inc()
        applied = len(decoded.item_ids)
        if applied:
            engine = self.engine
            codes = engine.state.catalog.codes(decoded.item_ids)
            max_ts_before = engine.state.max_ts
            results, late = engine.ingest(
                codes,
                decoded.timestamps,
                decoded.weights,
                users=np.asarray(decoded.user_ids, dtype=object),
            )
            for timing in self.scorer.timings:
                metrics.scoring_seconds.observe(timing)
            self.scorer.timings.clear()
            if late.any():
                letters.extend(self._late_letters(decoded, late, max_ts_before))
                n_late = int(late.sum())
                applied -= n_late
                self.counters.late += n_late
                metrics.late.labels(self.label).inc(n_late)
            for result in results:
                self.publisher.publish(result)
            self.counters.windows += len(results)
            self.closed_since_checkpoint += len(results)
        self._dead_letters(letters)
        self.counters.malformed += len(decoded.dead)
        self.counters.records += len(fresh)
        self.counters.events += applied
        metrics.records.labels(self.label).inc(len(fresh))
        metrics.events.labels(self.label).inc(applied)
        self.records_since_checkpoint += len(fresh)
        self.offset = fresh[-1].offset
        return applied

    # -------------------------------------------------------------- dead letters
    def _dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        context = self.context
        for letter in letters:
            key, value, headers = dead_letter_record(letter, context.worker_id)
            context.sender.add(
                context.settings.dlq_topic, self._dlq_partition(key), key, value, headers
            )
            context.metrics.dead_letters.labels(letter.kind).inc()

    def _dlq_partition(self, key: bytes | None) -> int:
        partitions = self.context.topic_partitions[self.context.settings.dlq_topic]
        if key is None:
            return self.partition % partitions
        return partition_for_key(key, partitions)

    def _late_letters(self, decoded: Any, late: np.ndarray, max_ts_before: float) -> list[Any]:
        spec = self.engine.config.trend.window
        reasons = late_reasons(spec, decoded.timestamps, late, max_ts_before)
        topic = self.context.settings.events_topic
        return [
            late_letter(decoded.records[index], topic, self.partition, reason)
            for index, reason in zip(np.flatnonzero(late).tolist(), reasons, strict=True)
        ]

    # -------------------------------------------------------------- checkpoints
    def checkpoint_due(self, now: float) -> bool:
        items_moved = self.items_offset != self.scheduled_items_offset
        if self.offset == self.scheduled_offset and not items_moved:
            return False
        return (
            self.closed_since_checkpoint > 0
            or self.records_since_checkpoint >= self.context.settings.checkpoint_records
            or now - self.last_checkpoint_at >= self.context.checkpoint_interval
        )

    def checkpoint_payload(self) -> dict[str, Any]:
        return encode_checkpoint(
            self.context.checkpoints,
            partition=self.partition,
            offset=self.offset,
            engine=self.engine,
            scorer=self.scorer.inner,
            topic_items=self.topic_items,
            items_offset=self.items_offset,
            counters=self.counters.as_dict(),
        )

    def mark_scheduled(self, now: float) -> None:
        self.scheduled_offset = self.offset
        self.scheduled_items_offset = self.items_offset
        self.records_since_checkpoint = 0
        self.closed_since_checkpoint = 0
        self.last_checkpoint_at = now

    def progress_record(self, now: float) -> bytes:
        state = self.engine.state
        return orjson.dumps(
            {
                "kind": "progress",
                "partition": self.partition,
                "partitions": self.context.events_partitions,
                "closed_through": state.closed_through,
                "max_ts": None if state.max_ts == -np.inf else state.max_ts,
                "idle_s": now - self.last_record_at,
            }
        )


def _fresh(records: Sequence[Any], offset: int) -> Sequence[Any]:
    """The records after ``offset``, each offset once, in order.

    A batch is not always one increasing run: the Faust runtime can hand over records fetched
    before a seek back followed by the same records again (``0..85, 0..85``). Checking only
    the first record applied both copies: every event twice, the second copy late.
    """
    previous = offset
    for record in records:  # one pass when the batch is one run (always, with aiokafka)
        if record.offset <= previous:
            break
        previous = record.offset
    else:
        return records
    out = []
    for record in records:
        if record.offset > offset:
            out.append(record)
            offset = record.offset
    return out


def late_reasons(
    spec: WindowSpec, timestamps: np.ndarray, late: np.ndarray, max_ts_before: float
) -> list[str]:
    """The dead-letter reason of every late event of a batch, in batch order.

    Each reason quotes the watermark that applied to that event: the largest event time
    before it (earlier batches: ``max_ts_before``, the state's ``max_ts`` before this batch
    was ingested; then this batch up to it) minus the grace. That is what closed its window;
    the watermark at the batch's end may be days later and says nothing about this event.

    Parameters
    ----------
    spec : WindowSpec
        The partition's windows.
    timestamps : numpy.ndarray
        Event times of the batch, as ingested.
    late : numpy.ndarray
        The engine's late mask of the batch (bool, aligned with ``timestamps``).
    max_ts_before : float
        The largest event time before the batch (``-inf`` when there was none).

    Returns
    -------
    list of str
        One reason per ``True`` in ``late``.
    """
    seen = np.maximum.accumulate(np.maximum(timestamps, max_ts_before))
    reasons = []
    for index in np.flatnonzero(late).tolist():
        ts = float(timestamps[index])
        watermark = float(seen[index]) - spec.grace
        window = spec.index_of(ts)
        start, end = (_show_edge(spec.start_of(window)), _show_edge(spec.end_of(window)))
        reasons.append(
            f"late: event time {show_time(ts)} is in window [{start}, {end}), already closed "
            f"(partition watermark {show_time(watermark)} = max event time - grace {spec.grace}s)"
        )
    return reasons


def _show_edge(seconds: int) -> str:
    """A window edge for a reason: exact when plausible, bounded when absurd (1e300)."""
    return str(seconds) if abs(seconds) < 10**15 else f"{float(seconds):.6g}"
