"""The online ranker on windows with more than LightGBM's 10,000 rows per query group.

LightGBM's lambdarank refuses a query group of more than 10,000 rows ("Number of rows ...
exceeds upper limit of 10000 for a query"). Candidates are every prior's top ``candidates``
plus every item first seen in the window, so a window that meets a burst of new items (the
first window of any log with a big catalog, a catalog import) has more rows than that.
"""

from __future__ import annotations

import numpy as np
import pytest

from model.ranker import MAX_QUERY_ROWS, OnlineRanker, RankerConfig, cap_query
from model.ranker_features import candidate_positions, recently_active
from streams.engine import Engine, EngineConfig, WindowResult
from streams.trend.state import TrendConfig
from streams.trend.windows import WindowSpec

W = 1000
#: New items in each burst window: more candidates than one lambdarank query may hold.
BURST = 10_300
SMALL = RankerConfig(min_windows=2, trees=20, min_leaf_rows=5, candidates=40)


def _burst_log() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seven windows: window 0 and window 3 each meet ``BURST`` new items (one event each),
    the others draw 3,000 events from a few hundred steady items; 400 users come back."""
    rng = np.random.default_rng(12)
    items: list[str] = []
    users: list[str] = []
    times: list[float] = []
    for window in range(7):
        base = window * W
        if window in (0, 3):
            for k in range(BURST):
                items.append(f"b{window}-{k:05d}")
                users.append(f"u{int(rng.integers(400))}")
                times.append(base + rng.uniform(0, W))
        steady = rng.zipf(1.5, 3000).clip(max=300)
        for item in steady:
            items.append(f"s{int(item):03d}")
            users.append(f"u{int(rng.integers(400))}")
            times.append(base + rng.uniform(0, W))
    order = np.argsort(np.array(times), kind="stable")
    return (
        np.array(items, dtype=object)[order],
        np.array(users, dtype=object)[order],
        np.array(times)[order],
    )


def _run(ranker: OnlineRanker, *, reverse_catalog: bool = False) -> dict[int, WindowResult]:
    items, users, ts = _burst_log()
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), ranker)
    if reverse_catalog:
        # Meet every item first in reverse id order: other catalog codes, the same events.
        engine.state.catalog.codes(np.array(sorted(set(items), reverse=True), dtype=object))
    out: dict[int, WindowResult] = {}
    engine.ingest(
        engine.state.catalog.codes(items),
        ts,
        users=users,
        on_result=lambda r: out.__setitem__(r.window.index, r),
    )
    return out


def test_windows_with_more_candidates_than_a_lambdarank_query_holds_train_and_rank() -> None:
    """Defect: the ranker put every candidate of a window into one lambdarank query group, so
    the first refit after a window with more than 10,000 candidates raised LightGBMError
    (the old code fails here: "Number of rows 10458 exceeds upper limit of 10000 for a
    query", fitting on window 0, whose 10,300 new items are all candidates).
    Now each training query keeps at most :data:`MAX_QUERY_ROWS` rows, and a window with
    more candidates than that is still ranked whole: every candidate gets the model's score,
    above every other item."""
    ranker = OnlineRanker(SMALL)
    results = _run(ranker)
    assert sorted(results) == list(range(6))
    assert ranker.fit_seconds, "the ranker never fitted"
    burst = results[3]
    active = recently_active(burst.features)
    candidates = active[candidate_positions(burst.features.take(active), SMALL.candidates)]
    assert candidates.shape[0] > MAX_QUERY_ROWS
    others = np.setdiff1d(np.arange(len(burst.features)), candidates)
    assert burst.scores[candidates].min() > burst.scores[others].max()
    # The model's scores, not the EW-mean fallback: they separate the candidates.
    assert np.unique(burst.scores[candidates]).shape[0] > 10
    top = burst.ranking(10)
    assert len(top) == 10


def test_capped_queries_do_not_depend_on_the_order_the_catalog_met_items_in() -> None:
    """The rows a capped query keeps are chosen by label, prior rank and item id, never by
    catalog code: a catalog that met every item in reverse id order ranks every window the
    same. Catches a cap that keeps the rows with the lowest catalog codes (tried: it fails)."""
    plain = _run(OnlineRanker(SMALL))
    reversed_ = _run(OnlineRanker(SMALL), reverse_catalog=True)
    assert {w: r.ranking(50) for w, r in plain.items()} == {
        w: r.ranking(50) for w, r in reversed_.items()
    }


def test_cap_keeps_every_positive_row_then_the_best_prior_ranks_in_row_order() -> None:
    """Which rows a capped query keeps: every row with a positive label (the highest labels
    first when even they are too many), then the rows with the best rank under any prior,
    ties by row (item-id) order; the kept rows stay in row order. A group within the limit
    is kept whole."""
    labels = np.array([0, 3, 0, 0, 1, 0, 0, 2], dtype=np.int32)
    ranks = np.array(
        [[5, 9], [40, 40], [0, 7], [2, 2], [30, 31], [7, 1], [1, 6], [50, 50]], dtype=np.float32
    )
    # Rows 5 and 6 tie at best rank 1: row 5 first.
    assert cap_query(labels, ranks, limit=5).tolist() == [1, 2, 4, 5, 7]
    assert cap_query(labels, ranks, limit=6).tolist() == [1, 2, 4, 5, 6, 7]
    # Too many positives: the highest labels.
    assert cap_query(labels, ranks, limit=2).tolist() == [1, 7]
    assert cap_query(labels, ranks, limit=8).tolist() == list(range(8))
    tied = np.zeros((4, 2), dtype=np.float32)
    assert cap_query(np.zeros(4, dtype=np.int32), tied, limit=2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="limit"):
        cap_query(labels, ranks, limit=0)
