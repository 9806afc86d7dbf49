"""The per-item trend state of one stream: events of open windows, statistics of closed ones.

Per event the work is O(1) and batched: find the event's window and append it to that
window's buffer (:mod:`streams.trend.open_windows`). Only at a window's close do the
statistics of the items that changed move, once each, in one vectorised step over that
window's events (whole-window counts here, sub-window and audience signals in
:mod:`streams.trend.subwindow`, category means in :mod:`streams.trend.categories`). Windows
with no events cost nothing however many lie between two events: the clock jumps over them.
Everything round-trips through a plain, versioned dict (no pickle), so it can live in a
changelog topic or a JSON file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import ItemMeta
from streams.trend.catalog import ItemCatalog
from streams.trend.categories import CategoryStats
from streams.trend.features import FeatureFrame, TrendThresholds
from streams.trend.open_windows import ClosedWindow, IngestResult, OpenWindows
from streams.trend.stats import (
    DecayingMeans,
    RecentCounts,
    burstiness,
    slope_and_acceleration,
)
from streams.trend.subwindow import UNKNOWN_USER, SubWindowSignals
from streams.trend.users import hash_user_ids
from streams.trend.windows import WindowSpec, floor_divide

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

STATE_VERSION = 2
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
    #: The set of users seen so far: ``exact`` or a Bloom filter (``bloom:<log2 bits>``).
    seen_users: str = "exact"
    #: Empty windows closed (and scored) right after the last events and right before the
    #: next ones; any others in a gap are skipped in O(1).
    empty_windows: int = 2

    def __post_init__(self) -> None:
        missing = [h for h in REQUIRED_HALF_LIVES if h not in self.half_lives]
        if missing:
            raise ValueError(f"half_lives must include {REQUIRED_HALF_LIVES}, missing {missing}")
        if self.empty_windows < 1:
            raise ValueError(f"empty_windows must be at least 1, got {self.empty_windows}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window.length,
            "grace_seconds": self.window.grace,
            "half_lives": list(self.half_lives),
            "recent_windows": self.recent_windows,
            "new_item_windows": self.thresholds.new_item_windows,
            "rising_momentum": self.thresholds.rising_momentum,
            "seen_users": self.seen_users,
            "empty_windows": self.empty_windows,
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
            seen_users=str(data["seen_users"]),
            empty_windows=int(data["empty_windows"]),
        )


@dataclass(frozen=True)
class WindowOutcome:
    """Per item, what happened in one window: the labels of a ranking made before it.

    ``returning`` counts the distinct users of the item in the window who had been seen
    anywhere before it began: the users whose next-window items HR@10 judges.
    """

    counts: FloatArray
    users: FloatArray
    returning: FloatArray

    def take(self, positions: IndexArray) -> WindowOutcome:
        return WindowOutcome(
            self.counts[positions], self.users[positions], self.returning[positions]
        )


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

    A clock that jumps far ahead closes only the windows next to events (``empty_windows``
    on each side of the gap), not every empty window in between:

    >>> result = state.ingest(state.catalog.codes(["a"]), np.array([1e12]))
    >>> [w.index for w in result.closed], state.skipped_windows > 10**9
    ([3, 4, 5, 99999999998, 99999999999], True)
    """

    def __init__(self, config: TrendConfig) -> None:
        self.config = config
        self.catalog = ItemCatalog()
        self._means = DecayingMeans(config.half_lives)
        self._recent = RecentCounts(config.recent_windows)
        self._first_window = np.zeros(0, dtype=np.int64)
        self._total = np.zeros(0)
        self._open = OpenWindows()
        self._last_events = 0.0
        self.sub = SubWindowSignals(
            config.window.length, config.recent_windows, seen=config.seen_users
        )
        self.closed_through: int | None = None
        self.max_ts = -np.inf
        self.late_events = 0
        #: Empty windows the clock jumped over without closing them one by one.
        self.skipped_windows = 0
        # The last window that had events when it closed (for the empty-window rule).
        self._last_busy: int | None = None
        self.categories = CategoryStats(self.catalog)

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

    def ingest(
        self,
        codes: IndexArray,
        timestamps: FloatArray,
        weights: FloatArray | None = None,
        on_close: Callable[[ClosedWindow], None] | None = None,
        *,
        users: npt.ArrayLike | None = None,
    ) -> IngestResult:
        """Apply a batch of events (catalog codes, event times, optional weights) in order.

        ``users`` are the events' user ids (any values, compared as text), or None when the
        stream has none: then the audience signals (distinct and returning users) stay zero.
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
        weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        hashes = (
            np.full(n, UNKNOWN_USER, dtype=np.uint64) if users is None else hash_user_ids(users)
        )
        self._reserve(len(self.catalog))
        spec = self.config.window
        windows = floor_divide(timestamps, spec.length).astype(np.int64)
        if self.closed_through is None:
            self.closed_through = int(windows[0]) - 1
        watermark = np.maximum.accumulate(np.maximum(timestamps, self.max_ts))
        closed_level = np.maximum(
            (floor_divide(watermark - spec.grace, spec.length) - 1).astype(np.int64),
            self.closed_through,
        )
        boundaries = np.flatnonzero(np.diff(closed_level)) + 1
        starts = np.concatenate(([0], boundaries))
        ends = np.concatenate((boundaries, [n]))
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            level = int(closed_level[start])
            self._close_through(level, closed, on_close)
            segment_windows = windows[start:end]
            segment_late = segment_windows <= level
            if segment_late.any():
                late[start:end] = segment_late
                keep = ~segment_late
                self._open.add(
                    codes[start:end][keep],
                    segment_windows[keep],
                    timestamps[start:end][keep],
                    weights[start:end][keep],
                    hashes[start:end][keep],
                )
            else:
                # Copies, as the masks above make: open windows must not share the caller's
                # arrays, which it may reuse.
                self._open.add(
                    codes[start:end].copy(),
                    segment_windows,
                    timestamps[start:end].copy(),
                    weights[start:end].copy(),
                    hashes[start:end].copy(),
                )
        self.max_ts = float(watermark[-1])
        self.late_events += int(late.sum())
        return IngestResult(closed, late)

    def advance_to(
        self, watermark_ts: float, on_close: Callable[[ClosedWindow], None] | None = None
    ) -> list[ClosedWindow]:
        """Close every window that a watermark at ``watermark_ts`` closes, with no new event
        (end of a replay, or an idle live stream)."""
        if self.closed_through is None:
            return []
        closed: list[ClosedWindow] = []
        self._close_through(self.config.window.closed_through(watermark_ts), closed, on_close)
        self.max_ts = max(self.max_ts, watermark_ts)
        return closed

    def _close_through(
        self,
        level: int,
        closed: list[ClosedWindow],
        on_close: Callable[[ClosedWindow], None] | None,
    ) -> None:
        """Close windows up to ``level``: every one with events, and at most ``empty_windows``
        empty ones after the last busy window and before ``level``; the clock jumps the rest."""
        if self.closed_through is None:
            return
        keep = self.config.empty_windows
        while self.closed_through < level:
            window = self.closed_through + 1
            if window not in self._open:
                after_busy = self._last_busy is not None and window - self._last_busy <= keep
                if not after_busy and level - window >= keep:
                    busy = [w for w in self._open if window < w <= level]
                    target = min(min(busy, default=level + 1), level - keep + 1)
                    if target > window:
                        self.skipped_windows += target - window
                        self.closed_through = target - 1
                        continue
            result = self._close(window)
            closed.append(result)
            if on_close is not None:
                on_close(result)

    def _close(self, window: int) -> ClosedWindow:
        events = self._open.pop(window)
        size = self._first_window.shape[0]
        unit = events.unit_weights()
        # Unit weights: integer counts are the exact sums of ones, found faster.
        counts: FloatArray = np.bincount(
            events.codes, weights=None if unit else events.weights, minlength=size
        ).astype(np.float64, copy=False)
        changed: IndexArray = np.flatnonzero(counts > 0)
        changed_counts = counts[changed]
        if len(events):
            self._last_busy = window
        total_events = float(len(events)) if unit else float(events.weights.sum())
        self._means.update(changed, window, changed_counts)
        self._recent.update(changed, window, changed_counts)
        unseen = changed[self._first_window[changed] < 0]
        self._first_window[unseen] = window
        self._total[changed] += changed_counts
        self.categories.update(changed, changed_counts, window)
        self.sub.close(window, events, size, unit)
        self._last_events = total_events
        self.closed_through = window
        spec = self.config.window
        return ClosedWindow(
            window, spec.start_of(window), spec.end_of(window), changed, changed_counts,
            total_events,
        )

    # -------------------------------------------------------------- categories
    def add_metadata(self, items: Iterable[ItemMeta]) -> None:
        """Register item metadata (titles, categories) used by prompts and category momentum."""
        items = list(items)
        self.catalog.add_metadata(items)
        self.categories.register(items)

    def set_metadata(self, item_id: str, meta: ItemMeta | None) -> bool:
        """Make ``meta`` the metadata of ``item_id`` (None: it has none); whether it changed.

        A live catalog replaces and removes metadata at any time; the item gets its catalog
        code now if it has none, so codes follow the catalog's order.
        """
        current = self.catalog.meta.get(item_id)
        if current == meta:
            return False
        if meta is None:
            del self.catalog.meta[item_id]
        else:
            self.add_metadata([meta])
            self.catalog.code(item_id)
        before = current.categories if current is not None else ()
        if before != (meta.categories if meta is not None else ()):
            # Same shape, other members: the cached matrix would still count the old ones.
            self.categories.members_changed()
        return True

    @property
    def category_names(self) -> tuple[str, ...]:
        """The category names in the order the category statistics are indexed by."""
        return self.categories.names

    def restore_category_names(self, names: Iterable[str]) -> None:
        """Index the category statistics by ``names`` (saved with :attr:`category_names`):
        once a category was replaced, the metadata alone no longer gives the order back."""
        self.categories.restore_names(names)

    def counts_in(self, rows: IndexArray, window: int) -> FloatArray:
        """Counts of ``rows`` in ``window``, the window just closed."""
        return self._recent.latest(rows, window)

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
        sub = self.sub.get(rows, window)
        return FeatureFrame(
            window_index=window,
            window_start=spec.start_of(window),
            window_end=spec.end_of(window),
            window_seconds=spec.length,
            rows=rows,
            item_ids=self.catalog.id_array().take(rows),
            count=count,
            total=self._total.take(rows),
            recent=recent,
            half_lives=self.config.half_lives,
            ew=ew,
            momentum=momentum,
            slope=slope,
            accel=accel,
            burstiness=burstiness(recent),
            age_windows=age,
            share=share,
            category_momentum=self.categories.momentum(rows, window),
            trend=self.config.thresholds.categorise(momentum, age),
            decayed=sub.decayed,
            decayed_returning=sub.decayed_returning,
            last_quarter=sub.last_quarter,
            last_half=sub.last_half,
            since_first=sub.since_first,
            since_last=sub.since_last,
            recent_users=sub.recent_users,
            recent_returning=sub.recent_returning,
            returning_ew=sub.returning_ew,
            return_rate=sub.return_rate,
            window_events=events,
            window_users=self.sub.window_users if window == self.closed_through else 0,
            meta=self.catalog.meta,
        )

    def outcome(self, rows: IndexArray, window: int) -> WindowOutcome:
        """What ``rows`` did in closed ``window``: the labels of the window before it."""
        return WindowOutcome(
            counts=self.counts_in(rows, window),
            users=self.sub.users_in(rows, window),
            returning=self.sub.returning_in(rows, window),
        )

    # ------------------------------------------------------------- persistence
    def state_dict(self, *, metadata: bool = True) -> dict[str, Any]:
        """The whole state as plain JSON-able data, tagged with :data:`STATE_VERSION`;
        ``metadata=False`` leaves the item metadata out (a caller that stores it apart)."""
        size = len(self.catalog)
        # Metadata can register items after the last batch grew the arrays.
        self._reserve(size)
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "item_ids": list(self.catalog.ids),
            "metadata": [m.model_dump(mode="json") for m in self.catalog.meta.values()]
            if metadata
            else [],
            "first_window": self._first_window[:size].tolist(),
            "total": self._total[:size].tolist(),
            "means": self._means.state_dict(size),
            "recent": self._recent.state_dict(size),
            "category_means": self.categories.means.state_dict(len(self.categories.names)),
            "open": self._open.state_dict(),
            "sub": self.sub.state_dict(size),
            "last_events": self._last_events,
            "last_busy": self._last_busy,
            "closed_through": self.closed_through,
            "max_ts": None if self.max_ts == -np.inf else self.max_ts,
            "late_events": self.late_events,
            "skipped_windows": self.skipped_windows,
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
        state.categories.means = DecayingMeans.from_state_dict(data["category_means"])
        state._open = OpenWindows.from_state_dict(data["open"])
        state.sub = SubWindowSignals.from_state_dict(data["sub"])
        state._last_events = float(data["last_events"])
        state._last_busy = data["last_busy"]
        state.skipped_windows = int(data["skipped_windows"])
        state.closed_through = data["closed_through"]
        state.max_ts = -np.inf if data["max_ts"] is None else float(data["max_ts"])
        state.late_events = int(data["late_events"])
        return state
