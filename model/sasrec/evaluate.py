"""SASRec under the evaluation protocol: per-user rankings, the report, and the command line.

``python -m model.sasrec DATASET --window 7d`` trains, evaluates and prints the table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import numpy.typing as npt
import torch

from model.evaluation import DEFAULT_TEST_WINDOWS, KS, EvaluationReport, ScorerReport
from model.metrics import bootstrap_interval, build_targets, pair_metrics
from model.sasrec.data import IntArray, left_pad, user_histories
from model.sasrec.network import SasRec, SasRecConfig
from model.sasrec.training import torch_threads, train_sasrec
from streams.eventlog import EventLog, load_events
from streams.replay import EvaluationWindows, ReplaySummary
from streams.trend.features import TREND_CATEGORIES
from streams.trend.windows import DEFAULT_WINDOW, parse_duration

NAME = "sasrec"
VERSION = "sasrec@1"

#: Users scored in one forward pass when ranking.
_RANK_BATCH = 256


def _top_k(scores: npt.NDArray[np.float32], k: int) -> IntArray:
    """Indices of the ``k`` best finite scores, ties by index (= item id) ascending."""
    finite = int(np.isfinite(scores).sum())
    m = min(k, finite)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, m - 1)[:m]
    # Everything tied with the m-th best competes, so ties are broken by index, not by chance.
    candidates = np.flatnonzero(scores >= scores[best].min())
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:m]]


@torch.no_grad()
def sasrec_rankings(
    model: SasRec,
    log: EventLog,
    window_ends: list[int],
    users_per_window: dict[int, list[str]],
    k: int = 20,
) -> dict[int, dict[str, list[str]]]:
    """Each user's top-``k`` items at each ranking time.

    Parameters
    ----------
    model : SasRec
        A trained model.
    log : EventLog
        The events; at ranking time ``end`` only those with ``timestamp < end`` are read.
    window_ends : list of int
        Ranking times (unix seconds).
    users_per_window : dict of int to list of str
        The users to rank for at each time.
    k : int
        Ranking depth.

    Returns
    -------
    dict of int to dict of str to list of str
        ``end -> user -> item ids``, best first, ties by item id ascending. Items the user
        touched before ``end`` and items the model does not know are never recommended; a
        user with no known item before ``end`` gets an empty ranking (nothing to condition on).
    """
    histories = user_histories(log, model.item_index)
    max_len = model.config.max_len
    model.eval()
    rankings: dict[int, dict[str, list[str]]] = {}
    with torch_threads(model.config.threads):
        for end in window_ends:
            per_user: dict[str, list[str]] = {}
            users = users_per_window.get(end, [])
            for start in range(0, len(users), _RANK_BATCH):
                batch, sequences, touched = [], [], []
                for user in users[start : start + _RANK_BATCH]:
                    times, codes = histories.get(user, (np.zeros(0), np.zeros(0, np.int64)))
                    known = codes[: np.searchsorted(times, end, side="left")]
                    known = known[known != 0]  # unseen items have no embedding
                    if not known.size:
                        per_user[user] = []
                        continue
                    batch.append(user)
                    sequences.append(left_pad(known, max_len))
                    touched.append(known)
                if not batch:
                    continue
                scores = model.score_last(torch.from_numpy(np.stack(sequences))).numpy()
                scores[:, 0] = -np.inf  # padding is not an item
                for row, user in enumerate(batch):
                    scores[row, touched[row]] = -np.inf
                    top = _top_k(scores[row], k)
                    per_user[user] = [model.item_ids[j - 1] for j in top.tolist()]
            rankings[end] = per_user
    return rankings


def evaluate_sasrec(
    log: EventLog,
    window_seconds: int,
    test_windows: int = 8,
    config: SasRecConfig | None = None,
    progress: bool = True,
) -> ScorerReport:
    """Train SASRec and score it under the evaluation protocol (docs/architecture.md).

    The windows and targets are exactly those of :func:`model.evaluation.evaluate`; the model
    is trained once on the events before the first ranking time, and each (user, window) pair
    is judged against the user's *own* ranking.

    Parameters
    ----------
    log : EventLog
        The event log.
    window_seconds : int
        Window length ``W``.
    test_windows : int
        Number of evaluated (judged) windows.
    config : SasRecConfig, optional
        Defaults to :class:`SasRecConfig()`.
    progress : bool
        Show training progress.

    Returns
    -------
    ScorerReport
        HR@K and NDCG@K for K in 5, 10, 20, 95% bootstrap intervals of HR@10 and NDCG@10,
        ``pairs``, HR@10 per window and a replay summary. Non-personalized diagnostics
        (Spearman, trend categories, cold/warm) are NaN. Extra keys: ``train_seconds``,
        ``rank_seconds``, ``train_events``, ``final_loss``, ``pairs_unranked`` (pairs whose user
        had no known item yet) and ``config``.
    """
    started = time.perf_counter()
    config = config or SasRecConfig()
    log = log.sorted_by_time()
    windows = EvaluationWindows.of(log.timestamps, window_seconds, test_windows)
    ends = [(w + 1) * window_seconds for w in range(windows.first, windows.last + 1)]
    targets = build_targets(log.user_ids, log.item_ids, log.timestamps, window_seconds, ends)

    model = train_sasrec(log, float(ends[0]), config, progress=progress)
    trained = time.perf_counter()
    users = {t.window_end: sorted(t.relevant) for t in targets}
    rankings = sasrec_rankings(model, log, ends, users, k=max(KS))
    ranked = time.perf_counter()

    hr: dict[int, list[float]] = {k: [] for k in KS}
    ndcg: dict[int, list[float]] = {k: [] for k in KS}
    pair_windows: list[int] = []
    unranked = 0
    for target in targets:
        for user in sorted(target.relevant):
            ranking = rankings[target.window_end][user]
            unranked += not ranking
            for k in KS:
                h, n = pair_metrics(ranking, target.relevant[user], k)
                hr[k].append(h)
                ndcg[k].append(n)
            pair_windows.append(target.window_end)
    hr_arrays = {k: np.asarray(v, dtype=np.float64) for k, v in hr.items()}
    ndcg_arrays = {k: np.asarray(v, dtype=np.float64) for k, v in ndcg.items()}
    window_of_pair = np.asarray(pair_windows, dtype=np.int64)

    nan = float("nan")
    metrics: dict[str, object] = {}
    for k in KS:
        metrics[f"HR@{k}"] = float(hr_arrays[k].mean()) if hr_arrays[k].size else nan
        metrics[f"NDCG@{k}"] = float(ndcg_arrays[k].mean()) if ndcg_arrays[k].size else nan
    metrics["HR@10_ci"] = list(bootstrap_interval(hr_arrays[10]))
    metrics["NDCG@10_ci"] = list(bootstrap_interval(ndcg_arrays[10]))
    metrics["pairs"] = int(hr_arrays[10].size)
    # A personalized model has no single score per item: the item-level diagnostics of the
    # trend scorers do not apply.
    metrics["spearman"] = nan
    for group in (*TREND_CATEGORIES, "cold", "warm"):
        metrics[f"HR@10_{group}"] = nan
    metrics["pairs_unranked"] = unranked
    metrics["train_seconds"] = trained - started
    metrics["rank_seconds"] = ranked - trained
    metrics["train_events"] = model.train_events
    metrics["final_loss"] = model.final_loss
    metrics["config"] = asdict(config)

    per_window = {
        int(end): float(hr_arrays[10][window_of_pair == end].mean())
        for end in ends
        if (window_of_pair == end).any()
    }
    usable_end = (windows.last_complete + 1) * window_seconds
    first_window = int(log.timestamps.min() // window_seconds)
    summary = ReplaySummary(
        events=int(np.searchsorted(log.timestamps, usable_end, side="left")),
        bad_rows=log.bad_row_count,
        late_events=0,  # nothing streams: the model reads the sorted log
        windows_closed=windows.last_complete - first_window + 1,
        windows_scored=len(windows),
        seconds=time.perf_counter() - started,
        items=model.n_items,
    )
    return ScorerReport(NAME, VERSION, metrics, per_window, summary)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m model.sasrec DATASET --window 7d``: train, evaluate and print the table."""
    parser = argparse.ArgumentParser(prog="python -m model.sasrec", description=main.__doc__)
    parser.add_argument("events", help="dataset name or event-log path")
    parser.add_argument(
        "--window", default=DEFAULT_WINDOW, help=f"window length (default {DEFAULT_WINDOW})"
    )
    parser.add_argument("--test-windows", type=int, default=DEFAULT_TEST_WINDOWS)
    parser.add_argument("--epochs", type=int, default=SasRecConfig.epochs)
    parser.add_argument("--seed", type=int, default=SasRecConfig.seed)
    parser.add_argument("--threads", type=int, default=SasRecConfig.threads)
    args = parser.parse_args(argv)
    log = load_events(args.events)
    window = parse_duration(args.window)
    config = SasRecConfig(epochs=args.epochs, seed=args.seed, threads=args.threads)
    report = evaluate_sasrec(log, window, args.test_windows, config)
    windows = EvaluationWindows.of(log.sorted_by_time().timestamps, window, args.test_windows)
    print(EvaluationReport(log.name, window, windows, [report]).table())
    m = report.metrics
    print(
        f"{report.summary.describe()}\ntrain {m['train_seconds']:.1f} s, "
        f"rank {m['rank_seconds']:.1f} s, final loss {m['final_loss']:.4f}, "
        f"unranked pairs {m['pairs_unranked']}"
    )
