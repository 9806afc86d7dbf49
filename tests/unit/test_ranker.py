"""The online learned ranker: no leakage, determinism, exact state round trips, its label."""

from __future__ import annotations

import numpy as np
import orjson

from model.cascade import RankingStage
from model.ranker import OnlineRanker, RankerConfig
from streams.engine import Engine, EngineConfig, WindowResult
from streams.trend.state import TrendConfig
from streams.trend.windows import WindowSpec

W = 1000
FAST = RankerConfig(min_windows=2, trees=40, min_leaf_rows=5, candidates=40)


def _log(seed: int, windows: int = 12, n: int = 12_000) -> tuple[np.ndarray, ...]:
    """Items with drifting popularity, users who come back: enough structure to learn."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, windows * W, n))
    phase = rng.uniform(0, 2 * np.pi, 80)
    window = ts // W
    weights = np.exp(np.sin(phase[None, :] + window[:, None] / 3.0))
    weights /= weights.sum(axis=1, keepdims=True)
    cumulative = weights.cumsum(axis=1)
    draws = rng.uniform(size=n)[:, None]
    items = (draws > cumulative).sum(axis=1).astype(str).astype(object)
    users = rng.zipf(1.6, n).clip(max=400).astype(str).astype(object)
    return items, users, ts


def _rankings(items, users, ts, scorer, *, stop: float | None = None) -> dict[int, list[str]]:
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), scorer)
    keep = slice(None) if stop is None else slice(0, int(np.searchsorted(ts, stop)))
    out: dict[int, list[str]] = {}

    def collect(result: WindowResult) -> None:
        out[result.window.index] = result.ranking(20)

    engine.ingest(
        engine.state.catalog.codes(items[keep]), ts[keep], users=users[keep], on_result=collect
    )
    return out


def test_the_ranking_at_t_never_reads_window_t_plus_1() -> None:
    """Leakage: poison every event after window 7 (other items, other users, other times) and
    the rankings made at the ends of windows 0..7 do not move. Catches a ranker (or an engine)
    that trains on the window it ranks or peeks at the next one."""
    items, users, ts = _log(seed=1)
    clean = _rankings(items, users, ts, OnlineRanker(FAST))
    poisoned_items, poisoned_users = items.copy(), users.copy()
    after = ts >= 8 * W
    rng = np.random.default_rng(99)
    poisoned_items[after] = rng.permutation(poisoned_items[after])
    poisoned_users[after] = "intruder"
    poisoned = _rankings(poisoned_items, poisoned_users, ts, OnlineRanker(FAST))
    for window in range(8):
        assert poisoned[window] == clean[window], f"window {window} moved"
    assert any(poisoned[w] != clean[w] for w in range(9, 11)), "the poison changed nothing"


def test_same_log_and_seed_give_the_same_ranking() -> None:
    items, users, ts = _log(seed=2)
    first = _rankings(items, users, ts, OnlineRanker(FAST))
    second = _rankings(items, users, ts, OnlineRanker(FAST))
    assert first == second
    other_seed = _rankings(
        items, users, ts, OnlineRanker(RankerConfig(**{**FAST.to_dict(), "seed": 7}))
    )
    assert other_seed != first, "the seed reaches nothing: bagging is not seeded"


def test_a_restored_ranker_ranks_exactly_like_the_original() -> None:
    """Kill -9 recovery needs the ranker's training groups and models to round-trip through
    JSON exactly: the restored ranker's later rankings equal the uninterrupted one's."""
    items, users, ts = _log(seed=3)
    reference = _rankings(items, users, ts, OnlineRanker(FAST))

    original = OnlineRanker(FAST)
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), original)
    cut = int(np.searchsorted(ts, 7.5 * W))
    engine.ingest(engine.state.catalog.codes(items[:cut]), ts[:cut], users=users[:cut])
    restored = OnlineRanker(FAST)
    restored.load_state_dict(orjson.loads(orjson.dumps(original.state_dict())))
    resumed = Engine(
        EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), restored, state=engine.state
    )
    resumed.load_pending_state_dict(engine.pending_state_dict())
    later: dict[int, list[str]] = {}
    resumed.ingest(
        resumed.state.catalog.codes(items[cut:]),
        ts[cut:],
        users=users[cut:],
        on_result=lambda r: later.__setitem__(r.window.index, r.ranking(20)),
    )
    assert later and all(later[w] == reference[w] for w in later)


def test_it_learns_returning_users_not_heavy_users() -> None:
    """The label: one heavy user hammering an item makes counts, not returning users. With
    the returning-user label the ranker puts the many-audience items first; with the count
    label it prefers the hammered ones."""
    rng = np.random.default_rng(4)
    rows = []
    for window in range(14):
        base = window * W
        for item in range(20):
            # "crowd" items: 6 returning users once each; "hammer" items: one user, 15 events.
            if item < 10:
                for user in rng.choice(200, 6, replace=False):
                    rows.append((f"crowd{item}", f"u{user}", base + rng.uniform(0, W)))
            else:
                for _ in range(15):
                    rows.append((f"hammer{item}", f"solo{item}", base + rng.uniform(0, W)))
    rows.sort(key=lambda r: r[2])
    items = np.array([r[0] for r in rows], dtype=object)
    users = np.array([r[1] for r in rows], dtype=object)
    ts = np.array([r[2] for r in rows])
    config = RankerConfig(min_windows=3, trees=30, min_leaf_rows=5, candidates=20)
    by_returning = _rankings(items, users, ts, OnlineRanker(config))
    by_count = _rankings(items, users, ts, OnlineRanker(RankerConfig(**{
        **config.to_dict(), "label": "count"})))
    last = max(by_returning)
    assert all(i.startswith("crowd") for i in by_returning[last][:10])
    assert all(i.startswith("hammer") for i in by_count[last][:10])


def test_the_stage_state_round_trips_with_the_blend() -> None:
    items, users, ts = _log(seed=5, windows=8)
    stage = RankingStage(FAST)
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), stage.ranker)
    engine.ingest(engine.state.catalog.codes(items), ts, users=users)
    stage.blend.remember(7000, ["1", "2"], np.array([1.0, 0.5]), np.array([0.0, 1.0]))
    copy = RankingStage(FAST)
    copy.load_state_dict(orjson.loads(orjson.dumps(stage.state_dict())))
    assert orjson.dumps(copy.state_dict()) == orjson.dumps(stage.state_dict())


def test_rankings_do_not_depend_on_the_order_the_catalog_met_items_in() -> None:
    """Defect found by the worker's kill -9 test: a worker registers metadata items at its
    first window close, a replay at its start, so the two catalogs number items differently;
    the ranker fitted its rows in catalog order and bagging made the models differ. Rows are
    now in item-id order."""
    items, users, ts = _log(seed=6)
    plain = _rankings(items, users, ts, OnlineRanker(FAST))
    scorer = OnlineRanker(FAST)
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), scorer)
    # Meet every item first in reverse id order: other codes, same events.
    engine.state.catalog.codes(np.array(sorted(set(items), reverse=True), dtype=object))
    shuffled: dict[int, list[str]] = {}
    engine.ingest(
        engine.state.catalog.codes(items),
        ts,
        users=users,
        on_result=lambda r: shuffled.__setitem__(r.window.index, r.ranking(20)),
    )
    assert shuffled == plain


def _replay_recording(ranker: OnlineRanker, items, users, ts) -> list[dict]:
    """Per scored window: a checkpoint taken right after ``learn`` (its refit in flight),
    the scores, a checkpoint taken before ``forecast`` (the forecast models maybe still
    fitting), the forecasts, and the scores of a ranker restored from the first checkpoint."""
    records: list[dict] = []
    after_learn: list[bytes] = []  # the checkpoint taken after the last learn, until scored
    learn, score = ranker.learn, ranker.score

    def learning(features, outcome) -> None:
        learn(features, outcome)
        after_learn[:] = [orjson.dumps(ranker.state_dict())]

    def scoring(features):
        scores = score(features)
        record = {"after_learn": after_learn.pop() if after_learn else None, "scores": scores}
        record["before_forecast"] = orjson.dumps(ranker.state_dict())
        record["forecasts"] = ranker.forecast(features)
        if record["after_learn"] is not None:
            restored = OnlineRanker(FAST)
            restored.load_state_dict(orjson.loads(record["after_learn"]))
            record["restored_scores"] = restored.score(features)
        records.append(record)
        return scores

    ranker.learn, ranker.score = learning, scoring
    _rankings(items, users, ts, ranker)
    return records


def test_concurrent_fitting_gives_exactly_the_serial_models_scores_and_forecasts() -> None:
    """The three boosters fitted at once in three threads (each alone one deterministic
    thread) give bit for bit what one thread fitting them one after another gives: every
    window's scores, forecasts and checkpoints, whether taken while a refit is in flight
    (they hold the refit before it, all three models, and a ranker restored from one scores
    exactly as the original) or while only the forecast models still fit (they wait)."""
    items, users, ts = _log(seed=7)
    serial_ranker = OnlineRanker(FAST, fit_threads=1)
    concurrent_ranker = OnlineRanker(FAST, fit_threads=3)
    serial = _replay_recording(serial_ranker, items, users, ts)
    concurrent = _replay_recording(concurrent_ranker, items, users, ts)
    assert len(concurrent_ranker.fit_seconds) == len(serial_ranker.fit_seconds) >= 5
    assert len(concurrent) == len(serial)
    for one, other in zip(serial, concurrent, strict=True):
        assert one["after_learn"] == other["after_learn"]
        assert one["before_forecast"] == other["before_forecast"]
        assert np.array_equal(one["scores"], other["scores"])
        for mine, theirs in zip(one["forecasts"], other["forecasts"], strict=True):
            assert np.array_equal(mine, theirs)
        if other["after_learn"] is not None:
            assert np.array_equal(other["restored_scores"], other["scores"])
    models = ("fitted_on", "ranker", "counter", "returner")
    for before, after in zip(concurrent, concurrent[1:], strict=False):
        mid_refit = orjson.loads(after["after_learn"])
        previous = orjson.loads(before["before_forecast"])
        assert [mid_refit[m] for m in models] == [previous[m] for m in models]
    assert orjson.loads(concurrent[-1]["before_forecast"])["counter"] is not None
