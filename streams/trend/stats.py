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
from collections.abc import Callable, Sequence
from fractions import Fraction
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


def gather(array: npt.NDArray[Any], rows: IndexArray) -> npt.NDArray[Any]:
    """``array[rows]`` along the first axis.

    ``np.take`` copies whole rows of a 2-d array about ten times faster than fancy indexing,
    and every window's read gathers every seen item's rows.
    """
    return np.take(array, rows, axis=0)


def set_rows(array: npt.NDArray[Any], rows: IndexArray, values: npt.NDArray[Any]) -> None:
    """``array[rows] = values`` for a 2-d ``array`` and distinct ``rows``, the same bytes.

    Numpy assigns rows of a short 2-d array by fancy index element by element; seen as one
    opaque item per row (a void view) it copies each row at once, several times faster.
    """
    if array.ndim != 2 or not array.flags.c_contiguous or array.shape[1] == 0:
        array[rows] = values
        return
    row = np.dtype((np.void, array.dtype.itemsize * array.shape[1]))
    source = np.ascontiguousarray(values, dtype=array.dtype).reshape(-1, array.shape[1])
    array.view(row).reshape(-1)[rows] = source.view(row).reshape(-1)


#: Largest whole-window gap a :class:`GapFactors` table holds; longer gaps (items quiet for
#: longer) are computed directly, so the table stays small whatever the stream.
MAX_TABLE_GAP = 4096


class GapFactors:
    """Decay factors by gap, ``factor(g)``, computed once for each gap of ``0, 1, ...,
    MAX_TABLE_GAP`` units.

    Reading a window decays every seen item by its gap since it last changed: a few distinct
    gaps shared by thousands of items. A table lookup gives the bits ``factor`` gives (numpy's
    ``power`` and ``exp2`` are pure elementwise functions, whatever the array layout), without
    one transcendental per item and half-life per window. ``factor`` maps a 1-d array of gaps
    to one row of factors per gap; gaps that are not whole units (or longer) are passed to it.

    >>> table = GapFactors(lambda g: 0.5 ** g[:, None])
    >>> table.factors(np.array([0.0, 3.0, 1.0, 0.5]))[:, 0].tolist()
    [1.0, 0.125, 0.5, 0.7071067811865476]
    """

    def __init__(self, factor: Callable[[FloatArray], FloatArray], unit: float = 1.0) -> None:
        self._factor = factor
        self._unit = float(unit)
        self._table: FloatArray | None = None

    def lookup(self, whole: IndexArray) -> FloatArray:
        """``factor(whole * unit)`` for whole numbers of units, each in ``0..MAX_TABLE_GAP``."""
        needed = int(whole.max()) + 1 if whole.size else 1
        if self._table is None or self._table.shape[0] < needed:
            current = 0 if self._table is None else self._table.shape[0]
            size = min(max(needed, 64, 2 * current), MAX_TABLE_GAP + 1)
            self._table = self._factor(np.arange(size, dtype=np.float64) * self._unit)
        return np.take(self._table, whole, axis=0)

    def factors(self, gaps: FloatArray, values: FloatArray | None = None) -> FloatArray:
        """``factor(gaps)`` for non-negative ``gaps``: from the table where a gap is a whole
        number of units, at most :data:`MAX_TABLE_GAP`, from ``factor`` itself elsewhere.

        With ``values`` (what the factors will multiply, one row per gap), rows of zeros keep
        a table entry whatever their gap: zero times any finite non-negative factor is that
        same zero, so an item never touched costs no transcendental however old it is.
        """
        units = gaps / self._unit
        short = units <= MAX_TABLE_GAP
        whole = np.where(short, units, 0.0).astype(np.int64)
        # The table's entry for ``whole`` was computed from ``whole * unit``: only where that
        # is the gap itself, bit for bit, is the entry the gap's factor.
        in_table = short & (whole * self._unit == gaps)
        result = self.lookup(whole)
        if not in_table.all():
            outside = np.flatnonzero(~in_table)
            if values is not None:
                rows = values[outside]
                outside = outside[(rows != 0.0).reshape(outside.shape[0], -1).any(axis=1)]
            if outside.size:
                result[outside] = self._factor(gaps[outside])
        return result


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
        self._powers = GapFactors(lambda gaps: self.decay[None, :] ** gaps[:, None])

    def _reserve(self, rows: IndexArray) -> None:
        if rows.size:
            size = int(rows.max()) + 1
            self._means = grown(self._means, size, 0.0)
            self._updated_at = grown(self._updated_at, size, 0)

    def _decayed(self, rows: IndexArray, window: int) -> FloatArray:
        # m * d ** gap, the power looked up by gap (see GapFactors): the same bits.
        try:
            updated_at = self._updated_at.take(rows)
        except IndexError:
            # Rows past the arrays have never been updated: grow them (a read of every seen
            # item each window should not pay for a max over its rows to find out).
            self._reserve(rows)
            updated_at = self._updated_at.take(rows)
        gap = np.maximum(window - updated_at, 0)
        means = gather(self._means, rows)
        if gap.size == 0 or int(gap.max()) <= MAX_TABLE_GAP:
            factors = self._powers.lookup(gap)
        else:
            factors = self._powers.factors(gap.astype(np.float64), means)
        decayed: FloatArray = means * factors
        return decayed

    def update(self, rows: IndexArray, window: int, values: FloatArray) -> None:
        """Fold ``values`` (this window's counts of ``rows``) into the means."""
        self._reserve(rows)
        # The previous value decays up to the window before this one, then the new count enters.
        previous = self._decayed(rows, window - 1)
        # d * m + (1 - d) * x with the items along the inner axis (numpy loops slowly over a
        # short one); the same operations on the same values, so the same bits.
        mixed = self.decay[:, None] * previous.T + (1.0 - self.decay)[:, None] * values[None, :]
        set_rows(self._means, rows, mixed.T)
        self._updated_at[rows] = window

    def get(self, rows: IndexArray, window: int) -> FloatArray:
        """The means of ``rows`` as of ``window`` (one column per half-life)."""
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

    Reads of the newest window (every close reads it for every seen item) come from a second
    ring in which each slot holds its window's count or 0: when the ring moves on to a new
    window, that window's slot is cleared for every item at once (one column), so such a
    read needs no stamps at all.

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
        # The counts of windows head - k + 1 .. head, zero where an item had none.
        self._current = np.zeros((0, k))
        self._head: int | None = None

    def _reserve(self, rows: IndexArray) -> None:
        if rows.size:
            size = int(rows.max()) + 1
            self._counts = grown(self._counts, size, 0.0)
            self._stamps = grown(self._stamps, size, -1)
            self._current = grown(self._current, size, 0.0)

    def _advance(self, window: int) -> int:
        """Move the current ring on to ``window``: the slots of the windows it passes are
        cleared for every item. Returns the head, the newest window of the ring."""
        if self._head is not None and window <= self._head:
            return self._head
        first = window - self.k + 1
        if self._head is not None:
            first = max(first, self._head + 1)
        for passed in range(first, window + 1):
            self._current[:, passed % self.k] = 0.0
        self._head = window
        return window

    def update(self, rows: IndexArray, window: int, values: FloatArray) -> None:
        """Record ``values`` as the counts of ``rows`` in ``window``."""
        slot = window % self.k
        try:
            # Through the column views: numpy's (rows, column) assignment is slower. A row
            # past the arrays raises before anything is written.
            self._counts[:, slot][rows] = values
        except IndexError:
            self._reserve(rows)
            self._counts[:, slot][rows] = values
        self._stamps[:, slot][rows] = window
        head = self._advance(window)
        # An update of a window older than the ring's span overwrites a slot the current
        # ring reads for a newer window: that window's count is gone for these rows.
        self._current[:, slot][rows] = values if window > head - self.k else 0.0

    def get(self, rows: IndexArray, window: int) -> FloatArray:
        """Counts of windows ``window - k + 1 .. window`` for ``rows``."""
        first = window - self.k + 1
        slots = np.arange(first, window + 1, dtype=np.int64) % self.k
        if window == self._head:
            try:
                current_ring: FloatArray = gather(self._current, rows)[:, slots]
                return current_ring
            except IndexError:  # rows never updated, past the arrays: grow them
                self._reserve(rows)
                current_ring = gather(self._current, rows)[:, slots]
                return current_ring
        try:
            stamps = gather(self._stamps, rows)
        except IndexError:  # rows never updated, past the arrays: grow them
            self._reserve(rows)
            stamps = gather(self._stamps, rows)
        # A slot's stamp is always congruent to the slot modulo k (an update writes slot
        # ``w % k`` with stamp ``w``; a never-written slot holds count 0), so "the stamp is
        # the window this column wants" is "the stamp lies in first..window": two scalar
        # comparisons instead of a broadcast one.
        current = (stamps >= first) & (stamps <= window)
        result: FloatArray = np.where(current, gather(self._counts, rows), 0.0)[:, slots]
        return result

    def latest(self, rows: IndexArray, window: int) -> FloatArray:
        """Counts of ``rows`` in ``window`` alone: the last column of :meth:`get`.

        >>> recent = RecentCounts(k=3)
        >>> recent.update(np.array([0, 1]), window=5, values=np.array([2.0, 7.0]))
        >>> recent.update(np.array([0]), window=6, values=np.array([3.0]))
        >>> recent.latest(np.array([0, 1]), window=6).tolist()
        [3.0, 0.0]
        """
        slot = window % self.k
        if window == self._head:
            try:
                values: FloatArray = self._current[:, slot].take(rows)
            except IndexError:  # rows never updated, past the arrays: grow them
                self._reserve(rows)
                values = self._current[:, slot].take(rows)
            return values
        try:
            stamps = self._stamps[:, slot].take(rows)
        except IndexError:  # rows never updated, past the arrays: grow them
            self._reserve(rows)
            stamps = self._stamps[:, slot].take(rows)
        values = np.where(stamps == window, self._counts[:, slot].take(rows), 0.0)
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
        # The current ring is derived: the newest stamp is its head (a later update without
        # rows is not stamped anywhere; reads of it take the stamped path until the next
        # update moves the ring on, clearing the slots it passes). Never-written slots are
        # stamped -1 and hold 0, so they read the same either way.
        recent._current = np.zeros_like(recent._counts)
        if recent._stamps.size:
            head = int(recent._stamps.max())
            live = (recent._stamps > head - recent.k) & (recent._stamps <= head)
            recent._current = np.where(live, recent._counts, 0.0)
            recent._head = head
        return recent


def polynomial_fit(counts: FloatArray, degree: int) -> FloatArray:
    """Least-squares polynomial coefficients (constant first) of each row against 0..k-1.

    >>> polynomial_fit(np.array([[1.0, 3.0, 5.0, 7.0]]), degree=1).round(6).tolist()
    [[1.0, 2.0]]
    >>> (polynomial_fit(np.array([[0.0, 1.0, 4.0, 9.0]]), degree=2).round(6) + 0.0).tolist()
    [[0.0, 0.0, 1.0]]
    """
    # Column by column, not ``counts @ matrix``: BLAS picks its kernel by CPU, and a matrix
    # product's rounding differs between them, which moved the learned ranker's trees (the same
    # log ranked differently on two machines). Elementwise sums round the same everywhere.
    matrix = _fit_matrix(counts.shape[1], degree)
    solution = np.zeros((counts.shape[0], degree + 1))
    for column in range(counts.shape[1]):
        solution += counts[:, column : column + 1] * matrix[column]
    return solution


@functools.cache
def _fit_matrix(k: int, degree: int) -> FloatArray:
    """The pseudo-inverse of the polynomial design ``X`` on 0..k-1 (transposed), solved in
    exact rationals (LAPACK's pseudo-inverse also rounds by CPU kernel): ``(X^T X)^-1 X^T``
    when there are more points than coefficients, else the minimum-norm
    ``X^T (X X^T)^-1`` (a Vandermonde matrix of distinct points has full rank either way)."""
    design = [[Fraction(x) ** p for p in range(degree + 1)] for x in range(k)]
    transposed = [list(column) for column in zip(*design, strict=True)]
    if k > degree:
        pseudo = _product(_exact_inverse(_product(transposed, design)), transposed)
    else:
        pseudo = _product(transposed, _exact_inverse(_product(design, transposed)))
    return np.array([[float(v) for v in column] for column in zip(*pseudo, strict=True)])


def _product(a: list[list[Fraction]], b: list[list[Fraction]]) -> list[list[Fraction]]:
    """The exact product of two rational matrices (lists of rows)."""
    return [
        [
            sum((x * y for x, y in zip(row, column, strict=True)), Fraction(0))
            for column in zip(*b, strict=True)
        ]
        for row in a
    ]


def _exact_inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Gauss-Jordan inverse of a small non-singular rational matrix (the normal equations)."""
    size = len(matrix)
    rows = [[*row, *(Fraction(int(i == j)) for j in range(size))] for i, row in enumerate(matrix)]
    for column in range(size):
        pivot = next(r for r in range(column, size) if rows[r][column] != 0)
        rows[column], rows[pivot] = rows[pivot], rows[column]
        lead = rows[column][column]
        rows[column] = [value / lead for value in rows[column]]
        for r in range(size):
            if r != column and rows[r][column] != 0:
                factor = rows[r][column]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[column], strict=True)]
    return [row[size:] for row in rows]


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
    mean = _row_means(counts)
    # Population variance from the first two moments: rows are short (k counts), so this is
    # exact enough and avoids numpy's generic std machinery.
    std = np.sqrt(np.maximum(_row_means(counts * counts) - mean * mean, 0.0))
    total = mean + std
    safe = np.where(total > 0, total, 1.0)
    result: FloatArray = np.where(total > 0, (std - mean) / safe, 0.0)
    return result


def _row_means(values: FloatArray) -> FloatArray:
    """``values.mean(axis=1)``, bit for bit.

    Numpy adds a row of fewer than 8 values left to right onto +0.0, then divides; done
    column by column that is a few passes over long arrays instead of one short inner loop
    per row. Longer rows (numpy sums those pairwise) go to numpy itself.

    >>> rows = np.array([[0.1, 0.2, 0.3, 0.7], [-0.0, -0.0, -0.0, -0.0]])
    >>> bool((_row_means(rows) == rows.mean(axis=1)).all()), float(_row_means(rows)[1])
    (True, 0.0)
    """
    columns = values.shape[1]
    if not 0 < columns < 8:
        means: FloatArray = values.mean(axis=1)
        return means
    total = values[:, 0] + 0.0  # a new array, and -0.0 + 0.0 is +0.0 as in numpy's sum
    for column in range(1, columns):
        total += values[:, column]
    means = total / columns
    return means
