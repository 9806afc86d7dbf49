"""The Kafka worker without a broker: its rounds, checkpoint order, rebalances, kill -9
recovery and dead-letter routing, on the in-memory Kafka (:mod:`streams.kafka.memory`).

The worker here is the real one (:class:`~streams.kafka.worker.Worker`, its aiokafka-style
``getmany`` runtime, its partition processors, durability pipeline and state store); only
its Kafka clients are the in-memory implementation of the same protocol. The reference is
the embedded replay of each partition's sub-log, as in tests/kafka/test_worker.py (which runs
the same scenarios, and the Faust runtime, against a real broker).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from schemas import ScoreUpdate, TrendingSnapshot, decode
from streams.engine import Engine
from streams.eventlog import EventLog
from streams.kafka.clients import TopicPartition
from streams.kafka.deadletters import read_dead_letter
from streams.kafka.faults import CRASH_AFTER_PUBLISH_ENV, fault_hook
from streams.kafka.memory import KilledError, MemoryBroker
from streams.kafka.memory_clients import MemoryClients
from streams.kafka.state import changelog_topic
from streams.kafka.trending import merge_trending, partials_topic
from streams.kafka.worker import Worker
from streams.kafka_cli import event_values
from streams.partitioning import partition_for, partition_for_key, partitions_of, split_log
from streams.publish import MemoryPublisher
from streams.registry import scorer_factory
from streams.replay import EvaluationWindows, replay
from streams.settings import Settings

PARTITIONS = 4
HOUR = 3600
START = 1_600_000_000.0  # in the past: the worker's future bound dead-letters later times


def synthetic_log(n: int = 2400, windows: int = 8, seed: int = 7) -> EventLog:
    """``n`` events of 24 items by 40 users over ``windows`` hours, sorted by time; popular
    items change from window to window, so the rankings do."""
    rng = np.random.default_rng(seed)
    times = np.sort(START + rng.uniform(0, windows * HOUR, n)).round()
    window = ((times - START) // HOUR).astype(int)
    weights = rng.integers(1, 5, size=(windows, 24)).astype(float)
    items = [str(rng.choice(24, p=weights[w] / weights[w].sum()) + 1) for w in window]
    users = [f"u{rng.integers(40)}" for _ in range(n)]
    return EventLog(
        "synthetic",
        np.asarray(users, dtype=object),
        np.asarray(items, dtype=object),
        times.astype(np.float64),
    )


def settings_for(prefix: str, **overrides: Any) -> Settings:
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "window": "1h",
        "scorer": "ewma-2",
        "events_topic": f"{tag}-events",
        "scores_topic": f"{tag}-scores",
        "trending_topic": f"{tag}-trending",
        "dlq_topic": f"{tag}-events.dlq",
        "items_topic": "",
        "app_id": f"{tag}-app",
        "partitions": PARTITIONS,
        "metrics_port": 0,
        "merge_idle_timeout": "600s",
        "checkpoint_interval": "3600s",  # checkpoints at window closes only
        "batch_size": 200,  # many rounds
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Expected:
    updates: dict[str, ScoreUpdate]  # by idempotency key
    trending: list[list[TrendingSnapshot]]  # per partition, per window


def expected_outputs(log: EventLog, settings: Settings) -> Expected:
    """What the embedded replay of every partition's sub-log publishes (as in
    tests/kafka/kafka_support.py)."""
    make = scorer_factory(settings.scorer, settings)
    updates: dict[str, ScoreUpdate] = {}
    trending: list[list[TrendingSnapshot]] = []
    for sub in split_log(log, PARTITIONS):
        windows = EvaluationWindows.of(sub.timestamps, settings.window_seconds, None)
        engine = Engine(settings.engine_config(), make(), score_from_window=windows.first)
        publisher = MemoryPublisher()
        replay(sub, engine, [publisher], windows, progress=False)
        trending.append(publisher.trending)
        updates.update((u.idempotency_key, u) for u in publisher.updates)
    return Expected(updates, trending)


def produce(
    broker: MemoryBroker, settings: Settings, log: EventLog, start: int = 0, stop: int | None = None
) -> None:
    """``log[start:stop]`` into the events topic, keyed and partitioned as ``trail produce``."""
    broker.create_topic(settings.events_topic, PARTITIONS)
    stop = len(log) if stop is None else stop
    where = partitions_of(log.item_ids[start:stop], PARTITIONS).tolist()
    keys = [i.encode() for i in log.item_ids[start:stop].tolist()]
    for partition, key, value in zip(where, keys, event_values(log, start, stop), strict=True):
        broker.produce(settings.events_topic, partition, key, value)


def worker_on(broker: MemoryBroker, settings: Settings, name: str, **options: Any) -> Worker:
    return Worker(
        settings,
        scorer_factory=scorer_factory(settings.scorer, settings),
        worker_id=name,
        clients=MemoryClients(broker, name),
        **options,
    )


async def until(predicate: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Wait for ``predicate`` (the limit only guards against a hang)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


def published(broker: MemoryBroker, settings: Settings) -> tuple[dict[str, ScoreUpdate], int]:
    """The scores topic's updates by idempotency key, and how many were repeats (each repeat
    asserted identical to the first)."""
    kept: dict[str, ScoreUpdate] = {}
    repeats = 0
    for record in broker.records(settings.scores_topic):
        update = decode(ScoreUpdate, record.value)
        assert record.key == update.item_id.encode()
        first = kept.setdefault(update.idempotency_key, update)
        if first is not update:
            repeats += 1
            assert first == update, f"repeat of {update.idempotency_key} differs"
    return kept, repeats


def complete_windows(expected: Expected) -> list[int]:
    """The windows the merge publishes when no partition is idle: those every one closed."""
    complete_through = min(parts[-1].window_end for parts in expected.trending)
    ends = {t.window_end for parts in expected.trending for t in parts}
    return sorted(w for w in ends if w <= complete_through)


def assert_trending(broker: MemoryBroker, settings: Settings, expected: Expected) -> None:
    """One snapshot per window every partition closed, in order, each the merge of the
    partitions' lists."""
    snapshots = [decode(TrendingSnapshot, r.value) for r in broker.records(settings.trending_topic)]
    assert [s.window_end for s in snapshots] == complete_windows(expected)
    for snapshot in snapshots:
        partials = [
            t for parts in expected.trending for t in parts if t.window_end == snapshot.window_end
        ]
        assert snapshot == merge_trending(partials, settings.top_n)


@dataclass
class Header:
    """A checkpoint header in the changelog, with where the broker's journal has it."""

    partition: int
    offset: int  # the last events offset the checkpoint covers
    sent_at: int  # journal index of its batch's send
    acked_at: int  # ... and of its acknowledgement


def changelog_headers(broker: MemoryBroker, settings: Settings) -> list[Header]:
    topic = changelog_topic(settings)
    sent: dict[int, list[int]] = {}
    out = []
    for index, entry in enumerate(broker.journal):
        if entry.topic != topic:
            continue
        if entry.kind == "sent":
            sent.setdefault(entry.partition, []).append(index)
        elif entry.kind == "acked":
            sent_at = sent[entry.partition].pop(0)  # one partition's batches: first in, first out
            log = broker.records(topic, entry.partition)
            for record in log[entry.offset : entry.offset + entry.count]:
                if record.key == str(entry.partition).encode():
                    offset = int(orjson.loads(record.value)["offset"])
                    out.append(Header(entry.partition, offset, sent_at, index))
    return out


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Run the finalizers of each test's event loop objects inside the test: CPython 3.11.7
    can fail a later ``ast.parse`` (pytest's assertion rewriting of a module imported at the
    session's end) with "AST constructor recursion depth mismatch" when they run in its midst."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def log() -> EventLog:
    return synthetic_log()


@pytest.fixture(scope="module")
def expected(log: EventLog) -> Expected:
    return expected_outputs(log, settings_for("expected"))


# ------------------------------------------------------------------------------ rounds
def test_rounds_publish_exactly_the_embedded_replay(log: EventLog, expected: Expected) -> None:
    """Round after round (200 records a fetch, four partitions, one engine each), the worker
    publishes every update of the embedded replay once, the merged trending list, and at
    shutdown commits every partition's end, each commit after a checkpoint covering it."""
    settings = settings_for("rounds")
    broker = MemoryBroker()
    produce(broker, settings, log)
    worker = worker_on(broker, settings, "a", until_idle=0.3)
    assert asyncio.run(worker.run()) == 0

    got, repeats = published(broker, settings)
    assert repeats == 0
    assert got == expected.updates
    assert_trending(broker, settings, expected)
    assert worker.summary()["events_applied"] == len(log)
    assert worker.summary()["publish_latency_ms"]["count"] == sum(map(len, expected.trending))
    for partition in range(PARTITIONS):
        end = len(broker.records(settings.events_topic, partition))
        tp = TopicPartition(settings.events_topic, partition)
        assert broker.committed(settings.app_id, tp) == end
    # More fetches than one: the rounds, not one big batch, made these outputs.
    assert sum(e.kind == "commit" for e in broker.journal) > PARTITIONS


def test_every_commit_follows_the_acknowledged_checkpoint_that_covers_it(
    log: EventLog,
) -> None:
    """The journal of a whole run: each offset commit of an events partition comes after the
    broker acknowledged a checkpoint of that partition covering every offset below it.
    (Committing first, or without waiting for the checkpoint's ack, fails this.)"""
    settings = settings_for("commits")
    broker = MemoryBroker()
    produce(broker, settings, log)
    assert asyncio.run(worker_on(broker, settings, "a", until_idle=0.3).run()) == 0
    headers = changelog_headers(broker, settings)
    commits = [
        (i, e)
        for i, e in enumerate(broker.journal)
        if e.kind == "commit" and e.topic == settings.events_topic
    ]
    assert commits and headers
    for index, commit in commits:
        covering = [
            h
            for h in headers
            if h.partition == commit.partition
            and h.acked_at < index
            and h.offset + 1 >= commit.offset
        ]
        assert covering, f"commit of {commit.partition}@{commit.offset} has no durable checkpoint"


def test_a_round_checkpoints_only_after_its_outputs_are_acknowledged(log: EventLog) -> None:
    """With the broker holding every ack: the round's outputs are sent, and no checkpoint is
    sent and nothing committed however long the worker goes on; once the outputs are
    acknowledged the checkpoints go out, and only their acknowledgement lets the commits
    through. (A pipeline writing the checkpoint beside its outputs, or committing before the
    checkpoint's ack, fails this.)"""
    settings = settings_for("order", batch_size=10_000)  # one round closes every window
    changelog = changelog_topic(settings)
    outputs = [settings.scores_topic, partials_topic(settings), settings.trending_topic]

    def sent(topic: str) -> int:
        return sum(e.kind == "sent" and e.topic == topic for e in broker.journal)

    def commits() -> int:
        return sum(e.kind == "commit" for e in broker.journal)

    broker = MemoryBroker()
    produce(broker, settings, log)
    broker.hold()
    worker = worker_on(broker, settings, "a")

    async def scenario() -> None:
        task = asyncio.ensure_future(worker.run())
        await until(lambda: broker.held(settings.scores_topic) > 0, "the round's outputs")
        # The next rounds run (empty fetches) while the first one's step waits for its acks:
        # time for a pipeline that does not wait to compress and send its checkpoints.
        rounds = broker.fetches
        await until(lambda: broker.fetches >= rounds + 3, "three more rounds")
        assert sent(changelog) == 0 and commits() == 0
        assert not broker.records(settings.scores_topic)  # nothing acknowledged yet

        broker.release(outputs)
        await until(lambda: sent(changelog) > 0, "the checkpoints")
        for _ in range(200):  # the step's own turns: a commit not awaiting the acks runs now
            await asyncio.sleep(0)
        assert commits() == 0, "committed before the checkpoint was acknowledged"

        broker.release()
        await until(lambda: commits() >= PARTITIONS, "the commits")
        worker.stop()
        assert await task == 0

    asyncio.run(scenario())
    got, _ = published(broker, settings)
    assert len(got) > 0


# ------------------------------------------------------------------------------ recovery
def test_kill_9_between_publish_and_checkpoint_repeats_the_same_records(
    log: EventLog, expected: Expected
) -> None:
    """Worker a dies (the broker cuts it off) right after its second publishing round was
    acknowledged, before that round's checkpoint. Nothing of a reaches the broker after
    that; worker b resumes from a's last checkpoints and re-publishes the windows since, as
    identical records: exactly the replay's updates, some twice."""
    settings = settings_for("crash")
    broker = MemoryBroker()
    produce(broker, settings, log)
    rounds = 0
    killed_at = -1

    def crash() -> None:
        nonlocal rounds, killed_at
        rounds += 1
        if rounds == 2:
            broker.kill("a")
            killed_at = len(broker.journal)

    first = worker_on(broker, settings, "a", after_published=crash)
    with pytest.raises(KilledError):
        asyncio.run(first.run())
    assert rounds == 2
    assert not [e for e in broker.journal[killed_at:] if e.process == "a"], (
        "a wrote after its death"
    )
    windows_before = {u.window_end for u in published(broker, settings)[0].values()}

    second = worker_on(broker, settings, "b", until_idle=0.3)
    assert asyncio.run(second.run()) == 0
    got, repeats = published(broker, settings)
    assert repeats > 0, "the windows a published after its last checkpoint come again"
    assert got == expected.updates
    assert windows_before < {u.window_end for u in got.values()}
    assert second.summary()["events_applied"] < len(log)  # it resumed, not restarted


# ------------------------------------------------------------------------------ rebalancing
def test_a_second_worker_takes_half_and_hands_it_back(log: EventLog, expected: Expected) -> None:
    """a owns all four partitions; b joins (two each), then leaves (a owns four again). Every
    revocation checkpoints what was applied, so no record is applied twice and no update is
    published twice; the merge moves with the partials partition and publishes every
    complete window once, in order."""
    settings = settings_for("pair")
    broker = MemoryBroker()
    third = len(log) // 3
    produce(broker, settings, log, stop=third)
    a = worker_on(broker, settings, "a")
    b = worker_on(broker, settings, "b")

    async def scenario() -> None:
        task_a = asyncio.ensure_future(a.run())
        await until(lambda: a.events_applied == third, "a to apply the first third")
        assert sorted(a.processors) == [0, 1, 2, 3]
        task_b = asyncio.ensure_future(b.run())
        await until(lambda: len(a.processors) == 2 and len(b.processors) == 2, "a and b to split")
        assert not set(a.processors) & set(b.processors)
        produce(broker, settings, log, start=third, stop=2 * third)
        await until(lambda: a.events_applied + b.events_applied == 2 * third, "the second third")
        assert b.events_applied > 0
        b.stop()
        assert await task_b == 0
        await until(lambda: len(a.processors) == PARTITIONS, "a to take every partition back")
        produce(broker, settings, log, start=2 * third)
        await until(lambda: a.events_applied + b.events_applied == len(log), "the rest")
        wanted = len(complete_windows(expected))
        await until(lambda: len(broker.records(settings.trending_topic)) >= wanted, "the merge")
        a.stop()
        assert await task_a == 0

    asyncio.run(scenario())
    assert a.events_applied + b.events_applied == len(log), "a record was applied twice"
    got, repeats = published(broker, settings)
    assert repeats == 0
    assert got == expected.updates
    assert_trending(broker, settings, expected)


# ------------------------------------------------------------------------------ dead letters
def test_bad_late_and_future_records_go_to_the_dead_letter_topic(
    log: EventLog, expected: Expected
) -> None:
    """Malformed records (bad JSON, no key, a key that is not the item), an event of a window
    its partition had closed, and one from past the clock bound: each is a dead letter with
    its kind, category and source, in the dead-letter partition of its key (its source
    partition without a key); the good events publish what the replay publishes. The
    dead-letter topic has 3 partitions, the events topic 4, so the key's partition is not the
    source partition (routing by the source partition fails this)."""
    settings = settings_for("dlq")
    topic = settings.events_topic
    broker = MemoryBroker()
    broker.create_topic(settings.dlq_topic, 3)  # existing: the worker keeps its 3 partitions
    produce(broker, settings, log)
    five = partition_for("5", PARTITIONS)
    late = orjson.dumps({"user_id": "u1", "item_id": "5", "ts": START + 10})
    future = orjson.dumps({"user_id": "u1", "item_id": "5", "ts": time.time() + 86_400})
    good_value = orjson.dumps({"user_id": "u1", "item_id": "5", "ts": START + 20})
    bad = {
        broker.produce(topic, five, b"5", b"{not json"): ("malformed", "bad_json"),
        broker.produce(topic, 1, None, good_value): ("malformed", "missing_key"),
        broker.produce(topic, five, b"6", good_value): ("malformed", "key_mismatch"),
        broker.produce(topic, five, b"5", late): ("late", "late"),
        broker.produce(topic, five, b"5", future): ("malformed", "future"),
    }
    worker = worker_on(broker, settings, "a", until_idle=0.3)
    assert asyncio.run(worker.run()) == 0

    letters = broker.records(settings.dlq_topic)
    dlq_partitions = len(broker.logs[settings.dlq_topic])
    assert dlq_partitions == 3
    seen = {}
    for record in letters:
        letter = read_dead_letter(record)
        expected_partition = (
            letter.partition % dlq_partitions
            if record.key is None
            else partition_for_key(record.key, dlq_partitions)
        )
        assert record.partition == expected_partition
        assert letter.topic == topic
        seen[(letter.partition, letter.offset)] = (letter.kind, letter.category)
    assert partition_for_key(b"5", 3) != five % 3  # the routing is put to the test
    # The missing-key record is in partition 1; the others in item 5's partition.
    wanted = {}
    for offset, kinds in bad.items():
        partition = 1 if kinds[1] == "missing_key" else five
        wanted[(partition, offset)] = kinds
    assert seen == wanted
    counted = worker.metrics.snapshot()
    assert counted["trail_dead_letters_total{kind=late}"] == 1
    assert counted["trail_dead_letters_total{kind=malformed}"] == 4
    got, repeats = published(broker, settings)
    assert repeats == 0 and got == expected.updates


# ------------------------------------------------------------------------------ the fault seam
def test_the_crash_hook_comes_only_from_its_variable() -> None:
    """No variable, no hook; a bad value is a clear error, not a worker that never crashes."""
    assert fault_hook({}) is None
    assert fault_hook({"TRAIL_OTHER": "3"}) is None
    with pytest.raises(ValueError, match=CRASH_AFTER_PUBLISH_ENV):
        fault_hook({CRASH_AFTER_PUBLISH_ENV: "three"})
    with pytest.raises(ValueError, match="at least 1"):
        fault_hook({CRASH_AFTER_PUBLISH_ENV: "0"})


def test_the_crash_hook_exits_like_kill_9_on_its_nth_call() -> None:
    """The hook the kill -9 tests set (through the variable) ends the process with status 137
    at its N-th call, not before."""
    code = (
        "import os, sys\n"
        "from streams.kafka.faults import fault_hook\n"
        "hook = fault_hook(os.environ)\n"
        "hook(); print('after 1', flush=True)\n"
        "hook(); print('after 2', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, CRASH_AFTER_PUBLISH_ENV: "2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 137
    assert result.stdout.splitlines() == ["after 1"]
