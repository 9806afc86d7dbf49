"""``trail worker``: the streaming side of TRAIL on Kafka.

What runs (one process; several processes form one consumer group and split the partitions):

- **Per events partition, one engine.** Events are keyed by ``item_id``; every assigned partition
  of the events topic gets its own :class:`~streams.engine.Engine` (its own
  :class:`~streams.trend.state.TrendState` and scorer). Records arrive in batches
  (``getmany``), are decoded column-wise (:func:`~streams.kafka_io.decode_events`), and fed to
  the engine, which closes windows on the partition's event time. Each closed window's
  ScoreUpdates go to ``scores`` (key = item_id) and its partial top-N to the internal
  ``<app_id>-trending-partials`` topic. Malformed and late records go to ``events.dlq``, and
  so do events from the future: an event time more than ``max_event_time_skew`` (5 minutes
  by default) past the worker's clock would move the partition's watermark ahead and close
  every window up to it, so no record moves the watermark past the clock plus that bound.
  :func:`streams.partitioning.split_log` + :func:`streams.replay.replay` reproduce a
  partition's output exactly.
- **The trending merge.** The partials topic has one partition, all records keyed
  ``"global"``; the group member that owns it merges each window's partial lists into the
  global top-N and publishes it to ``trending`` (key ``"global"``) once every partition has
  reported the window, has closed past it without data, or has been idle (no records) for
  ``merge_idle_timeout``. Windows are published in order; the last published window is read
  back from the ``trending`` topic when the merge moves to another worker.

State, offsets and recovery (at-least-once, manual commits):

1. Each partition's state is a checkpoint in the compacted ``<app_id>-state-changelog`` topic,
   co-partitioned with the events topic (events partition p -> changelog partition p, key
   ``"p"``): the engine's ``TrendState.state_dict()``, the last applied offset, counters, and
   the scorer's ``state_dict()`` when it has one, as JSON (orjson) compressed with zlib, in
   chunks of :data:`CHUNK_BYTES` under a header record with the SHA-256 (see
   :class:`StateStore`). Never pickle. The item metadata is in it as described below.
2. A round: apply one fetch (``getmany``) -> hand its outputs (scores, partials, dead
   letters) to the producer -> capture the checkpoints that are due (at every window close;
   otherwise every ``checkpoint_interval`` / ``checkpoint_records``). Then, in order and off
   the critical path (at most :data:`MAX_STEPS_IN_FLIGHT` rounds behind): wait for the
   broker's acks of the outputs -> write the checkpoints and wait for their acks -> commit the
   offsets they cover. So a committed offset is always covered by a durable checkpoint, and a
   checkpoint never covers outputs that were not acknowledged.
3. On assignment (start, rebalance) each partition's engine is rebuilt from its checkpoint and
   the consumer seeks to ``offset + 1``: the checkpoint, not the group's committed offset, is
   the truth (the commits are for lag monitoring and tools). Without a checkpoint a partition
   starts from its beginning. Records at or below the stored offset are skipped. A crash
   (kill -9) re-applies the records after the last checkpoint and re-publishes the windows
   they close: identical records with the same idempotency key
   ``(item_id, window_end, model_version)``; dead letters repeat with the same source
   (topic, partition, offset).
4. On revocation and on shutdown the pipeline is drained and every partition is checkpointed
   and committed before the partitions are let go.

Item metadata (titles, categories, ...) has two sources:

- **The catalog file** (``--items FILE``: CSV, Parquet or JSON lines, see
  :mod:`streams.eventlog.items`; or a dataset name, or a ``.inter`` file), read at start and
  given to every partition's engine when it starts without state. It is not repeated in every
  checkpoint (it would be most of a checkpoint's bytes): a restore takes it from the file given
  at that start, so a restart with a grown or corrected file applies it from then on (a note in
  the log says when the file changed since the checkpoint).
- **The items topic** (``items`` by default, ``--items-topic``; empty: none): compacted, keyed
  by ``item_id``, co-partitioned with the events topic (same partition count, Kafka's default
  partitioner), so partition p of it holds the metadata of exactly the items of events
  partition p. ``trail produce --items FILE`` publishes a catalog there. Each owner of events
  partition p reads items partition p with a group-less consumer: at assignment everything
  after the checkpoint up to the partition's end before any event, then whatever has arrived
  at every round, before that round's events. A record replaces the item's metadata (also
  what the file gave), a null value (tombstone) removes it; metadata may arrive before or after
  an item's first events and counts from the next window close on (titles, categories and
  category momentum are read at a window's close). Malformed records, and records in another
  partition than their key's, go to the dead-letter topic with the reason.

Each checkpoint carries what its partition got from the items topic (every item's last value
or tombstone), the offset it read up to, and the order of the category names its category
statistics are indexed by: a restore rebuilds exactly the metadata of that moment and reads the
topic on from there, however the catalog grew meanwhile.

Exactness after a restart holds for scorers without hidden state (the baselines) and for
scorers that expose ``state_dict()`` / ``load_state_dict()`` (the River regression does: its
weights and optimizer moments travel in the checkpoint, beside the last window's retraining
rows that its next ``learn`` needs); an online learner without them restarts its learning
from the checkpoint on, with a warning.

A scorer that raises does not stop the worker: that window is ranked by the ewma-1 baseline
and published under its version (:class:`~streams.scoring.FallbackScorer`), and the failure is
logged and counted (``trail_scorer_failures_total``).

The group consumer here is aiokafka's (``--runtime aiokafka``, the default);
:mod:`streams.faust_worker` hosts the same worker in a Faust app (``--runtime faust``) by
overriding the few methods under "the group consumer" below.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import os
import signal
import socket
import sys
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from schemas import ItemMeta, TrendingItem, TrendingSnapshot, encode
from streams.engine import Engine, EngineConfig, WindowResult
from streams.kafka_io import (
    BatchSender,
    DeadLetter,
    KafkaPublisher,
    TopicSpec,
    client_options,
    dead_letter_record,
    decode_events,
    decode_item_records,
    ensure_topics,
    items_topic_spec,
    late_letter,
    show_time,
)
from streams.partitioning import partition_for, partition_for_key
from streams.scoring import FallbackScorer
from streams.settings import Settings
from streams.trend.state import TrendConfig, TrendState
from streams.trend.windows import WindowSpec, parse_duration

if TYPE_CHECKING:
    from streams.metrics import WorkerMetrics

log = logging.getLogger("trail.worker")

CHECKPOINT_FORMAT = 1
#: Checkpoints are cut into records of at most this many bytes (compressed).
CHUNK_BYTES = 256 * 1024
GLOBAL_KEY = b"global"
#: Rounds whose outputs and checkpoints may be in flight while the next round is processed.
MAX_STEPS_IN_FLIGHT = 2


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-state-changelog"


def partials_topic(settings: Settings) -> str:
    return f"{settings.app_id}-trending-partials"


# ------------------------------------------------------------------------------ item metadata
def items_checkpoint(
    state: TrendState, topic_items: Mapping[str, ItemMeta | None], offset: int
) -> dict[str, Any]:
    """What a partition's checkpoint keeps of its metadata: the items topic's records (each
    item's last value, None for a tombstone), the offset read up to, and the category names
    in the order the category statistics are indexed by (which a restore cannot re-derive from
    the metadata once a category was replaced). The catalog file's metadata is not in it."""
    return {
        "offset": offset,
        "records": [
            [item_id, None if m is None else m.model_dump(mode="json", exclude_defaults=True)]
            for item_id, m in topic_items.items()
        ],
        "categories": list(state.category_names),
    }


def restore_items_checkpoint(
    state: TrendState, section: Mapping[str, Any], file_items: Mapping[str, ItemMeta]
) -> dict[str, ItemMeta | None]:
    """Give ``state`` (restored from ``state_dict(metadata=False)``) its metadata back:
    ``file_items`` overlaid by the checkpoint's items-topic records, with the category names
    in their saved order (new ones of a changed file after them). Returns those records."""
    state.restore_category_names(section["categories"])
    records = {
        str(item_id): None if value is None else ItemMeta.model_validate(value)
        for item_id, value in section["records"]
    }
    effective = dict(file_items)
    for item_id, meta in records.items():
        if meta is None:
            effective.pop(item_id, None)
        else:
            effective[item_id] = meta
    state.add_metadata(effective.values())
    return records


# ------------------------------------------------------------------------------ checkpoints
@dataclass
class Checkpoint:
    """One partition's durable state: what was applied up to ``offset`` (inclusive)."""

    partition: int
    offset: int
    payload: dict[str, Any]


class StateStore:
    """Checkpoints in a compacted topic, keyed by partition, co-partitioned with the events.

    Records of changelog partition ``p``: chunks ``p/<gen>.<writer>/<i>`` (zlib-compressed
    JSON), then the header ``p`` = ``{"gen", "writer", "chunks", "sha256", "offset", ...}``.
    A checkpoint's chunks are written before its header and the previous checkpoint's chunks
    are tombstoned after it, so a crash at any point leaves a header whose chunks are complete.
    Chunk keys carry a random per-process writer token: a stale owner that writes after a
    rebalance (a "zombie") can make the header point to its own older but self-consistent
    checkpoint (more records are re-applied: at-least-once), never mix its chunks with the new
    owner's.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.writer = uuid.uuid4().hex[:12]
        self._generation: dict[int, int] = {}
        self._live: dict[int, list[bytes]] = {}  # chunk keys of the current checkpoint
        self._orphans: dict[int, list[bytes]] = {}

    @staticmethod
    def _chunk_key(partition: int, generation: int, writer: str, index: int) -> bytes:
        return f"{partition}/{generation}.{writer}/{index}".encode()

    async def load(
        self, partitions: Sequence[int], reader: Any = None
    ) -> dict[int, Checkpoint | None]:
        """The latest checkpoint of each partition (None where there is none). ``reader`` is a
        started consumer without a group (one is made when not given)."""
        from aiokafka import TopicPartition

        result: dict[int, Checkpoint | None] = dict.fromkeys(partitions)
        if not partitions:
            return result
        own = reader is None
        consumer = await start_reader(self.settings) if own else reader
        latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > begins[tp]}
            for tp in remaining:
                consumer.seek(tp, begins[tp])
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in batches.items():
                    store = latest[tp.partition]
                    for record in records:
                        if record.key is not None:
                            store[record.key] = record.value
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            if own:
                await consumer.stop()
        for p in partitions:
            result[p] = self._assemble(p, latest[p])
        return result

    def _assemble(self, partition: int, records: Mapping[bytes, bytes | None]) -> Checkpoint | None:
        header_raw = records.get(str(partition).encode())
        prefix = f"{partition}/".encode()
        if header_raw is None:
            self._generation[partition] = 0
            self._live[partition] = []
            self._orphans[partition] = [
                k for k, v in records.items() if v is not None and k.startswith(prefix)
            ]
            return None
        header = orjson.loads(header_raw)
        generation, chunks = int(header["gen"]), int(header["chunks"])
        keys = [
            self._chunk_key(partition, generation, str(header["writer"]), i) for i in range(chunks)
        ]
        parts = []
        for i, key in enumerate(keys):
            chunk = records.get(key)
            if chunk is None:
                raise RuntimeError(
                    f"checkpoint of partition {partition} (generation {generation}) in "
                    f"{self.topic} misses chunk {i}"
                )
            parts.append(chunk)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != header["sha256"]:
            raise RuntimeError(f"checkpoint of partition {partition} in {self.topic} is corrupt")
        payload = orjson.loads(zlib.decompress(data))
        self._generation[partition] = generation
        self._live[partition] = keys
        live = set(keys)
        self._orphans[partition] = [
            k
            for k, v in records.items()
            if v is not None and k.startswith(prefix) and k not in live
        ]
        return Checkpoint(partition, int(header["offset"]), payload)

    @staticmethod
    def encode(payload: Any) -> bytes:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    def records(
        self, partition: int, offset: int, payload: Any = None, *, data: bytes | None = None
    ) -> tuple[list[tuple[bytes, bytes | None]], int]:
        """The changelog records of a checkpoint of ``partition`` (chunks, header, tombstones
        of the previous generation), in the order they must be written, and its size.
        ``data`` is the payload already encoded and compressed (``zlib(encode(payload))``)."""
        if data is None:
            data = zlib.compress(self.encode(payload), 1)
        generation = self._generation.get(partition, 0) + 1
        chunks = max(1, math.ceil(len(data) / CHUNK_BYTES))
        keys = [self._chunk_key(partition, generation, self.writer, i) for i in range(chunks)]
        out: list[tuple[bytes, bytes | None]] = [
            (key, data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]) for i, key in enumerate(keys)
        ]
        header = {
            "format": CHECKPOINT_FORMAT,
            "gen": generation,
            "writer": self.writer,
            "chunks": chunks,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "offset": offset,
            "codec": "json+zlib",
        }
        out.append((str(partition).encode(), orjson.dumps(header)))
        stale = self._live.get(partition, []) + self._orphans.pop(partition, [])
        out.extend((key, None) for key in stale if key not in keys)
        self._generation[partition] = generation
        self._live[partition] = keys
        return out, len(data)

    def save(self, sender: BatchSender, partition: int, offset: int, payload: Any) -> int:
        """Queue a checkpoint of ``partition`` in ``sender``; returns its compressed size.
        It is durable once the sender's next flush returns."""
        records, size = self.records(partition, offset, payload)
        for key, value in records:
            sender.add(self.topic, partition, key, value)
        return size


# ------------------------------------------------------------------------------ the engine side
class TimedScorer:
    """Wraps a scorer to time its work per window (score + explain)."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer
        self.timings: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

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
class _Capture:
    """A checkpoint taken in a round, written once that round's outputs are acknowledged."""

    processor: PartitionProcessor
    offset: int
    items_offset: int
    raw: bytes  # the encoded payload, compressed when written


@dataclass
class _Step:
    """What makes one round durable, in order: its outputs' acks, then its checkpoints and
    the offset commits they cover, then the trending merge's commit."""

    futures: list[Any]
    notes: list[ClosedWindowNote]
    checkpoints: list[_Capture]
    merger_offset: int | None
    acked_at: float | None = None  # when the broker had acknowledged every output

    def __post_init__(self) -> None:
        if not self.futures:
            self.acked_at = time.perf_counter()
            return
        outputs = asyncio.gather(*self.futures)

        def _acked(_: Any) -> None:
            self.acked_at = time.perf_counter()

        outputs.add_done_callback(_acked)
        self.futures = [outputs]


@dataclass
class ClosedWindowNote:
    partition: int
    window_end: int
    updates: int
    closed_at: float
    acked_at: float | None = None  # when the broker acknowledged its updates


def _on_acked(futures: Sequence[Any], notes: Sequence[ClosedWindowNote]) -> None:
    """Stamp ``notes`` with the time every one of ``futures`` is acknowledged."""
    if not futures:
        return
    outputs = asyncio.gather(*futures)

    def _stamp(_: Any) -> None:
        now = time.perf_counter()
        for note in notes:
            note.acked_at = now

    outputs.add_done_callback(_stamp)


class PartitionProcessor:
    """Everything one events partition needs: its engine, position and counters."""

    def __init__(
        self,
        worker: Worker,
        partition: int,
        engine: Engine,
        scorer: TimedScorer,
        offset: int,
        counters: Counters,
    ) -> None:
        self.worker = worker
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
        self.publisher = KafkaPublisher(
            worker.sender,
            scores_topic=worker.settings.scores_topic,
            scores_partitions=worker.topic_partitions[worker.settings.scores_topic],
            partials_topic=worker.partials_topic,
            partition=partition,
            partitions=worker.events_partitions,
            on_published=self._on_published,
        )

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
        worker = self.worker
        decoded = decode_item_records(
            fresh, worker.settings.items_topic, self.partition, worker.events_partitions
        )
        state = self.engine.state
        changed = 0
        outcomes = worker.metrics.item_records
        for item_id, meta in decoded.changes:
            self.topic_items[item_id] = meta
            changed += state.set_metadata(item_id, meta)
            outcomes.labels(self.label, "removed" if meta is None else "applied").inc()
        if decoded.dead:
            outcomes.labels(self.label, "malformed").inc(len(decoded.dead))
            for letter in decoded.dead:
                worker.metrics.malformed.labels(letter.category).inc()
            self._dead_letters(decoded.dead)
        self.counters.item_records += len(fresh)
        self.counters.item_malformed += len(decoded.dead)
        self.items_offset = fresh[-1].offset
        return changed

    def _dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        worker = self.worker
        for letter in letters:
            key, value, headers = dead_letter_record(letter, worker.worker_id)
            worker.sender.add(
                worker.settings.dlq_topic, self._dlq_partition(key), key, value, headers
            )
            worker.metrics.dead_letters.labels(letter.kind).inc()

    def process(self, records: Sequence[Any]) -> None:
        worker = self.worker
        metrics = worker.metrics
        if not records:
            return
        fresh = _fresh(records, self.offset)
        skipped = len(records) - len(fresh)
        if skipped:
            self.counters.duplicates += skipped
            metrics.duplicates.inc(skipped)
            if not fresh:
                return
        self.last_record_at = time.monotonic()
        topic = worker.settings.events_topic
        # The future bound: event times past the wall clock plus the skew are dead-lettered, so
        # one fast producer clock cannot move the watermark (and close windows) past it.
        skew = worker.max_event_time_skew
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
        worker.events_applied += applied
        self.records_since_checkpoint += len(fresh)
        self.offset = fresh[-1].offset

    def _dlq_partition(self, key: bytes | None) -> int:
        partitions = self.worker.topic_partitions[self.worker.settings.dlq_topic]
        if key is None:
            return self.partition % partitions
        return partition_for_key(key, partitions)

    def _late_letters(self, decoded: Any, late: np.ndarray, max_ts_before: float) -> list[Any]:
        spec = self.engine.config.trend.window
        reasons = late_reasons(spec, decoded.timestamps, late, max_ts_before)
        topic = self.worker.settings.events_topic
        return [
            late_letter(decoded.records[index], topic, self.partition, reason)
            for index, reason in zip(np.flatnonzero(late).tolist(), reasons, strict=True)
        ]

    def checkpoint_due(self, now: float) -> bool:
        items_moved = self.items_offset != self.scheduled_items_offset
        if self.offset == self.scheduled_offset and not items_moved:
            return False
        settings = self.worker.settings
        return (
            self.closed_since_checkpoint > 0
            or self.records_since_checkpoint >= settings.checkpoint_records
            or now - self.last_checkpoint_at >= self.worker.checkpoint_interval
        )

    def checkpoint_payload(self) -> dict[str, Any]:
        scorer_state = None
        state_dict = getattr(self.scorer._scorer, "state_dict", None)
        if callable(state_dict):
            scorer_state = state_dict()
        state = self.engine.state
        worker = self.worker
        items = items_checkpoint(state, self.topic_items, self.items_offset)
        items["topic"] = worker.settings.items_topic
        items["file"] = {"fingerprint": worker.items_fingerprint, "items": len(worker.items)}
        return {
            "format": CHECKPOINT_FORMAT,
            "topic": self.worker.settings.events_topic,
            "partition": self.partition,
            "offset": self.offset,
            "trend_state": state.state_dict(metadata=False),
            "pending": self.engine.pending_state_dict(),
            "items": items,
            "scorer": {
                "name": getattr(self.scorer, "name", None),
                "version": self.scorer.version,
                "state": scorer_state,
            },
            "counters": self.counters.as_dict(),
            "written_at": time.time(),
            "worker": self.worker.worker_id,
        }

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
                "partitions": self.worker.events_partitions,
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


# ------------------------------------------------------------------------------ trending merge
def _id_sort_key(item_ids: Sequence[str]) -> Callable[[str], Any]:
    try:
        for item_id in item_ids:
            int(item_id)
    except ValueError:
        return lambda item_id: item_id
    return int


def merge_trending(snapshots: Sequence[TrendingSnapshot], top_n: int) -> TrendingSnapshot:
    """The global top-N of one window from each partition's top-N (items are disjoint across
    partitions). Ties: item id ascending, numerically when every id is an integer."""
    if not snapshots:
        raise ValueError("nothing to merge")
    items = [item for snapshot in snapshots for item in snapshot.items]
    id_key = _id_sort_key([item.item_id for item in items])
    items.sort(key=lambda item: (-round(item.score, 9), id_key(item.item_id)))
    versions = sorted({s.model_version for s in snapshots})
    first = snapshots[0]
    return TrendingSnapshot(
        window_start=first.window_start,
        window_end=first.window_end,
        model_version="+".join(versions),
        items=tuple(
            TrendingItem(**{**item.model_dump(), "rank": rank})
            for rank, item in enumerate(items[:top_n], start=1)
        ),
        changed_items=sum(s.changed_items for s in snapshots),
        events=sum(s.events for s in snapshots),
    )


@dataclass
class _PartitionProgress:
    closed_through: int | None = None
    idle_s: float = 0.0
    heard_at: float = -math.inf


@dataclass
class TrendingMerger:
    """Merges per-partition partial lists into the global trending list (see module doc)."""

    top_n: int
    idle_timeout: float
    position: int = 0  # next offset of the partials partition to consume
    published_through: int | None = None  # window index
    partitions: int | None = None
    pending: dict[int, dict[int, tuple[dict[str, Any], int]]] = field(default_factory=dict)
    progress: dict[int, _PartitionProgress] = field(default_factory=dict)
    late_partials: int = 0
    committed: int | None = None

    def feed(self, records: Sequence[Any]) -> None:
        for record in records:
            if record.offset < self.position:
                continue
            self.position = record.offset + 1
            try:
                message = orjson.loads(record.value)
                kind = message["kind"]
                partition = int(message["partition"])
                self.partitions = int(message["partitions"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("ignoring a malformed trending partial at offset %s", record.offset)
                continue
            progress = self.progress.setdefault(partition, _PartitionProgress())
            if kind == "window":
                index = int(message["window_index"])
                self._advance(progress, index)
                if self.published_through is not None and index <= self.published_through:
                    self.late_partials += 1  # a re-delivery, or from a partition deemed idle
                    continue
                self.pending.setdefault(index, {})[partition] = (message["snapshot"], record.offset)
            elif kind == "progress":
                if message.get("closed_through") is not None:
                    self._advance(progress, int(message["closed_through"]))
                progress.idle_s = float(message.get("idle_s") or 0.0)
                progress.heard_at = time.monotonic()

    @staticmethod
    def _advance(progress: _PartitionProgress, index: int) -> None:
        if progress.closed_through is None or index > progress.closed_through:
            progress.closed_through = index

    def _done(self, partition: int, index: int, reported: Mapping[int, Any], now: float) -> bool:
        if partition in reported:
            return True
        progress = self.progress.get(partition)
        if progress is None:
            return False
        if progress.closed_through is not None and progress.closed_through >= index:
            return True  # closed past the window without data in it
        heard_recently = now - progress.heard_at < max(self.idle_timeout, 5.0)
        return heard_recently and progress.idle_s >= self.idle_timeout

    def ready(self, now: float | None = None) -> list[TrendingSnapshot]:
        """Windows that can be published now, in order."""
        now = time.monotonic() if now is None else now
        out = []
        while self.pending and self.partitions is not None:
            index = min(self.pending)
            if self.published_through is not None and index <= self.published_through:
                del self.pending[index]
                continue
            reported = self.pending[index]
            if not all(self._done(p, index, reported, now) for p in range(self.partitions)):
                break
            del self.pending[index]
            snapshots = [TrendingSnapshot.model_validate(reported[p][0]) for p in sorted(reported)]
            out.append(merge_trending(snapshots, self.top_n))
            self.published_through = index
        return out

    def commit_offset(self) -> int:
        """Where a successor must start reading: the oldest partial of an unpublished window."""
        offsets = [offset for by_p in self.pending.values() for _, offset in by_p.values()]
        return min(offsets) if offsets else self.position


# ------------------------------------------------------------------------------ the worker
class Worker:
    """One ``trail worker`` process (see the module documentation)."""

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
        crash_after_publish: int | None = None,
    ) -> None:
        self.settings = settings
        self.config: EngineConfig = settings.engine_config()
        self.scorer_factory = scorer_factory
        self.items = dict(items or {})
        self.items_fingerprint = (
            hashlib.sha256(
                orjson.dumps([m.model_dump(mode="json") for m in self.items.values()])
            ).hexdigest()
            if self.items
            else None
        )
        if metrics is None:
            from streams.metrics import WorkerMetrics

            metrics = WorkerMetrics()
        self.metrics = metrics
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.until_idle = until_idle
        self.max_seconds = max_seconds
        # Fault injection for tests: die like kill -9 right after the N-th round that published
        # windows, before their checkpoint (the worst moment for duplicates).
        self.crash_after_publish = crash_after_publish
        self._publishing_rounds = 0
        self.checkpoint_interval = float(parse_duration(settings.checkpoint_interval))
        self.progress_interval = float(max(1, parse_duration(settings.progress_interval)))
        self.merge_idle_timeout = float(parse_duration(settings.merge_idle_timeout))
        self.max_event_time_skew = float(parse_duration(settings.max_event_time_skew))
        self.partials_topic = partials_topic(settings)
        self.store = StateStore(settings, changelog_topic(settings))
        self.processors: dict[int, PartitionProcessor] = {}
        self.merger: TrendingMerger | None = None
        self.topic_partitions: dict[str, int] = {}
        self.events_partitions = 0
        self.events_applied = 0
        self.publish_latencies: list[float] = []
        self.first_record_at: float | None = None
        self.last_record_at: float | None = None
        self.started_at = time.monotonic()
        self._generation = 0
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._last_progress = 0.0
        self._last_rate = (time.monotonic(), 0)
        self._consumer: Any = None
        self._producer: Any = None
        self._reader: Any = None
        self._items_reader: Any = None  # reads the items partitions of self.processors
        self.sender: BatchSender = None  # type: ignore[assignment]
        self._checkpoint_sender: BatchSender = None  # type: ignore[assignment]
        self._steps: deque[asyncio.Future[None]] = deque()
        self.warned_scorer_state = False

    # -------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        self._stop.set()

    async def _prepare(self) -> None:
        """Create the topics and start the producer and the group-less reader (both runtimes)."""
        from aiokafka import AIOKafkaProducer

        from streams.kafka_options import verify_connection

        settings = self.settings
        await verify_connection(settings)  # refused credentials: one clear error, no retries
        specs = [
            TopicSpec(settings.events_topic, settings.partitions),
            TopicSpec(settings.scores_topic, settings.partitions),
            TopicSpec(settings.trending_topic, 1),
            TopicSpec(settings.dlq_topic, settings.partitions),
            TopicSpec(self.partials_topic, 1, {"retention.ms": str(7 * 86400 * 1000)}),
        ]
        self.topic_partitions = await ensure_topics(settings, specs)
        self.events_partitions = self.topic_partitions[settings.events_topic]
        changelog = TopicSpec(
            self.store.topic,
            self.events_partitions,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        )
        self.topic_partitions.update(await ensure_topics(settings, [changelog]))
        if self.topic_partitions[self.store.topic] != self.events_partitions:
            raise RuntimeError(
                f"{self.store.topic} has {self.topic_partitions[self.store.topic]} partitions but "
                f"{settings.events_topic} has {self.events_partitions}: they must match"
            )
        if self.topic_partitions[self.partials_topic] != 1:
            raise RuntimeError(f"{self.partials_topic} must have exactly one partition")
        if settings.items_topic:
            spec = items_topic_spec(settings.items_topic, self.events_partitions)
            self.topic_partitions.update(await ensure_topics(settings, [spec]))
            if self.topic_partitions[settings.items_topic] != self.events_partitions:
                raise RuntimeError(
                    f"{settings.items_topic} has {self.topic_partitions[settings.items_topic]} "
                    f"partitions but {settings.events_topic} has {self.events_partitions}: they "
                    "must match (partition p of the items topic holds the metadata of the items "
                    "of events partition p)"
                )
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # records are batched by BatchSender already
            max_batch_size=512 * 1024,
            max_request_size=2 * 1024 * 1024,
            request_timeout_ms=30_000,
            client_id=f"trail-{self.worker_id}",
        )
        await self._producer.start()
        self.sender = BatchSender(self._producer)
        self._checkpoint_sender = BatchSender(self._producer)
        self._reader = await start_reader(settings)
        if settings.items_topic:
            self._items_reader = await start_reader(settings)

    async def run(self) -> int:
        from aiokafka import AIOKafkaConsumer

        settings = self.settings
        try:
            await self._prepare()
            self._consumer = AIOKafkaConsumer(
                **client_options(settings),
                group_id=settings.app_id,
                client_id=f"trail-{self.worker_id}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.batch_size,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                fetch_max_bytes=32 * 1024 * 1024,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(300, settings.session_timeout_ms // 5),
                rebalance_timeout_ms=120_000,
                max_poll_interval_ms=300_000,
            )
            self._consumer.subscribe(
                [settings.events_topic, self.partials_topic], listener=_rebalance_listener(self)
            )
            await self._consumer.start()
            log.info(
                "worker %s consuming %s (%d partitions) in group %s",
                self.worker_id,
                settings.events_topic,
                self.events_partitions,
                settings.app_id,
            )
            await self._loop()
        finally:
            await self._shutdown()
        return 0

    async def _loop(self) -> None:
        consumer = self._consumer
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                generation = self._generation
                fetch = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=200, max_records=self.settings.batch_size)
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
                async with self._lock:
                    if generation != self._generation:
                        await self._rewind(batches)
                        continue
                    await self._round(batches)
                if self._finished():
                    break
        finally:
            stop_wait.cancel()

    async def _rewind(self, batches: Mapping[Any, Sequence[Any]]) -> None:
        """Records fetched across a rebalance: put the positions back where the state is."""
        for tp in batches:
            if tp.topic == self.settings.events_topic and tp.partition in self.processors:
                await self._seek(tp, self.processors[tp.partition].offset + 1)
            elif tp.topic == self.partials_topic and self.merger is not None:
                await self._seek(tp, self.merger.position)

    def _finished(self) -> bool:
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
            if self._consuming() and self.sender is not None:
                async with self._lock:
                    await self._checkpoint_all()
        except Exception:
            log.exception("final checkpoint failed; the next owner resumes from the last one")
        finally:
            await self._stop_consumer()
            await self._close_clients()

    async def _close_clients(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._reader is not None:
            await self._reader.stop()
        if self._items_reader is not None:
            await self._items_reader.stop()

    # -------------------------------------------------------------- the group consumer
    # What the aiokafka consumer group does for this worker; the Faust runtime
    # (streams/faust_worker.py) overrides these with its app's consumer.
    def _consuming(self) -> bool:
        return self._consumer is not None

    async def _stop_consumer(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _seek(self, tp: Any, offset: int) -> None:
        self._consumer.seek(tp, offset)

    async def _seek_to_beginning(self, tp: Any) -> None:
        await self._consumer.seek_to_beginning(tp)

    async def _committed(self, tp: Any) -> int | None:
        committed: int | None = await self._consumer.committed(tp)
        return committed

    async def _beginning(self, tp: Any) -> int:
        return int((await self._reader.beginning_offsets([tp]))[tp])

    def _highwater(self, tp: Any) -> int | None:
        highwater: int | None = self._consumer.highwater(tp)
        return highwater

    async def _commit_offsets(self, offsets: Mapping[Any, int]) -> None:
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if offsets:
            await self._consumer.commit(offsets)

    # -------------------------------------------------------------- one round
    async def _round(self, batches: Mapping[Any, Sequence[Any]]) -> None:
        """Apply one fetch, hand its outputs to the producer, and queue the step that makes it
        durable (outputs acked -> checkpoints written -> offsets committed) without waiting
        for it: the next fetch is processed while the broker acknowledges this one."""
        events_topic = self.settings.events_topic
        await self._poll_items()
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
                    processor.process(records)
                    if processor.closed:
                        # Windows closed: send their updates now, before the next partition's
                        # work, and let the producer put them on the wire.
                        sent = await self.sender.send()
                        _on_acked(sent, processor.closed)
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
            await self._enqueue(_Step(futures, notes, checkpoints, merger_offset))
        self._update_gauges(now)
        if got:
            self.last_record_at = time.perf_counter()

    def _capture(self, processor: PartitionProcessor, now: float) -> _Capture:
        raw = self.store.encode(processor.checkpoint_payload())
        processor.mark_scheduled(now)
        return _Capture(processor, processor.offset, processor.items_offset, raw)

    async def _enqueue(self, step: _Step) -> None:
        previous = self._steps[-1] if self._steps else None
        self._steps.append(asyncio.ensure_future(self._durable(step, previous)))
        # Bounded pipeline; a failed step raises here and stops the worker.
        while self._steps and (self._steps[0].done() or len(self._steps) > MAX_STEPS_IN_FLIGHT):
            await self._steps.popleft()

    async def _drain(self) -> None:
        while self._steps:
            await self._steps.popleft()

    async def _durable(self, step: _Step, previous: asyncio.Future[None] | None) -> None:
        """Steps complete in order: this one's checkpoints never overtake earlier outputs."""
        if previous is not None:
            await previous
        if step.futures:
            await asyncio.gather(*step.futures)
        acked = step.acked_at if step.acked_at is not None else time.perf_counter()
        for note in step.notes:
            latency = (note.acked_at or acked) - note.closed_at
            self.metrics.publish_seconds.observe(latency)
            self.metrics.windows_closed.labels(str(note.partition)).inc()
            self.publish_latencies.append(latency)
        if self.crash_after_publish is not None and step.notes:
            self._publishing_rounds += 1
            if self._publishing_rounds >= self.crash_after_publish:
                log.error("fault injection: exiting after publishing, before the checkpoint")
                os._exit(137)
        if step.checkpoints:
            from aiokafka import TopicPartition

            loop = asyncio.get_running_loop()
            for capture in step.checkpoints:
                # zlib releases the GIL: compress beside the event loop, not on it.
                data = await loop.run_in_executor(None, zlib.compress, capture.raw, 1)
                partition = capture.processor.partition
                records, size = self.store.records(partition, capture.offset, data=data)
                for key, value in records:
                    self._checkpoint_sender.add(self.store.topic, partition, key, value)
                self.metrics.checkpoints.labels(capture.processor.label).inc()
                self.metrics.checkpoint_bytes.set(size)
            await self._checkpoint_sender.flush()
            offsets = {}
            for capture in step.checkpoints:
                processor = capture.processor
                processor.checkpointed_offset = max(processor.checkpointed_offset, capture.offset)
                processor.checkpointed_items_offset = max(
                    processor.checkpointed_items_offset, capture.items_offset
                )
                tp = TopicPartition(self.settings.events_topic, processor.partition)
                offsets[tp] = capture.offset + 1
            await self._commit(offsets)
        if step.merger_offset is not None and self.merger is not None:
            if step.merger_offset != self.merger.committed:
                await self._commit({_tp(self.partials_topic, 0): step.merger_offset})
                self.merger.committed = step.merger_offset

    def _publish_trending(self, now: float) -> int:
        if self.merger is None:
            return 0
        snapshots = self.merger.ready(now)
        partition = partition_for(
            GLOBAL_KEY.decode(), self.topic_partitions[self.settings.trending_topic]
        )
        for snapshot in snapshots:
            self.sender.add(self.settings.trending_topic, partition, GLOBAL_KEY, encode(snapshot))
            self.metrics.trending_published.inc()
        return len(snapshots)

    async def _checkpoint_all(self) -> None:
        """Make everything applied so far durable (revocation, shutdown)."""
        await self._drain()
        now = time.monotonic()
        futures = await self.sender.send()
        notes = [note for p in self.processors.values() for note in p.closed]
        for processor in self.processors.values():
            processor.closed.clear()
        checkpoints = [self._capture(p, now) for p in self.processors.values() if p.dirty]
        merger_offset = self.merger.commit_offset() if self.merger is not None else None
        await self._durable(_Step(futures, notes, checkpoints, merger_offset), None)

    async def _commit(self, offsets: Mapping[Any, int]) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        try:
            await self._commit_offsets(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The checkpoint is the truth; a failed commit only leaves the group's offsets
            # (used for lag monitoring) behind.
            log.warning("offset commit failed (%s); state checkpoints are unaffected", exc)

    def _lags(self) -> dict[int, int]:
        from aiokafka import TopicPartition

        lags = {}
        for partition, processor in self.processors.items():
            tp = TopicPartition(self.settings.events_topic, partition)
            try:
                highwater = self._highwater(tp)
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
    async def on_revoked(self, revoked: Sequence[Any]) -> None:
        async with self._lock:
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
        async with self._lock:
            self._generation += 1
            events = sorted(
                tp.partition for tp in assigned if tp.topic == self.settings.events_topic
            )
            started = time.perf_counter()
            checkpoints = await self.store.load(events, self._reader)
            for partition in events:
                self.processors[partition] = self._processor(partition, checkpoints[partition])
                tp = _tp(self.settings.events_topic, partition)
                offset = self.processors[partition].offset
                if offset >= 0:
                    await self._seek(tp, offset + 1)
                else:
                    await self._seek_to_beginning(tp)
            await self._assign_items()
            self.metrics.assigned.set(len(self.processors))
            if events:
                self.metrics.restore_seconds.observe(time.perf_counter() - started)
            if any(tp.topic == self.partials_topic for tp in assigned):
                self.merger = await self._restore_merger()
            log.info(
                "assigned events partitions %s%s (restored in %.2fs)",
                events,
                " + trending merge" if self.merger is not None else "",
                time.perf_counter() - started,
            )

    def _processor(self, partition: int, checkpoint: Checkpoint | None) -> PartitionProcessor:
        from model.baselines import EWMA

        def failed(stage: str, exc: BaseException) -> None:
            self.metrics.scorer_failures.labels(stage).inc()

        # A scorer that raises must neither stop the stream nor crash-loop on the same records.
        scorer = TimedScorer(FallbackScorer(self.scorer_factory(), EWMA(1), on_failure=failed))
        if checkpoint is None:
            engine = Engine(self.config, scorer)  # type: ignore[arg-type]
            if self.items:
                engine.add_metadata(self.items.values())
            return PartitionProcessor(self, partition, engine, scorer, -1, Counters())
        payload = checkpoint.payload
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise RuntimeError(f"checkpoint format {payload.get('format')!r} is not supported")
        if payload.get("topic") != self.settings.events_topic or payload["partition"] != partition:
            raise RuntimeError(
                f"checkpoint of partition {partition} belongs to {payload.get('topic')}/"
                f"{payload.get('partition')}"
            )
        stored = TrendConfig.from_dict(payload["trend_state"]["config"])
        if stored != self.config.trend:
            raise RuntimeError(
                f"partition {partition}'s state was built with {stored.to_dict()}, but this "
                f"worker runs {self.config.trend.to_dict()}: use another app id (a new state) "
                "or the same window settings"
            )
        state = TrendState.from_state_dict(payload["trend_state"])
        items_offset, topic_items = self._restore_metadata(partition, state, payload)
        scorer_info = payload.get("scorer") or {}
        load = getattr(scorer._scorer, "load_state_dict", None)
        if scorer_info.get("state") is not None and callable(load):
            load(scorer_info["state"])
        elif getattr(scorer._scorer, "learns_online", False) and not self.warned_scorer_state:
            self.warned_scorer_state = True
            log.warning(
                "scorer %s learns online but has no state_dict(): its learning restarts here",
                getattr(scorer, "name", "?"),
            )
        engine = Engine(self.config, scorer, state=state)  # type: ignore[arg-type]
        engine.load_pending_state_dict(payload.get("pending"))
        counters = Counters(**{k: int(v) for k, v in (payload.get("counters") or {}).items()})
        processor = PartitionProcessor(self, partition, engine, scorer, checkpoint.offset, counters)
        processor.restore_items(items_offset, topic_items)
        return processor

    def _restore_metadata(
        self, partition: int, state: TrendState, payload: Mapping[str, Any]
    ) -> tuple[int, dict[str, ItemMeta | None]]:
        """Give a restored ``state`` its metadata: the catalog file's, overlaid by what the
        checkpoint got from the items topic, with the category order it was saved in.
        Returns the items offset to read on from and the items topic's records."""
        items = payload.get("items")
        if items is None:
            # Written before the items topic: the file's metadata, recorded by fingerprint.
            old = payload.get("metadata")
            if old is not None:
                if old.get("fingerprint") != self.items_fingerprint:
                    self._warn_catalog_changed(partition, old.get("items"))
                state.add_metadata(self.items.values())
            return -1, {}
        topic_items = restore_items_checkpoint(state, items, self.items)
        file = items.get("file") or {}
        if file.get("fingerprint") != self.items_fingerprint:
            self._warn_catalog_changed(partition, file.get("items"))
        offset = int(items["offset"])
        if items.get("topic") != self.settings.items_topic:
            log.warning(
                "partition %d: its checkpoint read items topic %r, this worker reads %r: "
                "reading that one from its beginning",
                partition,
                items.get("topic"),
                self.settings.items_topic,
            )
            offset = -1
        return offset, topic_items

    def _warn_catalog_changed(self, partition: int, then: Any) -> None:
        log.warning(
            "partition %d: the --items catalog (%d items) is not the one its state was built "
            "with (%s items): the current one applies from here on",
            partition,
            len(self.items),
            then,
        )

    # -------------------------------------------------------------- the items topic
    async def _assign_items(self) -> None:
        """Follow the items partitions of the owned events partitions, each from after its
        checkpoint; apply everything up to their current ends before any event."""
        reader = self._items_reader
        if reader is None:
            return
        from aiokafka import TopicPartition

        topic = self.settings.items_topic
        tps = [TopicPartition(topic, p) for p in sorted(self.processors)]
        if not tps:
            reader.unsubscribe()
            return
        reader.assign(tps)
        for tp in tps:
            offset = self.processors[tp.partition].items_offset
            if offset >= 0:
                reader.seek(tp, offset + 1)
            else:
                await reader.seek_to_beginning(tp)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if await reader.position(tp) < ends[tp]}
        applied = 0
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                applied += self.processors[tp.partition].apply_items(records)
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if applied:
            log.info("item metadata: %d change(s) from %s before the first events", applied, topic)

    async def _poll_items(self) -> None:
        """Apply the items records that have arrived (no wait), before this round's events."""
        if self._items_reader is None or not self.processors:
            return
        batches = await self._items_reader.getmany(timeout_ms=0)
        for tp, records in batches.items():
            processor = self.processors.get(tp.partition)
            if processor is not None and records:
                processor.apply_items(records)

    async def _restore_merger(self) -> TrendingMerger:
        merger = TrendingMerger(top_n=self.config.top_n, idle_timeout=self.merge_idle_timeout)
        tp = _tp(self.partials_topic, 0)
        committed = await self._committed(tp)
        if committed is None:
            committed = await self._beginning(tp)
        merger.position = committed
        merger.committed = committed
        await self._seek(tp, committed)
        merger.published_through = await self._last_published_window()
        return merger

    async def _last_published_window(self) -> int | None:
        """The last window on the trending topic (key "global"), as a window index."""
        topic = self.settings.trending_topic
        partition = partition_for(GLOBAL_KEY.decode(), self.topic_partitions[topic])
        tp = _tp(topic, partition)
        consumer = self._reader
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        begin = (await consumer.beginning_offsets([tp]))[tp]
        if end <= begin:
            return None
        consumer.seek(tp, max(begin, end - 50))
        last = None
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if record.key == GLOBAL_KEY and record.value:
                    try:
                        last = int(orjson.loads(record.value)["window_end"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
        if last is None:
            return None
        return self.config.trend.window.index_of(last - 1)

    # -------------------------------------------------------------- reporting
    def summary(self) -> dict[str, Any]:
        span = (
            (self.last_record_at - self.first_record_at)
            if self.first_record_at is not None and self.last_record_at is not None
            else 0.0
        )
        latencies = sorted(self.publish_latencies)
        return {
            "worker": self.worker_id,
            "events_applied": self.events_applied,
            "processing_seconds": span,
            "publish_latency_ms": _latency_stats(latencies),
            "metrics": self.metrics.snapshot(),
        }


def _latency_stats(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {}
    values = np.asarray(latencies) * 1000.0
    return {
        "count": float(values.size),
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


async def start_reader(settings: Settings) -> Any:
    """A started consumer without a group, for reading changelog and output partitions."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    return consumer


def _tp(topic: str, partition: int) -> Any:
    from aiokafka import TopicPartition

    return TopicPartition(topic, partition)


def _rebalance_listener(worker: Worker) -> Any:
    """An aiokafka ConsumerRebalanceListener calling the worker (aiokafka imported lazily, so
    ``trail replay`` never needs the Kafka extra)."""
    from aiokafka import ConsumerRebalanceListener

    class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
            await worker.on_revoked(revoked)

        async def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
            await worker.on_assigned(assigned)

    return _Rebalance()


# ------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=None, help="bootstrap servers (TRAIL_BROKER)")
    parser.add_argument("--app-id", default=None, help="consumer group / app id (TRAIL_APP_ID)")
    parser.add_argument("--events-topic", default=None, help="events topic (TRAIL_EVENTS_TOPIC)")
    parser.add_argument("--scores-topic", default=None, help="scores topic")
    parser.add_argument("--trending-topic", default=None, help="trending topic")
    parser.add_argument("--dlq-topic", default=None, help="dead-letter topic")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of topics this worker creates (existing ones are kept)",
    )
    parser.add_argument("--window", default=None, help="window length, e.g. 1h, 7d")
    parser.add_argument("--grace", default=None, help="grace period for late events")
    parser.add_argument("--scorer", default=None, help="scorer name (TRAIL_SCORER)")
    parser.add_argument(
        "--items",
        dest="items_source",
        default=None,
        metavar="FILE",
        help="item catalog to start from: CSV, Parquet or JSON lines (item_id, title, "
        "categories, ...), a dataset name or a .inter path (TRAIL_ITEMS_SOURCE)",
    )
    parser.add_argument(
        "--items-topic",
        default=None,
        help="compacted item-metadata topic, key = item_id (default items; '' for none)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="records per batch")
    parser.add_argument(
        "--max-event-time-skew",
        default=None,
        help="dead-letter events more than this ahead of the clock, e.g. 5m (0s: off)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (0 = off; default 9308)"
    )
    parser.add_argument(
        "--checkpoint-interval",
        default=None,
        help="checkpoint each partition at least this often (default 10s)",
    )
    parser.add_argument(
        "--runtime",
        choices=("aiokafka", "faust"),
        default=None,
        help="group consumer: aiokafka (default, fastest) or a Faust app (TRAIL_RUNTIME)",
    )
    parser.add_argument("--worker-id", default=None, help="name in logs and dead letters")
    parser.add_argument(
        "--until-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once it has consumed events, caught up, and been idle this long",
    )
    parser.add_argument(
        "--summary-out",
        type=Path,
        default=None,
        help="write a JSON summary (counters, latencies) on exit",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--crash-after-publish", type=int, default=None, help=argparse.SUPPRESS)


_SETTING_ARGS = (
    "broker",
    "app_id",
    "events_topic",
    "scores_topic",
    "trending_topic",
    "dlq_topic",
    "partitions",
    "window",
    "grace",
    "scorer",
    "items_source",
    "items_topic",
    "batch_size",
    "metrics_port",
    "checkpoint_interval",
    "runtime",
    "max_event_time_skew",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name) for name in _SETTING_ARGS if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def worker_class(runtime: str) -> type[Worker]:
    """The worker of a ``--runtime``: the aiokafka group consumer or the Faust app."""
    if runtime == "aiokafka":
        return Worker
    if runtime == "faust":
        from streams.faust_worker import FaustWorker

        return FaustWorker
    raise ValueError(f"unknown runtime {runtime!r}: use aiokafka or faust")


def load_items(source: str | None) -> dict[str, ItemMeta]:
    """The catalog of ``--items`` (see :func:`streams.eventlog.load_items`), its skipped rows
    and notes logged; ``{}`` without one."""
    if not source:
        return {}
    from streams.eventlog import load_items as read_catalog

    catalog = read_catalog(source)
    for line in catalog.report():
        log.warning("%s", line)
    return dict(catalog.items)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(os.environ.get("TRAIL_AIOKAFKA_LOG_LEVEL", "WARNING"))
    from model.registry import scorer_factory
    from streams.eventlog import DatasetError
    from streams.metrics import WorkerMetrics

    settings = settings_from_args(args)
    factory = scorer_factory(settings.scorer, settings)
    try:
        items = load_items(settings.items_source)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = WorkerMetrics()
    if settings.metrics_port:
        port = metrics.serve(settings.metrics_port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    worker = worker_class(settings.runtime)(
        settings,
        scorer_factory=factory,
        items=items,
        metrics=metrics,
        worker_id=args.worker_id,
        until_idle=args.until_idle,
        crash_after_publish=args.crash_after_publish,
    )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        return await worker.run()

    try:
        return asyncio.run(main())
    finally:
        metrics.close()
        if args.summary_out is not None:
            args.summary_out.parent.mkdir(parents=True, exist_ok=True)
            args.summary_out.write_bytes(orjson.dumps(worker.summary(), option=orjson.OPT_INDENT_2))
