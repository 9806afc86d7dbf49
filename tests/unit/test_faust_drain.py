"""The Faust runtime's batch drain without a broker: what it hands the worker's round.

The app's consumer and the worker are small fakes here; tests/kafka/test_worker.py runs the
real runtime (its drain included) against a real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from streams.kafka.clients import Fetched, TopicPartition
from streams.kafka.faust_runtime import FaustRuntime
from streams.settings import Settings

pytest.importorskip("faust")  # the runtime seeks Faust's own partition type

EVENTS = "events"
PARTIALS = "app-trending-partials"


def records(first: int, n: int) -> list[Any]:
    return [SimpleNamespace(offset=offset) for offset in range(first, first + n)]


class Member:
    """The worker as the drain sees it: positions, a generation, the lock and the rounds."""

    def __init__(self, positions: dict[int, int]) -> None:
        self.settings = Settings(events_topic=EVENTS)
        self.lock = asyncio.Lock()
        self.generation = 0
        self.positions = positions
        self.applied: list[tuple[int, Fetched]] = []
        self.stopping = asyncio.Event()

    def position(self, partition: int) -> int | None:
        return self.positions.get(partition)

    def stop(self) -> None:
        self.stopping.set()

    def finished(self) -> bool:
        return False

    async def apply_fetch(self, generation: int, batches: Fetched) -> None:
        self.applied.append((generation, dict(batches)))


class Consumer:
    """The app's consumer: hands out the given fetches (``during`` runs in each), then stops
    the worker."""

    def __init__(self, member: Member, fetches: list[Fetched], during: Callable[[], None]) -> None:
        self.should_stop = False
        self.member = member
        self.fetches = fetches
        self.during = during
        self.seeks: list[tuple[str, int, int]] = []

    async def next_fetch(self, timeout: float) -> Fetched:
        if not self.fetches:
            self.member.stop()
            return {}
        self.during()
        return self.fetches.pop(0)

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks += [(tp.topic, tp.partition, offset) for tp, offset in partitions.items()]


def drain(
    member: Member, fetches: list[Fetched], during: Callable[[], None] = lambda: None
) -> Consumer:
    """Run the runtime's drain on ``fetches`` until they are spent."""
    runtime = FaustRuntime()
    runtime._member = member  # type: ignore[assignment]
    consumer = Consumer(member, fetches, during)
    runtime.app = SimpleNamespace(consumer=consumer)
    asyncio.run(runtime._drain(consumer, SimpleNamespace(should_stop=False)))
    return consumer


def test_each_fetch_goes_whole_to_the_round_but_a_partition_past_its_position() -> None:
    """Records after each owned partition's position, of partitions not (or not yet) owned and
    of the partials topic reach the round as fetched; an owned partition whose records start
    past its position is left out and sought back to the record after it."""
    # 0 and 1 applied through offset 9, 2 not owned, 3 owned with nothing applied yet.
    member = Member({0: 9, 1: 9, 3: -1})
    fetch = {
        TopicPartition(EVENTS, 0): records(10, 3),
        TopicPartition(EVENTS, 1): records(15, 2),
        TopicPartition(EVENTS, 2): records(5, 2),
        TopicPartition(EVENTS, 3): records(40, 2),
        TopicPartition(PARTIALS, 0): records(3, 2),
    }
    consumer = drain(member, [fetch])
    kept = {tp: batch for tp, batch in fetch.items() if tp != TopicPartition(EVENTS, 1)}
    assert member.applied == [(0, kept)]
    assert consumer.seeks == [(EVENTS, 1, 10)]


def test_a_fetch_that_a_rebalance_crossed_goes_to_the_round_as_fetched() -> None:
    """A rebalance during the fetch: the round gets it with the generation read before it
    (so the worker puts every partition back where its state is), and nothing is sought from
    the new assignment's positions."""
    member = Member({0: 9})
    fetch = {TopicPartition(EVENTS, 0): records(50, 2)}

    def rebalance() -> None:
        member.generation += 1
        member.positions = {0: 30}

    consumer = drain(member, [fetch], during=rebalance)
    assert member.applied == [(0, fetch)]
    assert consumer.seeks == []
