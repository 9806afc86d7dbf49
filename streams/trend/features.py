"""Columnar trend features of a set of items at one window's close.

A :class:`FeatureFrame` holds one numpy column per signal, so scorers work on whole windows at
once; :meth:`FeatureFrame.record` turns one row into the wire-level ``ItemFeatures``.
"""

from __future__ import annotations

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
}


@dataclass(frozen=True)
class FeatureFrame:
    """Trend signals of ``len(rows)`` items at the close of window ``window_index``.

    ``rows`` are catalog indices; ``item_ids[i]`` is the id of ``rows[i]``. Every other array is
    aligned with ``rows``. ``ew`` has one column per half-life in ``half_lives``; ``recent`` the
    last counts, oldest first, ending with this window's.
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
        return FeatureFrame(
            window_index=self.window_index,
            window_start=self.window_start,
            window_end=self.window_end,
            window_seconds=self.window_seconds,
            rows=self.rows[positions],
            item_ids=self.item_ids[positions],
            count=self.count[positions],
            total=self.total[positions],
            recent=self.recent[positions],
            half_lives=self.half_lives,
            ew=self.ew[positions],
            momentum=self.momentum[positions],
            slope=self.slope[positions],
            accel=self.accel[positions],
            burstiness=self.burstiness[positions],
            age_windows=self.age_windows[positions],
            share=self.share[positions],
            category_momentum=self.category_momentum[positions],
            trend=self.trend[positions],
            meta=self.meta,
        )

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
        arrays["recent"] = arrays["recent"].reshape(size, -1)
        arrays["ew"] = arrays["ew"].reshape(size, len(data["half_lives"]))
        return cls(
            window_index=int(data["window_index"]),
            window_start=int(data["window_start"]),
            window_end=int(data["window_end"]),
            window_seconds=int(data["window_seconds"]),
            item_ids=np.asarray(data["item_ids"], dtype=object),
            half_lives=tuple(float(h) for h in data["half_lives"]),
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
        )

    def records(self) -> list[ItemFeatures]:
        return [self.record(i) for i in range(len(self))]


def _rounded(value: float | np.floating[npt.NBitBase]) -> float:
    # Six significant decimals keep records small and replays byte-identical across platforms.
    return round(float(value), 6)
