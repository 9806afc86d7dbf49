"""The items topic: a live catalog beside the events.

First without a broker: how a partition's trend state takes metadata that changes (replaced
categories, a tombstone, metadata for an item already seen), how its checkpoint keeps it, and
how records of the items topic are decoded. Then against the real broker (both runtimes):
metadata that arrives after an item's first events is in the very next window's features and
explanations, a kill -9 and restart after the catalog grew (new items, replaced categories,
tombstones) publishes exactly the scores of an uninterrupted replay with the same catalog
history, every malformed item record is in the dead-letter topic with its reason, and
``trail produce --items`` publishes a catalog in its keys' partitions.

The reference of the broker tests is the embedded replay of each partition's sub-log with the
same catalog changes applied at the window close the worker applied them before (metadata is
read only at window closes: applied anywhere inside a window, it counts from that window's
close on).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka_support import (
    REPO_ROOT,
    RUNTIMES,
    WorkerProcess,
    assert_same_updates,
    dedupe,
    ml100k,
    read_topics,
    score_updates,
    unique_settings,
    wait_until,
)

from model.explain import verbalize
from schemas import MAX_RECORD_BYTES, ItemMeta, ScoreUpdate
from streams.engine import Engine
from streams.eventlog import EventLog
from streams.kafka.deadletters import read_dead_letter
from streams.kafka.decode import decode_item_records
from streams.kafka.items import items_checkpoint, restore_items_checkpoint
from streams.kafka.sender import BatchSender
from streams.kafka.worker import Worker
from streams.kafka_cli import produce_items, produce_log
from streams.partitioning import partition_for, split_log
from streams.publish import MemoryPublisher
from streams.registry import scorer_factory
from streams.replay import EvaluationWindows, replay
from streams.settings import Settings
from streams.trend.state import TrendConfig, TrendState
from streams.trend.windows import WindowSpec

kafka = pytest.mark.kafka

Change = tuple[str, ItemMeta | None]  # an items-topic record: upsert, or None for a tombstone
N_SLICE = 20_000
PARTITIONS = 4
WEEK = 7 * 86400


# ------------------------------------------------------------------------------ no broker
def _state(**meta: tuple[str, ...]) -> TrendState:
    state = TrendState(TrendConfig(window=WindowSpec(length=10)))
    state.add_metadata(ItemMeta(item_id=i, title=i.upper(), categories=c) for i, c in meta.items())
    return state


def _feed(state: TrendState, windows: range, counts: dict[str, int]) -> None:
    """``counts[item]`` events of each item in each window of ``windows`` (then closed)."""
    ids: list[str] = []
    times: list[float] = []
    for window in windows:
        for item, n in counts.items():
            ids += [item] * n
            times += [window * 10 + 1.0 + k * 0.01 for k in range(n)]
    state.ingest(state.catalog.codes(np.asarray(ids, dtype=object)), np.asarray(times))
    state.advance_to(windows.stop * 10.0)


def _momentum(state: TrendState) -> dict[str, float | None]:
    window = state.closed_through
    assert window is not None
    frame = state.features(state.seen_rows(), window)
    return {
        str(i): None if np.isnan(m) else float(m)
        for i, m in zip(frame.item_ids, frame.category_momentum, strict=True)
    }


def test_replaced_categories_move_the_item_between_categories() -> None:
    """An item whose categories are replaced by categories already known counts in the new
    ones from the next close. Catches the cached item x category matrix, rebuilt by TrendState
    only when its shape changes: the item stayed in its old category."""
    state = _state(a=("X",), b=("Y",), c=("Y",))
    _feed(state, range(0, 6), {"a": 1, "b": 1, "c": 1})
    _feed(state, range(6, 9), {"a": 8, "b": 1, "c": 1})  # X rises, Y stays flat
    before = _momentum(state)
    assert before["a"] != before["b"]
    assert state.set_metadata("a", ItemMeta(item_id="a", title="A", categories=("Y",)))
    _feed(state, range(9, 10), {"a": 8, "b": 1, "c": 1})
    after = _momentum(state)
    assert after["a"] == after["b"] == after["c"]  # all three in Y alone now
    assert state.catalog.meta["a"].categories == ("Y",)


def test_metadata_for_an_item_already_seen_counts_from_the_next_close() -> None:
    """Categories given to an item that already had events, all of them known: the item gets
    its categories' momentum and adds its counts to them. With the stale matrix it had none."""
    state = _state(a=("X",))
    _feed(state, range(0, 5), {"a": 1, "late": 3})
    assert _momentum(state)["late"] is None
    assert state.set_metadata("late", ItemMeta(item_id="late", categories=("X",)))
    assert not state.set_metadata("late", ItemMeta(item_id="late", categories=("X",)))
    _feed(state, range(5, 6), {"a": 1, "late": 9})
    momentum = _momentum(state)
    assert momentum["late"] is not None and momentum["late"] == momentum["a"]
    alone = _state(a=("X",))
    _feed(alone, range(0, 6), {"a": 1})
    assert momentum["a"] != _momentum(alone)["a"]  # X counts the late item's events


def test_a_tombstone_removes_the_items_metadata() -> None:
    state = _state(a=("X",), b=("X",))
    _feed(state, range(0, 4), {"a": 2, "b": 1})
    assert state.set_metadata("a", None)
    assert not state.set_metadata("a", None)
    _feed(state, range(4, 5), {"a": 2, "b": 1})
    frame = state.features(state.seen_rows(), 4)
    records = {frame.item_ids[i]: frame.record(i) for i in range(len(frame))}
    assert records["a"].title is None and records["a"].categories == ()
    assert records["a"].category_momentum is None
    assert records["b"].title == "B" and records["b"].category_momentum is not None


def test_a_checkpoint_restores_the_catalog_and_its_category_order() -> None:
    """A partition restored from its checkpoint continues exactly like one that ran on,
    after categories were replaced, dropped and added. Catches a restore that re-derives the
    category order from the metadata (TrendState's own): category X, no longer anyone's,
    vanished from it, and every later category read the statistics of its neighbour."""
    file_items = {"a": ItemMeta(item_id="a", categories=("X",))}
    running = _state()
    running.add_metadata(file_items.values())
    topic: dict[str, ItemMeta | None] = {}
    for change in [
        ItemMeta(item_id="b", title="B", categories=("Y",)),
        ItemMeta(item_id="c", categories=("Z", "Y")),
    ]:
        topic[change.item_id] = change
        running.set_metadata(change.item_id, change)
    _feed(running, range(0, 5), {"a": 1, "b": 2, "c": 3})
    for item_id, change in [
        ("a", ItemMeta(item_id="a", categories=("Z",))),  # X is no one's now
        ("b", None),
        ("d", ItemMeta(item_id="d", title="D", categories=("W",))),  # before its first events
    ]:
        topic[item_id] = change
        running.set_metadata(item_id, change)
    _feed(running, range(5, 7), {"a": 4, "b": 2, "c": 1, "d": 5})

    checkpoint = orjson.loads(
        orjson.dumps(
            {
                "trend": running.state_dict(metadata=False),
                "items": items_checkpoint(running, topic, 41),
            }
        )
    )
    assert checkpoint["trend"]["metadata"] == []  # the metadata travels beside it
    restored = TrendState.from_state_dict(checkpoint["trend"])
    records = restore_items_checkpoint(restored, checkpoint["items"], file_items)
    assert records == topic and checkpoint["items"]["offset"] == 41
    assert dict(restored.catalog.meta) == dict(running.catalog.meta)

    for state in (running, restored):
        _feed(state, range(7, 10), {"a": 1, "c": 6, "d": 2, "e": 1})
    assert _momentum(restored) == _momentum(running)
    frame = restored.features(restored.seen_rows(), 9)
    assert {frame.item_ids[i]: frame.record(i).title for i in range(len(frame))} == {
        "a": None,
        "b": None,
        "c": None,
        "d": "D",
        "e": None,
    }


@dataclasses.dataclass
class _Record:
    """The fields of an aiokafka ConsumerRecord the worker reads."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def _key_in(partition: int, partitions: int, stem: str = "item") -> str:
    return next(
        f"{stem}{i}" for i in range(1000) if partition_for(f"{stem}{i}", partitions) == partition
    )


def test_item_records_decode_to_changes_and_dead_letters() -> None:
    good = _key_in(1, 3)
    other = _key_in(2, 3)
    records = [
        (good.encode(), orjson.dumps({"item_id": good, "title": "T", "categories": ["A"]})),
        (good.encode(), None),
        (None, b'{"item_id": "x"}'),
        (b"\xff\xfe", b'{"item_id": "x"}'),
        (other.encode(), orjson.dumps({"item_id": other})),
        (good.encode(), b'{"item_id": '),
        (good.encode(), b"[1]"),
        (good.encode(), orjson.dumps({"item_id": good, "colour": "red"})),
        (good.encode(), orjson.dumps({"item_id": good, "price": -1})),
        (good.encode(), orjson.dumps({"item_id": other})),
        (good.encode(), orjson.dumps({"item_id": good, "title": "x" * MAX_RECORD_BYTES})),
        (b"x" * 300, None),
    ]
    decoded = decode_item_records(
        [_Record(i, k, v) for i, (k, v) in enumerate(records)], "items", 1, 3
    )
    assert decoded.changes == [
        (good, ItemMeta(item_id=good, title="T", categories=("A",))),
        (good, None),
    ]
    got = [(d.offset, d.category, d.reason) for d in decoded.dead]
    assert [(offset, category) for offset, category, _ in got] == [
        (2, "missing_key"),
        (3, "invalid_key"),
        (4, "wrong_partition"),
        (5, "bad_json"),
        (6, "not_object"),
        (7, "unknown_field"),
        (8, "invalid"),
        (9, "key_mismatch"),
        (10, "too_large"),
        (11, "invalid_key"),
    ]
    reasons = {offset: reason for offset, _, reason in got}
    assert reasons[4] == (
        f"item {other!r} belongs in partition 2 of 3 (Kafka's default partitioner on the key, "
        "as its events); in partition 1 it would never meet its events"
    )
    assert reasons[7] == "ItemMeta.colour: unknown field (got 'red')"
    assert reasons[8].startswith("ItemMeta.price: Input should be greater than or equal to 0")
    assert reasons[9] == f"key {good!r} is not the record's item_id {other!r}"
    assert all(
        d.topic == "items" and d.partition == 1 and d.kind == "malformed" for d in decoded.dead
    )


def _offline_worker(items: dict[str, ItemMeta], producer: Any) -> Worker:
    """A worker with a partition's real processor and a producer that batches but never
    connects (as in test_kafka_io)."""
    settings = Settings(window="1h", scorer="ewma-2", partitions=1, metrics_port=0)
    worker = Worker(settings, scorer_factory=scorer_factory("ewma-2", settings), items=items)
    topics = [settings.events_topic, settings.scores_topic, settings.dlq_topic]
    worker.topic_partitions = dict.fromkeys([*topics, worker.partials_topic], 1)
    worker.events_partitions = 1
    worker.sender = BatchSender(producer)  # never started: nothing is sent
    return worker


def test_a_partition_applies_items_records_once_and_checkpoints_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The partition's real processor: records at or below its items offset are skipped (a
    re-delivery), malformed ones are queued as dead letters, and its checkpoint carries the
    records and the offset. A worker started with a grown catalog file restores it with the
    new file under the topic's records, and says so (it refused to start before)."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka.state import Checkpoint

    seven = ItemMeta(item_id="7", title="Seven", categories=("A",))
    file_items = {"9": ItemMeta(item_id="9", title="Nine (file)")}
    grown = {**file_items, "5": ItemMeta(item_id="5", title="Five (file)")}

    async def scenario() -> tuple[Any, Any, Any, int]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
        worker = _offline_worker(file_items, producer)
        processor = worker._processor(0, None)
        batch = [
            _Record(0, b"7", orjson.dumps(seven.model_dump(mode="json"))),
            _Record(1, b"8", b"not json"),
            _Record(2, b"9", orjson.dumps({"item_id": "9", "title": "Nine"})),
            _Record(3, b"9", None),
        ]
        assert processor.apply_items(batch) == 3
        assert processor.apply_items(batch[:2]) == 0  # a re-delivery: nothing twice
        dead = worker.sender.pending
        payload = orjson.loads(orjson.dumps(processor.checkpoint_payload()))
        restored = worker._processor(0, Checkpoint(0, -1, payload))
        regrown = _offline_worker(grown, producer)._processor(0, Checkpoint(0, -1, payload))
        await producer.stop()
        return processor, restored, regrown, dead

    with caplog.at_level("WARNING", logger="trail.worker"):
        processor, restored, regrown, dead = asyncio.run(scenario())
    assert dead == 1 and processor.counters.item_malformed == 1
    assert processor.items_offset == 3 and processor.dirty
    assert processor.topic_items == {"7": seven, "9": None}
    assert dict(processor.engine.state.catalog.meta) == {"7": seven}  # the tombstone beat the file
    assert restored.items_offset == 3 and restored.topic_items == processor.topic_items
    assert dict(restored.engine.state.catalog.meta) == {"7": seven}
    assert not restored.dirty
    assert dict(regrown.engine.state.catalog.meta) == {"5": grown["5"], "7": seven}
    assert regrown.items_offset == 3
    assert "the --items catalog (2 items) is not the one its state was built with (1 items)" in (
        caplog.text
    )


# ------------------------------------------------------------------------------ the reference
class _ChangeAt:
    """A replay publisher that applies catalog changes right after one window's close."""

    def __init__(self, engine: Engine, window: int, changes: Sequence[Change]) -> None:
        self.engine, self.window, self.changes = engine, window, changes
        self.done = False

    def publish(self, result: Any) -> None:
        if not self.done and result.window.index >= self.window:
            self.done = True
            for item_id, meta in self.changes:
                self.engine.state.set_metadata(item_id, meta)

    def close(self) -> None:
        return None


def reference(
    log: EventLog,
    settings: Settings,
    *,
    file_items: dict[str, ItemMeta],
    before: Sequence[Change],
    later: Sequence[Change],
    after_window: int,
) -> dict[str, ScoreUpdate]:
    """What every partition publishes when it starts with ``file_items`` and the ``before``
    records of its items partition, and gets the ``later`` ones after ``after_window``."""
    make = scorer_factory(settings.scorer, settings)
    updates: dict[str, ScoreUpdate] = {}
    for partition, sub in enumerate(split_log(dataclasses.replace(log, items={}), PARTITIONS)):

        def own(changes: Sequence[Change], p: int = partition) -> list[Change]:
            return [(i, m) for i, m in changes if partition_for(i, PARTITIONS) == p]

        windows = EvaluationWindows.of(sub.timestamps, settings.window_seconds, None)
        engine = Engine(settings.engine_config(), make(), score_from_window=windows.first)
        engine.add_metadata(file_items.values())
        for item_id, meta in own(before):
            engine.state.set_metadata(item_id, meta)
        publisher = MemoryPublisher()
        hook = _ChangeAt(engine, after_window, own(later))
        replay(sub, engine, [publisher, hook], windows, progress=False)
        assert hook.done
        for update in publisher.updates:
            updates[update.idempotency_key] = update
    return updates


def _same(got: dict[str, ScoreUpdate], expected: dict[str, ScoreUpdate]) -> None:
    assert_same_updates(got, dataclasses.replace(_EMPTY, updates=expected))


_EMPTY = dataclasses.make_dataclass("_Expected", [("updates", dict)])(updates={})


# ------------------------------------------------------------------------------ broker helpers
@pytest.fixture(scope="module")
def slice_log() -> EventLog:
    return ml100k(N_SLICE)


def _cut(log: EventLog) -> tuple[int, int]:
    """An event index in the middle of the window that holds event 12,000, and that window."""
    window = int(log.timestamps[12_000] // WEEK)
    cut = int(np.searchsorted(log.timestamps, window * WEEK + WEEK / 2, side="left"))
    return cut, window


def _produce(settings: Settings, log: EventLog, start: int = 0, stop: int | None = None) -> None:
    asyncio.run(produce_log(settings, log, start=start, stop=stop))


def _publish(settings: Settings, changes: Sequence[Change], raw: Sequence[Any] = ()) -> None:
    upserts = [m for _, m in changes if m is not None]
    deletes = [i for i, m in changes if m is None]
    if upserts and deletes:  # keep the order: upserts and tombstones one run at a time
        for change in changes:
            _publish(settings, [change])
        return
    asyncio.run(produce_items(settings, upserts, deletes=deletes, raw=raw))


def _committed(settings: Settings) -> dict[int, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(settings.app_id)
        finally:
            await admin.close()
        return {
            tp.partition: int(meta.offset)
            for tp, meta in offsets.items()
            if tp.topic == settings.events_topic
        }

    return asyncio.run(read())


def _first_offsets_of(log: EventLog, stop: int, window: int) -> dict[int, int]:
    """Per events partition, the offset of its first event in ``window`` among ``log[:stop]``
    (each test's topics are new: offsets are positions in the partition's sub-log)."""
    head = dataclasses.replace(
        log,
        user_ids=log.user_ids[:stop],
        item_ids=log.item_ids[:stop],
        timestamps=log.timestamps[:stop],
    )
    out = {}
    for partition, sub in enumerate(split_log(head, PARTITIONS)):
        first = int(np.searchsorted(sub.timestamps, window * WEEK, side="left"))
        assert first < len(sub), f"partition {partition} has no event of window {window}"
        out[partition] = first
    return out


def _genres(log: EventLog, item_id: str) -> tuple[str, ...]:
    return log.items[item_id].categories


# ------------------------------------------------------------------------------ broker tests
@kafka
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_metadata_after_the_first_events_is_in_the_next_windows_features(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog, runtime: str
) -> None:
    """A worker without any catalog scores half a window; then titles and genres of the
    busiest items so far arrive on the items topic; that window's close (the next) carries
    them in the features and explanations on the scores topic, the windows before do not, and
    every update equals the reference."""
    settings = unique_settings(kafka_bootstrap, "late", runtime=runtime)
    events = dataclasses.replace(slice_log, items={})
    cut, window = _cut(slice_log)
    ids, counts = np.unique(slice_log.item_ids[:cut], return_counts=True)
    busiest = [str(i) for i in ids[np.argsort(-counts, kind="stable")][:40]]
    changes: list[Change] = [(i, slice_log.items[i]) for i in busiest]
    _produce(settings, events, stop=cut)
    worker = WorkerProcess(settings, tmp_path, "late", "--until-idle", "3", items=None)
    try:
        wait_until(lambda: worker.total("trail_records_total") >= cut, 120, "the first part")
        _publish(settings, changes)
        wait_until(
            lambda: worker.total("trail_item_records_total") >= len(changes), 60, "the catalog"
        )
        _produce(settings, events, start=cut)
        assert worker.wait(180) == 0, worker.log_text()
    finally:
        worker.close()
    got, repeats = dedupe(
        score_updates(read_topics(kafka_bootstrap, settings.scores_topic)[settings.scores_topic])
    )
    assert repeats == 0
    _same(
        got,
        reference(
            events, settings, file_items={}, before=[], later=changes, after_window=window - 1
        ),
    )

    by_item: dict[str, dict[int, ScoreUpdate]] = {}
    for update in got.values():
        by_item.setdefault(update.item_id, {})[update.window_end] = update
    checked = 0
    for item_id in busiest:
        windows = by_item.get(item_id, {})
        before, after = windows.get(window * WEEK), windows.get((window + 1) * WEEK)
        if before is None or after is None:
            continue  # no events in one of the two windows: no update there
        checked += 1
        assert before.features.title is None and before.features.category_momentum is None
        meta = slice_log.items[item_id]
        assert after.features.title == meta.title and after.features.categories == meta.categories
        assert after.features.category_momentum is not None
        assert f'"{meta.title}"' in verbalize(after.features, after.score, variant=0)
    assert checked >= 10


def _catalogs(log: EventLog) -> tuple[dict[str, ItemMeta], list[Change], list[Change]]:
    """The file (a third of the items), the topic before the first start (another third),
    and what the catalog gets while the worker is down: the last third (new items), other
    genres for some topic items, other titles for some file items, tombstones for others."""
    items = list(log.items.values())
    file_items = {m.item_id: m for m in items if int(m.item_id) % 3 == 0}
    before: list[Change] = [(m.item_id, m) for m in items if int(m.item_id) % 3 == 1]
    later: list[Change] = [(m.item_id, m) for m in items if int(m.item_id) % 3 == 2]
    for item_id, meta in before[:60]:
        assert meta is not None
        later.append(
            (
                item_id,
                meta.model_copy(update={"categories": meta.categories[::-1][:1] or ("Drama",)}),
            )
        )
    file_ids = list(file_items)
    for item_id in file_ids[:40]:
        later.append(
            (item_id, file_items[item_id].model_copy(update={"title": f"Renamed {item_id}"}))
        )
    later += [(item_id, None) for item_id in file_ids[40:80]]
    return file_items, before, later


@kafka
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kill_9_and_a_restart_after_the_catalog_grew_give_identical_scores(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog, runtime: str
) -> None:
    """Worker one starts from an --items file and the topic's first catalog, checkpoints at a
    window close and is killed -9 in the middle of the next window; the catalog then grows
    (new items, replaced genres, renamed and removed items); worker two restores every
    partition's metadata from its checkpoint, reads the catalog on from there, and the scores
    are exactly the reference's with the changes from that close on."""
    settings = unique_settings(
        kafka_bootstrap, "grow", checkpoint_interval="3600s", batch_size=1000, runtime=runtime
    )
    events = dataclasses.replace(slice_log, items={})
    file_items, before, later = _catalogs(slice_log)
    catalog = tmp_path / "items.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "genres", "release_year"])
        for m in file_items.values():
            writer.writerow([m.item_id, m.title or "", "|".join(m.categories), m.year or ""])
    cut, window = _cut(slice_log)
    first_of = _first_offsets_of(slice_log, cut, window)
    _publish(settings, before)
    _produce(settings, events, stop=cut)
    first = WorkerProcess(settings, tmp_path, "first", items=str(catalog))
    try:
        wait_until(lambda: first.total("trail_records_total") >= cut, 120, "the first part")

        def closed_durably() -> bool:
            # The checkpoint of the last close (window - 1) is durable once its offsets are
            # committed: then worker two restores from it, not from an older one.
            committed = _committed(settings)
            return all(committed.get(p, -1) > offset for p, offset in first_of.items())

        wait_until(closed_durably, 60, "the checkpoint of the last window close")
        first.kill()
    finally:
        first.close()
    _publish(settings, later)
    _produce(settings, events, start=cut)
    second = WorkerProcess(settings, tmp_path, "second", "--until-idle", "3", items=str(catalog))
    try:
        assert second.wait(180) == 0, second.log_text()
        log_text = second.log_text()
    finally:
        second.close()
    summary = orjson.loads(second.summary_path.read_bytes())
    # It resumed from a checkpoint, not from the start. A checkpoint is taken after the whole
    # fetch that held the close, so when that fetch reached the cut nothing is replayed
    # (seen in CI): the bound is inclusive, as in test_worker.py.
    assert N_SLICE - cut <= summary["events_applied"] < N_SLICE
    assert "is not the one its state was built with" not in log_text
    records = read_topics(kafka_bootstrap, settings.scores_topic)[settings.scores_topic]
    got, _ = dedupe(score_updates(records))  # a repeat must equal its first publication
    expected = reference(
        events, settings, file_items=file_items, before=before, later=later, after_window=window - 1
    )
    _same(got, expected)
    renamed = [
        u for u in got.values() if u.features.title and u.features.title.startswith("Renamed")
    ]
    assert renamed and all(u.window_end > window * WEEK for u in renamed)


@kafka
def test_malformed_item_records_are_all_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog
) -> None:
    """Every malformed record of the items topic is in the dead-letter topic with its
    category, reason and source (items topic, partition, offset), and its bytes; the good ones
    around them are applied. (A record without a key never gets there: a compacted topic
    refuses it at the broker.)"""
    settings = unique_settings(kafka_bootstrap, "itemdlq")
    events = dataclasses.replace(slice_log, items={})
    n = 10_000  # two and a half weeks: two windows close
    ids, counts = np.unique(slice_log.item_ids[:n], return_counts=True)
    busiest = [str(i) for i in ids[np.argsort(-counts, kind="stable")][:60] if str(i) != "1"]
    good = [(i, slice_log.items[i]) for i in busiest]
    other = _key_in((partition_for("1", PARTITIONS) + 1) % PARTITIONS, PARTITIONS, "x")
    bad: list[tuple[bytes | None, bytes | None, int | None, str]] = [
        (b"1", b'{"item_id": "1", "title": ', None, "bad_json"),
        (b"1", b'"just a string"', None, "not_object"),
        (b"1", orjson.dumps({"item_id": "1", "colour": "red"}), None, "unknown_field"),
        (b"1", orjson.dumps({"item_id": "1", "price": "free"}), None, "invalid"),
        (b"1", orjson.dumps({"item_id": "1", "categories": ["x" * 200]}), None, "invalid"),
        (b"1", orjson.dumps({"item_id": "2"}), None, "key_mismatch"),
        (b"\xff\xfe", orjson.dumps({"item_id": "1"}), 0, "invalid_key"),
        (
            other.encode(),
            orjson.dumps({"item_id": other}),
            partition_for("1", PARTITIONS),
            "wrong_partition",
        ),
        (b"1", orjson.dumps({"item_id": "1", "title": "x" * MAX_RECORD_BYTES}), None, "too_large"),
    ]
    _publish(settings, good[:30])
    _publish(settings, [], raw=[(k, v, p) for k, v, p, _ in bad])
    _publish(settings, good[30:])
    _produce(settings, events, stop=n)
    worker = WorkerProcess(settings, tmp_path, "itemdlq", "--until-idle", "3", items=None)
    try:
        assert worker.wait(180) == 0, worker.log_text()
    finally:
        worker.close()
    topics = read_topics(
        kafka_bootstrap, settings.items_topic, settings.dlq_topic, settings.scores_topic
    )
    where = {(r.key, r.value): (r.partition, r.offset) for r in topics[settings.items_topic]}
    letters = [read_dead_letter(r) for r in topics[settings.dlq_topic]]
    assert all(letter.topic == settings.items_topic for letter in letters)  # no event is bad
    got = sorted((letter.partition, letter.offset, letter.category) for letter in letters)
    assert got == sorted((*where[(k, v)], category) for k, v, _, category in bad)
    by_source = {(letter.partition, letter.offset): letter for letter in letters}
    for key, value, _, _ in bad:
        letter = by_source[where[(key, value)]]
        assert letter.kind == "malformed" and letter.reason and letter.key == key
        assert letter.value == value
    metrics = orjson.loads(worker.summary_path.read_bytes())["metrics"]
    malformed = sum(
        v
        for k, v in metrics.items()
        if k.startswith("trail_item_records_total") and "outcome=malformed" in k
    )
    assert malformed == len(bad)
    updates = score_updates(topics[settings.scores_topic])
    titled = {u.item_id for u in updates if u.features.title}
    seen = {u.item_id for u in updates}
    assert titled == {i for i, _ in good} <= seen


@kafka
def test_produce_publishes_a_catalog_in_its_keys_partitions(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``trail produce --items FILE --delete-item ID``: one compacted-topic record per good
    row in its key's partition (the events topic's count), the bad row reported, then the
    tombstone."""
    settings = unique_settings(kafka_bootstrap, "produce", partitions=3)
    catalog = tmp_path / "items.jsonl"
    catalog.write_text(
        "\n".join(
            [
                '{"item_id": "a", "title": "A", "categories": ["X", "Y"], "price": 2.5}',
                '{"item_id": "b", "release_date": "2020-05-01"}',
                '{"item_id": "c", "price": "free"}',
                '{"item_id": 17, "tags": "t1|t2", "brand": "Acme"}',
            ]
        )
        + "\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "produce",
            "--items",
            str(catalog),
            "--delete-item",
            "b",
            "--broker",
            settings.broker,
            "--topic",
            settings.events_topic,
            "--items-topic",
            settings.items_topic,
            "--partitions",
            "3",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "line 3: price 'free' is not a number" in result.stderr
    assert f"produced 4 item records to {settings.items_topic} (3 partitions)" in result.stderr
    records = read_topics(kafka_bootstrap, settings.items_topic, idle_s=1.0)[settings.items_topic]
    got = [
        (r.key.decode(), r.partition, r.value) for r in sorted(records, key=lambda r: r.timestamp)
    ]
    assert {(k, p) for k, p, _ in got} == {(k, partition_for(k, 3)) for k in ("a", "b", "17")}
    values = {(k, None if v is None else ItemMeta.model_validate_json(v)) for k, _, v in got}
    assert values == {
        ("a", ItemMeta(item_id="a", title="A", categories=("X", "Y"), price=2.5)),
        ("b", ItemMeta(item_id="b", release_date="2020-05-01", year=2020)),
        ("17", ItemMeta(item_id="17", tags=("t1", "t2"), brand="Acme")),
        ("b", None),
    }
    b_records = [r for r in records if r.key == b"b"]
    assert [r.value is None for r in sorted(b_records, key=lambda r: r.offset)] == [False, True]
    assert orjson.loads(next(v for k, _, v in got if k == "a")) == {
        "item_id": "a",
        "title": "A",
        "categories": ["X", "Y"],
        "price": 2.5,
    }
    assert _topic_config(settings, settings.items_topic)["cleanup.policy"] == "compact"


def _topic_config(settings: Settings, topic: str) -> dict[str, str]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def read() -> dict[str, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        finally:
            await admin.close()
        [resource] = response.resources
        return {entry[0]: entry[1] for entry in resource[4]}

    return asyncio.run(read())
