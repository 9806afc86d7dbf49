"""Signals finer than a window: when inside it events fell, and who made them.

Whole-window counts cannot tell an item whose events all fell in a window's last days from
one whose events fell at its start, nor a few heavy users from many returning ones. This
module keeps, per item:

* continuous-time exponentially decayed counts at half-lives that are fractions of the window
  (:data:`DECAY_FRACTIONS`), and the same over returning users' events only
  (:data:`RETURNING_DECAY_FRACTIONS`);
* counts in the last quarter and the last half of each window;
* the exact time of its first and last event;
* distinct users and *returning* users (seen anywhere before the window began) per window,
  an EW mean of the returning users, and the audience return rate (the share of the item's
  users in ``t - 1`` active again anywhere in ``t``).

Per event the work is an append to the open window's buffer (O(1), batched); everything else
happens once per window at its close, vectorised over that window's events, so it is exact for
"events before the window's end" whatever the grace period. Memory: the open windows' events
(exact sets), the previous window's distinct (item, user) pairs, one row of numbers per item,
and the seen-user set (:mod:`streams.trend.users`: exact, or a Bloom filter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from streams.trend.decay import ContinuousDecay
from streams.trend.packing import pack_array, unpack_array
from streams.trend.stats import DecayingMeans, RecentCounts, grown
from streams.trend.users import (
    HashArray,
    SeenUsers,
    seen_users,
    seen_users_from_state_dict,
)

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

#: Half-lives of the decayed counts, as fractions of the window length.
DECAY_FRACTIONS = (1 / 32, 1 / 8, 1 / 4, 1 / 2, 1.0)
#: Half-lives of the decayed counts over returning users' events only.
RETURNING_DECAY_FRACTIONS = (1 / 8, 1 / 4)
#: The user hash that marks an event without a user id (no user signal from it).
UNKNOWN_USER = np.uint64(0)
def _member(values: HashArray, pool: HashArray) -> npt.NDArray[np.bool_]:
    """Whether each of ``values`` is in ``pool`` (both without duplicates)."""
    if pool.shape[0] == 0:
        return np.zeros(values.shape[0], dtype=bool)
    ordered = np.sort(pool)
    where = np.minimum(np.searchsorted(ordered, values), ordered.shape[0] - 1)
    found: npt.NDArray[np.bool_] = ordered[where] == values
    return found


def _sums(codes: IndexArray, weights: FloatArray | None, size: int) -> FloatArray:
    """Per-code sums of ``weights`` (None: of ones, counted exactly as integers)."""
    if weights is None:
        counts: FloatArray = np.bincount(codes, minlength=size).astype(np.float64)
        return counts
    sums: FloatArray = np.asarray(np.bincount(codes, weights=weights, minlength=size), np.float64)
    return sums


def _present(codes: IndexArray, size: int) -> IndexArray:
    """The distinct codes, ascending: a count per code instead of a hash per event."""
    present: IndexArray = np.flatnonzero(np.bincount(codes, minlength=size))
    return present


def _distinct(values: npt.NDArray[np.integer[Any]]) -> IndexArray:
    """The distinct values in the order they first appear (hashing, not sorting), as int64."""
    distinct: IndexArray = np.asarray(pd.unique(values), dtype=np.int64)
    return distinct


@dataclass(frozen=True)
class WindowEvents:
    """The events of one window, as applied (late ones excluded)."""

    codes: IndexArray
    times: FloatArray
    weights: FloatArray
    users: HashArray  # UNKNOWN_USER where the event had no user id

    @classmethod
    def concat(cls, chunks: list[WindowEvents]) -> WindowEvents:
        if not chunks:
            return cls(
                np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0, np.uint64)
            )
        if len(chunks) == 1:
            return chunks[0]
        return cls(
            np.concatenate([c.codes for c in chunks]),
            np.concatenate([c.times for c in chunks]),
            np.concatenate([c.weights for c in chunks]),
            np.concatenate([c.users for c in chunks]),
        )

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def unit_weights(self) -> bool:
        """Whether every weight is exactly 1 (events given without weights)."""
        return bool((self.weights == 1.0).all())

    def state_dict(self) -> dict[str, Any]:
        return {
            "codes": pack_array(self.codes),
            "times": pack_array(self.times),
            "weights": pack_array(self.weights),
            "users": pack_array(self.users),
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> WindowEvents:
        return cls(
            unpack_array(data["codes"], np.int64).copy(),
            unpack_array(data["times"], np.float64).copy(),
            unpack_array(data["weights"], np.float64).copy(),
            unpack_array(data["users"], np.uint64).copy(),
        )


@dataclass(frozen=True)
class SubWindowFeatures:
    """The signals of :class:`SubWindowSignals` for some rows at one window's close."""

    decayed: FloatArray  # rows x len(DECAY_FRACTIONS)
    decayed_returning: FloatArray  # rows x len(RETURNING_DECAY_FRACTIONS)
    last_quarter: FloatArray
    last_half: FloatArray
    since_first: FloatArray  # seconds from the first event to the window's end
    since_last: FloatArray
    recent_users: FloatArray  # rows x k, oldest first, ending with this window
    recent_returning: FloatArray
    returning_ew: FloatArray  # EW mean (half-life 1 window) of returning users
    return_rate: FloatArray  # 0 where the item had no users in the window before


class SubWindowSignals:
    """Folds each closed window's events into the per-item signals listed in the module doc.

    >>> signals = SubWindowSignals(window_seconds=100, recent_windows=2)
    >>> users = np.array([11, 12, 11], dtype=np.uint64)
    >>> signals.close(0, WindowEvents(np.array([0, 0, 1]), np.array([10.0, 90.0, 95.0]),
    ...                               np.ones(3), users), size=2)
    >>> signals.close(1, WindowEvents(np.array([0, 0]), np.array([120.0, 130.0]),
    ...                               np.ones(2), np.array([11, 13], dtype=np.uint64)), size=2)
    >>> f = signals.get(np.array([0, 1]), window=1)
    >>> f.recent_users.tolist(), f.recent_returning.tolist()  # user 13 is new in window 1
    ([[2.0, 2.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]])
    >>> f.return_rate.tolist(), f.last_half.tolist()  # 11 came back anywhere; 12 did not
    ([0.5, 1.0], [0.0, 0.0])
    >>> f.since_first.tolist(), f.since_last.tolist()
    ([190.0, 105.0], [70.0, 105.0])
    """

    def __init__(
        self, window_seconds: int, recent_windows: int, seen: str = "exact"
    ) -> None:
        self.window_seconds = window_seconds
        length = float(window_seconds)
        self.decay = ContinuousDecay(tuple(f * length for f in DECAY_FRACTIONS), length)
        self.decay_returning = ContinuousDecay(
            tuple(f * length for f in RETURNING_DECAY_FRACTIONS), length
        )
        self.users = RecentCounts(recent_windows)
        self.returning = RecentCounts(recent_windows)
        self.returning_ew = DecayingMeans((1.0,))
        self.seen: SeenUsers = seen_users(seen)
        # Per item: (value, window it belongs to) for the signals of one window only.
        self._quarters = np.zeros((0, 2))
        self._rate = np.zeros(0)
        self._stamp = np.full(0, -1, dtype=np.int64)
        self._rate_stamp = np.full(0, -1, dtype=np.int64)
        self._first = np.zeros(0)
        self._last = np.zeros(0)
        # The last closed window's distinct (item, user) pairs, for the audience return rate.
        self._previous_window = -1
        self._previous_items = np.zeros(0, dtype=np.int64)
        self._previous_people = np.zeros(0, dtype=np.uint64)
        self._previous_pair_people = np.zeros(0, dtype=np.int64)
        self.window_users = 0

    def _reserve(self, size: int) -> None:
        current = self._stamp.shape[0]
        if size > current:
            self._quarters = grown(self._quarters, size, 0.0)
            self._rate = grown(self._rate, size, 0.0)
            self._stamp = grown(self._stamp, size, -1)
            self._rate_stamp = grown(self._rate_stamp, size, -1)
            self._first = grown(self._first, size, np.inf)
            self._last = grown(self._last, size, -np.inf)

    def close(
        self, window: int, events: WindowEvents, size: int, unit: bool | None = None
    ) -> None:
        """Fold the events of ``window`` (closed now, in order) into the signals; ``unit``
        says whether every weight is 1 (None: find out)."""
        self._reserve(size)
        length = float(self.window_seconds)
        end = float((window + 1) * self.window_seconds)
        codes, times, weights = events.codes, events.times, events.weights
        rows = _present(codes, size)
        # Unit weights (no weights given): multiplying by them changes no bit, and sums of
        # ones are the exact counts, so those paths skip the weights.
        if unit is None:
            unit = events.unit_weights()
        factors = self.decay.factors(times, None if unit else weights, end)
        if rows.shape[0]:
            self.decay.fold(rows, self.decay.sums(codes, factors, rows, size), end)
            late_quarter = times >= end - length / 4
            late_half = times >= end - length / 2
            quarter = _sums(codes[late_quarter], None if unit else weights[late_quarter], size)
            half = _sums(codes[late_half], None if unit else weights[late_half], size)
            self._quarters[rows, 0] = quarter[rows]
            self._quarters[rows, 1] = half[rows]
            self._stamp[rows] = window
            unseen = ~np.isfinite(self._first[codes])
            np.minimum.at(self._first, codes[unseen], times[unseen])
            np.maximum.at(self._last, codes, times)
        self._close_audience(window, events, size, end, unit, factors)

    def _close_audience(
        self, window: int, events: WindowEvents, size: int, end: float, unit: bool,
        factors: FloatArray,
    ) -> None:
        known = events.users != UNKNOWN_USER
        if not known.all():
            events = WindowEvents(
                events.codes[known], events.times[known], events.weights[known],
                events.users[known],
            )
            factors = factors[:, known]
        codes, users = events.codes, events.users
        # Hash-based factorising: a window's events are unsorted and sorting them costs more.
        person, people = pd.factorize(users)
        people = np.asarray(people, dtype=np.uint64)
        returning_person = self.seen.contains(people)
        n_people = max(int(people.shape[0]), 1)
        keys = codes * n_people + person
        if size * n_people < 2**31:
            # The hash table of 32-bit keys is smaller: the same distinct keys, same order.
            keys = keys.astype(np.int32)
        pairs = _distinct(keys)
        pair_items, pair_people = pairs // n_people, pairs % n_people
        distinct = np.bincount(pair_items, minlength=size).astype(np.float64)
        returning: FloatArray = np.asarray(
            np.bincount(
                pair_items,
                weights=returning_person[pair_people].astype(np.float64),
                minlength=size,
            ),
            np.float64,
        )
        rows: IndexArray = np.flatnonzero(distinct)
        self.users.update(rows, window, distinct[rows])
        self.returning.update(rows, window, returning[rows])
        self.returning_ew.update(rows, window, returning[rows])
        by_returning = returning_person[person]
        if by_returning.any():
            returning_codes = codes[by_returning]
            returning_rows = _present(returning_codes, size)
            shared = self._shared_half_lives()
            if shared is not None:
                # The returning half-lives are among the decayed counts' ones: their factors,
                # the same bits, are already computed for every event.
                returning_factors = factors[shared][:, by_returning]
            else:
                returning_factors = self.decay_returning.factors(
                    events.times[by_returning],
                    None if unit else events.weights[by_returning],
                    end,
                )
            contributions = ContinuousDecay.sums(
                returning_codes, returning_factors, returning_rows, size
            )
            self.decay_returning.fold(returning_rows, contributions, end)
        if self._previous_window == window - 1 and self._previous_items.shape[0]:
            # Which of the previous window's people are active now: a lookup of its few
            # distinct users, then a gather per (item, user) pair.
            active_now = _member(self._previous_people, people)
            came_back = active_now[self._previous_pair_people]
            before = np.bincount(self._previous_items, minlength=size).astype(np.float64)
            again = np.bincount(
                self._previous_items, weights=came_back.astype(np.float64), minlength=size
            )
            rate_rows = np.flatnonzero(before)
            self._rate[rate_rows] = again[rate_rows] / before[rate_rows]
            self._rate_stamp[rate_rows] = window
        # Only the new people: the ones found seen above need no second look-up.
        self.seen.add_new(people[~returning_person])
        self._previous_window = window
        self._previous_items = pair_items.astype(np.int64, copy=False)
        self._previous_people = people
        self._previous_pair_people = pair_people.astype(np.int64, copy=False)
        self.window_users = int(people.shape[0])

    def _shared_half_lives(self) -> IndexArray | None:
        """Where each returning half-life sits among the decayed counts' half-lives (None
        when one is not there, bit for bit)."""
        positions = []
        for half_life in self.decay_returning.half_lives.tolist():
            found = np.flatnonzero(self.decay.half_lives == half_life)
            if found.size == 0:
                return None
            positions.append(int(found[0]))
        return np.asarray(positions, dtype=np.int64)

    def get(self, rows: IndexArray, window: int) -> SubWindowFeatures:
        """The signals of ``rows`` as of the close of ``window`` (the last closed one)."""
        try:
            stamp = self._stamp.take(rows)
        except IndexError:  # rows never closed, past the arrays: grow them
            self._reserve(int(rows.max()) + 1)
            stamp = self._stamp.take(rows)
        end = float((window + 1) * self.window_seconds)
        current = stamp == window
        rate = np.where(self._rate_stamp.take(rows) == window, self._rate.take(rows), 0.0)
        first, last = self._first.take(rows), self._last.take(rows)
        return SubWindowFeatures(
            decayed=self.decay.get(rows, end),
            decayed_returning=self.decay_returning.get(rows, end),
            last_quarter=np.where(current, self._quarters[:, 0].take(rows), 0.0),
            last_half=np.where(current, self._quarters[:, 1].take(rows), 0.0),
            since_first=np.where(np.isfinite(first), end - first, 0.0),
            since_last=np.where(np.isfinite(last), end - last, 0.0),
            recent_users=self.users.get(rows, window),
            recent_returning=self.returning.get(rows, window),
            returning_ew=self.returning_ew.get(rows, window)[:, 0],
            return_rate=rate,
        )

    def returning_in(self, rows: IndexArray, window: int) -> FloatArray:
        """Returning users of ``rows`` in ``window``, the window just closed."""
        return self.returning.latest(rows, window)

    def users_in(self, rows: IndexArray, window: int) -> FloatArray:
        """Distinct users of ``rows`` in ``window``, the window just closed."""
        return self.users.latest(rows, window)

    def state_dict(self, size: int) -> dict[str, Any]:
        self._reserve(size)
        return {
            "window_seconds": self.window_seconds,
            "decay": self.decay.state_dict(size),
            "decay_returning": self.decay_returning.state_dict(size),
            "users": self.users.state_dict(size),
            "returning": self.returning.state_dict(size),
            "returning_ew": self.returning_ew.state_dict(size),
            "seen": self.seen.state_dict(),
            "quarters": pack_array(self._quarters[:size]),
            "rate": pack_array(self._rate[:size]),
            "stamp": pack_array(self._stamp[:size]),
            "rate_stamp": pack_array(self._rate_stamp[:size]),
            "first": pack_array(self._first[:size]),
            "last": pack_array(self._last[:size]),
            "previous_window": self._previous_window,
            "previous_items": pack_array(self._previous_items),
            "previous_people": pack_array(self._previous_people),
            "previous_pair_people": pack_array(self._previous_pair_people),
            "window_users": self.window_users,
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> SubWindowSignals:
        users = RecentCounts.from_state_dict(data["users"])
        signals = cls(int(data["window_seconds"]), users.k)
        length = float(signals.window_seconds)
        signals.decay = ContinuousDecay.from_state_dict(data["decay"], length)
        signals.decay_returning = ContinuousDecay.from_state_dict(data["decay_returning"], length)
        signals.users = users
        signals.returning = RecentCounts.from_state_dict(data["returning"])
        signals.returning_ew = DecayingMeans.from_state_dict(data["returning_ew"])
        signals.seen = seen_users_from_state_dict(data["seen"])
        signals._quarters = unpack_array(data["quarters"], np.float64).reshape(-1, 2).copy()
        signals._rate = unpack_array(data["rate"], np.float64).copy()
        signals._stamp = unpack_array(data["stamp"], np.int64).copy()
        signals._rate_stamp = unpack_array(data["rate_stamp"], np.int64).copy()
        signals._first = unpack_array(data["first"], np.float64).copy()
        signals._last = unpack_array(data["last"], np.float64).copy()
        signals._previous_window = int(data["previous_window"])
        signals._previous_items = unpack_array(data["previous_items"], np.int64).copy()
        signals._previous_people = unpack_array(data["previous_people"], np.uint64).copy()
        signals._previous_pair_people = unpack_array(
            data["previous_pair_people"], np.int64
        ).copy()
        signals.window_users = int(data["window_users"])
        return signals
