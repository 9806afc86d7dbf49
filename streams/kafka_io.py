"""Kafka glue shared by the worker, ``trail produce``/``tail`` and the benchmark.

Thin on purpose (docs/architecture.md, "The Kafka worker": decode, call pure code, encode):

- :func:`client_options` turns :class:`~streams.settings.Settings` into aiokafka keyword
  arguments (bootstrap servers, SSL, SASL): the one builder of :mod:`streams.kafka_options`;
- :func:`ensure_topics` creates the topics the app needs;
- :func:`decode_events` turns a batch of consumer records into columns for the engine, with
  every malformed record as a :class:`DeadLetter` carrying the exact reason;
- :func:`decode_item_records` does the same for the compacted ``items`` topic (the catalog,
  key = item_id, a null value removes an item's metadata), whose spec is
  :func:`items_topic_spec`;
- :func:`dead_letter_record` / :func:`read_dead_letter`: the ``events.dlq`` record format;
- :class:`BatchSender` builds producer batches per partition (no per-record round trips);
- :func:`encode_score_updates` is the column-wise twin of ``encode(ScoreUpdate)`` (byte for byte,
  checked at run time) and :class:`KafkaPublisher` is the engine-facing
  :class:`~streams.publish.Publisher` that writes scores and per-partition trending partials.

Dead-letter format (``events.dlq``): the record's key and value are the original key and value,
unchanged (a value over :data:`DLQ_MAX_VALUE_BYTES` is cut there, with its full length in a
header); headers say why and where from:

==========================  ===================================================================
``trail.dlq.kind``          ``malformed`` or ``late``
``trail.dlq.category``      ``too_large``, ``missing_key``, ``missing_value``, ``bad_json``,
                            ``not_object``, ``unknown_field``, ``invalid``, ``key_mismatch``,
                            ``future``, ``late``; for the items topic also ``invalid_key``
                            and ``wrong_partition``
``trail.dlq.reason``        the precise reason (``RecordError`` text, the closed window and the
                            watermark that closed it, or how far past the clock bound); long
                            values in it are cut (:func:`show_time`, :data:`SHOWN_CHARS`)
``trail.dlq.topic``         source topic, partition, offset and record timestamp (ms)
``trail.dlq.partition``
``trail.dlq.offset``
``trail.dlq.timestamp``
``trail.dlq.worker``        the worker id that dead-lettered it
``trail.dlq.truncated``     only when cut: the original value length
==========================  ===================================================================

Malformed records of the items topic go to the same dead-letter topic, with
``trail.dlq.topic`` naming the items topic.

Re-deliveries after a crash repeat a dead letter with the same (topic, partition, offset):
consumers of the DLQ de-duplicate on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from schemas import (
    MAX_ID_CHARS,
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    Event,
    ItemMeta,
    RecordError,
    ScoreUpdate,
    decode,
    encode,
)
from streams.engine import WindowResult
from streams.kafka_options import client_options as client_options
from streams.partitioning import partition_for, partition_for_key
from streams.settings import Settings
from streams.trend.features import TREND_CATEGORIES

#: Dead letters keep at most this many bytes of the original value (a broker refuses records
#: over ``message.max.bytes``, 1 MiB by default, and the headers need room too).
DLQ_MAX_VALUE_BYTES = 900_000
DLQ_HEADER_PREFIX = "trail.dlq."
MAX_REASON_CHARS = 2000
#: Ids and keys quoted in a reason are cut to this many characters.
SHOWN_CHARS = 60

_EVENT_FIELDS = frozenset({"user_id", "item_id", "ts", "type", "weight"})
_MAX_FAST_INT = 10**15  # integer ids below this have at most 16 characters: always valid
_MAX_EXACT_TS = 2**53


# ------------------------------------------------------------------------------ clients
@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


async def ensure_topics(settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, int]:
    """Create missing topics; return every topic's partition count (existing ones as they are).

    Concurrent creators (two workers starting at once) are fine: "already exists" is success.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=30_000)
    await admin.start()
    try:
        # list_topics, not describe: a Metadata request for a missing topic may auto-create it
        # with the broker's defaults.
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs=dict(s.config),
                    )
                    for s in missing
                ]
            )
            for topic, code, *rest in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                    raise RuntimeError(f"could not create topic {topic!r}: error {code} {rest}")
        deadline = asyncio.get_running_loop().time() + 30.0
        while True:
            counts = await _partition_counts(admin, [s.name for s in specs])
            if len(counts) == len(specs):
                return counts
            if asyncio.get_running_loop().time() > deadline:
                absent = sorted({s.name for s in specs} - set(counts))
                raise TimeoutError(f"topics {absent} have no leaders after 30 s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _partition_counts(admin: Any, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of the topics that exist and have a leader for every partition."""
    counts: dict[str, int] = {}
    for described in await admin.describe_topics(list(names)):
        partitions = described.get("partitions") or []
        if described.get("error_code") == 0 and partitions:
            if all(p.get("leader", -1) >= 0 for p in partitions):
                counts[described["topic"]] = len(partitions)
    return counts


# ------------------------------------------------------------------------------ events in
#: ``show_time`` prints a date beside times up to the end of year 9999 (``datetime``'s range).
_MAX_DATED_TS = 253_402_300_800.0


def show_time(ts: float) -> str:
    """A unix time as a short readable string for dead-letter reasons and logs.

    Plausible times keep millisecond precision and get their UTC date; absurd ones (a 1e300
    timestamp would otherwise print 300 digits) get six significant digits.

    Parameters
    ----------
    ts : float
        Unix seconds (any float, NaN and infinities included).

    Returns
    -------
    str
        At most about 40 characters.

    Examples
    --------
    >>> show_time(1700000000.5)
    '1700000000.500 (2023-11-14T22:13:20Z)'
    >>> show_time(1e300)
    '1e+300'
    >>> show_time(-4.0)
    '-4.000'
    """
    if not math.isfinite(ts) or abs(ts) >= 1e15:
        return f"{ts:.6g}"
    if 0.0 <= ts < _MAX_DATED_TS - 1.0:  # - 1 s: rounding to microseconds
        date = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{ts:.3f} ({date})"
    return f"{ts:.3f}"


def show_seconds(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable (bounded like :func:`show_time`).

    Examples
    --------
    >>> show_seconds(90)
    '90 s'
    >>> show_seconds(3 * 86400 + 3600)
    '3.04 days'
    >>> show_seconds(4102444800000 - 1700000000)
    '129,945 years'
    >>> show_seconds(1e300)
    '3.17e+292 years'
    """
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    if seconds < 2 * 365.25 * 86400:
        return f"{seconds / 86400:.3g} days"
    years = seconds / (365.25 * 86400)
    return f"{years:,.0f} years" if years < 1e6 else f"{years:.3g} years"


def _shown(text: str) -> str:
    """``repr(text)``, cut to about :data:`SHOWN_CHARS` characters."""
    if len(text) > SHOWN_CHARS:
        return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"
    return repr(text)


def _shown_key(key: bytes) -> str:
    """A record key for a reason: decoded leniently and cut like :func:`_shown`."""
    if len(key) > SHOWN_CHARS:
        head = key[:SHOWN_CHARS].decode("utf-8", "replace")
        return f"{head!r}... ({len(key)} bytes)"
    return repr(key.decode("utf-8", "replace"))


@dataclass(frozen=True)
class DeadLetter:
    """A record of the events topic that the engine did not apply, and why."""

    kind: str  # "malformed" | "late"
    category: str
    reason: str
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass
class DecodedEvents:
    """One partition's batch as engine columns, plus what could not be decoded.

    ``records[i]`` is the consumer record of the ``i``-th good event (kept to dead-letter the
    events the engine finds late); ``user_ids[i]`` its user, as the schema reads it (an integer
    id becomes its decimal string).
    """

    item_ids: list[str]
    user_ids: list[str]
    timestamps: np.ndarray
    weights: np.ndarray | None  # None when every weight is 1
    records: list[Any]
    dead: list[DeadLetter]


def _category_of(reason: str) -> str:
    if "not valid JSON" in reason:
        return "bad_json"
    if "expected a JSON object" in reason:
        return "not_object"
    if "exceeds the" in reason and "limit" in reason:
        return "too_large"
    if "unknown field" in reason:
        return "unknown_field"
    return "invalid"


def _fast_event(obj: Any) -> tuple[str, str, float, float] | None:
    """``(user_id, item_id, ts, weight)`` for a plainly valid event dict, else None (then the
    full pydantic validation decides). Accepts a subset of what :class:`schemas.Event` accepts,
    with the same resulting values."""
    if type(obj) is not dict:
        return None
    try:
        user_id = obj["user_id"]
        item_id = obj["item_id"]
        ts = obj["ts"]
    except KeyError:
        return None
    weight = 1.0
    if len(obj) != 3:
        for name in obj:
            if name not in _EVENT_FIELDS:
                return None
        if "weight" in obj:
            weight = obj["weight"]
            if type(weight) is int and 0 < weight <= 1_000_000:
                weight = float(weight)
            elif type(weight) is not float or not 0.0 < weight <= 1e6:
                return None
        if "type" in obj:
            kind = obj["type"]
            if kind is not None and (type(kind) is not str or len(kind) > 64):
                return None
    kind_u = type(user_id)
    if kind_u is str:
        if not 0 < len(user_id) <= 256:
            return None
    elif kind_u is int and -_MAX_FAST_INT < user_id < _MAX_FAST_INT:
        user_id = str(user_id)
    else:
        return None
    kind_i = type(item_id)
    if kind_i is str:
        if not 0 < len(item_id) <= 256:
            return None
    elif kind_i is int and -_MAX_FAST_INT < item_id < _MAX_FAST_INT:
        item_id = str(item_id)
    else:
        return None
    kind_t = type(ts)
    if kind_t is float:
        if not (ts >= 0.0 and math.isfinite(ts)):
            return None
    elif kind_t is int and 0 <= ts < _MAX_EXACT_TS:
        ts = float(ts)
    else:
        return None
    return user_id, item_id, ts, weight


def decode_events(
    records: Sequence[Any], topic: str, partition: int, *, max_ts: float = math.inf
) -> DecodedEvents:
    """Decode consumer records of one partition of the events topic.

    A record is dead-lettered (never silently dropped) when it is larger than
    :data:`schemas.MAX_RECORD_BYTES`, has no key or no value, is not a valid
    :class:`schemas.Event` (bad JSON, unknown fields, wrong types, ...), its key is not its
    ``item_id`` (it would then sit in another item's partition), or its event time is after
    ``max_ts`` (the worker's clock plus ``max_event_time_skew``: one fast clock must not move
    the partition's watermark past it and close every window up to it).
    """
    item_ids: list[str] = []
    user_ids: list[str] = []
    timestamps: list[float] = []
    weights: list[float] = []
    good: list[Any] = []
    dead: list[DeadLetter] = []
    unit = True
    loads = orjson.loads
    json_error = orjson.JSONDecodeError

    def reject(record: Any, category: str, reason: str) -> None:
        dead.append(
            DeadLetter(
                "malformed",
                category,
                reason,
                topic,
                partition,
                record.offset,
                record.timestamp,
                record.key,
                record.value,
            )
        )

    append_id = item_ids.append
    append_user = user_ids.append
    append_ts = timestamps.append
    append_weight = weights.append
    append_good = good.append
    isfinite = math.isfinite
    for record in records:
        value = record.value
        key = record.key
        # The common case inline: exactly {"user_id", "item_id", "ts"}, a string item_id that
        # is the key, a plain number ts. Anything else takes the general path below.
        if value is not None and key is not None and len(value) <= MAX_RECORD_BYTES:
            try:
                obj = loads(value)
            except json_error:
                obj = None
            if type(obj) is dict and len(obj) == 3:
                item_id = obj.get("item_id")
                ts = obj.get("ts")
                user_id = obj.get("user_id")
                if (
                    type(item_id) is str
                    and 0 < len(item_id) <= 256
                    and (type(user_id) is str and 0 < len(user_id) <= 256)
                    and key == item_id.encode()
                ):
                    if type(ts) is int and 0 <= ts < _MAX_EXACT_TS:
                        ts = float(ts)
                    if type(ts) is float and 0.0 <= ts <= max_ts and isfinite(ts):
                        append_id(item_id)
                        append_user(user_id)
                        append_ts(ts)
                        append_weight(1.0)
                        append_good(record)
                        continue
        if value is None:
            reject(record, "missing_value", "record has no value (null)")
            continue
        if len(value) > MAX_RECORD_BYTES:
            reject(
                record,
                "too_large",
                f"Event: record of {len(value)} bytes exceeds the {MAX_RECORD_BYTES} limit",
            )
            continue
        if key is None:
            reject(record, "missing_key", "record has no key (events are keyed by item_id)")
            continue
        try:
            parsed = _fast_event(loads(value))
        except json_error:
            parsed = None
        if parsed is None:
            try:
                event = decode(Event, value)
            except RecordError as exc:
                reason = str(exc)
                reject(record, _category_of(reason), reason)
                continue
            parsed = (event.user_id, event.item_id, float(event.ts), float(event.weight))
        user_id, item_id, ts, weight = parsed
        if key != item_id.encode("utf-8"):
            shown = _shown_key(key)
            reject(
                record, "key_mismatch", f"key {shown} is not the event's item_id {_shown(item_id)}"
            )
            continue
        if ts > max_ts:
            reject(
                record,
                "future",
                f"future: event time {show_time(ts)} is {show_seconds(ts - max_ts)} past "
                f"{show_time(max_ts)}, the worker's clock plus max_event_time_skew",
            )
            continue
        item_ids.append(item_id)
        user_ids.append(user_id)
        timestamps.append(ts)
        weights.append(weight)
        if weight != 1.0:
            unit = False
        good.append(record)
    return DecodedEvents(
        item_ids=item_ids,
        user_ids=user_ids,
        timestamps=np.asarray(timestamps, dtype=np.float64),
        weights=None if unit else np.asarray(weights, dtype=np.float64),
        records=good,
        dead=dead,
    )


# ------------------------------------------------------------------------------ items in
def items_topic_spec(name: str, partitions: int) -> TopicSpec:
    """The catalog topic: compacted (the last value of each item id is kept, a null value
    removes it), with as many partitions as the events topic."""
    return TopicSpec(name, partitions, {"cleanup.policy": "compact"})


@dataclass
class DecodedItems:
    """One partition's batch of the items topic: ``(item_id, metadata)`` changes in offset
    order (metadata None: a tombstone, the item's metadata is removed) and the malformed
    records."""

    changes: list[tuple[str, ItemMeta | None]]
    dead: list[DeadLetter]


def decode_item_records(
    records: Sequence[Any], topic: str, partition: int, partitions: int
) -> DecodedItems:
    """Decode consumer records of one partition of the items topic.

    The key is the item id and the value an :class:`schemas.ItemMeta` as JSON, or null to
    remove the item's metadata. A record is dead-lettered when it has no key, its key is not
    a usable id (UTF-8, 1 to 256 characters), it sits in another partition than its key's
    (Kafka's default partitioner over ``partitions``, the events topic's count: the worker of
    this partition never sees that item's events), its value is not a valid ItemMeta (bad
    JSON, unknown fields, wrong types, over :data:`schemas.MAX_RECORD_BYTES`), or the value's
    ``item_id`` is not its key.
    """
    changes: list[tuple[str, ItemMeta | None]] = []
    dead: list[DeadLetter] = []

    def reject(record: Any, category: str, reason: str) -> None:
        dead.append(
            DeadLetter(
                "malformed",
                category,
                reason,
                topic,
                partition,
                record.offset,
                record.timestamp,
                record.key,
                record.value,
            )
        )

    for record in records:
        key = record.key
        if key is None:
            reject(record, "missing_key", "record has no key (items are keyed by item_id)")
            continue
        try:
            item_id = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            reject(record, "invalid_key", f"key {_shown_key(key)} is not UTF-8 text")
            continue
        if not 0 < len(item_id) <= MAX_ID_CHARS:
            reject(
                record,
                "invalid_key",
                f"key {_shown_key(key)} is not an item id (1 to {MAX_ID_CHARS} characters)",
            )
            continue
        owner = partition_for_key(key, partitions)
        if owner != partition:
            reject(
                record,
                "wrong_partition",
                f"item {_shown(item_id)} belongs in partition {owner} of {partitions} (Kafka's "
                f"default partitioner on the key, as its events); in partition {partition} "
                "it would never meet its events",
            )
            continue
        if record.value is None:
            changes.append((item_id, None))
            continue
        try:
            meta = decode(ItemMeta, record.value)
        except RecordError as exc:
            reason = str(exc)
            reject(record, _category_of(reason), reason)
            continue
        if meta.item_id != item_id:
            reject(
                record,
                "key_mismatch",
                f"key {_shown_key(key)} is not the record's item_id {_shown(meta.item_id)}",
            )
            continue
        changes.append((item_id, meta))
    return DecodedItems(changes, dead)


def late_letter(record: Any, topic: str, partition: int, reason: str) -> DeadLetter:
    return DeadLetter(
        "late",
        "late",
        reason,
        topic,
        partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
    )


def dead_letter_record(
    letter: DeadLetter, worker: str
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the ``events.dlq`` record for ``letter``."""
    value = letter.value if letter.value is not None else b""
    headers = [
        ("trail.dlq.kind", letter.kind.encode()),
        ("trail.dlq.category", letter.category.encode()),
        ("trail.dlq.reason", letter.reason[:MAX_REASON_CHARS].encode("utf-8", "replace")),
        ("trail.dlq.topic", letter.topic.encode()),
        ("trail.dlq.partition", str(letter.partition).encode()),
        ("trail.dlq.offset", str(letter.offset).encode()),
        ("trail.dlq.timestamp", str(letter.timestamp).encode()),
        ("trail.dlq.worker", worker.encode("utf-8", "replace")),
    ]
    if len(value) > DLQ_MAX_VALUE_BYTES:
        headers.append(("trail.dlq.truncated", str(len(value)).encode()))
        value = value[:DLQ_MAX_VALUE_BYTES]
    if letter.value is None:
        headers.append(("trail.dlq.null_value", b"1"))
    return letter.key, value, headers


@dataclass(frozen=True)
class ReadDeadLetter:
    """A dead letter read back from ``events.dlq``."""

    kind: str
    category: str
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    truncated_from: int | None

    @property
    def source(self) -> tuple[str, int, int]:
        """(topic, partition, offset): the de-duplication key of a dead letter."""
        return self.topic, self.partition, self.offset


def read_dead_letter(record: Any) -> ReadDeadLetter:
    headers = {
        name.removeprefix(DLQ_HEADER_PREFIX): raw.decode("utf-8", "replace")
        for name, raw in (record.headers or ())
        if name.startswith(DLQ_HEADER_PREFIX)
    }
    truncated = headers.get("truncated")
    return ReadDeadLetter(
        kind=headers.get("kind", ""),
        category=headers.get("category", ""),
        reason=headers.get("reason", ""),
        topic=headers.get("topic", ""),
        partition=int(headers.get("partition", "-1")),
        offset=int(headers.get("offset", "-1")),
        key=record.key,
        value=None if headers.get("null_value") else record.value,
        truncated_from=int(truncated) if truncated else None,
    )


# ------------------------------------------------------------------------------ records out
class BatchSender:
    """Accumulates records in one producer batch per (topic, partition) and sends them all on
    :meth:`flush`, which returns once the broker acknowledged every one of them.

    Records of one partition are sent in the order they were added.
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._queue: list[tuple[str, int, Any]] = []
        self.records = 0

    @property
    def pending(self) -> int:
        return self.records

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._new_batch(slot)
        if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
            batch = self._new_batch(slot)
            if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                size = len(value or b"") + len(key or b"")
                raise ValueError(f"a record of {size} bytes does not fit in a producer batch")
        self.records += 1

    def _new_batch(self, slot: tuple[str, int]) -> Any:
        batch = self._producer.create_batch()
        self._open[slot] = batch
        self._queue.append((slot[0], slot[1], batch))
        return batch

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand everything added so far to the producer; returns the delivery futures (done
        when the broker acknowledged each batch) without waiting for them."""
        if not self._queue:
            return []
        queue, self._queue, self._open = self._queue, [], {}
        self.records = 0
        futures = []
        for topic, partition, batch in queue:
            if batch.record_count() == 0:
                continue
            batch.close()
            futures.append(await self._producer.send_batch(batch, topic, partition=partition))
        return futures

    async def flush(self) -> int:
        """Send everything added so far and wait for the broker's acknowledgements."""
        sent = self.records
        futures = await self.send()
        if futures:
            await asyncio.gather(*futures)
        return sent


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
