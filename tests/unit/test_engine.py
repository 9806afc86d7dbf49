"""The engine: window closing, lateness, batching invariance, state round trips, rankings."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from model.baselines import EWMA, LastWindow, MostPop, RiverRegressor
from streams.engine import Engine, EngineConfig, WindowResult
from streams.trend.state import TrendConfig, TrendState
from streams.trend.windows import WindowSpec

DAY = 86_400


def synthetic_stream(seed: int = 0, n: int = 4_000, items: int = 60, days: int = 20):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, days * DAY, n))
    # A few items grow over time, the rest are noise.
    popularity = rng.zipf(1.6, items).astype(float)
    growth = np.where(np.arange(items) < 5, 3.0, 0.0)
    weights = popularity[None, :] * (1 + growth[None, :] * (ts[:, None] / (days * DAY)))
    probs = weights / weights.sum(axis=1, keepdims=True)
    picks = np.array([rng.choice(items, p=p) for p in probs])
    return np.array([str(p) for p in picks], dtype=object), ts


def run(engine: Engine, ids, ts, batch: int) -> list[WindowResult]:
    results = []
    for start in range(0, len(ids), batch):
        results += engine.ingest_ids(ids[start : start + batch], ts[start : start + batch])
    return results


def config(grace: int = 0) -> EngineConfig:
    return EngineConfig(TrendConfig(WindowSpec(DAY, grace=grace)), top_n=5, explain_top=0)


@pytest.mark.parametrize("scorer_type", [LastWindow, MostPop, lambda: EWMA(2), RiverRegressor])
def test_batch_size_does_not_change_results(scorer_type) -> None:
    ids, ts = synthetic_stream()
    whole = run(Engine(config(), scorer_type()), ids, ts, batch=len(ids))
    single = run(Engine(config(), scorer_type()), ids, ts, batch=1)
    assert [r.window.end for r in whole] == [r.window.end for r in single]
    for a, b in zip(whole, single, strict=True):
        assert a.ranking() == b.ranking()
        np.testing.assert_allclose(a.scores, b.scores)


def test_windows_close_in_order_including_empty_ones() -> None:
    engine = Engine(config(), LastWindow())
    results = engine.ingest_ids(["a", "b"], np.array([10.0, 5 * DAY + 1]))
    assert [r.window.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.window.changed.size for r in results] == [1, 0, 0, 0, 0]
    # An empty window still ranks every item seen so far.
    assert results[-1].ranking() == ["a"]


def test_late_events_within_grace_count_and_later_ones_are_marked() -> None:
    """An event of a closed window's grace period counts in that window; a later one does not
    count anywhere and is marked late.

    Catches: a grace event dropped or counted in the next window (b would tie with a at one
    event and rank after it by id), or a late event applied (d would be ranked).
    """
    engine = Engine(config(grace=3600), LastWindow())
    codes = engine.state.catalog.codes(np.array(["a", "b", "a", "b", "c", "d"], dtype=object))
    ts = np.array([10.0, 20.0, DAY + 100, DAY - 50, DAY + 3700, DAY - 1])
    results, late = engine.ingest(codes, ts)
    # b's second event arrives after window 1 started but within the grace: it counts in 0.
    assert late.tolist() == [False, False, False, False, False, True]
    assert [r.window.index for r in results] == [0]
    result = results[0]
    assert result.ranking() == ["b", "a"]
    ids = result.features.item_ids
    assert {ids[i]: s for i, s in enumerate(result.scores.tolist())} == {
        "b": pytest.approx(np.log1p(2.0)),
        "a": pytest.approx(np.log1p(1.0)),
    }
    assert engine.state.late_events == 1


@pytest.mark.parametrize("make_scorer", [lambda: EWMA(1), RiverRegressor])
def test_state_round_trip_mid_stream_gives_identical_results(make_scorer) -> None:
    ids, ts = synthetic_stream(seed=3)
    half = len(ids) // 2
    uninterrupted = run(Engine(config(), make_scorer()), ids, ts, batch=500)

    scorer = make_scorer()
    first = Engine(config(), scorer)
    before = run(first, ids[:half], ts[:half], batch=500)
    saved = orjson.loads(orjson.dumps(first.state.state_dict()))
    restored = make_scorer()
    if hasattr(scorer, "state_dict"):  # the online learner: what it learned travels too
        restored.load_state_dict(orjson.loads(orjson.dumps(scorer.state_dict())))
    second = Engine(config(), restored, state=TrendState.from_state_dict(saved))
    second.load_pending_state_dict(orjson.loads(orjson.dumps(first.pending_state_dict())))
    after = run(second, ids[half:], ts[half:], batch=500)

    resumed = before + after
    assert [r.window.end for r in resumed] == [r.window.end for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert a.ranking() == b.ranking()
        np.testing.assert_array_equal(a.scores, b.scores)
        assert [u.model_dump() for u in a.score_updates()] == [
            u.model_dump() for u in b.score_updates()
        ]


def test_state_refuses_unknown_version() -> None:
    state = TrendState(config().trend).state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99 is not supported"):
        TrendState.from_state_dict(state)


def test_ties_break_by_numeric_id() -> None:
    engine = Engine(config(), LastWindow())
    results = engine.ingest_ids(["10", "9", "100", "2"], np.array([1.0, 2.0, 3.0, DAY + 1]))
    assert results[0].ranking() == ["9", "10", "100"]


#: Titles as ids (ML-1M's are): mixed case, digits inside, commas, accents, and integer-like ids
#: among them, in the order a tie puts them: by code point, so upper case before lower case,
#: "10" before "9", "item10" before "item9", and accented letters after every ASCII one.
STRING_TIE_ORDER = [
    "10",
    "9",
    "B",
    "Shawshank Redemption, The (1994)",
    "Toy Story (1995)",
    "Zoë",
    "a b",
    "b",
    "item10",
    "item9",
    "toy story (1995)",
    "Émile",
    "Ünder",
]


def test_ties_break_by_string_id_when_ids_are_titles() -> None:
    """With one non-integer id, every tie breaks by the ids as strings (code point order),
    whatever order the items arrived in; a higher score still comes first.

    Catches: a reversed (or arrival-order, or case-folded) tie order for non-integer ids in
    ``ItemCatalog.tie_order``: each puts the tied titles in another order.
    """
    rng = np.random.default_rng(0)
    arrival = [STRING_TIE_ORDER[i] for i in rng.permutation(len(STRING_TIE_ORDER))]
    assert arrival != STRING_TIE_ORDER
    # Two events for "Zoë" and "item9": they lead, in tie order between themselves.
    ids = [*arrival, "item9", "Zoë", "later"]
    ts = np.array([1.0 + i for i in range(len(ids) - 1)] + [DAY + 1])
    engine = Engine(config(), LastWindow())
    ranking = engine.ingest_ids(ids, ts)[0].ranking()
    rest = [i for i in STRING_TIE_ORDER if i not in ("Zoë", "item9")]
    assert ranking == ["Zoë", "item9", *rest]


def test_outputs_carry_idempotency_keys_and_trending() -> None:
    ids, ts = synthetic_stream(seed=5)
    results = run(Engine(config(), LastWindow()), ids, ts, batch=1000)
    result = results[-1]
    updates = result.score_updates()
    assert {u.item_id for u in updates} == {
        result.features.item_ids[i] for i in result.changed_positions()
    }
    assert len({u.idempotency_key for u in updates}) == len(updates)
    assert [u.rank for u in updates] == sorted(u.rank for u in updates)
    trending = result.trending()
    assert [i.item_id for i in trending.items] == result.ranking(5)
    assert trending.changed_items == len(updates)


def test_snapshots_carry_the_realised_next_count() -> None:
    engine = Engine(config(), LastWindow())
    results = engine.ingest_ids(
        ["a", "a", "b", "a", "b", "b", "b", "c"],
        np.array([1.0, 2.0, 3.0, DAY + 1, DAY + 2, DAY + 3, DAY + 4, 2 * DAY + 1]),
    )
    snapshot = results[1].snapshot
    assert snapshot is not None
    rows = {r.item_id: (r.count, r.next_count) for r in snapshot.rows()}
    assert rows == {"a": (2.0, 1.0), "b": (1.0, 3.0)}


def test_state_round_trips_when_metadata_registered_more_items_than_seen() -> None:
    from schemas import ItemMeta

    engine = Engine(config(), LastWindow())
    engine.add_metadata(
        [ItemMeta(item_id=str(i), title=f"t{i}", categories=("Drama",)) for i in range(100)]
    )
    engine.ingest_ids(["1", "2"], np.array([1.0, DAY + 1]))
    restored = TrendState.from_state_dict(orjson.loads(orjson.dumps(engine.state.state_dict())))
    assert restored.catalog.ids == engine.state.catalog.ids
    results = Engine(config(), LastWindow(), state=restored).ingest_ids(
        ["3"], np.array([2 * DAY + 1])
    )
    assert results[0].ranking() == ["2", "1"]


def test_a_failing_scorer_falls_back_for_that_window_only() -> None:
    from streams.scoring import FallbackScorer

    class FailsOnce(LastWindow):
        calls = 0

        def score(self, features):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("CUDA out of memory")
            return super().score(features)

    failures: list[str] = []
    scorer = FallbackScorer(
        FailsOnce(), EWMA(1), on_failure=lambda stage, exc: failures.append(stage)
    )
    ids, ts = synthetic_stream()
    results = run(Engine(config(), scorer), ids, ts, batch=500)
    reference = run(Engine(config(), EWMA(1)), ids, ts, batch=500)
    plain = run(Engine(config(), LastWindow()), ids, ts, batch=500)
    versions = [r.model_version for r in results]
    assert versions[2] == EWMA(1).version and failures == ["score"] and scorer.failures == 1
    assert results[2].ranking() == reference[2].ranking()
    others = [i for i in range(len(results)) if i != 2]
    assert all(versions[i] == LastWindow().version for i in others)
    assert all(results[i].ranking() == plain[i].ranking() for i in others)
