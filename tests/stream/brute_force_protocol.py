"""The evaluation protocol, recomputed by brute force from the raw log.

Everything here is written from the protocol's words (docs/architecture.md, "Evaluation
protocol"), independently of the engine: the window grid, the baselines' scores, the
eligible users and their next-window items, HR@10 and NDCG@10. The predictions files that
``trail replay`` writes and the numbers that ``trail evaluate`` prints must agree with it
(tests/stream/test_*protocol.py). One definition of each, shared by those tests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

#: One event of the raw log: ``(user_id, item_id, timestamp)``.
Row = tuple[str, str, int]
DAY = 86_400
WINDOW = 30 * DAY
BASELINES = ["mostpop", "last-window", "ewma-1", "ewma-2", "ewma-4", "linear-trend"]


def brute_force_scores(rows: list[Row], name: str, end: int) -> dict[str, float]:
    """Each baseline's score of every item seen before ``end``, from its definition."""
    t = end // WINDOW - 1
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for _, item, ts in rows:
        if ts < end:
            counts[item][ts // WINDOW] += 1
    scores: dict[str, float] = {}
    for item, per_window in counts.items():
        if name == "mostpop":
            scores[item] = sum(per_window.values())
        elif name == "last-window":
            scores[item] = per_window.get(t, 0)
        elif name.startswith("ewma-"):
            h = float(name.split("-")[1])
            scores[item] = sum(2 ** (-(t - w) / h) * c for w, c in per_window.items())
        elif name == "linear-trend":
            ys = [per_window.get(w, 0) for w in range(t - 3, t + 1)]
            xs = [0, 1, 2, 3]
            mean_x, mean_y = sum(xs) / 4, sum(ys) / 4
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mean_x) ** 2 for x in xs
            )
            scores[item] = max(0.0, ys[-1] + slope)
    return scores


def brute_force_metrics(rows: list[Row], predictions: list[dict[str, Any]]) -> tuple[float, float]:
    """HR@10 and NDCG@10 of a predictions file's lines over the raw ``(user, item, ts)`` rows."""
    hits, gains, pairs = 0.0, 0.0, 0
    for line in predictions:
        end = line["window_end"]
        top = line["ranking"][:10]
        earlier_users = {u for u, _, ts in rows if ts < end}
        touched: dict[str, set[str]] = defaultdict(set)
        for user, item, ts in rows:
            if end <= ts < end + WINDOW and user in earlier_users:
                touched[user].add(item)
        for items in touched.values():
            pairs += 1
            hits += any(i in items for i in top)
            dcg = sum(1 / math.log2(p + 2) for p, i in enumerate(top) if i in items)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(10, len(items))))
            gains += dcg / idcg
    return hits / pairs, gains / pairs
