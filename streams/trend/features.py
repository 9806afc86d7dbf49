"""Columnar trend features of a set of items at one window's close.

A :class:`FeatureFrame` holds one numpy column per signal, so scorers work on whole windows at
once; :meth:`FeatureFrame.record` turns one row into the wire-level ``ItemFeatures``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import ItemFeatures, ItemMeta, TrendCategory

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

#: Trend categories in code order: ``FeatureFrame.trend`` holds indices into this tuple.
TREND_CATEGORIES: tuple[TrendCategory, ...] = ("rising", "falling", "steady", "new")


@dataclass(frozen=True)
class TrendThresholds:
    """How signals map to a trend category.

    An item first seen fewer than ``new_item_windows`` windows ago is ``new``; otherwise it is
    ``rising`` when its momentum is at least ``rising_momentum``, ``falling`` when at most
    ``1 / rising_momentum``, and ``steady`` in between.
    """

    new_item_windows: int = 4
    rising_momentum: float = 1.2

    def categorise(self, momentum: FloatArray, age_windows: IndexArray) -> npt.NDArray[np.int8]:
        """Trend category codes (indices into :data:`TREND_CATEGORIES`).

        >>> TrendThresholds().categorise(np.array([2.0, 0.5, 1.0, 3.0]), np.array([9, 9, 9, 1]))
        array([0, 1, 2, 3], dtype=int8)
        """
        codes = np.full(momentum.shape, 2, dtype=np.int8)
        codes[momentum >= self.rising_momentum] = 0
        codes[momentum <= 1.0 / self.rising_momentum] = 1
        codes[age_windows < self.new_item_windows] = 3
        return codes


#: The per-item arrays of a :class:`FeatureFrame` and their dtypes (for its dict form).
_ARRAY_FIELDS: dict[str, type] = {
    "rows": np.int64,
    "count": np.float64,
    "total": np.float64,
    "recent": np.float64,
    "ew": np.float64,
    "momentum": np.float64,
    "slope": np.float64,
    "accel": np.float64,
    "burstiness": np.float64,
    "age_windows": np.int64,
    "share": np.float64,
    "category_momentum": np.float64,
    "trend": np.int8,
    "decayed": np.float64,
    "decayed_returning": np.float64,
    "last_quarter": np.float64,
    "last_half": np.float64,
    "since_first": np.float64,
    "since_last": np.float64,
    "recent_users": np.float64,
    "recent_returning": np.float64,
    "returning_ew": np.float64,
    "return_rate": np.float64,
}
#: The two-dimensional arrays among them (one row per item).
_MATRIX_FIELDS = ("recent", "ew", "decayed", "decayed_returning", "recent_users",
                  "recent_returning")


@dataclass(frozen=True)
class FeatureFrame:
    """Trend signals of ``len(rows)`` items at the close of window ``window_index``.

    ``rows`` are catalog indices; ``item_ids[i]`` is the id of ``rows[i]``. Every other array is
    aligned with ``rows``. ``ew`` has one column per half-life in ``half_lives``; ``recent`` the
    last counts, oldest first, ending with this window's.

    Finer than a window (:mod:`streams.trend.subwindow`): ``decayed`` holds the events decayed
    in continuous time to ``window_end``, one column per half-life in
    :data:`~streams.trend.subwindow.DECAY_FRACTIONS` of the window, ``decayed_returning`` the
    same over returning users' events (``RETURNING_DECAY_FRACTIONS``); ``last_quarter`` and
    ``last_half`` count the events of the window's last quarter and half; ``since_first`` and
    ``since_last`` are seconds from the first and last event to ``window_end``. Audience:
    ``recent_users`` / ``recent_returning`` are distinct and returning users (seen anywhere
    before the window began) per window, like ``recent``; ``returning_ew`` an EW mean (half-life
    one window) of returning users; ``return_rate`` the share of the item's users of the window
    before who were active again in this one. ``window_events`` and ``window_users`` are the
    whole window's events and active users.
    """

    window_index: int
    window_start: int
    window_end: int
    window_seconds: int
    rows: IndexArray
    item_ids: npt.NDArray[np.object_]
    count: FloatArray
    total: FloatArray
    recent: FloatArray
    half_lives: tuple[float, ...]
    ew: FloatArray
    momentum: FloatArray
    slope: FloatArray
    accel: FloatArray
    burstiness: FloatArray
    age_windows: IndexArray
    share: FloatArray
    category_momentum: FloatArray
    trend: npt.NDArray[np.int8]
    decayed: FloatArray
    decayed_returning: FloatArray
    last_quarter: FloatArray
    last_half: FloatArray
    since_first: FloatArray
    since_last: FloatArray
    recent_users: FloatArray
    recent_returning: FloatArray
    returning_ew: FloatArray
    return_rate: FloatArray
    window_events: float
    window_users: int
    meta: Mapping[str, ItemMeta]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def ew_at(self, half_life: float) -> FloatArray:
        """The EW-mean column for ``half_life`` windows."""
        column = self.half_lives.index(float(half_life))
        values: FloatArray = self.ew[:, column]
        return values

    def take(self, positions: IndexArray) -> FeatureFrame:
        """The sub-frame of the rows at ``positions`` (in that order)."""
        columns = {name: getattr(self, name)[positions] for name in _ARRAY_FIELDS}
        return dataclasses.replace(self, item_ids=self.item_ids[positions], **columns)

    @property
    def users(self) -> FloatArray:
        """Distinct users of each item in this window."""
        values: FloatArray = self.recent_users[:, -1]
        return values

    @property
    def returning(self) -> FloatArray:
        """Returning users (seen before this window began) of each item in this window."""
        values: FloatArray = self.recent_returning[:, -1]
        return values

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists, no numpy, no pickle); :meth:`from_dict` inverts it.

        The item metadata is not included: it belongs to the catalog, which is stored apart.
        """
        data: dict[str, Any] = {
            "window_index": self.window_index,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "window_seconds": self.window_seconds,
            "half_lives": list(self.half_lives),
            "item_ids": [str(i) for i in self.item_ids],
            "window_events": self.window_events,
            "window_users": self.window_users,
            # Column counts: an empty frame's matrices must keep their shape.
            "columns": {name: int(getattr(self, name).shape[1]) for name in _MATRIX_FIELDS},
        }
        for name in _ARRAY_FIELDS:
            data[name] = getattr(self, name).tolist()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], meta: Mapping[str, ItemMeta]) -> FeatureFrame:
        """The frame :meth:`to_dict` described, with the catalog's ``meta``."""
        arrays: dict[str, npt.NDArray[Any]] = {
            name: np.asarray(data[name], dtype=dtype) for name, dtype in _ARRAY_FIELDS.items()
        }
        size = len(data["item_ids"])
        for name in _MATRIX_FIELDS:
            arrays[name] = arrays[name].reshape(size, int(data["columns"][name]))
        return cls(
            window_index=int(data["window_index"]),
            window_start=int(data["window_start"]),
            window_end=int(data["window_end"]),
            window_seconds=int(data["window_seconds"]),
            item_ids=np.asarray(data["item_ids"], dtype=object),
            half_lives=tuple(float(h) for h in data["half_lives"]),
            window_events=float(data["window_events"]),
            window_users=int(data["window_users"]),
            meta=meta,
            **arrays,
        )

    def trend_name(self, position: int) -> TrendCategory:
        return TREND_CATEGORIES[int(self.trend[position])]

    def record(self, position: int) -> ItemFeatures:
        """Row ``position`` as the wire-level :class:`schemas.ItemFeatures`."""
        item_id = str(self.item_ids[position])
        meta = self.meta.get(item_id)
        category_momentum = float(self.category_momentum[position])
        ew = self.ew[position]
        return ItemFeatures(
            item_id=item_id,
            window_end=self.window_end,
            window_seconds=self.window_seconds,
            count=_rounded(self.count[position]),
            total=_rounded(self.total[position]),
            recent_counts=tuple(_rounded(v) for v in self.recent[position]),
            ew_1=_rounded(ew[self.half_lives.index(1.0)]),
            ew_2=_rounded(ew[self.half_lives.index(2.0)]),
            ew_4=_rounded(ew[self.half_lives.index(4.0)]),
            ew_8=_rounded(ew[self.half_lives.index(8.0)]),
            momentum=_rounded(self.momentum[position]),
            slope=_rounded(self.slope[position]),
            accel=_rounded(self.accel[position]),
            burstiness=min(1.0, max(-1.0, _rounded(self.burstiness[position]))),
            age_windows=int(self.age_windows[position]),
            share=min(1.0, max(0.0, float(self.share[position]))),
            category_momentum=(
                None if math.isnan(category_momentum) else _rounded(category_momentum)
            ),
            trend=self.trend_name(position),
            title=meta.title if meta else None,
            categories=meta.categories if meta else (),
            decayed_w32=_rounded(self.decayed[position, 0]),
            decayed_w8=_rounded(self.decayed[position, 1]),
            decayed_w4=_rounded(self.decayed[position, 2]),
            decayed_w2=_rounded(self.decayed[position, 3]),
            decayed_w1=_rounded(self.decayed[position, 4]),
            last_quarter=_rounded(self.last_quarter[position]),
            last_half=_rounded(self.last_half[position]),
            seconds_since_first=_rounded(self.since_first[position]),
            seconds_since_last=_rounded(self.since_last[position]),
            users=_rounded(self.recent_users[position, -1]),
            returning_users=_rounded(self.recent_returning[position, -1]),
            return_rate=min(1.0, max(0.0, _rounded(self.return_rate[position]))),
        )

    def records(self) -> list[ItemFeatures]:
        return [self.record(i) for i in range(len(self))]


def _rounded(value: float | np.floating[npt.NBitBase]) -> float:
    # Six significant decimals keep records small and replays byte-identical across platforms.
    return round(float(value), 6)
