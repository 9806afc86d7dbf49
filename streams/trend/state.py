"""The per-item trend state of one stream: counts in open windows, statistics of closed ones.

Per event the work is O(1) and batched: find the event's window and add its weight to that
window's count of the item. Only at a window's close do the statistics of the items that
changed move, once each, in one vectorised step. Everything round-trips through a plain,
versioned dict (no pickle), so it can live in a changelog topic or a JSON file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import sparse

from schemas import ItemMeta
from streams.trend.features import FeatureFrame, TrendThresholds
from streams.trend.stats import (
    DecayingMeans,
    RecentCounts,
    burstiness,
    slope_and_acceleration,
)
from streams.trend.windows import WindowSpec

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

STATE_VERSION = 1
REQUIRED_HALF_LIVES = (1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class TrendConfig:
    """Everything that shapes the trend statistics; frozen so a running state cannot drift.

    >>> TrendConfig(window=WindowSpec(length=604800)).half_lives
    (1.0, 2.0, 4.0, 8.0)
    """

    window: WindowSpec
    half_lives: tuple[float, ...] = REQUIRED_HALF_LIVES
    recent_windows: int = 4
    thresholds: TrendThresholds = field(default_factory=TrendThresholds)

    def __post_init__(self) -> None:
        missing = [h for h in REQUIRED_HALF_LIVES if h not in self.half_lives]
        if missing:
            raise ValueError(f"half_lives must include {REQUIRED_HALF_LIVES}, missing {missing}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window.length,
            "grace_seconds": self.window.grace,
            "half_lives": list(self.half_lives),
            "recent_windows": self.recent_windows,
            "new_item_windows": self.thresholds.new_item_windows,
            "rising_momentum": self.thresholds.rising_momentum,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrendConfig:
        return cls(
            window=WindowSpec(length=int(data["window_seconds"]), grace=int(data["grace_seconds"])),
            half_lives=tuple(float(h) for h in data["half_lives"]),
            recent_windows=int(data["recent_windows"]),
            thresholds=TrendThresholds(
                new_item_windows=int(data["new_item_windows"]),
                rising_momentum=float(data["rising_momentum"]),
            ),
        )


class ItemCatalog:
    """Item ids and their dense indices, plus metadata and a deterministic tie order.

    >>> catalog = ItemCatalog()
    >>> catalog.codes(np.array(["10", "9", "10"], dtype=object)).tolist()
    [0, 1, 0]
    >>> catalog.tie_order().tolist()  # every id is an integer: numeric order, 9 before 10
    [1, 0]
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self.meta: dict[str, ItemMeta] = {}
        self._integer_ids: list[int] = []
        self._all_integer = True
        self._tie_order: IndexArray | None = None
        self._id_array: npt.NDArray[np.object_] = np.empty(0, dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, item_id: str) -> int:
        code = len(self.ids)
        self.ids.append(item_id)
        self._index[item_id] = code
        if self._all_integer:
            try:
                self._integer_ids.append(int(item_id))
            except ValueError:
                self._all_integer = False
        self._tie_order = None
        return code

    def code(self, item_id: str) -> int:
        """The index of ``item_id``, registering it when new."""
        found = self._index.get(item_id)
        return found if found is not None else self._add(item_id)

    def codes(self, item_ids: Sequence[str] | npt.NDArray[Any]) -> IndexArray:
        """Indices of many ids at once; only distinct ids pay a dictionary lookup."""
        labels, uniques = pd.factorize(np.asarray(item_ids, dtype=object), sort=False)
        unique_codes = np.fromiter(
            (self.code(str(u)) for u in uniques), dtype=np.int64, count=len(uniques)
        )
        codes: IndexArray = unique_codes[labels]
        return codes

    def id_array(self) -> npt.NDArray[np.object_]:
        """The ids as a numpy object array (index it with catalog codes)."""
        if self._id_array.shape[0] != len(self.ids):
            self._id_array = np.asarray(self.ids, dtype=object)
        return self._id_array

    def add_metadata(self, items: Iterable[ItemMeta]) -> None:
        for meta in items:
            self.meta[meta.item_id] = meta

    def tie_order(self) -> IndexArray:
        """Position of every item when sorted by id: numerically when every id is an integer,
        else as strings. Rankings break score ties by it."""
        if self._tie_order is None or self._tie_order.shape[0] != len(self.ids):
            if self._all_integer:
                order = np.argsort(np.asarray(self._integer_ids, dtype=np.int64), kind="stable")
            else:
                order = np.argsort(np.asarray(self.ids, dtype=object), kind="stable")
            positions = np.empty(len(self.ids), dtype=np.int64)
            positions[order] = np.arange(len(self.ids))
            self._tie_order = positions
        return self._tie_order


@dataclass(frozen=True)
class ClosedWindow:
    """A window that just closed: which items changed and by how much."""

    index: int
    start: int
    end: int
    changed: IndexArray
    counts: FloatArray
    events: float


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: windows it closed (in order) and which of its events were late."""

    closed: list[ClosedWindow]
    late: npt.NDArray[np.bool_]


class TrendState:
    """Trend statistics of every item of one stream.

    >>> state = TrendState(TrendConfig(window=WindowSpec(length=10)))
    >>> codes = state.catalog.codes(np.array(["a", "b", "a", "a"], dtype=object))
    >>> result = state.ingest(codes, np.array([1.0, 2.0, 15.0, 31.0]))
    >>> [(w.index, w.counts.tolist()) for w in result.closed]  # 31 closes windows 0..2
    [(0, [1.0, 1.0]), (1, [1.0]), (2, [])]
    >>> frame = state.features(state.seen_rows(), window=2)
    >>> frame.item_ids.tolist(), frame.recent.tolist()
    (['a', 'b'], [[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    """

    def __init__(self, config: TrendConfig) -> None:
        self.config = config
        self.catalog = ItemCatalog()
        self._means = DecayingMeans(config.half_lives)
        self._recent = RecentCounts(config.recent_windows)
        self._first_window = np.zeros(0, dtype=np.int64)
        self._total = np.zeros(0)
        self._open: dict[int, FloatArray] = {}
        self._window_events: dict[int, float] = {}
        self._last_events = 0.0
        self.closed_through: int | None = None
        self.max_ts = -np.inf
        self.late_events = 0
        # Category statistics: a short and a long EW mean per category.
        self._category_names: list[str] = []
        self._category_index: dict[str, int] = {}
        self._category_means = DecayingMeans((1.0, 8.0))
        self._membership_cache: sparse.csr_matrix | None = None

    # ----------------------------------------------------------------- ingest
    def _reserve(self, size: int) -> None:
        current = self._first_window.shape[0]
        if size <= current:
            return
        capacity = max(size, 2 * current, 64)
        first = np.full(capacity, -1, dtype=np.int64)
        first[:current] = self._first_window
        total = np.zeros(capacity)
        total[:current] = self._total
        self._first_window, self._total = first, total
        for window, counts in self._open.items():
            grown = np.zeros(capacity)
            grown[: counts.shape[0]] = counts
            self._open[window] = grown

    def ingest(
        self,
        codes: IndexArray,
        timestamps: FloatArray,
        weights: FloatArray | None = None,
        on_close: Callable[[ClosedWindow], None] | None = None,
    ) -> IngestResult:
        """Apply a batch of events (catalog codes, event times, optional weights) in order.

        Windows close as the watermark (largest event time so far minus grace) passes their
        end, at the exact event that moves it, so a batch gives the same result as feeding its
        events one at a time. ``on_close`` runs right after each close, before any later event
        of the batch is applied: the moment to read that window's features. Events whose
        window has already closed are late: they are not applied, and ``late`` marks them so
        the caller can dead-letter them.
        """
        n = codes.shape[0]
        late = np.zeros(n, dtype=bool)
        closed: list[ClosedWindow] = []
        if n == 0:
            return IngestResult(closed, late)
        weights = np.ones(n) if weights is None else weights
        self._reserve(len(self.catalog))
        spec = self.config.window
        windows = spec.indices_of(timestamps)
        if self.closed_through is None:
            self.closed_through = int(windows[0]) - 1
        watermark = np.maximum.accumulate(np.maximum(timestamps, self.max_ts))
        closed_level = np.maximum(
            (np.floor_divide(watermark - spec.grace, spec.length) - 1).astype(np.int64),
            self.closed_through,
        )
        boundaries = np.flatnonzero(np.diff(closed_level)) + 1
        starts = np.concatenate(([0], boundaries))
        ends = np.concatenate((boundaries, [n]))
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            level = int(closed_level[start])
            while self.closed_through < level:
                closed.append(self._close(self.closed_through + 1))
                if on_close is not None:
                    on_close(closed[-1])
            segment_windows = windows[start:end]
            segment_late = segment_windows <= level
            late[start:end] = segment_late
            self._apply(
                codes[start:end][~segment_late],
                segment_windows[~segment_late],
                weights[start:end][~segment_late],
            )
        self.max_ts = float(watermark[-1])
        self.late_events += int(late.sum())
        return IngestResult(closed, late)

    def _apply(self, codes: IndexArray, windows: IndexArray, weights: FloatArray) -> None:
        if codes.shape[0] == 0:
            return
        size = self._first_window.shape[0]
        distinct = np.unique(windows)
        for window in distinct.tolist():
            in_window = slice(None) if distinct.size == 1 else windows == window
            counts = self._open.get(window)
            if counts is None:
                counts = self._open[window] = np.zeros(size)
            window_codes = codes[in_window]
            window_weights = weights[in_window]
            if window_codes.shape[0] * 8 > size:
                counts += np.bincount(window_codes, weights=window_weights, minlength=size)
            else:
                np.add.at(counts, window_codes, window_weights)
            self._window_events[window] = self._window_events.get(window, 0.0) + float(
                window_weights.sum()
            )

    def advance_to(
        self, watermark_ts: float, on_close: Callable[[ClosedWindow], None] | None = None
    ) -> list[ClosedWindow]:
        """Close every window that a watermark at ``watermark_ts`` closes, with no new event
        (end of a replay, or an idle live stream)."""
        if self.closed_through is None:
            return []
        level = self.config.window.closed_through(watermark_ts)
        closed = []
        while self.closed_through < level:
            closed.append(self._close(self.closed_through + 1))
            if on_close is not None:
                on_close(closed[-1])
        self.max_ts = max(self.max_ts, watermark_ts)
        return closed

    def _close(self, window: int) -> ClosedWindow:
        counts = self._open.pop(window, None)
        events = self._window_events.pop(window, 0.0)
        if counts is None:
            changed = np.zeros(0, dtype=np.int64)
            changed_counts = np.zeros(0)
        else:
            changed = np.flatnonzero(counts > 0).astype(np.int64)
            changed_counts = counts[changed]
        self._means.update(changed, window, changed_counts)
        self._recent.update(changed, window, changed_counts)
        unseen = changed[self._first_window[changed] < 0]
        self._first_window[unseen] = window
        self._total[changed] += changed_counts
        self._update_categories(changed, changed_counts, window)
        self._last_events = events
        self.closed_through = window
        spec = self.config.window
        return ClosedWindow(
            window, spec.start_of(window), spec.end_of(window), changed, changed_counts, events
        )

    # -------------------------------------------------------------- categories
    def add_metadata(self, items: Iterable[ItemMeta]) -> None:
        """Register item metadata (titles, categories) used by prompts and category momentum."""
        items = list(items)
        self.catalog.add_metadata(items)
        for meta in items:
            for name in meta.categories:
                if name not in self._category_index:
                    self._category_index[name] = len(self._category_names)
                    self._category_names.append(name)

    def _membership(self) -> sparse.csr_matrix:
        """Items x categories 0/1 matrix, rebuilt only when the catalog or metadata grew."""
        shape = (len(self.catalog), len(self._category_names))
        if self._membership_cache is None or self._membership_cache.shape != shape:
            rows: list[int] = []
            columns: list[int] = []
            for item_id, meta in self.catalog.meta.items():
                code = self.catalog.code(item_id)
                for name in meta.categories:
                    rows.append(code)
                    columns.append(self._category_index[name])
            shape = (len(self.catalog), len(self._category_names))
            data = np.ones(len(rows))
            self._membership_cache = sparse.csr_matrix((data, (rows, columns)), shape=shape)
        return self._membership_cache

    def _update_categories(self, changed: IndexArray, counts: FloatArray, window: int) -> None:
        if not self._category_names or changed.shape[0] == 0:
            return
        totals = np.asarray(self._membership()[changed].T @ counts).ravel()
        active = np.flatnonzero(totals > 0).astype(np.int64)
        self._category_means.update(active, window, totals[active])

    def _category_momentum(self, rows: IndexArray, window: int) -> FloatArray:
        if not self._category_names:
            return np.full(rows.shape[0], np.nan)
        all_categories = np.arange(len(self._category_names), dtype=np.int64)
        means = self._category_means.get(all_categories, window)
        momentum = (means[:, 0] + 1.0) / (means[:, 1] + 1.0)
        membership = self._membership()[rows]
        members = np.asarray(membership.sum(axis=1)).ravel()
        summed = np.asarray(membership @ momentum).ravel()
        result: FloatArray = np.where(members > 0, summed / np.maximum(members, 1), np.nan)
        return result

    def counts_in(self, rows: IndexArray, window: int) -> FloatArray:
        """Counts of ``rows`` in closed window ``window`` (within the recent horizon)."""
        counts: FloatArray = self._recent.get(rows, window)[:, -1]
        return counts

    # ----------------------------------------------------------------- reading
    def seen_rows(self) -> IndexArray:
        """Catalog indices of every item with at least one event in a closed window."""
        rows: IndexArray = np.flatnonzero(self._first_window >= 0).astype(np.int64)
        return rows

    def features(self, rows: IndexArray, window: int) -> FeatureFrame:
        """Trend features of ``rows`` as of the close of ``window`` (which must be closed)."""
        spec = self.config.window
        recent = self._recent.get(rows, window)
        ew = self._means.get(rows, window)
        count = recent[:, -1].copy()
        long_column = self.config.half_lives.index(8.0)
        short_column = self.config.half_lives.index(1.0)
        momentum = (ew[:, short_column] + 1.0) / (ew[:, long_column] + 1.0)
        slope, accel = slope_and_acceleration(recent)
        age = window - self._first_window[rows]
        events = self._last_events if window == self.closed_through else float(count.sum())
        share = count / events if events > 0 else np.zeros_like(count)
        return FeatureFrame(
            window_index=window,
            window_start=spec.start_of(window),
            window_end=spec.end_of(window),
            window_seconds=spec.length,
            rows=rows,
            item_ids=self.catalog.id_array()[rows],
            count=count,
            total=self._total[rows].copy(),
            recent=recent,
            half_lives=self.config.half_lives,
            ew=ew,
            momentum=momentum,
            slope=slope,
            accel=accel,
            burstiness=burstiness(recent),
            age_windows=age,
            share=share,
            category_momentum=self._category_momentum(rows, window),
            trend=self.config.thresholds.categorise(momentum, age),
            meta=self.catalog.meta,
        )

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data, tagged with :data:`STATE_VERSION`."""
        size = len(self.catalog)
        # Metadata can register items after the last batch grew the arrays.
        self._reserve(size)
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "item_ids": list(self.catalog.ids),
            "metadata": [m.model_dump(mode="json") for m in self.catalog.meta.values()],
            "first_window": self._first_window[:size].tolist(),
            "total": self._total[:size].tolist(),
            "means": self._means.state_dict(size),
            "recent": self._recent.state_dict(size),
            "category_means": self._category_means.state_dict(len(self._category_names)),
            "open": {
                str(window): {
                    "rows": np.flatnonzero(counts[:size]).tolist(),
                    "counts": counts[:size][counts[:size] != 0].tolist(),
                    "events": self._window_events.get(window, 0.0),
                }
                for window, counts in self._open.items()
            },
            "last_events": self._last_events,
            "closed_through": self.closed_through,
            "max_ts": None if self.max_ts == -np.inf else self.max_ts,
            "late_events": self.late_events,
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> TrendState:
        """Rebuild a state written by :meth:`state_dict`; refuse unknown versions."""
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"trend state version {version!r} is not supported (expected {STATE_VERSION})"
            )
        state = cls(TrendConfig.from_dict(data["config"]))
        for item_id in data["item_ids"]:
            state.catalog.code(item_id)
        state.add_metadata(ItemMeta.model_validate(m) for m in data["metadata"])
        size = len(state.catalog)
        state._reserve(size)
        state._first_window[:size] = np.asarray(data["first_window"], dtype=np.int64)
        state._total[:size] = np.asarray(data["total"], dtype=np.float64)
        state._means = DecayingMeans.from_state_dict(data["means"])
        state._recent = RecentCounts.from_state_dict(data["recent"])
        state._category_means = DecayingMeans.from_state_dict(data["category_means"])
        capacity = state._first_window.shape[0]
        for window_text, open_window in data["open"].items():
            counts = np.zeros(capacity)
            counts[np.asarray(open_window["rows"], dtype=np.int64)] = open_window["counts"]
            state._open[int(window_text)] = counts
            state._window_events[int(window_text)] = float(open_window["events"])
        state._last_events = float(data["last_events"])
        state.closed_through = data["closed_through"]
        state.max_ts = -np.inf if data["max_ts"] is None else float(data["max_ts"])
        state.late_events = int(data["late_events"])
        return state
