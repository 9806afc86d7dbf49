"""Item metadata in the worker: the catalog file, the items topic, and their checkpoint section.

Item metadata (titles, categories, ...) has two sources:

- **The catalog file** (``--items FILE``: CSV, Parquet or JSON lines, see
  :mod:`streams.eventlog.items`; or a dataset name, or a ``.inter`` file), read at start and
  given to every partition's engine when it starts without state. It is not repeated in every
  checkpoint (it would be most of a checkpoint's bytes): a restore takes it from the file given
  at that start, so a restart with a grown or corrected file applies it from then on (a note in
  the log says when the file changed since the checkpoint: :func:`catalog_fingerprint`).
- **The items topic** (``items`` by default, ``--items-topic``; empty: none): compacted, keyed
  by ``item_id``, co-partitioned with the events topic (same partition count, Kafka's default
  partitioner), so partition p of it holds the metadata of exactly the items of events
  partition p. ``trail produce --items FILE`` publishes a catalog there. Each owner of events
  partition p reads items partition p with a group-less consumer: at assignment everything
  after the checkpoint up to the partition's end before any event (:func:`catch_up_items`),
  then whatever has arrived at every round, before that round's events (:func:`poll_items`).
  A record replaces the item's metadata (also what the file gave), a null value (tombstone)
  removes it; metadata may arrive before or after an item's first events and counts from the
  next window close on (titles, categories and category momentum are read at a window's
  close). Malformed records, and records in another partition than their key's, go to the
  dead-letter topic with the reason.

Each checkpoint carries what its partition got from the items topic (every item's last value
or tombstone), the offset it read up to, and the order of the category names its category
statistics are indexed by (:func:`items_checkpoint`): a restore rebuilds exactly the metadata
of that moment and reads the topic on from there, however the catalog grew meanwhile
(:func:`restore_items_checkpoint`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from schemas import ItemMeta
from streams.kafka.clients import Reader, TopicPartition
from streams.trend.state import TrendState

log = logging.getLogger("trail.worker")


class ItemsFollower(Protocol):
    """A partition that applies its items partition's records (the partition processor)."""

    @property
    def items_offset(self) -> int: ...
    def apply_items(self, records: Sequence[Any]) -> int: ...


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


def catalog_fingerprint(items: Mapping[str, ItemMeta]) -> str | None:
    """The SHA-256 of a catalog file's metadata (None without one): a checkpoint records it, so
    a restore can say that the file changed since."""
    if not items:
        return None
    return hashlib.sha256(
        orjson.dumps([m.model_dump(mode="json") for m in items.values()])
    ).hexdigest()


# ------------------------------------------------------------------------------ checkpoint section
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


# ------------------------------------------------------------------------------ the items topic
async def catch_up_items(
    reader: Reader, topic: str, followers: Mapping[int, ItemsFollower]
) -> None:
    """Follow the items partitions of the owned events partitions, each from after its
    checkpoint; apply everything up to their current ends before any event."""
    tps = [TopicPartition(topic, p) for p in sorted(followers)]
    if not tps:
        reader.unsubscribe()
        return
    reader.assign(tps)
    for tp in tps:
        offset = followers[tp.partition].items_offset
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
            applied += followers[tp.partition].apply_items(records)
        for tp in list(remaining):
            if await reader.position(tp) >= ends[tp]:
                remaining.discard(tp)
    if applied:
        log.info("item metadata: %d change(s) from %s before the first events", applied, topic)


async def poll_items(reader: Reader, followers: Mapping[int, ItemsFollower]) -> None:
    """Apply the items records that have arrived (no wait), before a round's events."""
    if not followers:
        return
    batches = await reader.getmany(timeout_ms=0)
    for tp, records in batches.items():
        follower = followers.get(tp.partition)
        if follower is not None and records:
            follower.apply_items(records)
