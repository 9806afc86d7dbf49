"""Where window results go: files, the console, memory (tests), or Kafka (the worker).

A publisher receives every :class:`WindowResult` in window order and is closed at the end.
The engine does not know which publishers it feeds, exactly as it does not know its scorer.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import IO, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import ScoreUpdate, TrendingSnapshot, encode
from streams.engine import WindowResult


class Publisher(Protocol):
    def publish(self, result: WindowResult) -> None: ...

    def close(self) -> None: ...


class MemoryPublisher:
    """Keeps every update and snapshot in lists: the in-memory fake for tests."""

    def __init__(self) -> None:
        self.updates: list[ScoreUpdate] = []
        self.trending: list[TrendingSnapshot] = []
        self.rankings: list[tuple[int, list[str]]] = []

    def publish(self, result: WindowResult) -> None:
        if not result.scored:
            return
        self.updates.extend(result.score_updates())
        self.trending.append(result.trending())
        self.rankings.append((result.window.end, result.ranking()))

    def close(self) -> None:
        return None


class PredictionsWriter:
    """One JSON line per evaluated window: ``{"window_end": ..., "ranking": [...]}``.

    Only windows whose following window is complete are written (``last_window`` is the window
    before the last complete one), so every line can be scored.
    """

    def __init__(self, path: Path, *, depth: int, first_window: int, last_window: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("wb")
        self.depth = depth
        self.first_window = first_window
        self.last_window = last_window
        self.lines = 0

    def publish(self, result: WindowResult) -> None:
        if not (self.first_window <= result.window.index <= self.last_window):
            return
        line = {"window_end": result.window.end, "ranking": result.ranking(self.depth)}
        self._file.write(orjson.dumps(line) + b"\n")
        self.lines += 1

    def close(self) -> None:
        self._file.close()


class ScoresWriter:
    """Every ScoreUpdate as a JSON line, as the ``scores`` topic would carry it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("wb")
        self.lines = 0

    def publish(self, result: WindowResult) -> None:
        if not result.scored:
            return
        for update in result.score_updates():
            self._file.write(encode(update) + b"\n")
            self.lines += 1

    def close(self) -> None:
        self._file.close()


class SnapshotWriter:
    """Retraining rows as Parquet, one partition per window: ``DIR/window_end=<unix s>/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.rows = 0
        self.windows = 0

    def publish(self, result: WindowResult) -> None:
        snapshot = result.snapshot
        if snapshot is None or len(snapshot) == 0:
            return
        table = pa.Table.from_pydict(snapshot.columns())
        partition = self.directory / f"window_end={snapshot.features.window_end}"
        partition.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        temporary = partition / "part-0.parquet.tmp"
        pq.write_table(table, temporary)
        temporary.replace(partition / "part-0.parquet")
        self.rows += table.num_rows
        self.windows += 1

    def close(self) -> None:
        return None


class ConsolePrinter:
    """Prints each scored window's trending items, with explanations when there are any."""

    def __init__(self, top: int = 5, stream: IO[str] | None = None) -> None:
        self.top = top
        self.stream = stream if stream is not None else sys.stdout

    def publish(self, result: WindowResult) -> None:
        if not result.scored:
            return
        snapshot = result.trending()
        start = dt.datetime.fromtimestamp(snapshot.window_start, dt.UTC).date()
        end = dt.datetime.fromtimestamp(snapshot.window_end, dt.UTC).date()
        print(
            f"\n== window {start} .. {end}: {snapshot.events:.0f} events, "
            f"{snapshot.changed_items} items changed, model {snapshot.model_version}",
            file=self.stream,
        )
        for item in snapshot.items[: self.top]:
            name = item.title or f"item {item.item_id}"
            counts = "/".join(f"{c:g}" for c in item.recent_counts)
            print(
                f"  {item.rank:>2}. {name[:48]:<48} score {item.score:6.3f}  "
                f"{item.trend or '':<7} last windows {counts}",
                file=self.stream,
            )
            if item.explanation:
                print(f"      {item.explanation}", file=self.stream)
        self.stream.flush()

    def close(self) -> None:
        return None
