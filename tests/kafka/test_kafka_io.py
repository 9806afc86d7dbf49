"""The Kafka glue's pure parts (fast encoder and decoder, dead-letter format, trending merge)
and the changelog state store against the broker.

Only the tests that talk to the broker carry the ``kafka`` marker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from kafka_support import ml100k, unique_settings

from schemas import Event, RecordError, TrendingItem, TrendingSnapshot, decode, encode
from streams.engine import Engine
from streams.kafka.aiokafka_clients import AiokafkaClients
from streams.kafka.clients import TopicPartition
from streams.kafka.deadletters import (
    DLQ_MAX_VALUE_BYTES,
    DeadLetter,
    dead_letter_record,
    read_dead_letter,
    show_time,
)
from streams.kafka.decode import decode_events
from streams.kafka.processor import Counters, late_reasons
from streams.kafka.publisher import encode_score_updates
from streams.kafka.sender import BatchSender
from streams.kafka.state import StateStore
from streams.kafka.trending import TrendingMerger, merge_trending
from streams.kafka.worker import Worker
from streams.registry import scorer_factory
from streams.settings import Settings
from streams.trend.windows import parse_duration


@pytest.mark.parametrize(
    ("scorer", "window", "metadata"),
    [("ewma-2", "7d", True), ("linear-trend", "1d", True), ("river", "7d", False)],
)
def test_fast_score_encoding_is_byte_for_byte_the_schema_encoding(
    scorer: str, window: str, metadata: bool
) -> None:
    log = ml100k(40_000)
    settings = Settings(window=window, scorer=scorer)
    engine = Engine(settings.engine_config(), scorer_factory(scorer, settings)())
    if metadata:
        engine.add_metadata(log.items.values())
    results = engine.ingest_ids(log.item_ids, np.asarray(log.timestamps))
    assert len(results) > 3
    for result in results:
        expected = [(u.item_id, encode(u)) for u in result.score_updates()]
        assert encode_score_updates(result) == expected


def _record(offset: int, key: bytes | None, value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=key, value=value, timestamp=0)


VALUES: list[dict[str, object] | bytes] = [
    {"user_id": "u", "item_id": "42", "ts": 1700000000},
    {"user_id": 7, "item_id": 42, "ts": 1700000000.5},
    {"user_id": "u", "item_id": "42", "ts": 0},
    {"user_id": "u", "item_id": "42", "ts": -1},
    {"user_id": "u", "item_id": "42", "ts": "123"},
    {"user_id": "u", "item_id": "42", "ts": "soon"},
    {"user_id": "u", "item_id": "42", "ts": True},
    {"user_id": "u", "item_id": "42", "ts": 2**60},
    {"user_id": "u", "item_id": "42", "ts": 1, "weight": 2},
    {"user_id": "u", "item_id": "42", "ts": 1, "weight": 0.5},
    {"user_id": "u", "item_id": "42", "ts": 1, "weight": 0},
    {"user_id": "u", "item_id": "42", "ts": 1, "weight": 2e6},
    {"user_id": "u", "item_id": "42", "ts": 1, "weight": "2"},
    {"user_id": "u", "item_id": "42", "ts": 1, "type": "view"},
    {"user_id": "u", "item_id": "42", "ts": 1, "type": None},
    {"user_id": "u", "item_id": "42", "ts": 1, "type": "x" * 65},
    {"user_id": "u", "item_id": "42", "ts": 1, "type": 3},
    {"user_id": "u", "item_id": "42", "ts": 1, "extra": 1},
    {"user_id": "", "item_id": "42", "ts": 1},
    {"user_id": "u" * 257, "item_id": "42", "ts": 1},
    {"user_id": "u", "item_id": "4" * 256, "ts": 1},
    {"user_id": "u", "item_id": True, "ts": 1},
    b'{"user_id": "u", "item_id": 100000000000000000000, "ts": 1}',
    b'{"user_id": "u", "item_id": "42", "ts": 1e400}',
    b'{"user_id": "u", "item_id": "42", "ts": 1, "ts": 2}',
    {"user_id": "u", "item_id": 4.0, "ts": 1},
    {"user_id": None, "item_id": "42", "ts": 1},
    {"item_id": "42", "ts": 1},
    {"user_id": "u", "ts": 1},
    {"user_id": 10**15, "item_id": "42", "ts": 1},
    {"user_id": -(10**18), "item_id": "42", "ts": 1},
    {"user_id": 0, "item_id": "42", "ts": 1, "weight": 3},
    {"user_id": 7.5, "item_id": "42", "ts": 1},
    {"user_id": True, "item_id": "42", "ts": 1},
]


def test_fast_decoding_accepts_exactly_what_the_schema_accepts() -> None:
    for n, value in enumerate(VALUES):
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        try:
            event: Event | None = decode(Event, raw)
        except RecordError:
            event = None
        key = event.item_id.encode() if event else b"42"
        decoded = decode_events([_record(n, key, raw)], "events", 0)
        if event is None:
            assert decoded.item_ids == [] and len(decoded.dead) == 1, value
            assert decoded.dead[0].reason == _reason(raw), value
        else:
            assert decoded.item_ids == [event.item_id], value
            assert decoded.user_ids == [event.user_id], value
            assert decoded.timestamps.tolist() == [event.ts], value
            weights = [1.0] if decoded.weights is None else decoded.weights.tolist()
            assert weights == [event.weight], value


def _reason(raw: bytes) -> str:
    try:
        decode(Event, raw)
    except RecordError as exc:
        return str(exc)
    raise AssertionError("valid")


def test_decoding_keys_values_and_sizes() -> None:
    good = orjson.dumps({"user_id": "u", "item_id": "42", "ts": 5})
    records = [
        _record(0, b"42", good),
        _record(1, None, good),
        _record(2, b"41", good),
        _record(3, b"42", None),
        _record(4, b"42", b"x" * 70_000),
        _record(5, b"42", b"{nope"),
        _record(6, b"42", good),
    ]
    decoded = decode_events(records, "events", 2)
    assert decoded.item_ids == ["42", "42"]
    assert decoded.user_ids == ["u", "u"]
    assert [r.offset for r in decoded.records] == [0, 6]
    assert [(d.offset, d.category) for d in decoded.dead] == [
        (1, "missing_key"),
        (2, "key_mismatch"),
        (3, "missing_value"),
        (4, "too_large"),
        (5, "bad_json"),
    ]
    assert all(d.partition == 2 and d.topic == "events" for d in decoded.dead)


def test_user_ids_are_aligned_with_item_ids_on_every_path() -> None:
    """User ids reach the engine: one per accepted event, aligned with ``item_ids`` and
    ``records`` whichever decoding path took the record (the inline one, the dict one with a
    weight or an integer id, pydantic's), rejected records in between taking none. Catches a
    decoder without ``user_ids``, or one path not appending (misaligned columns)."""
    values = [
        (b"1", {"user_id": "alice", "item_id": "1", "ts": 10}),  # inline fast path
        (b"2", {"user_id": 42, "item_id": "2", "ts": 11}),  # integer user id
        (b"3", {"user_id": "bob", "item_id": 3, "ts": 12, "weight": 2}),  # dict path
        (b"4", {"user_id": "x", "item_id": "4", "ts": "soon"}),  # dead
        (b"5", {"user_id": 10**16, "item_id": "5", "ts": 13}),  # pydantic: big int id
        (b"9", {"user_id": "carol", "item_id": "6", "ts": 14}),  # key mismatch: dead
        (b"7", {"user_id": "dave", "item_id": "7", "ts": 15, "type": "view"}),
    ]
    records = [_record(n, key, orjson.dumps(value)) for n, (key, value) in enumerate(values)]
    decoded = decode_events(records, "events", 0)
    assert decoded.item_ids == ["1", "2", "3", "5", "7"]
    assert decoded.user_ids == ["alice", "42", "bob", str(10**16), "dave"]
    assert [r.offset for r in decoded.records] == [0, 1, 2, 4, 6]
    assert [d.offset for d in decoded.dead] == [3, 5]


NOW = 1_700_000_000.0


def test_events_past_the_clock_bound_are_dead_lettered_as_future() -> None:
    """Issue 11 item 3, without a broker: with the default ``max_event_time_skew`` an event
    three days ahead of the worker's clock is dead-lettered as ``future`` (the old 7-day
    default let it through to move the watermark), one within the bound is accepted, and the
    bound is inclusive on both decoding paths."""
    bound = NOW + parse_duration(Settings().max_event_time_skew)
    assert bound - NOW <= 15 * 60, "the default bound is minutes, not days"
    values = [
        {"user_id": "u", "item_id": "1", "ts": NOW + 60},
        {"user_id": "u", "item_id": "1", "ts": bound},
        {"user_id": "u", "item_id": "1", "ts": bound, "weight": 2.0},
        {"user_id": "u", "item_id": "1", "ts": NOW + 3 * 86400},
        {"user_id": "u", "item_id": "1", "ts": NOW + 3 * 86400, "weight": 2.0},
        {"user_id": "u", "item_id": "1", "ts": bound + 0.001},
    ]
    records = [_record(n, b"1", orjson.dumps(v)) for n, v in enumerate(values)]
    decoded = decode_events(records, "events", 0, max_ts=bound)
    assert decoded.timestamps.tolist() == [NOW + 60, bound, bound]
    assert [(d.offset, d.kind, d.category) for d in decoded.dead] == [
        (3, "malformed", "future"),
        (4, "malformed", "future"),
        (5, "malformed", "future"),
    ]
    assert "3 days past" in decoded.dead[0].reason
    assert "max_event_time_skew" in decoded.dead[0].reason


def _longest_digit_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"\d+", text)), default=0)


def test_reasons_cut_long_values() -> None:
    """Issue 11 item 9: a 1e300 timestamp printed 300 digits in its reason, a long key and
    item id were quoted in full; every reason is now short and readable."""
    values = [
        (b"1", b'{"user_id": "u", "item_id": "1", "ts": 1e300}'),
        (b"1", b'{"user_id": "u", "item_id": "1", "ts": 1e300, "weight": 1e6}'),
        (b"1", b'{"user_id": "u", "item_id": "1", "ts": 4102444800000}'),
        (b"k" * 5000, orjson.dumps({"user_id": "u", "item_id": "i" * 256, "ts": 1})),
        (b"\xff" * 300, orjson.dumps({"user_id": "u", "item_id": "1", "ts": 1})),
    ]
    records = [_record(n, key, value) for n, (key, value) in enumerate(values)]
    decoded = decode_events(records, "events", 0, max_ts=NOW + 300)
    assert [d.category for d in decoded.dead] == ["future"] * 3 + ["key_mismatch"] * 2
    for letter in decoded.dead:
        assert len(letter.reason) <= 200, letter.reason
        assert _longest_digit_run(letter.reason) <= 16, letter.reason
    assert "1e+300" in decoded.dead[0].reason
    # A millisecond epoch read as seconds: every digit kept, and how absurd it is said plainly.
    assert "event time 4102444800000.000 is 129,945 years past" in decoded.dead[2].reason
    assert "(5000 bytes)" in decoded.dead[3].reason
    assert "(256 characters)" in decoded.dead[3].reason
    assert show_time(NOW) == "1700000000.000 (2023-11-14T22:13:20Z)"
    assert show_time(float("nan")) == "nan" and show_time(-1e300) == "-1e+300"


def test_late_reasons_quote_the_watermark_at_each_event() -> None:
    """Issue 11 item 9: a late event's reason quotes the watermark that closed its window (the
    largest event time before it), not the partition's watermark at the batch's end. Catches
    quoting ``state.max_ts`` after the batch (here 5 h later than what closed the window)."""
    settings = Settings(window="1h")
    engine = Engine(settings.engine_config(), scorer_factory("ewma-2", settings)())
    spec = engine.config.trend.window
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600
    times = np.array([t0 + 10, t0 + 7200 + 5, t0 + 20, t0 + 5 * 3600 + 1, t0 + 3600 + 30])
    codes = engine.state.catalog.codes(["a", "b", "a", "c", "d"])
    before = engine.state.max_ts
    _, late = engine.ingest(codes, times, None)
    assert late.tolist() == [False, False, True, False, True]
    first, second = late_reasons(spec, times, late, before)
    assert f"event time {show_time(t0 + 20)} is in window [{int(t0)}, {int(t0) + 3600})" in first
    assert f"partition watermark {show_time(t0 + 7205)} = max event time" in first
    assert f"partition watermark {show_time(t0 + 5 * 3600 + 1)}" in second
    # The next batch: the watermark carried over from the one before.
    before = engine.state.max_ts
    more = np.array([t0 + 40])
    _, late = engine.ingest(engine.state.catalog.codes(["a"]), more, None)
    (carried,) = late_reasons(spec, more, late, before)
    assert f"partition watermark {show_time(t0 + 5 * 3600 + 1)}" in carried


def test_a_batch_that_repeats_its_records_applies_each_once() -> None:
    """The Faust runtime can hand the worker records fetched before a seek back followed by
    the same records again (``0..85, 0..85``). The duplicate check looked at the first record
    only, so both copies were applied: every event twice, the second copy late (seen on the
    broker as 162 events applied of 81 and 82 late). The partition's real processor, with a
    producer that batches but never connects, applies each offset once."""
    from aiokafka import AIOKafkaProducer

    async def scenario() -> tuple[object, int]:
        settings = Settings(window="1h", scorer="ewma-2", partitions=1, metrics_port=0)
        worker = Worker(settings, scorer_factory=scorer_factory("ewma-2", settings))
        topics = [settings.events_topic, settings.scores_topic, settings.dlq_topic]
        worker.topic_partitions = dict.fromkeys([*topics, worker.partials_topic], 1)
        worker.events_partitions = 1
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
        worker.sender = BatchSender(producer)  # never started: nothing is sent
        processor = worker._processor(0, None)
        run = [
            _record(i, b"1", orjson.dumps({"user_id": "u", "item_id": "1", "ts": 1000 + 100 * i}))
            for i in range(86)
        ]
        processor.process(run + run)
        processor.process(run[40:50] + run[80:] + run[:3])  # all seen: skipped
        await producer.stop()
        return processor.counters, processor.offset

    counters, offset = asyncio.run(scenario())
    assert offset == 85
    assert counters == Counters(
        records=86, events=86, malformed=0, late=0, windows=2, duplicates=86 + 19
    )


def test_dead_letter_record_round_trip() -> None:
    letter = DeadLetter(
        "malformed", "bad_json", "Event: not valid JSON", "ev", 3, 17, 99, b"k", b"\xff" * 10
    )
    key, value, headers = dead_letter_record(letter, "w1")
    back = read_dead_letter(SimpleNamespace(key=key, value=value, headers=headers))
    assert (back.kind, back.category, back.reason, back.source) == (
        "malformed",
        "bad_json",
        "Event: not valid JSON",
        ("ev", 3, 17),
    )
    assert back.value == b"\xff" * 10 and back.truncated_from is None
    huge = dataclasses.replace(letter, value=b"y" * (DLQ_MAX_VALUE_BYTES + 5))
    key, value, headers = dead_letter_record(huge, "w1")
    back = read_dead_letter(SimpleNamespace(key=key, value=value, headers=headers))
    assert len(value) == DLQ_MAX_VALUE_BYTES and back.truncated_from == DLQ_MAX_VALUE_BYTES + 5
    null = dataclasses.replace(letter, value=None)
    key, value, headers = dead_letter_record(null, "w1")
    assert read_dead_letter(SimpleNamespace(key=key, value=value, headers=headers)).value is None


def _snapshot(end: int, items: list[tuple[str, float]], model: str = "m@1") -> TrendingSnapshot:
    return TrendingSnapshot(
        window_start=end - 10,
        window_end=end,
        model_version=model,
        items=tuple(
            TrendingItem(item_id=i, rank=r, score=s) for r, (i, s) in enumerate(items, start=1)
        ),
        changed_items=len(items),
        events=float(len(items)),
    )


def test_merge_trending_ranks_by_score_then_numeric_id() -> None:
    merged = merge_trending(
        [_snapshot(10, [("10", 2.0), ("3", 1.0)]), _snapshot(10, [("9", 2.0), ("4", 1.5)])], 3
    )
    assert [(i.item_id, i.rank) for i in merged.items] == [("9", 1), ("10", 2), ("4", 3)]
    assert merged.changed_items == 4 and merged.events == 4.0


def _partial(offset: int, partition: int, index: int, items: list[tuple[str, float]]) -> object:
    value = {
        "kind": "window",
        "partition": partition,
        "partitions": 2,
        "window_index": index,
        "snapshot": _snapshot((index + 1) * 10, items).model_dump(mode="json"),
    }
    return SimpleNamespace(offset=offset, value=orjson.dumps(value))


def _progress(offset: int, partition: int, closed: int | None, idle: float) -> object:
    value = {
        "kind": "progress",
        "partition": partition,
        "partitions": 2,
        "closed_through": closed,
        "idle_s": idle,
    }
    return SimpleNamespace(offset=offset, value=orjson.dumps(value))


def test_trending_merger_waits_for_every_partition_then_publishes_in_order() -> None:
    merger = TrendingMerger(top_n=5, idle_timeout=30.0)
    merger.feed([_partial(0, 0, 1, [("a", 1.0)]), _partial(1, 0, 2, [("b", 1.0)])])
    assert merger.ready() == [] and merger.commit_offset() == 0
    merger.feed([_partial(2, 1, 1, [("c", 2.0)])])
    published = merger.ready()
    assert [s.window_end for s in published] == [20]
    assert [i.item_id for i in published[0].items] == ["c", "a"]
    assert merger.commit_offset() == 1  # window 2's partial from partition 0 is still pending
    # Partition 1 closed past window 2 without data in it: window 2 goes out without it.
    merger.feed([_progress(3, 1, 3, 0.0)])
    assert [s.window_end for s in merger.ready()] == [30]
    assert merger.commit_offset() == 4
    # A repeat of an already published window is ignored.
    merger.feed([_partial(4, 1, 1, [("c", 2.0)])])
    assert merger.ready() == [] and merger.pending == {}


def test_trending_merger_does_not_wait_for_an_idle_partition() -> None:
    merger = TrendingMerger(top_n=5, idle_timeout=30.0)
    merger.feed([_partial(0, 0, 5, [("a", 1.0)]), _progress(1, 1, None, 5.0)])
    assert merger.ready() == []
    merger.feed([_progress(2, 1, None, 31.0)])
    assert [s.window_end for s in merger.ready(time.monotonic())] == [60]


@pytest.mark.kafka
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])
def test_state_store_round_trip_in_chunks_and_generations(
    kafka_bootstrap: str,
    kafka_topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    chunk_bytes: int,
) -> None:
    import streams.kafka.state as state_module

    monkeypatch.setattr(state_module, "CHUNK_BYTES", chunk_bytes)
    topic = kafka_topic_factory(partitions=2, prefix="changelog")
    settings = unique_settings(kafka_bootstrap, "store")

    async def scenario() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            sender = BatchSender(producer)
            store = StateStore(settings, topic)
            assert await store.load([0, 1]) == {0: None, 1: None}
            payloads = [{"n": n, "blob": list(range(n * 50))} for n in range(1, 4)]
            for n, payload in enumerate(payloads):
                store.save(sender, 1, 100 + n, payload)
                await sender.flush()
            fresh = StateStore(settings, topic)
            loaded = await fresh.load([0, 1])
            assert loaded[0] is None
            assert loaded[1] is not None
            assert (loaded[1].offset, loaded[1].payload) == (102, payloads[-1])
            # The next save by the new owner continues the generations and tombstones the old.
            fresh.save(sender, 1, 103, {"n": 4})
            await sender.flush()
            again = await StateStore(settings, topic).load([1])
            assert again[1] is not None and again[1].payload == {"n": 4}
            # A zombie (a stale owner still writing after a rebalance) and the new owner write
            # interleaved: the header that lands last wins, with its own chunks intact.
            zombie, owner = StateStore(settings, topic), StateStore(settings, topic)
            await zombie.load([1])
            await owner.load([1])
            big = {"blob": list(range(400))}
            z_records, _ = zombie.records(1, 200, {**big, "who": "zombie"})
            o_records, _ = owner.records(1, 300, {**big, "who": "owner"})
            header_at = next(i for i, (key, _) in enumerate(o_records) if key == b"1")
            interleaved = o_records[:header_at] + z_records + o_records[header_at:]
            for key, value in interleaved:
                sender.add(topic, 1, key, value)
            await sender.flush()
            final = await StateStore(settings, topic).load([1])
            assert final[1] is not None
            assert (final[1].offset, final[1].payload["who"]) == (300, "owner")
        finally:
            await producer.stop()

    asyncio.run(scenario())


@pytest.mark.kafka
def test_batch_sender_keeps_order_across_batches(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(partitions=2, prefix="sender")

    async def scenario() -> list[bytes]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=4096)
        await producer.start()
        try:
            sender = BatchSender(producer)
            for i in range(3000):
                sender.add(topic, 1, b"k", str(i).encode(), [("h", b"v")])
            assert await sender.flush() == 3000
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            while len(values) < 3000:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    values.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return values

    values = asyncio.run(scenario())
    assert values == [str(i).encode() for i in range(3000)]
    assert list(itertools.islice(values, 2)) == [b"0", b"1"]


@pytest.mark.kafka
def test_a_readers_offset_lookups_do_not_wait_out_its_idle_fetch(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """A reader keeps fetching its assigned partitions, and the broker answers one
    connection's requests in order: each offset lookup waits for the fetch in flight, which the
    broker holds while the partitions are idle. A worker's assignment makes about ten such
    lookups inside the rebalance callback, where no heartbeat goes out, so each must be quick
    (the broker's default hold, 500 ms each, made them outlast a 6 s session timeout)."""
    topic = kafka_topic_factory(partitions=4, prefix="idle")
    tps = [TopicPartition(topic, partition) for partition in range(4)]

    async def scenario() -> list[float]:
        reader = await AiokafkaClients().start_reader(unique_settings(kafka_bootstrap, "idle"))
        try:
            reader.assign(tps)
            await reader.getmany(*tps, timeout_ms=300)  # nothing there: a fetch is held now
            took = []
            for tp in tps * 2:
                started = time.perf_counter()
                await reader.beginning_offsets([tp])
                took.append(time.perf_counter() - started)
            return took
        finally:
            await reader.stop()

    took = sorted(asyncio.run(scenario()))
    assert took[len(took) // 2] < 0.25, took
