"""Decoding consumer records: a batch of one partition into engine columns, every record the
engine cannot apply into a :class:`~streams.kafka.deadletters.DeadLetter` with its reason.

- :func:`decode_events`: the events topic (key = item_id, value a :class:`schemas.Event` as
  JSON) into :class:`DecodedEvents`;
- :func:`decode_item_records`: the compacted ``items`` topic (the catalog: key = item_id,
  value a :class:`schemas.ItemMeta` as JSON, a null value removes an item's metadata) into
  :class:`DecodedItems`.

Pure: no client, no broker. Each record is decoded once: a plainly valid event takes a fast
check of the parsed JSON (:func:`_fast_event`), anything else the schema's own validation,
which then names the exact reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from schemas import MAX_ID_CHARS, MAX_RECORD_BYTES, Event, ItemMeta, RecordError, decode
from streams.kafka.deadletters import DeadLetter, show_seconds, show_time, shown, shown_key
from streams.partitioning import partition_for_key

# ------------------------------------------------------------------------------ events
_EVENT_FIELDS = frozenset({"user_id", "item_id", "ts", "type", "weight"})
_MAX_FAST_INT = 10**15  # integer ids below this have at most 16 characters: always valid
_MAX_EXACT_TS = 2**53


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
    """The dead-letter category of a schema's :class:`~schemas.RecordError` text."""
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
    # Locals: this loop runs for every event the worker reads.
    loads = orjson.loads
    json_error = orjson.JSONDecodeError
    fast_event = _fast_event

    def reject(record: Any, category: str, reason: str) -> None:
        dead.append(DeadLetter.of_record(record, topic, partition, category, reason))

    append_id = item_ids.append
    append_user = user_ids.append
    append_ts = timestamps.append
    append_weight = weights.append
    append_good = good.append
    for record in records:
        value = record.value
        key = record.key
        if value is None:
            reject(record, "missing_value", "record has no value (null)")
            continue
        if len(value) > MAX_RECORD_BYTES:
            reason = f"Event: record of {len(value)} bytes exceeds the {MAX_RECORD_BYTES} limit"
            reject(record, "too_large", reason)
            continue
        if key is None:
            reason = "record has no key (events are keyed by item_id)"
            reject(record, "missing_key", reason)
            continue
        try:
            parsed = fast_event(loads(value))
        except json_error:
            parsed = None
        if parsed is None:
            # Not plainly valid: the schema decides, and says why.
            try:
                event = decode(Event, value)
            except RecordError as exc:
                reason = str(exc)
                reject(record, _category_of(reason), reason)
                continue
            parsed = (event.user_id, event.item_id, float(event.ts), float(event.weight))
        user_id, item_id, ts, weight = parsed
        if key != item_id.encode("utf-8"):
            reason = f"key {shown_key(key)} is not the event's item_id {shown(item_id)}"
            reject(record, "key_mismatch", reason)
            continue
        if ts > max_ts:
            reason = (
                f"future: event time {show_time(ts)} is {show_seconds(ts - max_ts)} past "
                f"{show_time(max_ts)}, the worker's clock plus max_event_time_skew"
            )
            reject(record, "future", reason)
            continue
        append_id(item_id)
        append_user(user_id)
        append_ts(ts)
        append_weight(weight)
        if weight != 1.0:
            unit = False
        append_good(record)
    return DecodedEvents(
        item_ids=item_ids,
        user_ids=user_ids,
        timestamps=np.asarray(timestamps, dtype=np.float64),
        weights=None if unit else np.asarray(weights, dtype=np.float64),
        records=good,
        dead=dead,
    )


# ------------------------------------------------------------------------------ items
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
        dead.append(DeadLetter.of_record(record, topic, partition, category, reason))

    for record in records:
        key = record.key
        if key is None:
            reject(record, "missing_key", "record has no key (items are keyed by item_id)")
            continue
        try:
            item_id = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            reject(record, "invalid_key", f"key {shown_key(key)} is not UTF-8 text")
            continue
        if not 0 < len(item_id) <= MAX_ID_CHARS:
            reject(
                record,
                "invalid_key",
                f"key {shown_key(key)} is not an item id (1 to {MAX_ID_CHARS} characters)",
            )
            continue
        owner = partition_for_key(key, partitions)
        if owner != partition:
            reject(
                record,
                "wrong_partition",
                f"item {shown(item_id)} belongs in partition {owner} of {partitions} (Kafka's "
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
                f"key {shown_key(key)} is not the record's item_id {shown(meta.item_id)}",
            )
            continue
        changes.append((item_id, meta))
    return DecodedItems(changes, dead)
