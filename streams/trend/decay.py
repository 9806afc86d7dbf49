"""Continuous-time exponentially decayed sums per item, read lazily at any time.

The sub-window signals (:mod:`streams.trend.subwindow`) keep each item's events decayed in
event time at several half-lives that are fractions of the window: a row is touched only
when its item has events, and decays when read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.trend.packing import pack_array, unpack_array
from streams.trend.stats import MAX_TABLE_GAP, GapFactors, gather, grown, set_rows

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

#: A :class:`ContinuousDecay` row folded at a time that is no whole number of units.
NOT_WHOLE = np.int64(-(2**61))
#: Whole numbers of units up to this size are exact in float64 and far from NOT_WHOLE.
_EXACT = 2.0**52


class ContinuousDecay:
    """Per-item ``sum_i w_i * 2 ** (-(t - s_i) / h)`` over event times ``s_i``, at several ``h``.

    Each row remembers when it was last folded and decays lazily when read, so a window
    close touches only the items that changed. ``unit`` is the spacing of the times rows are
    folded at (the window length): decay factors over whole units are computed once each.

    >>> decay = ContinuousDecay(half_lives=(10.0,))
    >>> decay.fold(np.array([0]), np.array([[1.0]]), at=100.0)
    >>> decay.get(np.array([0, 1]), at=120.0).round(4).tolist()  # two half-lives later
    [[0.25], [0.0]]
    """

    def __init__(self, half_lives: tuple[float, ...], unit: float = 1.0) -> None:
        self.half_lives = np.asarray(half_lives, dtype=np.float64)
        self.unit = float(unit)
        self._values = np.zeros((0, len(half_lives)))
        self._at = np.zeros(0)
        # Each row's fold time in whole units (NOT_WHOLE where it is not one): the gap of a
        # read at a whole unit is then an integer subtraction and a table lookup.
        self._units = np.zeros(0, dtype=np.int64)
        self._factors = GapFactors(lambda gaps: np.exp2(-gaps[:, None] / self.half_lives), unit)

    def _reserve(self, rows: IndexArray) -> None:
        if rows.size:
            size = int(rows.max()) + 1
            self._values = grown(self._values, size, 0.0)
            self._at = grown(self._at, size, 0.0)
            self._units = grown(self._units, size, 0)

    def _whole_units(self, at: float) -> int | None:
        """``at`` in units when it is a whole number of them, exactly, else None."""
        units = at / self.unit
        if abs(units) <= _EXACT and units == int(units) and int(units) * self.unit == at:
            return int(units)
        return None

    def contributions(self, codes: IndexArray, times: FloatArray, weights: FloatArray | None,
                      at: float, rows: IndexArray, size: int) -> FloatArray:
        """The events of each of ``rows`` decayed to time ``at``: ``len(rows) x len(half_lives)``.

        ``rows`` must hold every code of ``codes``, all below ``size``; ``weights`` None means
        every weight is 1 (multiplying by 1.0 changes no bit, so it is skipped).
        """
        return self.sums(codes, self.factors(times, weights, at), rows, size)

    def factors(self, times: FloatArray, weights: FloatArray | None, at: float) -> FloatArray:
        """Each event's weight decayed to ``at``: one row per half-life, one column per event
        (the long axis innermost: numpy loops over a short inner axis slowly, and each row is
        contiguous for :meth:`sums`)."""
        factors: FloatArray = np.exp2(-(at - times)[None, :] / self.half_lives[:, None])
        if weights is not None:
            factors *= weights[None, :]
        return factors

    @staticmethod
    def sums(codes: IndexArray, factors: FloatArray, rows: IndexArray, size: int) -> FloatArray:
        """Per-item sums of ``factors`` (from :meth:`factors`): ``len(rows) x len(factors)``."""
        result = np.empty((rows.shape[0], factors.shape[0]))
        for column in range(factors.shape[0]):
            sums = np.bincount(codes, weights=factors[column], minlength=size)
            result[:, column] = sums.take(rows)
        return result

    def fold(self, rows: IndexArray, values: FloatArray, at: float) -> None:
        """Add ``values`` (already decayed to ``at``) to ``rows`` and move them to ``at``."""
        self._reserve(rows)
        set_rows(self._values, rows, self.get(rows, at) + values)
        self._at[rows] = at
        units = self._whole_units(at)
        self._units[rows] = NOT_WHOLE if units is None else units

    def get(self, rows: IndexArray, at: float) -> FloatArray:
        """The rows' values decayed to ``at``: ``values * 2 ** (-max(at - folded, 0) / h)``."""
        try:
            values = gather(self._values, rows)
        except IndexError:  # rows never folded, past the arrays: grow them
            self._reserve(rows)
            values = gather(self._values, rows)
        units = self._whole_units(at)
        if units is not None:
            # Both times whole units: the gap, ``(units - folded units) * unit``, is exact, and
            # so is the table entry made from it (see GapFactors). NOT_WHOLE rows get gaps past
            # the table and go the general way below.
            gaps = np.maximum(units - self._units.take(rows), 0)
            if gaps.size == 0 or int(gaps.max()) <= MAX_TABLE_GAP:
                decayed: FloatArray = values * self._factors.lookup(gaps)
                return decayed
        gap = np.maximum(at - self._at.take(rows), 0.0)
        decayed = values * self._factors.factors(gap, values)
        return decayed

    def state_dict(self, size: int) -> dict[str, Any]:
        self._reserve(np.array([size - 1]) if size else np.zeros(0, dtype=np.int64))
        return {
            "half_lives": self.half_lives.tolist(),
            "values": pack_array(self._values[:size]),
            "at": pack_array(self._at[:size]),
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any], unit: float = 1.0) -> ContinuousDecay:
        decay = cls(tuple(float(h) for h in data["half_lives"]), unit)
        decay._values = unpack_array(data["values"], np.float64).reshape(-1, len(decay.half_lives))
        decay._at = unpack_array(data["at"], np.float64).copy()
        units = decay._at / decay.unit
        exact = np.abs(units) <= _EXACT
        whole = np.where(exact, units, 0.0).astype(np.int64)
        exact &= (whole == units) & (whole * decay.unit == decay._at)
        decay._units = np.where(exact, whole, NOT_WHOLE)
        return decay
