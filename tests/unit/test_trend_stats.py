"""The columnar statistics agree with River and with their definitions."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from river import stats as river_stats

from streams.trend.stats import (
    MAX_TABLE_GAP,
    DecayingMeans,
    GapFactors,
    RecentCounts,
    burstiness,
    slope_and_acceleration,
)
from streams.trend.windows import floor_divide


@pytest.mark.parametrize("half_life", [1.0, 2.0, 4.0, 8.0])
def test_decaying_means_equal_river_ewmean_over_window_counts(half_life: float) -> None:
    rng = np.random.default_rng(7)
    n_items, n_windows = 20, 30
    counts = rng.poisson(2.0, size=(n_windows, n_items)) * (rng.random((n_windows, n_items)) < 0.4)
    means = DecayingMeans((half_life,))
    fading = 1.0 - 2.0 ** (-1.0 / half_life)
    references = [river_stats.EWMean(fading_factor=fading) for _ in range(n_items)]
    for reference in references:
        reference.update(0.0)  # the quiet window before the stream starts
    for window in range(n_windows):
        changed = np.flatnonzero(counts[window] > 0)
        means.update(changed, window, counts[window, changed].astype(float))
        for item, reference in enumerate(references):
            reference.update(float(counts[window, item]))
        got = means.get(np.arange(n_items), window)[:, 0]
        want = np.array([r.get() for r in references])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_ewma_mean_is_the_normalised_decayed_sum() -> None:
    history = {0: 3.0, 2: 5.0, 3: 1.0}
    means = DecayingMeans((2.0,))
    for window, count in history.items():
        means.update(np.array([0]), window, np.array([count]))
    decayed_sum = sum(2.0 ** (-(6 - w) / 2.0) * c for w, c in history.items())
    got = means.get(np.array([0]), 6)[0, 0]
    assert got == pytest.approx(decayed_sum * (1.0 - 2.0**-0.5))


def test_recent_counts_shift_lazily_and_forget_beyond_k() -> None:
    recent = RecentCounts(k=4)
    recent.update(np.array([0]), 0, np.array([1.0]))
    recent.update(np.array([0]), 2, np.array([3.0]))
    assert recent.get(np.array([0]), 3).tolist() == [[1.0, 0.0, 3.0, 0.0]]
    assert recent.get(np.array([0]), 9).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    recent.update(np.array([0]), 9, np.array([4.0]))
    assert recent.get(np.array([0]), 9).tolist() == [[0.0, 0.0, 0.0, 4.0]]


def test_slope_matches_numpy_polyfit() -> None:
    rng = np.random.default_rng(1)
    counts = rng.poisson(5.0, size=(50, 4)).astype(float)
    slope, accel = slope_and_acceleration(counts)
    for row, s, a in zip(counts, slope, accel, strict=True):
        assert s == pytest.approx(np.polyfit(np.arange(4), row, 1)[0], abs=1e-9)
        assert a == pytest.approx(2 * np.polyfit(np.arange(4), row, 2)[0], abs=1e-9)


def test_burstiness_is_bounded() -> None:
    rng = np.random.default_rng(2)
    values = burstiness(rng.poisson(1.0, size=(200, 4)).astype(float))
    assert values.min() >= -1.0
    assert values.max() <= 1.0


def test_state_dicts_round_trip() -> None:
    means = DecayingMeans((1.0, 8.0))
    means.update(np.array([0, 3]), 5, np.array([2.0, 9.0]))
    restored = DecayingMeans.from_state_dict(means.state_dict(4))
    rows = np.arange(4)
    np.testing.assert_array_equal(restored.get(rows, 7), means.get(rows, 7))
    recent = RecentCounts(4)
    recent.update(np.array([1]), 3, np.array([6.0]))
    restored_recent = RecentCounts.from_state_dict(recent.state_dict(2))
    np.testing.assert_array_equal(restored_recent.get(rows[:2], 4), recent.get(rows[:2], 4))


def test_decaying_means_read_the_exact_bits_of_their_definition() -> None:
    """The means are read through a table of decay powers by gap; the values must be the bits
    of ``mean * d ** gap`` itself, for short gaps, gaps past the table (an item quiet for
    longer than MAX_TABLE_GAP windows) and negative windows (catches a wrong table entry, a
    table indexed off by one, or a fallback that is not taken)."""
    rng = np.random.default_rng(11)
    means = DecayingMeans((1.0, 2.0, 4.0, 8.0))
    n = 300
    last = rng.integers(-50, 9000, n)
    for window in np.unique(last).tolist():
        rows = np.flatnonzero(last == window)
        means.update(rows, window, rng.poisson(3.0, rows.shape[0]).astype(float) + 1.0)
    rows = rng.permutation(n)
    for window in (last.max(), last.max() + 1, last.max() + MAX_TABLE_GAP + 7):
        gap = np.maximum(window - means._updated_at[rows], 0).astype(np.float64)
        want = means._means[rows] * means.decay[None, :] ** gap[:, None]
        np.testing.assert_array_equal(means.get(rows, int(window)), want)
    assert (last.max() - last > MAX_TABLE_GAP).any() and (last.max() - last < 3).any()


def test_gap_factors_fall_back_where_a_gap_is_not_a_whole_unit() -> None:
    """Gaps that are not a whole number of units must not be rounded into the table."""
    half_lives = np.array([18900.0, 604800.0])

    def factor(gaps: np.ndarray) -> np.ndarray:
        return np.exp2(-gaps[:, None] / half_lives)

    table = GapFactors(factor, unit=604800.0)
    gaps = np.array([0.0, 604800.0, 604800.5, 3 * 604800.0, 1e12, 604800.0 * 5000, 12.0])
    np.testing.assert_array_equal(table.factors(gaps), factor(gaps))


def test_recent_counts_equal_a_dense_history() -> None:
    """RecentCounts.get checks a slot's stamp by range; it must still give exactly the last k
    windows' counts (zeros for windows without an update), windows before 0 included, and
    reading an older window must not show a later window's count in its slot."""
    rng = np.random.default_rng(5)
    k, n, windows = 4, 30, range(-6, 40)
    recent = RecentCounts(k)
    history = {w: np.zeros(n) for w in windows}
    written = np.full((n, k), -(10**6))  # the last window written into each slot
    everything = np.arange(n)
    for window in windows:
        rows = np.flatnonzero(rng.random(n) < 0.3)
        values = rng.integers(1, 9, rows.shape[0]).astype(float)
        recent.update(rows, window, values)
        history[window][rows] = values
        written[rows, window % k] = window
        want = np.stack(
            [history.get(w, np.zeros(n)) for w in range(window - k + 1, window + 1)], axis=1
        )
        np.testing.assert_array_equal(recent.get(everything, window), want)
        np.testing.assert_array_equal(recent.latest(everything, window), want[:, -1])
    for window in (35, 37):
        got = recent.get(everything, window)
        for column, w in enumerate(range(window - k + 1, window + 1)):
            still = written[:, w % k] == w
            np.testing.assert_array_equal(got[:, column], np.where(still, history[w], 0.0))


def test_floor_divide_gives_numpy_floor_division_bits() -> None:
    """Window indices come from a checked floor of the quotient; they must equal numpy's
    floor division everywhere, next to window edges and for odd values too (catches an
    unchecked floor of a quotient that rounded to a window edge, as -5e-324 / 7 does)."""
    rng = np.random.default_rng(3)
    for length in (1, 7, 3600, 604800):
        edges = np.arange(1, 2000, dtype=np.float64) * length + 1.6e9 // length * length
        values = np.concatenate([
            rng.uniform(0.0, 2e9, 5000),
            edges, np.nextafter(edges, -np.inf), edges - 1e-6,
            np.array([0.0, -0.0, -1.0, 2.0**60, 1e300, 5e-324, -5e-324, -1e-300]),
        ])
        want = np.floor_divide(values, length)
        got = floor_divide(values, length)
        np.testing.assert_array_equal(got, want)
        assert (np.signbit(got) == np.signbit(want)).all()


def test_recent_counts_agree_with_the_stamped_ring_under_any_update_order() -> None:
    """Reads of the newest window come from a second ring cleared as windows pass; it must
    agree with the stamped slots (the definition) after jumps past k windows, updates without
    rows, updates of older windows (inside and beyond the ring's span), negative windows and a
    restore from the state dict, at the newest window and others (catches a slot not cleared,
    or a restored ring that reads stale counts)."""
    rng = np.random.default_rng(12)
    k, n = 4, 12
    live = RecentCounts(k)
    slots: dict[tuple[int, int], tuple[int, float]] = {}  # (row, slot) -> (stamp, count)

    def expected(window: int) -> np.ndarray:
        want = np.zeros((n, k))
        for column, w in enumerate(range(window - k + 1, window + 1)):
            for row in range(n):
                stamp, value = slots.get((row, w % k), (-1, 0.0))
                want[row, column] = value if stamp == w else 0.0
        return want

    window = -3
    for step in range(160):
        move = rng.choice(["next", "jump", "older", "ancient", "empty"], p=[.5, .1, .15, .1, .15])
        target = {"next": window + 1, "jump": window + int(rng.integers(k, 3 * k)),
                  "older": window - int(rng.integers(0, k)),
                  "ancient": window - int(rng.integers(k, 3 * k)), "empty": window + 1}[move]
        rows = np.flatnonzero(rng.random(n) < 0.4) if move != "empty" else np.zeros(0, int)
        values = rng.integers(1, 9, rows.shape[0]).astype(float)
        live.update(rows, int(target), values)
        for row, value in zip(rows.tolist(), values.tolist(), strict=True):
            slots[(row, int(target) % k)] = (int(target), value)
        window = max(window, int(target))
        if step % 40 == 39:
            live = RecentCounts.from_state_dict(orjson.loads(orjson.dumps(live.state_dict(n))))
        for read in (window, window - 1, window + 1):
            np.testing.assert_array_equal(live.get(np.arange(n), read), expected(read))
            np.testing.assert_array_equal(live.latest(np.arange(n), read), expected(read)[:, -1])
