"""The engine's publisher on Kafka: closed windows as ScoreUpdates and trending partials.

- :func:`encode_score_updates` is the column-wise twin of ``encode(ScoreUpdate)`` (byte for
  byte, checked at run time by :class:`KafkaPublisher` on one update per window);
- :class:`KafkaPublisher` is the engine-facing :class:`~streams.publish.Publisher` of one
  events partition: scores (key = item_id) and, for the global merge, the partition's
  trending partial (:func:`window_partial`, key ``"global"``), all into a
  :class:`~streams.kafka.sender.BatchSender` that the caller flushes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from schemas import SCHEMA_VERSION, ScoreUpdate, encode
from streams.engine import WindowResult
from streams.kafka.sender import BatchSender
from streams.partitioning import partition_for
from streams.trend.features import TREND_CATEGORIES


def _rounded(values: np.ndarray) -> list[Any]:
    """``round(float(v), 6)`` of every element, as (nested) lists, bit for bit.

    Vectorised: with ``y = v * 1e6`` and ``n = rint(y)``, ``n / 1e6`` is the double nearest to
    ``n / 10**6`` (IEEE division is correctly rounded), which is exactly what ``round`` returns
    whenever ``n`` is the correctly rounded integer, i.e. unless ``y`` lies within a few ulps of
    a half-integer or is huge. Those rare values (and NaN, inf) go through ``round`` itself.
    """
    values = np.asarray(values, dtype=np.float64)
    y = values * 1e6
    with np.errstate(invalid="ignore"):
        near_half = np.abs(np.abs(y - np.trunc(y)) - 0.5) <= 4 * np.spacing(np.abs(y)) + 1e-9
        ambiguous = near_half | ~(np.abs(y) < 2.0**52)
    out: list[Any] = (np.rint(y) / 1e6).tolist()
    if ambiguous.any():
        exact = values.tolist()
        if values.ndim == 1:
            for i in np.flatnonzero(ambiguous).tolist():
                out[i] = round(exact[i], 6)
        else:
            for i, j in zip(*np.nonzero(ambiguous), strict=True):
                out[int(i)][int(j)] = round(exact[int(i)][int(j)], 6)
    return out


def encode_score_updates(result: WindowResult) -> list[tuple[str, bytes]]:
    """``(item_id, encode(update))`` for every update of ``result.score_updates()``, in the same
    order and byte for byte the same, built from the columns without pydantic (several times
    faster). :class:`KafkaPublisher` checks one update per window against the pydantic path."""
    if not result.scored:
        return []
    frame = result.features
    changed = result.changed_positions()
    if changed.shape[0] == 0:
        return []
    rank_of = np.empty_like(result.order)
    rank_of[result.order] = np.arange(result.order.shape[0])
    changed = changed[np.argsort(rank_of[changed], kind="stable")]
    half = frame.half_lives
    ew = frame.ew[changed]
    ew_1, ew_2, ew_4, ew_8 = (_rounded(ew[:, half.index(h)]) for h in (1.0, 2.0, 4.0, 8.0))
    item_ids = frame.item_ids
    ranks = (rank_of[changed] + 1).tolist()
    scores = _rounded(np.asarray(result.scores[changed], dtype=np.float64))
    count = _rounded(frame.count[changed])
    total = _rounded(frame.total[changed])
    recent = _rounded(frame.recent[changed])
    momentum = _rounded(frame.momentum[changed])
    slope = _rounded(frame.slope[changed])
    accel = _rounded(frame.accel[changed])
    burst = _rounded(frame.burstiness[changed])
    age = frame.age_windows[changed].tolist()
    share = frame.share[changed].tolist()
    category = _rounded(frame.category_momentum[changed])
    trend = frame.trend[changed].tolist()
    decayed = frame.decayed[changed]
    d32, d8, d4, d2, d1 = (_rounded(decayed[:, k]) for k in range(5))
    quarter = _rounded(frame.last_quarter[changed])
    half_window = _rounded(frame.last_half[changed])
    since_first = _rounded(frame.since_first[changed])
    since_last = _rounded(frame.since_last[changed])
    users = _rounded(frame.recent_users[changed, -1])
    returning = _rounded(frame.recent_returning[changed, -1])
    return_rate = _rounded(frame.return_rate[changed])
    positions = changed.tolist()
    explanations = result.explanations
    meta = frame.meta
    window_end = frame.window_end
    window_seconds = frame.window_seconds
    version = result.model_version
    dumps = orjson.dumps
    isnan = math.isnan
    names = TREND_CATEGORIES
    out = []
    columns = zip(
        positions,
        ranks,
        scores,
        count,
        total,
        recent,
        ew_1,
        ew_2,
        ew_4,
        ew_8,
        momentum,
        slope,
        accel,
        burst,
        age,
        share,
        category,
        trend,
        d32,
        d8,
        d4,
        d2,
        d1,
        quarter,
        half_window,
        since_first,
        since_last,
        users,
        returning,
        return_rate,
        strict=True,
    )
    for (
        p,
        rank,
        sc,
        cnt,
        tot,
        rec,
        e1,
        e2,
        e4,
        e8,
        mom,
        slo,
        acc,
        bur,
        ag,
        sh,
        cm,
        tr,
        w32,
        w8,
        w4,
        w2,
        w1,
        lq,
        lh,
        s_first,
        s_last,
        us,
        ret,
        rr,
    ) in columns:
        item_id = str(item_ids[p])
        item_meta = meta.get(item_id)
        value = dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "item_id": item_id,
                "window_end": window_end,
                "score": sc,
                "rank": rank,
                "explanation": explanations.get(p),
                "features": {
                    "item_id": item_id,
                    "window_end": window_end,
                    "window_seconds": window_seconds,
                    "count": cnt,
                    "total": tot,
                    "recent_counts": rec,
                    "ew_1": e1,
                    "ew_2": e2,
                    "ew_4": e4,
                    "ew_8": e8,
                    "momentum": mom,
                    "slope": slo,
                    "accel": acc,
                    "burstiness": min(1.0, max(-1.0, bur)),
                    "age_windows": ag,
                    "share": min(1.0, max(0.0, sh)),
                    "category_momentum": None if isnan(cm) else cm,
                    "trend": names[tr],
                    "title": item_meta.title if item_meta else None,
                    "categories": list(item_meta.categories) if item_meta else [],
                    "decayed_w32": w32,
                    "decayed_w8": w8,
                    "decayed_w4": w4,
                    "decayed_w2": w2,
                    "decayed_w1": w1,
                    "last_quarter": lq,
                    "last_half": lh,
                    "seconds_since_first": s_first,
                    "seconds_since_last": s_last,
                    "users": us,
                    "returning_users": ret,
                    "return_rate": min(1.0, max(0.0, rr)),
                },
                "model_version": version,
            }
        )
        out.append((item_id, value))
    return out


class EncodingDriftError(RuntimeError):
    """The fast ScoreUpdate encoder no longer matches the schema's own encoding."""


def _check_sampled(result: WindowResult, encoded: list[tuple[str, bytes]]) -> None:
    """Cheap run-time guard: one update per window through pydantic."""
    if not encoded:
        return
    changed = result.changed_positions()
    rank_of = np.empty_like(result.order)
    rank_of[result.order] = np.arange(result.order.shape[0])
    first = int(changed[np.argmin(rank_of[changed])])
    update = ScoreUpdate(
        item_id=result.features.item_ids[first],
        window_end=result.window.end,
        score=round(float(result.scores[first]), 6),
        rank=int(rank_of[first]) + 1,
        explanation=result.explanations.get(first),
        features=result.features.record(first),
        model_version=result.model_version,
    )
    if encode(update) != encoded[0][1]:
        raise EncodingDriftError(
            f"fast encoding differs from encode(ScoreUpdate):\n{encoded[0][1]!r}\n"
            f"{encode(update)!r}"
        )


class KafkaPublisher:
    """The engine's :class:`~streams.publish.Publisher` for one events partition.

    Every :class:`~streams.engine.WindowResult` becomes its ScoreUpdates on the scores topic
    (key = item_id, partitioned as Kafka's default partitioner does) and, when a partials topic
    is given, the partition's trending snapshot for the global merge (key ``"global"``).
    Records go into a :class:`BatchSender`; the caller flushes it (``publish`` is synchronous,
    as the protocol is).
    """

    def __init__(
        self,
        sender: BatchSender,
        *,
        scores_topic: str,
        scores_partitions: int,
        partials_topic: str | None = None,
        partition: int = 0,
        partitions: int = 1,
        on_published: Callable[[WindowResult, int], None] | None = None,
    ) -> None:
        self.sender = sender
        self.scores_topic = scores_topic
        self.scores_partitions = scores_partitions
        self.partials_topic = partials_topic
        self.partition = partition
        self.partitions = partitions
        self.on_published = on_published
        self.updates = 0
        self._fast = True

    def publish(self, result: WindowResult) -> None:
        if not result.scored:
            return
        encoded: list[tuple[str, bytes]] = []
        if self._fast:
            encoded = encode_score_updates(result)
            try:
                _check_sampled(result, encoded)
            except EncodingDriftError:
                # The schema changed under the fast encoder: use the schema's own encoding.
                logging.getLogger("trail.kafka").exception("fast ScoreUpdate encoding disabled")
                self._fast = False
        if not self._fast:
            encoded = [(u.item_id, encode(u)) for u in result.score_updates()]
        add = self.sender.add
        topic = self.scores_topic
        n = self.scores_partitions
        for item_id, value in encoded:
            add(topic, partition_for(item_id, n), item_id.encode("utf-8"), value)
        self.updates += len(encoded)
        if self.partials_topic is not None:
            add(
                self.partials_topic,
                0,
                b"global",
                window_partial(result, self.partition, self.partitions),
            )
        if self.on_published is not None:
            self.on_published(result, len(encoded))

    def close(self) -> None:
        return None


def window_partial(result: WindowResult, partition: int, partitions: int) -> bytes:
    """The partial-trending record of one partition's closed window (for the global merge)."""
    snapshot = result.trending()
    return orjson.dumps(
        {
            "kind": "window",
            "partition": partition,
            "partitions": partitions,
            "window_index": result.window.index,
            "snapshot": snapshot.model_dump(mode="json"),
        }
    )
