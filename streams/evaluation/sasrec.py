"""SASRec under the evaluation protocol: trained once, judged per user, and the command line.

``python -m streams.evaluation.sasrec DATASET --window 7d`` trains, evaluates and prints the
table; ``trail evaluate --with-sasrec`` adds the same row to a run's report. The rankings
themselves are :func:`model.sasrec.sasrec_rankings`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from model.metrics import bootstrap_interval, build_targets, pair_metrics
from model.sasrec import NAME, VERSION, SasRecConfig, sasrec_rankings, train_sasrec
from streams.evaluation.report import DEFAULT_TEST_WINDOWS, KS, EvaluationReport, ScorerReport
from streams.eventlog import EventLog, load_events
from streams.replay import EvaluationWindows, ReplaySummary
from streams.trend.features import TREND_CATEGORIES
from streams.trend.windows import DEFAULT_WINDOW, parse_duration


def evaluate_sasrec(
    log: EventLog,
    window_seconds: int,
    test_windows: int = 8,
    config: SasRecConfig | None = None,
    progress: bool = True,
) -> ScorerReport:
    """Train SASRec and score it under the evaluation protocol (docs/architecture.md).

    The windows and targets are exactly those of :func:`streams.evaluation.evaluate`; the model
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
    """``python -m streams.evaluation.sasrec DATASET --window 7d``: train, evaluate and print
    the table."""
    parser = argparse.ArgumentParser(
        prog="python -m streams.evaluation.sasrec", description=main.__doc__
    )
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


if __name__ == "__main__":
    main()
