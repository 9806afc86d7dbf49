"""The trending merge: the partitions' partial top-N lists -> the global top-N.

The partials topic has one partition, all records keyed ``"global"``: every events partition
sends each closed window's partial top-N there (``"kind": "window"``) and, every
``progress_interval``, how far it has closed and how long it has been idle
(``"kind": "progress"``). The group member that owns the partials partition merges each
window's partial lists into the global top-N (:class:`TrendingMerger`) and publishes it to
``trending`` (key ``"global"``) once every partition has reported the window, has closed past
it without data, or has been idle (no records) for ``merge_idle_timeout``. Windows are
published in order; the last published window is read back from the ``trending`` topic when
the merge moves to another worker (:func:`restore_merger`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from schemas import TrendingItem, TrendingSnapshot
from streams.kafka.clients import Reader, TopicPartition
from streams.kafka.runtimes import GroupRuntime
from streams.partitioning import partition_for
from streams.settings import Settings
from streams.trend.catalog import rank_positions, tie_ranks
from streams.trend.windows import WindowSpec

log = logging.getLogger("trail.worker")

#: The key of every partials and trending record.
GLOBAL_KEY = b"global"


def partials_topic(settings: Settings) -> str:
    return f"{settings.app_id}-trending-partials"


def trending_partition(settings: Settings, partitions: Mapping[str, int]) -> TopicPartition:
    """The partition of the trending topic that holds every snapshot: key ``"global"``'s,
    given each topic's partition count."""
    topic = settings.trending_topic
    return TopicPartition(topic, partition_for(GLOBAL_KEY.decode(), partitions[topic]))


def merge_trending(snapshots: Sequence[TrendingSnapshot], top_n: int) -> TrendingSnapshot:
    """The global top-N of one window from each partition's top-N (items are disjoint across
    partitions), ranked exactly as one engine ranks the same items: by score rounded to
    ``SCORE_DECIMALS`` descending, ties by item id, numerically when every id is an integer
    (:func:`streams.trend.catalog.rank_positions`)."""
    if not snapshots:
        raise ValueError("nothing to merge")
    partials = [item for snapshot in snapshots for item in snapshot.items]
    scores = np.array([item.score for item in partials], dtype=np.float64)
    order = rank_positions(scores, tie_ranks([item.item_id for item in partials]))
    items = [partials[position] for position in order.tolist()]
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


async def last_published_window(reader: Reader, tp: TopicPartition, spec: WindowSpec) -> int | None:
    """The last window on the trending partition ``tp`` (key "global"), as a window index."""
    reader.assign([tp])
    end = (await reader.end_offsets([tp]))[tp]
    begin = (await reader.beginning_offsets([tp]))[tp]
    if end <= begin:
        return None
    reader.seek(tp, max(begin, end - 50))
    last = None
    while await reader.position(tp) < end:
        for record in (await reader.getmany(tp, timeout_ms=1000)).get(tp, []):
            if record.key == GLOBAL_KEY and record.value:
                try:
                    last = int(orjson.loads(record.value)["window_end"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
    if last is None:
        return None
    return spec.index_of(last - 1)


async def restore_merger(
    runtime: GroupRuntime,
    reader: Reader,
    *,
    partials: TopicPartition,
    trending: TopicPartition,
    top_n: int,
    idle_timeout: float,
    window: WindowSpec,
) -> TrendingMerger:
    """The merge of a new owner of the ``partials`` partition (at start or after a rebalance).

    It reads on from the group's committed offset there (the partition's beginning without
    one), where the consumer is sought, and publishes no window up to the last one already on
    the ``trending`` partition (read with ``reader``, a started consumer without a group).
    """
    merger = TrendingMerger(top_n=top_n, idle_timeout=idle_timeout)
    committed = await runtime.committed(partials)
    if committed is None:
        committed = int((await reader.beginning_offsets([partials]))[partials])
    merger.position = committed
    merger.committed = committed
    await runtime.seek(partials, committed)
    merger.published_through = await last_published_window(reader, trending, window)
    return merger
