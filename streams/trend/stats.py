"""Per-item running statistics over window counts, one column per item.

These follow River's ``stats`` API (``update`` then ``get``) but hold one value per item in
numpy arrays, so a window close updates every changed item in one vectorised step instead of
one Python call per item. :class:`DecayingMeans` computes exactly what ``river.stats.EWMean``
computes on the per-window count sequence, zeros included, starting from the quiet window
before the item's first event (River starts its mean at the first value it sees);
``tests/unit/test_trend_stats.py`` checks that against River itself.

Items that did not change in a window are *not* touched: each column remembers the window it
was last updated at and decays lazily when it is next updated or read.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]


def grown(array: npt.NDArray[Any], size: int, fill: float) -> npt.NDArray[Any]:
    if array.shape[0] >= size:
        return array
    capacity = max(size, 2 * array.shape[0], 64)
    grown = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


class DecayingMeans:
    """Exponentially weighted means of per-window counts at several half-lives, per item.

    With half-life ``h`` (in windows) the decay per window is ``d = 2 ** (-1 / h)`` and the
    mean after window ``t`` is ``m_t = d * m_{t-1} + (1 - d) * x_t``, starting from zero: an
    item nobody touched has had zero counts all along. That is River's ``EWMean`` with
    ``fading_factor = 1 - d`` fed every window's count, and ``m_t / (1 - d)`` is the EWMA
    baseline's ``sum_w 2^(-(t-w)/h) * count_w``.

    >>> means = DecayingMeans(half_lives=(1.0, 2.0))
    >>> means.update(np.array([0]), window=0, values=np.array([8.0]))
    >>> means.get(np.array([0]), window=0).round(3).tolist()
    [[4.0, 2.343]]
    >>> means.get(np.array([0]), window=2).round(3).tolist()  # two quiet windows later
    [[1.0, 1.172]]
    """

    def __init__(self, half_lives: Sequence[float]) -> None:
        if not half_lives or min(half_lives) <= 0:
            raise ValueError(f"half-lives must be positive, got {list(half_lives)}")
        self.half_lives = tuple(float(h) for h in half_lives)
        self.decay = np.array([2.0 ** (-1.0 / h) for h in self.half_lives])
        self._means = np.zeros((0, len(self.half_lives)))
        self._updated_at = np.zeros(0, dtype=np.int64)

    def _reserve(self, rows: IndexArray) -> None:
        if rows.size:
            size = int(rows.max()) + 1
            self._means = grown(self._means, size, 0.0)
            self._updated_at = grown(self._updated_at, size, 0)

    def _decayed(self, rows: IndexArray, window: int) -> FloatArray:
        gap = np.maximum(window - self._updated_at[rows], 0).astype(np.float64)
        decayed: FloatArray = self._means[rows] * self.decay[None, :] ** gap[:, None]
        return decayed

    def update(self, rows: IndexArray, window: int, values: FloatArray) -> None:
        """Fold ``values`` (this window's counts of ``rows``) into the means."""
        self._reserve(rows)
        # The previous value decays up to the window before this one, then the new count enters.
        previous = self._decayed(rows, window - 1)
        self._means[rows] = self.decay * previous + (1.0 - self.decay) * values[:, None]
        self._updated_at[rows] = window

    def get(self, rows: IndexArray, window: int) -> FloatArray:
        """The means of ``rows`` as of ``window`` (one column per half-life)."""
        self._reserve(rows)
        return self._decayed(rows, window)

    def state_dict(self, size: int) -> dict[str, Any]:
        return {
            "half_lives": list(self.half_lives),
            "means": self._means[:size].tolist(),
            "updated_at": self._updated_at[:size].tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DecayingMeans:
        means = cls(state["half_lives"])
        means._means = np.asarray(state["means"], dtype=np.float64).reshape(
            -1, len(means.half_lives)
        )
        means._updated_at = np.asarray(state["updated_at"], dtype=np.int64)
        return means


class RecentCounts:
    """The last ``k`` per-window counts of each item, oldest first.

    A ring of ``k`` slots per item, slot ``window % k``, each stamped with the window it
    holds: an update writes one slot and a read keeps the slots whose stamp is in range, so
    neither shifts anything and items that did not change are never touched.

    >>> recent = RecentCounts(k=3)
    >>> recent.update(np.array([0, 1]), window=5, values=np.array([2.0, 7.0]))
    >>> recent.update(np.array([0]), window=6, values=np.array([3.0]))
    >>> recent.get(np.array([0, 1]), window=7).tolist()
    [[2.0, 3.0, 0.0], [7.0, 0.0, 0.0]]
    """

    def __init__(self, k: int) -> None:
        if k < 2:
            raise ValueError(f"need at least 2 recent windows, got {k}")
        self.k = k
        self._counts = np.zeros((0, k))
        self._stamps = np.full((0, k), -1, dtype=np.int64)

    def _reserve(self, rows: IndexArray) -> None:
        if rows.size:
            size = int(rows.max()) + 1
            self._counts = grown(self._counts, size, 0.0)
            self._stamps = grown(self._stamps, size, -1)

    def update(self, rows: IndexArray, window: int, values: FloatArray) -> None:
        """Record ``values`` as the counts of ``rows`` in ``window``."""
        self._reserve(rows)
        slot = window % self.k
        self._counts[rows, slot] = values
        self._stamps[rows, slot] = window

    def get(self, rows: IndexArray, window: int) -> FloatArray:
        """Counts of windows ``window - k + 1 .. window`` for ``rows``."""
        self._reserve(rows)
        windows = np.arange(window - self.k + 1, window + 1, dtype=np.int64)
        slots = windows % self.k
        counts = self._counts[rows][:, slots]
        current = self._stamps[rows][:, slots] == windows[None, :]
        result: FloatArray = np.where(current, counts, 0.0)
        return result

    def latest(self, rows: IndexArray, window: int) -> FloatArray:
        """Counts of ``rows`` in ``window`` alone: the last column of :meth:`get`.

        >>> recent = RecentCounts(k=3)
        >>> recent.update(np.array([0, 1]), window=5, values=np.array([2.0, 7.0]))
        >>> recent.update(np.array([0]), window=6, values=np.array([3.0]))
        >>> recent.latest(np.array([0, 1]), window=6).tolist()
        [3.0, 0.0]
        """
        self._reserve(rows)
        slot = window % self.k
        values: FloatArray = np.where(
            self._stamps[rows, slot] == window, self._counts[rows, slot], 0.0
        )
        return values

    def state_dict(self, size: int) -> dict[str, Any]:
        return {
            "k": self.k,
            "counts": self._counts[:size].tolist(),
            "stamps": self._stamps[:size].tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RecentCounts:
        recent = cls(int(state["k"]))
        recent._counts = np.asarray(state["counts"], dtype=np.float64).reshape(-1, recent.k)
        recent._stamps = np.asarray(state["stamps"], dtype=np.int64).reshape(-1, recent.k)
        return recent


def polynomial_fit(counts: FloatArray, degree: int) -> FloatArray:
    """Least-squares polynomial coefficients (constant first) of each row against 0..k-1.

    >>> polynomial_fit(np.array([[1.0, 3.0, 5.0, 7.0]]), degree=1).round(6).tolist()
    [[1.0, 2.0]]
    >>> (polynomial_fit(np.array([[0.0, 1.0, 4.0, 9.0]]), degree=2).round(6) + 0.0).tolist()
    [[0.0, 0.0, 1.0]]
    """
    solution: FloatArray = counts @ _fit_matrix(counts.shape[1], degree)
    return solution


@functools.cache
def _fit_matrix(k: int, degree: int) -> FloatArray:
    design = np.vander(np.arange(k, dtype=np.float64), degree + 1, increasing=True)
    matrix: FloatArray = np.asarray(np.linalg.pinv(design).T, dtype=np.float64)
    return matrix


def slope_and_acceleration(counts: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-row linear slope (counts per window) and acceleration (second derivative of the
    least-squares quadratic) over the recent counts.

    >>> slope, accel = slope_and_acceleration(np.array([[1.0, 2.0, 4.0, 8.0]]))
    >>> round(float(slope[0]), 3), round(float(accel[0]), 3)
    (2.3, 1.5)
    """
    linear = polynomial_fit(counts, degree=1)
    quadratic = polynomial_fit(counts, degree=2)
    return linear[:, 1], 2.0 * quadratic[:, 2]


def burstiness(counts: FloatArray) -> FloatArray:
    """Goh-Barabasi burstiness ``(sigma - mu) / (sigma + mu)`` of each row, in [-1, 1].

    Steady traffic gives -1, Poisson-like traffic about 0, a single spike close to 1; a row of
    zeros has no traffic to judge and gives 0.

    >>> burstiness(np.array([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 12.0], [0.0] * 4])).round(3)
    array([-1.   ,  0.268,  0.   ])
    """
    mean = counts.mean(axis=1)
    # Population variance from the first two moments: rows are short (k counts), so this is
    # exact enough and avoids numpy's generic std machinery.
    std = np.sqrt(np.maximum((counts * counts).mean(axis=1) - mean * mean, 0.0))
    total = mean + std
    safe = np.where(total > 0, total, 1.0)
    result: FloatArray = np.where(total > 0, (std - mean) / safe, 0.0)
    return result
