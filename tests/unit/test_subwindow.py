"""Sub-window and audience signals against a brute-force recomputation from the raw events."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from model.baselines import EWMA
from streams.engine import Engine, EngineConfig
from streams.trend.decay import ContinuousDecay
from streams.trend.state import TrendConfig, TrendState
from streams.trend.subwindow import DECAY_FRACTIONS, RETURNING_DECAY_FRACTIONS
from streams.trend.users import BloomSeenUsers, ExactSeenUsers, hash_user_ids
from streams.trend.windows import WindowSpec

W = 1000


def _random_log(seed: int, n: int = 3000, windows: int = 8) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, windows * W, n))
    items = rng.integers(0, 25, n).astype(str).astype(object)
    users = rng.integers(0, 60, n).astype(str).astype(object)
    return items, users, ts


def _replayed(items, users, ts, *, grace: int = 0, batch: int = 257, **config) -> TrendState:
    state = TrendState(TrendConfig(WindowSpec(W, grace=grace), **config))
    codes = state.catalog.codes(items)
    for start in range(0, len(ts), batch):
        stop = start + batch
        state.ingest(codes[start:stop], ts[start:stop], users=users[start:stop])
    return state


def _expected(items, users, ts, item: str, window: int) -> dict[str, float]:
    start, end = window * W, (window + 1) * W
    before = ts < end
    mine = before & (items == item)
    in_window = mine & (ts >= start)
    earlier_users = set(users[ts < start].tolist())
    window_users = set(users[in_window].tolist())
    previous = mine & (ts >= start - W) & (ts < start)
    previous_users = set(users[previous].tolist())
    active_now = set(users[(ts >= start) & (ts < end)].tolist())
    decayed = [
        float(np.sum(2.0 ** (-(end - ts[mine]) / (f * W)))) for f in DECAY_FRACTIONS
    ]
    returning_events = mine & np.isin(users, list(earlier_users)) & (ts >= start)
    # Returning decays fold each window's returning users' events in at that window's close.
    returning_decayed = []
    for f in RETURNING_DECAY_FRACTIONS:
        total = 0.0
        for w in range(window + 1):
            w_start, w_end = w * W, (w + 1) * W
            seen = set(users[ts < w_start].tolist())
            sel = mine & (ts >= w_start) & (ts < w_end) & np.isin(users, list(seen))
            total += float(np.sum(2.0 ** (-(end - ts[sel]) / (f * W))))
        returning_decayed.append(total)
    del returning_events
    return {
        "decayed": decayed,
        "decayed_returning": returning_decayed,
        "last_quarter": float(np.sum(in_window & (ts >= end - W / 4))),
        "last_half": float(np.sum(in_window & (ts >= end - W / 2))),
        "since_first": float(end - ts[mine].min()),
        "since_last": float(end - ts[mine].max()),
        "users": float(len(window_users)),
        "returning": float(len(window_users & earlier_users)),
        "return_rate": (
            len(previous_users & active_now) / len(previous_users) if previous_users else 0.0
        ),
    }


@pytest.mark.parametrize("grace", [0, 300])
def test_signals_match_a_brute_force_recomputation(grace: int) -> None:
    """Every sub-window and audience signal equals its definition recomputed from the raw
    events, with and without a grace period (catches any off-by-one in what a window sees)."""
    items, users, ts = _random_log(seed=grace)
    state = _replayed(items, users, ts, grace=grace)
    window = 5
    # Read window 5 right at its close: replay only up to the event that closes it.
    cut = int(np.searchsorted(ts, (window + 1) * W + grace))
    state = _replayed(items[:cut], users[:cut], ts[:cut], grace=grace)
    state.advance_to((window + 1) * W + grace)
    assert state.closed_through == window
    frame = state.features(state.seen_rows(), window)
    keep = ts < (window + 1) * W
    for position, item in enumerate(frame.item_ids):
        want = _expected(items[keep], users[keep], ts[keep], str(item), window)
        np.testing.assert_allclose(frame.decayed[position], want["decayed"], rtol=1e-9)
        np.testing.assert_allclose(
            frame.decayed_returning[position], want["decayed_returning"], rtol=1e-9, atol=1e-12
        )
        assert frame.last_quarter[position] == want["last_quarter"]
        assert frame.last_half[position] == want["last_half"]
        assert frame.since_first[position] == pytest.approx(want["since_first"])
        assert frame.since_last[position] == pytest.approx(want["since_last"])
        assert frame.users[position] == want["users"]
        assert frame.returning[position] == want["returning"]
        assert frame.return_rate[position] == pytest.approx(want["return_rate"])
    assert frame.window_users == len(set(users[keep & (ts >= window * W)].tolist()))


def test_outcome_counts_returning_users_of_the_next_window() -> None:
    """The label HR@10 counts: distinct users of the item in t+1 seen anywhere before t+1."""
    items = np.array(["a", "a", "b", "a", "a", "b", "c"], dtype=object)
    users = np.array(["u", "v", "u", "u", "w", "x", "v"], dtype=object)
    ts = np.array([10.0, 20, 30, 1100, 1200, 1300, 2500])
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), EWMA(1))
    results, _ = engine.ingest(engine.state.catalog.codes(items), ts, users=users)
    snapshot = results[1].snapshot  # window 0's rows, labelled with window 1
    assert snapshot is not None
    rows = {r.item_id: r for r in snapshot.rows()}
    assert (rows["a"].next_count, rows["a"].next_users, rows["a"].next_returning) == (2, 2, 1)
    assert (rows["b"].next_count, rows["b"].next_users, rows["b"].next_returning) == (1, 1, 0)


def test_state_round_trips_mid_window_with_every_signal() -> None:
    """A state restored from its dict (through JSON) continues exactly like the original."""
    items, users, ts = _random_log(seed=3)
    cut = 1700
    original = _replayed(items[:cut], users[:cut], ts[:cut], grace=200)
    text = orjson.dumps(original.state_dict())
    restored = TrendState.from_state_dict(orjson.loads(text))
    for state in (original, restored):
        codes = state.catalog.codes(items[cut:])
        state.ingest(codes, ts[cut:], users=users[cut:])
    window = original.closed_through
    assert window is not None and window == restored.closed_through
    a = original.features(original.seen_rows(), window).to_dict()
    b = restored.features(restored.seen_rows(), window).to_dict()
    assert orjson.dumps(a) == orjson.dumps(b)  # NaN-safe equality


def test_a_far_future_event_costs_no_empty_windows() -> None:
    """Defect: one far-future timestamp (a millisecond epoch read as seconds, year 5138)
    closed every empty window up to it: an endless replay. Now the clock jumps: only the
    windows next to events close (two on each side of the gap), the rest are counted skipped."""
    state = TrendState(TrendConfig(WindowSpec(W)))
    codes = state.catalog.codes(np.array(["a", "b", "a"], dtype=object))
    result = state.ingest(codes, np.array([10.0, 2000.0, 4102444800000.0]))
    closed = [w.index for w in result.closed]
    level = 4102444800000 // W - 1
    assert closed == [0, 1, 2, 3, 4, level - 1, level]
    assert not result.late.any()
    assert state.skipped_windows == level - 1 - 5


def test_engine_streams_results_instead_of_keeping_them() -> None:
    """Defect: Engine.ingest kept every result of a batch; with on_result it keeps none."""
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), EWMA(1))
    seen: list[int] = []
    items = np.array(["a"] * 50, dtype=object)
    ts = np.arange(50, dtype=np.float64) * W
    kept, _ = engine.ingest(
        engine.state.catalog.codes(items), ts, on_result=lambda r: seen.append(r.window.index)
    )
    assert kept == [] and seen == list(range(49))


def test_seen_user_sets_agree_and_bloom_reports_its_error() -> None:
    hashes = hash_user_ids(np.array([f"user{i}" for i in range(5000)], dtype=object))
    exact, bloom = ExactSeenUsers(), BloomSeenUsers(bits=1 << 18, probes=5)
    for seen in (exact, bloom):
        seen.add(hashes[:2500])
    assert exact.contains(hashes[:2500]).all() and bloom.contains(hashes[:2500]).all()
    assert not exact.contains(hashes[2500:]).any()
    false_positive = bloom.contains(hashes[2500:]).mean()
    assert false_positive <= 5 * bloom.false_positive_rate() + 1e-3


def test_bloom_seen_users_survive_the_state_dict() -> None:
    items, users, ts = _random_log(seed=5)
    state = _replayed(items, users, ts, seen_users="bloom:16")
    restored = TrendState.from_state_dict(orjson.loads(orjson.dumps(state.state_dict())))
    window = state.closed_through
    assert window is not None
    np.testing.assert_array_equal(
        state.features(state.seen_rows(), window).recent_returning,
        restored.features(restored.seen_rows(), window).recent_returning,
    )


def test_an_empty_frame_round_trips() -> None:
    """Defect: a frame with no rows (a pending snapshot of a quiet window) could not be read
    back: its matrices lost their column count, and a worker restore failed on it."""
    state = TrendState(TrendConfig(WindowSpec(W)))
    state.ingest(state.catalog.codes(["a"]), np.array([10.0]), users=["u"])
    state.advance_to(10 * W)
    frame = state.features(np.zeros(0, dtype=np.int64), state.closed_through or 0)
    again = type(frame).from_dict(orjson.loads(orjson.dumps(frame.to_dict())), {})
    assert again.decayed.shape == (0, len(DECAY_FRACTIONS))
    assert again.recent_users.shape == frame.recent_users.shape


def test_continuous_decay_reads_the_exact_bits_of_its_definition() -> None:
    """Decayed counts are read through a table of factors by whole-window gap; they must be
    the bits of ``value * 2 ** (-gap / h)`` for whole gaps, gaps past the table, a never-folded
    row and a read between window ends (catches a table in the wrong unit or a lost
    fallback). Contributions must be the per-item sums of each event's own factor."""
    rng = np.random.default_rng(4)
    half_lives = tuple(f * W for f in DECAY_FRACTIONS)
    decay = ContinuousDecay(half_lives, unit=W)
    n = 200
    folded_at = rng.integers(0, 6000, n)
    for window in np.unique(folded_at).tolist():
        rows = np.flatnonzero(folded_at == window)
        decay.fold(rows, rng.random((rows.shape[0], len(half_lives))), at=float(window * W))
    rows = np.arange(n + 3)  # three rows never folded
    for at in (6000.0 * W, 6001.0 * W, 6000.5 * W, 12000.0 * W):
        gap = np.maximum(at - decay._at[rows], 0.0)
        want = decay._values[rows] * np.exp2(-gap[:, None] / decay.half_lives)
        np.testing.assert_array_equal(decay.get(rows, at), want)
    codes = rng.integers(0, 9, 500)
    times = rng.uniform(0, W, 500)
    weights = rng.uniform(0.5, 2.0, 500)
    present = np.unique(codes)
    got = decay.contributions(codes, times, weights, float(W), present, 9)
    for column, h in enumerate(half_lives):
        factors = np.exp2(-(W - times) / h) * weights
        want = np.bincount(codes, weights=factors)[present]
        np.testing.assert_array_equal(got[:, column], want)


def test_continuous_decay_survives_its_state_dict_at_whole_and_other_times() -> None:
    """A restored decay must read the same bits: rows folded at whole windows take the
    integer-gap table, a row folded between window ends must not (catches a restored row
    whose whole-window time was lost or invented)."""
    half_lives = tuple(f * W for f in DECAY_FRACTIONS)
    decay = ContinuousDecay(half_lives, unit=W)
    decay.fold(np.array([0, 1]), np.array([[1.0] * 5, [2.0] * 5]), at=3.0 * W)
    decay.fold(np.array([2]), np.array([[4.0] * 5]), at=3.5 * W)
    restored = ContinuousDecay.from_state_dict(
        orjson.loads(orjson.dumps(decay.state_dict(3))), unit=W
    )
    rows = np.arange(4)
    for at in (3.5 * W, 4.0 * W, 9.0 * W, 9.25 * W):
        gap = np.maximum(at - decay._at[rows], 0.0)
        want = decay._values[rows] * np.exp2(-gap[:, None] / decay.half_lives)
        np.testing.assert_array_equal(decay.get(rows, at), want)
        np.testing.assert_array_equal(restored.get(rows, at), want)


def test_weighted_signals_match_their_definitions() -> None:
    """With event weights, decayed counts and the quarter and half counts are weighted sums
    (catches a path that treats weights as ones), and unit weights give the same as none."""
    items, users, ts = _random_log(seed=8, n=1500, windows=4)
    weights = np.random.default_rng(8).uniform(0.5, 3.0, ts.shape[0])
    states = []
    for w in (weights, np.ones_like(weights), None):
        state = TrendState(TrendConfig(WindowSpec(W)))
        codes = state.catalog.codes(items)
        state.ingest(codes, ts, w, users=users)
        state.advance_to(4 * W)
        states.append(state)
    window = 3
    end = (window + 1) * W
    frame = states[0].features(states[0].seen_rows(), window)
    for position, item in enumerate(frame.item_ids):
        mine = items == item
        decayed = [np.sum(weights[mine] * 2.0 ** (-(end - ts[mine]) / (f * W)))
                   for f in DECAY_FRACTIONS]
        np.testing.assert_allclose(frame.decayed[position], decayed, rtol=1e-12)
        in_window = mine & (ts >= window * W)
        for name, start in (("last_quarter", end - W / 4), ("last_half", end - W / 2)):
            want = np.sum(weights[in_window & (ts >= start)])
            assert getattr(frame, name)[position] == pytest.approx(want, rel=1e-12)
        assert frame.count[position] == pytest.approx(np.sum(weights[in_window]), rel=1e-12)
    ones, none = (s.features(s.seen_rows(), window).to_dict() for s in states[1:])
    assert orjson.dumps(ones) == orjson.dumps(none)


def test_user_hashes_are_pandas_hash_array_of_the_ids() -> None:
    """USER_HASH names pandas' categorised hash_array: hash_user_ids must give its bits for
    text, numbers (by their text), missing ids and empty batches, or a saved seen-user set
    would stop matching the users of a restored worker."""
    import pandas as pd

    batches = [
        np.array([f"user{i % 97}" for i in range(5000)], dtype=object),
        np.array([7, "7", 7.0, None, np.nan, "a", b"x", True], dtype=object),
        np.array([], dtype=object),
        ["u1", "u2", "u1"],
        np.arange(40),
        [None, None],
    ]
    for batch in batches:
        want = pd.util.hash_array(np.asarray(batch, dtype=object), categorize=True)
        np.testing.assert_array_equal(hash_user_ids(batch), want)
