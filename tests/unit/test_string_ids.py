"""Item ids that are titles (ML-1M's are): score ties break by the ids as strings, in the same
code point order in the trend state, in the trending merge of the Kafka worker, and hence in
a partitioned run and a single engine alike. No broker: the merge is pure code."""

from __future__ import annotations

import numpy as np

from model.baselines import LastWindow
from schemas import TrendingItem, TrendingSnapshot
from streams.engine import Engine, EngineConfig
from streams.kafka.trending import merge_trending
from streams.partitioning import partitions_of
from streams.trend.state import TrendConfig
from streams.trend.windows import WindowSpec

W = 1000

#: Titles with mixed case, digits inside, commas and accents.
TITLES = [
    "Amélie (2001)",
    "American Beauty (1999)",
    "Léon (1994)",
    "Matrix, The (1999)",
    "Se7en (1995)",
    "Shawshank Redemption, The (1994)",
    "Star Wars: Episode IV (1977)",
    "Toy Story (1995)",
    "Toy Story 2 (1999)",
    "Zoë",
    "a bout de souffle (1960)",
    "item10",
    "item9",
    "toy story (1995)",
    "Ünder",
    "Émile",
    "Økland",
    "Çà et là",
    "2001: A Space Odyssey (1968)",
    "12 Angry Men (1957)",
]


def _snapshot(ids_scores: list[tuple[str, float]]) -> TrendingSnapshot:
    return TrendingSnapshot(
        window_start=0,
        window_end=W,
        model_version="last-window@1",
        items=tuple(
            TrendingItem(item_id=item, rank=rank, score=score)
            for rank, (item, score) in enumerate(ids_scores, start=1)
        ),
        changed_items=len(ids_scores),
        events=float(len(ids_scores)),
    )


def test_merge_breaks_score_ties_by_string_id() -> None:
    """Tied scores from different partitions merge in code point order of the ids: upper case
    before lower case, "item10" before "item9", accented letters after ASCII ones, and
    integer-like ids among titles compared as strings ("12 ..." before "2001 ...").

    Catches: a reversed (or case-folded, or partition-order) string key in the merge's tie
    order (``streams.kafka.trending._id_sort_key``).
    """
    partials = [
        _snapshot([("toy story (1995)", 2.0), ("Émile", 1.0), ("Toy Story (1995)", 1.0)]),
        _snapshot([("item9", 2.0), ("Zoë", 1.0), ("12 Angry Men (1957)", 0.5)]),
        _snapshot([("item10", 2.0), ("Ünder", 1.0), ("2001: A Space Odyssey (1968)", 0.5)]),
    ]
    merged = merge_trending(partials, top_n=8)
    assert [(i.item_id, i.rank) for i in merged.items] == [
        ("item10", 1),
        ("item9", 2),
        ("toy story (1995)", 3),
        ("Toy Story (1995)", 4),
        ("Zoë", 5),
        ("Émile", 6),
        ("Ünder", 7),
        ("12 Angry Men (1957)", 8),
    ]


def _title_log(seed: int, windows: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Every title in every window, small Poisson counts: many ties at every rank."""
    rng = np.random.default_rng(seed)
    items: list[str] = []
    times: list[float] = []
    for window in range(windows):
        for title in TITLES:
            for _ in range(1 + rng.poisson(1.0)):
                items.append(title)
                times.append(window * W + float(rng.uniform(0, W)))
    order = np.argsort(times, kind="stable")
    return np.array(items, dtype=object)[order], np.array(times)[order]


def test_partitioned_engines_merge_to_the_single_engine_list() -> None:
    """A worker's view: one engine per partition (items split by Kafka's partitioner), their
    top-N merged, gives the single engine's top-N, tie order included, in every window; ties
    straddle the top-N cut in some windows, so the order of tied titles decides what is in.

    Catches: a tie order for non-integer ids that differs between the trend state
    (``ItemCatalog.tie_order``) and the merge (``merge_trending``), e.g. either one reversed.
    """
    items, ts = _title_log(seed=3)
    top_n = 6
    config = EngineConfig(TrendConfig(WindowSpec(W)), top_n=top_n, explain_top=0)
    results = Engine(config, LastWindow()).ingest_ids(items, ts)
    single = {r.window.index: r.trending() for r in results}

    partitions = 4
    where = partitions_of(items, partitions)
    per_partition: list[dict[int, TrendingSnapshot]] = []
    for partition in range(partitions):
        keep = where == partition
        assert keep.any(), "a partition without items tests nothing"
        engine = Engine(config, LastWindow())
        results = engine.ingest_ids(items[keep], ts[keep])
        per_partition.append({r.window.index: r.trending() for r in results})
    windows = sorted(set(single).intersection(*per_partition))
    assert len(windows) >= 10

    straddled = 0
    for window in windows:
        merged = merge_trending([p[window] for p in per_partition], top_n)
        want = [(i.item_id, i.rank, i.score) for i in single[window].items]
        assert [(i.item_id, i.rank, i.score) for i in merged.items] == want, window
        chosen = {i.item_id for i in single[window].items}
        straddled += _best_left_out(items, ts, window, chosen) == single[window].items[-1].score
    assert straddled > 0, "no tie crossed the top-N cut: the order of ties decided nothing"


def _best_left_out(items: np.ndarray, ts: np.ndarray, window: int, chosen: set[str]) -> float:
    """LastWindow's score (as published) of the best item outside ``chosen`` in ``window``."""
    inside = (ts >= window * W) & (ts < (window + 1) * W)
    titles, counts = np.unique(items[inside], return_counts=True)
    left = [c for t, c in zip(titles.tolist(), counts.tolist(), strict=True) if t not in chosen]
    return round(float(np.log1p(max(left))), 6) if left else float("nan")
