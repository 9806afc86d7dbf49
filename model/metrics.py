"""Ranking metrics of the evaluation protocol (docs/architecture.md, "Evaluation protocol").

For a ranking made at the end of window ``t`` and a user active in ``t + 1`` who had an event
before it, the relevant set is the distinct items the user touched in ``t + 1``. HR@K is 1 when
any of the top K is relevant; NDCG@K uses binary relevance and an ideal DCG over
``min(K, |relevant|)`` items. Both are pooled over all (user, window) pairs.

:func:`lm_written_part` is what an LM explanation is judged on: the text without the forecast
sentence every explanation is forced to open with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Target:
    """The ground truth of one evaluated window: what each eligible user touched next."""

    window_end: int  # end of window t (the ranking's window); t + 1 is judged
    relevant: Mapping[str, frozenset[str]]  # user -> items touched in t + 1


def build_targets(
    user_ids: npt.NDArray[np.object_],
    item_ids: npt.NDArray[np.object_],
    timestamps: FloatArray,
    window_seconds: int,
    window_ends: Iterable[int],
) -> list[Target]:
    """Ground truth for rankings made at each of ``window_ends``.

    >>> users = np.array(["u", "u", "v", "w"], dtype=object)
    >>> items = np.array(["a", "b", "c", "a"], dtype=object)
    >>> [t.relevant for t in build_targets(users, items, np.array([1.0, 12, 13, 14]), 10, [10])]
    [{'u': frozenset({'b'})}]
    """
    order = np.argsort(timestamps, kind="stable")
    users, items, ts = user_ids[order], item_ids[order], timestamps[order]
    first_seen = pd.Series(ts).groupby(users).min().to_dict()
    targets = []
    for end in window_ends:
        lo = np.searchsorted(ts, end, side="left")
        hi = np.searchsorted(ts, end + window_seconds, side="left")
        relevant: dict[str, set[str]] = {}
        for user, item in zip(users[lo:hi].tolist(), items[lo:hi].tolist(), strict=True):
            if first_seen[user] < end:
                relevant.setdefault(user, set()).add(item)
        targets.append(Target(end, {u: frozenset(s) for u, s in relevant.items()}))
    return targets


def pair_metrics(ranking: Sequence[str], relevant: frozenset[str], k: int) -> tuple[float, float]:
    """HR@k and NDCG@k of one ranking against one user's relevant set.

    >>> pair_metrics(["a", "b", "c"], frozenset({"c", "z"}), k=3)
    (1.0, 0.3065735963827292)
    """
    dcg = 0.0
    hit = 0.0
    for position, item in enumerate(ranking[:k]):
        if item in relevant:
            hit = 1.0
            dcg += 1.0 / math.log2(position + 2)
    ideal = sum(1.0 / math.log2(p + 2) for p in range(min(k, len(relevant))))
    return hit, (dcg / ideal if ideal > 0 else 0.0)


@dataclass(frozen=True)
class PairScores:
    """Per-(user, window) HR and NDCG at each K, in pair order, with each pair's window."""

    hr: dict[int, FloatArray]
    ndcg: dict[int, FloatArray]
    window_end: npt.NDArray[np.int64]

    def mean(self, metric: str, k: int) -> float:
        values = (self.hr if metric == "HR" else self.ndcg)[k]
        return float(values.mean()) if values.size else float("nan")


def score_pairs(
    rankings: Mapping[int, Sequence[str]],
    targets: Sequence[Target],
    ks: Sequence[int],
    *,
    restrict: Mapping[int, frozenset[str]] | None = None,
) -> PairScores:
    """HR/NDCG of every (user, window) pair.

    With ``restrict`` (window end -> allowed items), each relevant set is first intersected with
    the allowed items and pairs left empty are skipped: the metrics of one item group.
    """
    hr: dict[int, list[float]] = {k: [] for k in ks}
    ndcg: dict[int, list[float]] = {k: [] for k in ks}
    windows: list[int] = []
    for target in targets:
        if not target.relevant:
            # Nobody to judge (an empty next window): the window may have no ranking at all,
            # since the engine skips empty windows inside long gaps.
            continue
        ranking = rankings.get(target.window_end)
        if ranking is None:
            raise KeyError(f"no ranking for the window ending at {target.window_end}")
        allowed = restrict.get(target.window_end) if restrict is not None else None
        for user in sorted(target.relevant):
            relevant = target.relevant[user]
            if allowed is not None:
                relevant = relevant & allowed
                if not relevant:
                    continue
            for k in ks:
                h, n = pair_metrics(ranking, relevant, k)
                hr[k].append(h)
                ndcg[k].append(n)
            windows.append(target.window_end)
    return PairScores(
        {k: np.asarray(v) for k, v in hr.items()},
        {k: np.asarray(v) for k, v in ndcg.items()},
        np.asarray(windows, dtype=np.int64),
    )


def bootstrap_interval(
    values: FloatArray, *, samples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (pairs resampled).

    >>> lo, hi = bootstrap_interval(np.array([0.0, 1.0] * 50))
    >>> 0.39 < lo < 0.5 < hi < 0.61
    True
    """
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for i in range(samples):
        means[i] = values[rng.integers(0, values.size, values.size)].mean()
    tail = (1.0 - level) / 2.0
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail)))


#: The forced opening of LM explanations (the model's own forecast, true by construction); it
#: is left out when judging what the LM itself wrote.
_FORCED_FORECAST = re.compile(r"^Forecast: about [^.]*\.\s*")


def lm_written_part(text: str) -> str:
    """An explanation without its forced forecast sentence: what the LM itself wrote.

    >>> lm_written_part("Forecast: about 4 events next week. It is rising.")
    'It is rising.'
    """
    return _FORCED_FORECAST.sub("", text, count=1)
