"""``trail worker`` against a real Apache Kafka broker: end to end, recovery, rebalancing.

The reference is the embedded replay: every partition's sub-log (``split_log``) through
``Engine`` + ``replay()`` with the same window and scorer must publish exactly the worker's
ScoreUpdates (all fields); with one partition the worker's scores topic is byte for byte the
``--scores-out`` file of ``trail replay``.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka_support import (
    REPO_ROOT,
    RUNTIMES,
    Expected,
    WorkerProcess,
    assert_same_updates,
    dedupe,
    expected_outputs,
    expected_trending_ends,
    ml100k,
    read_topics,
    score_updates,
    trending_ends,
    unique_settings,
    wait_until,
    windows_by_partition,
)

from schemas import TrendingSnapshot, decode
from streams.eventlog import EventLog
from streams.kafka.faults import CRASH_AFTER_PUBLISH_ENV
from streams.kafka.trending import merge_trending
from streams.kafka_cli import produce_log
from streams.settings import Settings

pytestmark = pytest.mark.kafka

N_SLICE = 20_000
PARTITIONS = 4


def produce(settings: Settings, log: EventLog, start: int = 0, stop: int | None = None) -> None:
    asyncio.run(produce_log(settings, log, start=start, stop=stop))


@pytest.fixture(scope="module")
def slice_log() -> EventLog:
    return ml100k(N_SLICE)


@pytest.fixture(scope="module")
def expected(slice_log: EventLog) -> Expected:
    settings = unique_settings("unused:9092", "expected")
    return expected_outputs(slice_log, PARTITIONS, settings)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module", params=RUNTIMES)
def e2e_run(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    slice_log: EventLog,
) -> tuple[Settings, dict[str, list], Path]:
    tmp = tmp_path_factory.mktemp("e2e")
    settings = unique_settings(kafka_bootstrap, "e2e", runtime=request.param)
    produce(settings, slice_log)
    worker = WorkerProcess(settings, tmp, "e2e", "--until-idle", "3")
    try:
        assert worker.wait(180) == 0, worker.log_text()
    finally:
        worker.close()
    records = read_topics(kafka_bootstrap, settings.scores_topic, settings.trending_topic)
    return settings, records, worker.summary_path


def test_scores_equal_the_embedded_replay_of_each_partition(
    e2e_run: tuple[Settings, dict[str, list], Path], expected: Expected
) -> None:
    settings, records, summary_path = e2e_run
    updates = score_updates(records[settings.scores_topic])
    got, repeats = dedupe(updates)
    assert repeats == 0, "an uninterrupted run publishes every update once"
    assert_same_updates(got, expected)
    assert all(
        r.key == orjson.loads(r.value)["item_id"].encode() for r in records[settings.scores_topic]
    )
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["events_applied"] == N_SLICE
    metrics = summary["metrics"]
    windows = sum(v for k, v in metrics.items() if k.startswith("trail_windows_closed_total"))
    assert windows == sum(len(t) for t in expected.trending)
    assert summary["publish_latency_ms"]["count"] == windows


def test_trending_is_the_merge_of_the_partitions_top_n(
    e2e_run: tuple[Settings, dict[str, list], Path], expected: Expected
) -> None:
    settings, records, _ = e2e_run
    trending = records[settings.trending_topic]
    assert trending and all(r.key == b"global" for r in trending)
    snapshots = [decode(TrendingSnapshot, r.value) for r in trending]
    ends = [s.window_end for s in snapshots]
    assert ends == sorted(set(ends)), "one snapshot per window, in window order"
    # Published: every window that all partitions have closed (none is idle: long timeout).
    assert ends == expected_trending_ends(expected)
    for snapshot in snapshots:
        partials = [
            t for parts in expected.trending for t in parts if t.window_end == snapshot.window_end
        ]
        assert snapshot == merge_trending(partials, settings.top_n)
        assert len(snapshot.items) == settings.top_n


def test_tail_pretty_prints_the_scores(e2e_run: tuple[Settings, dict[str, list], Path]) -> None:
    settings, records, _ = e2e_run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "tail",
            "scores",
            "--broker",
            settings.broker,
            "--topic",
            settings.scores_topic,
            "--from-beginning",
            "--max",
            "5",
            "--timeout",
            "30",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 5
    shown = {
        (u["item_id"], u["rank"])
        for u in (orjson.loads(r.value) for r in records[settings.scores_topic])
    }
    for line in lines:
        match = re.search(r"#(\d+)\s+item (\S+)\s+score", line)
        assert match, line
        assert (match.group(2), int(match.group(1))) in shown


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_partition_is_byte_for_byte_trail_replay(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog, runtime: str
) -> None:
    """With one partition the worker publishes exactly what ``trail replay --scores-out``
    writes for the same slice (same bytes, same order)."""
    csv_path = tmp_path / "slice.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for user, item, ts in zip(
            slice_log.user_ids, slice_log.item_ids, slice_log.timestamps, strict=True
        ):
            writer.writerow([user, item, int(ts)])
    scores_file = tmp_path / "replay-scores.jsonl"
    replayed = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "replay",
            str(csv_path),
            "--window",
            "7d",
            "--scorer",
            "ewma-2",
            "--scores-out",
            str(scores_file),
            "--print-top",
            "0",
            "--no-progress",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TRAIL_CACHE": str(tmp_path / "cache")},
    )
    assert replayed.returncode == 0, replayed.stderr
    settings = unique_settings(kafka_bootstrap, "one", partitions=1, runtime=runtime)
    produce(settings, slice_log)
    worker = WorkerProcess(settings, tmp_path, "one", "--until-idle", "3", items=None)
    try:
        assert worker.wait(180) == 0, worker.log_text()
    finally:
        worker.close()
    published = [
        r.value for r in read_topics(kafka_bootstrap, settings.scores_topic)[settings.scores_topic]
    ]
    lines = scores_file.read_bytes().splitlines()
    assert len(lines) > 1000
    assert published == lines


# ------------------------------------------------------------------------------ recovery
def _mid_window_cut(log: EventLog, around: int) -> int:
    """An event index in the middle of the window that holds event ``around``."""
    length = 7 * 86400
    window = int(log.timestamps[around] // length)
    middle = window * length + length / 2
    return int(np.searchsorted(log.timestamps, middle, side="left"))


def _kill_mid_window_and_restart(
    settings: Settings, tmp_path: Path, slice_log: EventLog, expected: Expected
) -> None:
    cut = _mid_window_cut(slice_log, 12_000)
    produce(settings, slice_log, stop=cut)
    first = WorkerProcess(settings, tmp_path, "first")
    try:
        wait_until(
            lambda: first.total("trail_records_total") >= cut,
            120,
            "the first worker to consume the first part",
        )
        assert first.total("trail_windows_closed_total") > 0
        first.kill()  # kill -9, in the middle of a window
    finally:
        first.close()
    produce(settings, slice_log, start=cut)
    second = WorkerProcess(settings, tmp_path, "second", "--until-idle", "3")
    try:
        assert second.wait(180) == 0, second.log_text()
    finally:
        second.close()
    summary = orjson.loads(second.summary_path.read_bytes())
    resumed = summary["events_applied"]
    # It resumed from the last checkpoint (the last window close before the kill), so it
    # re-applied the killed window's events up to the cut but not everything. The checkpoint
    # covers its whole fetch round, so when the round that closed the last window already
    # held every record up to the cut (a slow scorer makes rounds big), nothing is re-applied.
    assert N_SLICE - cut <= resumed < N_SLICE
    records = read_topics(settings.broker, settings.scores_topic)[settings.scores_topic]
    got, _ = dedupe(score_updates(records))
    assert_same_updates(got, expected)
    expected_windows = windows_by_partition(expected.updates.values(), PARTITIONS)
    assert windows_by_partition(got.values(), PARTITIONS) == expected_windows


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kill_9_mid_window_then_restart_gives_the_same_scores(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog, expected: Expected, runtime: str
) -> None:
    # Checkpoints only at window closes: the open window's events are lost with the process.
    settings = unique_settings(
        kafka_bootstrap, "kill", checkpoint_interval="3600s", batch_size=1000, runtime=runtime
    )
    _kill_mid_window_and_restart(settings, tmp_path, slice_log, expected)


def test_kill_9_with_the_online_river_scorer_gives_the_same_scores(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog
) -> None:
    """River learns online: its weights, its optimizer and the last window's retraining rows
    travel in the checkpoint, so the restarted worker scores exactly like an uninterrupted one."""
    settings = unique_settings(
        kafka_bootstrap, "river", scorer="river", checkpoint_interval="3600s", batch_size=1000
    )
    expected = expected_outputs(slice_log, PARTITIONS, settings)
    _kill_mid_window_and_restart(settings, tmp_path, slice_log, expected)


def test_kill_9_with_the_online_ranker_gives_the_same_scores(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog
) -> None:
    """The online LightGBM ranker refits every window (in a background thread): its training
    groups and models travel in the checkpoint as plain data, so a worker killed mid-window
    and restarted publishes exactly the scores of an uninterrupted embedded replay."""
    settings = unique_settings(
        kafka_bootstrap, "ranker", scorer="ranker", checkpoint_interval="3600s", batch_size=1000
    )
    expected = expected_outputs(slice_log, PARTITIONS, settings)
    versions = {u.model_version for u in expected.updates.values()}
    assert len(versions) == 1 and next(iter(versions)).startswith("ranker@")
    _kill_mid_window_and_restart(settings, tmp_path, slice_log, expected)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_crash_between_publish_and_checkpoint_repeats_with_the_same_keys(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog, expected: Expected, runtime: str
) -> None:
    settings = unique_settings(
        kafka_bootstrap, "crash", checkpoint_interval="3600s", batch_size=2000, runtime=runtime
    )
    produce(settings, slice_log)
    # The test-only seam: die like kill -9 after the third round that published windows,
    # once its outputs are acknowledged and before its checkpoint.
    first = WorkerProcess(settings, tmp_path, "first", env={CRASH_AFTER_PUBLISH_ENV: "3"})
    try:
        assert first.wait(120) == 137, first.log_text()
    finally:
        first.close()
    second = WorkerProcess(settings, tmp_path, "second", "--until-idle", "3")
    try:
        assert second.wait(180) == 0, second.log_text()
    finally:
        second.close()
    records = read_topics(kafka_bootstrap, settings.scores_topic)[settings.scores_topic]
    got, repeats = dedupe(score_updates(records))  # asserts every repeat is identical
    assert repeats > 0, "the windows published before the crash are published again"
    assert_same_updates(got, expected)


# ------------------------------------------------------------------------------ two workers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_two_workers_split_the_partitions_and_survive_one_leaving(
    kafka_bootstrap: str, tmp_path: Path, slice_log: EventLog, expected: Expected, runtime: str
) -> None:
    settings = unique_settings(kafka_bootstrap, "pair", session_timeout_ms=6000, runtime=runtime)
    a = WorkerProcess(settings, tmp_path, "a")
    b = WorkerProcess(settings, tmp_path, "b")
    try:
        wait_until(
            lambda: (
                a.total("trail_assigned_partitions") == 2
                and b.total("trail_assigned_partitions") == 2
            ),
            120,
            "both workers to own two partitions each",
        )
        third = N_SLICE // 3
        produce(settings, slice_log, stop=third)
        wait_until(
            lambda: a.total("trail_records_total") + b.total("trail_records_total") >= third,
            120,
            "the pair to consume the first third",
        )
        assert a.total("trail_records_total") > 0 and b.total("trail_records_total") > 0
        assert a.partitions() | b.partitions() == set(range(PARTITIONS))
        assert not a.partitions() & b.partitions()

        assert b.terminate() == 0, b.log_text()  # b leaves the group
        wait_until(
            lambda: a.total("trail_assigned_partitions") == PARTITIONS,
            120,
            "a to take over every partition",
        )
        before = a.total("trail_records_total")
        produce(settings, slice_log, start=third)
        wait_until(
            lambda: a.total("trail_records_total") >= before + N_SLICE - third,
            120,
            "a to consume the rest",
        )
        wanted = expected_trending_ends(expected)
        wait_until(
            lambda: trending_ends(kafka_bootstrap, settings.trending_topic) == wanted,
            60,
            "the trending merge to publish every complete window",
            interval=1.0,
        )
        assert a.terminate() == 0, a.log_text()
    finally:
        a.close()
        b.close()
    records = read_topics(kafka_bootstrap, settings.scores_topic, settings.trending_topic)
    got, _ = dedupe(score_updates(records[settings.scores_topic]))
    assert_same_updates(got, expected)
    # The trending merge moved with the partials partition; every window once, in order, and
    # each the merge of the four partitions' lists.
    snapshots = [decode(TrendingSnapshot, r.value) for r in records[settings.trending_topic]]
    assert [s.window_end for s in snapshots] == wanted
    for snapshot in snapshots:
        partials = [
            t for parts in expected.trending for t in parts if t.window_end == snapshot.window_end
        ]
        assert snapshot == merge_trending(partials, settings.top_n)
