"""Embedded replay: an event log through the engine, no broker, in event-time order.

The same :class:`~streams.engine.Engine` the Kafka worker runs, fed in batches from a file.
The log's last window is partial and never scored; with ``test_windows = N`` only the windows
whose *next* window is one of the last N complete ones are scored (and ranked), while the cheap
state updates run over the whole log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from streams.engine import Engine, WindowResult
from streams.eventlog import EventLog
from streams.publish import Publisher

DEFAULT_BATCH = 65_536


@dataclass(frozen=True)
class EvaluationWindows:
    """Which windows of a log get rankings: indices ``first .. last`` (inclusive).

    ``last_complete`` is the last window that ends before the log does; a ranking made at the
    end of window ``t`` is judged on ``t + 1``, so ``last = last_complete - 1``.
    """

    first: int
    last: int
    last_complete: int

    @classmethod
    def of(
        cls, timestamps: np.ndarray, window_seconds: int, test_windows: int | None
    ) -> EvaluationWindows:
        if timestamps.size == 0:
            raise ValueError("the event log has no valid events")
        first_window = int(timestamps.min() // window_seconds)
        # The window holding the last event is partial: the log ends inside it.
        last_complete = int(timestamps.max() // window_seconds) - 1
        last = last_complete - 1
        if last < first_window:
            raise ValueError(
                f"the log spans fewer than two complete windows of {window_seconds} s: "
                "choose a shorter --window"
            )
        first = first_window if test_windows is None else max(first_window, last - test_windows + 1)
        return cls(first=first, last=last, last_complete=last_complete)

    def __len__(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did with every row of its log.

    ``events`` went through the engine; ``partial_window_events`` belong to the log's last,
    incomplete window and were left out (nothing would judge them); ``bad_rows`` could not be
    read; ``skipped_windows`` were empty windows inside gaps of the log that the clock jumped.
    """

    events: int
    bad_rows: int
    late_events: int
    windows_closed: int
    windows_scored: int
    seconds: float
    items: int
    partial_window_events: int = 0
    skipped_windows: int = 0

    def describe(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else float("inf")
        skipped = (
            f", {self.skipped_windows:,} empty windows skipped" if self.skipped_windows else ""
        )
        return (
            f"{self.events:,} events ({self.bad_rows:,} malformed rows skipped, "
            f"{self.late_events:,} late, {self.partial_window_events:,} in the partial last "
            f"window left out) -> {self.windows_closed} windows closed{skipped}, "
            f"{self.windows_scored} scored, {self.items:,} items, "
            f"{self.seconds:.1f} s ({rate:,.0f} events/s)"
        )


def replay(
    log: EventLog,
    engine: Engine,
    publishers: Sequence[Publisher],
    windows: EvaluationWindows,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
) -> ReplaySummary:
    """Feed ``log`` (sorted by time) through ``engine`` and hand every closed window, up to the
    last complete one, to each publisher."""
    started = time.perf_counter()
    log = log.sorted_by_time()
    engine.add_metadata(log.items.values())
    codes = engine.state.catalog.codes(log.item_ids)
    users = log.user_ids
    timestamps = np.asarray(log.timestamps, dtype=np.float64)
    end_ts = float((windows.last_complete + 1) * engine.config.trend.window.length)
    # Events of the partial last window never reach the engine: nothing would judge them.
    usable = int(np.searchsorted(timestamps, end_ts, side="left"))
    closed = scored = late = 0
    bar = tqdm(
        total=usable, unit="ev", unit_scale=True, disable=not progress, desc=f"replay {log.name}"
    )

    def emit(result: WindowResult) -> None:
        nonlocal closed, scored
        if result.window.index > windows.last_complete:
            return
        closed += 1
        scored += int(result.scored)
        for publisher in publishers:
            publisher.publish(result)

    try:
        for start in range(0, usable, batch_size):
            stop = min(start + batch_size, usable)
            # Each window is published as it closes, not when the whole batch is done.
            _, late_mask = engine.ingest(
                codes[start:stop], timestamps[start:stop], on_result=emit, users=users[start:stop]
            )
            late += int(late_mask.sum())
            bar.update(stop - start)
        engine.advance_to(end_ts + engine.config.trend.window.grace, on_result=emit)
    finally:
        bar.close()
        for publisher in publishers:
            publisher.close()
    return ReplaySummary(
        events=usable,
        bad_rows=log.bad_row_count,
        late_events=late,
        windows_closed=closed,
        windows_scored=scored,
        seconds=time.perf_counter() - started,
        items=engine.catalog_size,
        partial_window_events=int(timestamps.shape[0] - usable),
        skipped_windows=engine.state.skipped_windows,
    )
