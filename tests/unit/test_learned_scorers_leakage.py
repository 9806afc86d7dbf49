"""The online learned baselines never see the future: a ranking made at the end of window t
does not move when every event after t is poisoned (the online ranker has its own such test
in test_ranker.py)."""

from __future__ import annotations

import numpy as np
import pytest

from streams.engine import Engine, EngineConfig, WindowResult
from streams.registry import scorer_factory
from streams.settings import Settings
from streams.trend.state import TrendConfig
from streams.trend.windows import WindowSpec

W = 1000
#: Rankings at the ends of windows 0..CUT-1 are compared; every event from window CUT on is
#: poisoned.
CUT = 8


def _log(seed: int, windows: int = 12, n: int = 12_000) -> tuple[np.ndarray, ...]:
    """Items with drifting popularity and users who come back: something to learn from."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0, windows * W, n))
    phase = rng.uniform(0, 2 * np.pi, 80)
    weights = np.exp(np.sin(phase[None, :] + (ts // W)[:, None] / 3.0))
    weights /= weights.sum(axis=1, keepdims=True)
    draws = rng.uniform(size=n)[:, None]
    items = (draws > weights.cumsum(axis=1)).sum(axis=1).astype(str).astype(object)
    users = rng.zipf(1.6, n).clip(max=400).astype(str).astype(object)
    return items, users, ts


def _rankings(
    name: str, items: np.ndarray, users: np.ndarray, ts: np.ndarray
) -> dict[int, list[str]]:
    """The top 20 of every window, read as each window closes, from one batch of the log."""
    scorer = scorer_factory(name, Settings())()
    assert scorer.learns_online, f"{name} is not a learned scorer"
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(W)), explain_top=0), scorer)
    out: dict[int, list[str]] = {}

    def collect(result: WindowResult) -> None:
        out[result.window.index] = result.ranking(20)

    engine.ingest(engine.state.catalog.codes(items), ts, users=users, on_result=collect)
    return out


@pytest.mark.parametrize("name", ["river", "decay-tuned"])
def test_the_ranking_at_t_never_reads_the_windows_after_t(name: str) -> None:
    """Poison every event after window 7 (items permuted, one intruder user, times moved
    within the poisoned span) and the rankings at the ends of windows 0..7 stay the same,
    while later ones change.

    Catches: an engine that scores the windows a batch closes after the whole batch is applied
    (tried once on ``Engine.ingest``: the features and what the learner has seen at window t
    then carry later events; both scorers moved), or a learner shown a later window.
    """
    items, users, ts = _log(seed=1)
    clean = _rankings(name, items, users, ts)
    after = ts >= CUT * W
    rng = np.random.default_rng(99)
    poisoned_items, poisoned_users, poisoned_ts = items.copy(), users.copy(), ts.copy()
    poisoned_items[after] = rng.permutation(poisoned_items[after])
    poisoned_users[after] = "intruder"
    poisoned_ts[after] = np.sort(rng.uniform(CUT * W, ts.max(), int(after.sum())))
    poisoned = _rankings(name, poisoned_items, poisoned_users, poisoned_ts)
    for window in range(CUT):
        assert poisoned[window] == clean[window], f"{name}: window {window} moved"
    assert any(poisoned[w] != clean[w] for w in range(CUT + 1, CUT + 3)), "the poison did nothing"
