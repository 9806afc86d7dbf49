"""The durability pipeline: what makes a round's work durable, in order, off the critical path.

Delivery is at-least-once with manual commits. A round applies one fetch, hands its outputs
(scores, partials, dead letters) to the producer and captures the checkpoints that are due
(at every window close; otherwise every ``checkpoint_interval`` / ``checkpoint_records``).
Then, in order and at most :data:`MAX_STEPS_IN_FLIGHT` rounds behind, a :class:`Step`:

1. waits for the broker's acks of the round's outputs;
2. writes the checkpoints (compressed beside the event loop) and waits for their acks;
3. commits the events offsets they cover, then the trending merge's position.

So a committed offset is always covered by a durable checkpoint, and a checkpoint never
covers outputs that were not acknowledged. On assignment (start, rebalance) each partition is
rebuilt from its checkpoint and the consumer seeks to ``offset + 1``: the checkpoint, not the
group's committed offset, is the truth (the commits are for lag monitoring and tools). A crash
(kill -9) re-applies the records after the last checkpoint and re-publishes the windows they
close: identical records with the same idempotency key ``(item_id, window_end,
model_version)``; dead letters repeat with the same source (topic, partition, offset).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.kafka.clients import TopicPartition
from streams.kafka.processor import ClosedWindowNote, PartitionProcessor
from streams.kafka.sender import BatchSender
from streams.kafka.state import StateStore
from streams.kafka.trending import TrendingMerger

if TYPE_CHECKING:
    from streams.metrics import WorkerMetrics

#: Rounds whose outputs and checkpoints may be in flight while the next round is processed.
MAX_STEPS_IN_FLIGHT = 2


@dataclass
class Capture:
    """A checkpoint taken in a round, written once that round's outputs are acknowledged."""

    processor: PartitionProcessor
    offset: int
    items_offset: int
    raw: bytes  # the encoded payload, compressed when written


@dataclass
class Step:
    """What makes one round durable, in order: its outputs' acks, then its checkpoints and
    the offset commits they cover, then the trending merge's commit."""

    futures: list[Any]
    notes: list[ClosedWindowNote]
    checkpoints: list[Capture]
    merger: TrendingMerger | None  # the merge whose position `merger_offset` is
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


def stamp_acked(futures: Sequence[Any], notes: Sequence[ClosedWindowNote]) -> None:
    """Stamp ``notes`` with the time every one of ``futures`` is acknowledged."""
    if not futures:
        return
    outputs = asyncio.gather(*futures)

    def _stamp(_: Any) -> None:
        now = time.perf_counter()
        for note in notes:
            note.acked_at = now

    outputs.add_done_callback(_stamp)


class DurabilityPipeline:
    """Runs the :class:`Step` of each round in order (see the module documentation).

    Parameters
    ----------
    store : StateStore
        The changelog the checkpoints go to.
    sender : BatchSender
        The checkpoints' own sender (the outputs have another: a checkpoint flush must not
        wait for a later round's outputs).
    metrics : WorkerMetrics
        Publish latencies, windows closed, checkpoints and their size.
    events_topic, partials_topic : str
        The topics whose offsets are committed.
    commit : callable
        Commits group offsets (``{TopicPartition: next offset}``).
    after_published : callable, optional
        Called once a round that published windows is acknowledged, before its checkpoint
        is written: the kill -9 tests' fault injection (:mod:`streams.kafka.faults`).
    """

    def __init__(
        self,
        *,
        store: StateStore,
        sender: BatchSender,
        metrics: WorkerMetrics,
        events_topic: str,
        partials_topic: str,
        commit: Callable[[Mapping[TopicPartition, int]], Awaitable[None]],
        after_published: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.events_topic = events_topic
        self.partials_topic = partials_topic
        self.commit = commit
        self.after_published = after_published
        self.publish_latencies: list[float] = []
        self._steps: deque[asyncio.Future[None]] = deque()

    async def enqueue(self, step: Step) -> None:
        """Start making ``step`` durable after the steps before it; returns once at most
        :data:`MAX_STEPS_IN_FLIGHT` are in flight. A failed step raises here."""
        previous = self._steps[-1] if self._steps else None
        self._steps.append(asyncio.ensure_future(self._durable(step, previous)))
        # Bounded pipeline; a failed step raises here and stops the worker.
        while self._steps and (self._steps[0].done() or len(self._steps) > MAX_STEPS_IN_FLIGHT):
            await self._steps.popleft()

    def latency_stats_ms(self) -> dict[str, float]:
        """Count, mean, p50, p95 and max of :attr:`publish_latencies` in milliseconds (empty
        before the first window is published)."""
        if not self.publish_latencies:
            return {}
        values = np.asarray(self.publish_latencies) * 1000.0
        return {
            "count": float(values.size),
            "mean": float(values.mean()),
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
            "max": float(values.max()),
        }

    async def drain(self) -> None:
        """Wait until every enqueued step is durable."""
        while self._steps:
            await self._steps.popleft()

    async def run(self, step: Step) -> None:
        """Make ``step`` durable now (call :meth:`drain` first)."""
        await self._durable(step, None)

    async def _durable(self, step: Step, previous: asyncio.Future[None] | None) -> None:
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
        if step.notes and self.after_published is not None:
            self.after_published()
        if step.checkpoints:
            await self._write_checkpoints(step.checkpoints)
        merger = step.merger
        if step.merger_offset is not None and merger is not None:
            if step.merger_offset != merger.committed:
                await self.commit({TopicPartition(self.partials_topic, 0): step.merger_offset})
                merger.committed = step.merger_offset

    async def _write_checkpoints(self, checkpoints: Sequence[Capture]) -> None:
        loop = asyncio.get_running_loop()
        store = self.store
        for capture in checkpoints:
            # zlib releases the GIL: compress beside the event loop, not on it.
            data = await loop.run_in_executor(None, zlib.compress, capture.raw, 1)
            partition = capture.processor.partition
            records, size = store.records(partition, capture.offset, data=data)
            for key, value in records:
                self.sender.add(store.topic, partition, key, value)
            self.metrics.checkpoints.labels(capture.processor.label).inc()
            self.metrics.checkpoint_bytes.set(size)
        await self.sender.flush()
        offsets = {}
        for capture in checkpoints:
            processor = capture.processor
            processor.checkpointed_offset = max(processor.checkpointed_offset, capture.offset)
            processor.checkpointed_items_offset = max(
                processor.checkpointed_items_offset, capture.items_offset
            )
            offsets[TopicPartition(self.events_topic, processor.partition)] = capture.offset + 1
        await self.commit(offsets)
