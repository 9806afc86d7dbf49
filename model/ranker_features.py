"""What the online ranker sees of a window: its candidates and their feature matrix.

Candidates are the items with events in any of the recent windows that some cheap signal
puts near the top (the union of every prior's top ``m``) plus every item first seen in the
window: about 2-5 times ``m`` items holding most of what the next window's users touch.
Features are the trend signals on log scales, the sub-window and audience signals, each
item's rank under every prior, and the window's size. Nothing here reads a label.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import stats

from streams.trend.catalog import tie_ranks
from streams.trend.features import FeatureFrame

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

#: Features that only the sub-window signals provide (left out by the ``no-subwindow``
#: ablation): time inside the window, and decays finer than a window.
SUBWINDOW_FEATURES = frozenset(
    {
        "log_decay_w32",
        "log_decay_w8",
        "log_decay_w4",
        "log_decay_w2",
        "log_decay_w1",
        "log_decay_returning_w8",
        "log_decay_returning_w4",
        "log_last_quarter",
        "log_last_half",
        "since_first_windows",
        "since_last_windows",
        "rank_decay_w8",
        "rank_decay_w4",
    }
)


def prior_columns(frame: FeatureFrame) -> dict[str, FloatArray]:
    """The cheap per-item signals candidates are drawn from (higher = more popular)."""
    linear = np.maximum(0.0, frame.count + frame.slope)
    return {
        "total": frame.total,
        "count": frame.count,
        "ew_1": frame.ew_at(1.0),
        "ew_2": frame.ew_at(2.0),
        "ew_4": frame.ew_at(4.0),
        "linear": linear,
        "returning": frame.returning,
        "decay_w8": frame.decayed[:, 1],
        "decay_w4": frame.decayed[:, 2],
    }


def recently_active(frame: FeatureFrame) -> IndexArray:
    """Positions of the items with events in any of the frame's recent windows."""
    positions: IndexArray = np.flatnonzero((frame.recent > 0).any(axis=1)).astype(np.int64)
    return positions


def candidate_positions(frame: FeatureFrame, top: int) -> IndexArray:
    """Positions of the union of every prior's top ``top`` and the new items, in item-id
    order: the rows a model is fitted on must not depend on the order the catalog met its
    items in (a worker and a replay meet them differently; bagging samples rows by index).

    >>> from streams.trend.state import TrendConfig, TrendState
    >>> from streams.trend.windows import WindowSpec
    >>> state = TrendState(TrendConfig(WindowSpec(10)))
    >>> items = ["a", "a", "a", "b", "c", "c", "a", "d", "e"]
    >>> times = [1.0, 2, 3, 4, 5, 6, 11, 12, 25]
    >>> _ = state.ingest(state.catalog.codes(items), np.array(times))
    >>> frame = state.features(state.seen_rows(), window=1)
    >>> [frame.item_ids[p] for p in candidate_positions(frame, top=1)]  # d is new
    ['a', 'd']
    """
    chosen = np.zeros(len(frame), dtype=bool)
    tie = tie_ranks([str(i) for i in frame.item_ids])
    for values in prior_columns(frame).values():
        # Ties at the cut go by item id, as in every ranking.
        best = np.lexsort((tie, -values))[:top]
        chosen[best[values[best] > 0]] = True
    chosen |= frame.age_windows == 0
    positions = np.flatnonzero(chosen).astype(np.int64)
    ordered: IndexArray = positions[np.argsort(tie[positions], kind="stable")]
    return ordered


def _ranks(values: FloatArray) -> FloatArray:
    """0 for the largest value; equal values share the best of their ranks."""
    ranks: FloatArray = stats.rankdata(-values, method="min") - 1.0
    return ranks


def feature_matrix(
    frame: FeatureFrame, positions: IndexArray, *, subwindow: bool = True
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """The ranker's input for ``positions`` of ``frame``, and the column names.

    Ranks under the priors are computed over the whole frame (the recently active items),
    so that an item's rank means the same at training and at scoring time.
    """
    window = float(frame.window_seconds)
    priors = prior_columns(frame)
    sub = frame.take(positions)
    users = sub.recent_users
    returning = sub.recent_returning
    columns: dict[str, FloatArray] = {}
    for lag in range(sub.recent.shape[1]):
        columns[f"log_count_lag{sub.recent.shape[1] - 1 - lag}"] = np.log1p(sub.recent[:, lag])
    for column, half_life in enumerate(sub.half_lives):
        columns[f"log_ew_{half_life:g}"] = np.log1p(sub.ew[:, column])
    columns.update(
        {
            "slope": np.sign(sub.slope) * np.log1p(np.abs(sub.slope)),
            "accel": np.sign(sub.accel) * np.log1p(np.abs(sub.accel)),
            "log_linear": np.log1p(np.maximum(0.0, sub.count + sub.slope)),
            "log_total": np.log1p(sub.total),
            "share": sub.share,
            # math.fsum: exact, so the share does not depend on the order of the rows.
            "total_share": sub.total / max(math.fsum(frame.total.tolist()), 1.0),
            "log_momentum": np.log(sub.momentum),
            "burstiness": sub.burstiness,
            "age_windows": sub.age_windows.astype(np.float64),
            "category_momentum": np.log(sub.category_momentum),
            "log_users": np.log1p(users[:, -1]),
            "log_returning": np.log1p(returning[:, -1]),
            "returning_share": returning[:, -1] / np.maximum(users[:, -1], 1.0),
            "returning_share_recent": returning.sum(axis=1) / np.maximum(users.sum(axis=1), 1.0),
            "log_users_recent": np.log1p(users.sum(axis=1)),
            "log_returning_ew": np.log1p(sub.returning_ew),
            "return_rate": sub.return_rate,
            "log_decay_w32": np.log1p(sub.decayed[:, 0]),
            "log_decay_w8": np.log1p(sub.decayed[:, 1]),
            "log_decay_w4": np.log1p(sub.decayed[:, 2]),
            "log_decay_w2": np.log1p(sub.decayed[:, 3]),
            "log_decay_w1": np.log1p(sub.decayed[:, 4]),
            "log_decay_returning_w8": np.log1p(sub.decayed_returning[:, 0]),
            "log_decay_returning_w4": np.log1p(sub.decayed_returning[:, 1]),
            "log_last_quarter": np.log1p(sub.last_quarter),
            "log_last_half": np.log1p(sub.last_half),
            "since_first_windows": sub.since_first / window,
            "since_last_windows": sub.since_last / window,
            "log_window_events": np.full(len(sub), np.log1p(frame.window_events)),
            "log_window_users": np.full(len(sub), np.log1p(float(frame.window_users))),
        }
    )
    for name, values in priors.items():
        columns[f"rank_{name}"] = _ranks(values)[positions]
    names = [n for n in columns if subwindow or n not in SUBWINDOW_FEATURES]
    matrix = np.column_stack([columns[n] for n in names]).astype(np.float32)
    return matrix, names
