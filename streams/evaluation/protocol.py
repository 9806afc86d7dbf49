"""Replay-based evaluation of scorers (docs/architecture.md, "Evaluation protocol").

Each scorer gets its own engine and replays the whole log; rankings of the evaluated windows
are collected (and optionally written as a predictions file), then scored against what each
eligible user touched in the next window. The HR/NDCG computed here are computed from exactly
the rankings a predictions file holds, so any independent harness gets the same numbers. The
metrics are computed by :mod:`model.metrics`; the report they fill is
:mod:`streams.evaluation.report`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from model.metrics import Target, bootstrap_interval, build_targets, lm_written_part, score_pairs
from streams.engine import Engine, EngineConfig, WindowResult
from streams.evaluation.report import DEFAULT_TEST_WINDOWS, KS, EvaluationReport, ScorerReport
from streams.eventlog import EventLog
from streams.publish import PredictionsWriter, Publisher
from streams.replay import EvaluationWindows, replay
from streams.scoring import Scorer
from streams.trend.features import TREND_CATEGORIES, FeatureFrame

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

#: How many of each window's best items the forecast errors are measured on (what is printed).
FORECAST_TOP = 10


@dataclass
class WindowRecord:
    """What one evaluated window leaves behind for the metrics."""

    ranking: list[str]
    scores: dict[str, float]
    trend: dict[str, str]
    explained: list[tuple[Any, str, float]] = field(default_factory=list)
    #: Forecasts for the top items: item -> (next-window events, next returning users or NaN).
    forecasts: dict[str, tuple[float, float]] = field(default_factory=dict)


def forecasts_of(
    scorer: Scorer, features: FeatureFrame, scores: FloatArray, positions: IndexArray
) -> tuple[FloatArray, FloatArray]:
    """Next-window event and returning-user forecasts of ``positions``.

    Scorers with a ``forecast`` method (the online ranker, TRAIL) give calibrated numbers;
    for the others the score is read as the ``log(1 + count)`` it stands for, and they make
    no returning-user forecast (NaN).
    """
    forecast = getattr(scorer, "forecast", None)
    if callable(forecast):
        counts, returning = forecast(features.take(positions))
        return np.asarray(counts, dtype=np.float64), np.asarray(returning, dtype=np.float64)
    counts = np.maximum(np.expm1(scores[positions]), 0.0)
    return counts, np.full(positions.shape[0], np.nan)


class RankingCollector:
    """Publisher that keeps the rankings, scores and item groups of the evaluated windows."""

    def __init__(
        self, windows: EvaluationWindows, depth: int, scorer: Scorer | None = None
    ) -> None:
        self.windows = windows
        self.depth = depth
        self.scorer = scorer
        self.records: dict[int, WindowRecord] = {}

    def publish(self, result: WindowResult) -> None:
        if not (self.windows.first <= result.window.index <= self.windows.last):
            return
        features = result.features
        ids = features.item_ids
        record = WindowRecord(
            ranking=result.ranking(self.depth),
            scores={ids[i]: float(s) for i, s in enumerate(result.scores.tolist())},
            trend={ids[i]: TREND_CATEGORIES[int(c)] for i, c in enumerate(features.trend)},
        )
        # Each text is judged against the number it was written for: the scorer's forecast
        # where it makes one (TRAIL explains its calibrated count, not its ranking score).
        stated = dict(enumerate(result.scores.tolist()))
        if result.explanations and self.scorer is not None:
            explained = np.array(sorted(result.explanations), dtype=np.int64)
            counts, _ = forecasts_of(self.scorer, features, result.scores, explained)
            stated.update(zip(explained.tolist(), np.log1p(counts).tolist(), strict=True))
        for position, text in result.explanations.items():
            record.explained.append((features.record(position), text, float(stated[position])))
        if self.scorer is not None:
            top = result.order[:FORECAST_TOP]
            counts, returning = forecasts_of(self.scorer, features, result.scores, top)
            record.forecasts = {
                ids[int(p)]: (float(c), float(r))
                for p, c, r in zip(top.tolist(), counts, returning, strict=True)
            }
        self.records[result.window.end] = record

    def close(self) -> None:
        return None


def _forecast_errors(
    records: Mapping[int, WindowRecord],
    targets: Sequence[Target],
    log: EventLog,
    window_seconds: int,
) -> dict[str, float]:
    """Mean absolute error of the top items' forecasts: next-window events, and next-window
    returning users (the eligible users of the protocol who touched the item)."""
    ts = np.asarray(log.timestamps)
    count_errors: list[float] = []
    returning_errors: list[float] = []
    for target in targets:
        record = records.get(target.window_end)
        if record is None or not record.forecasts:
            continue
        in_next = (ts >= target.window_end) & (ts < target.window_end + window_seconds)
        ids, counts = np.unique(log.item_ids[in_next], return_counts=True)
        next_counts = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        returning: dict[str, int] = {}
        for items in target.relevant.values():
            for item in items:
                returning[item] = returning.get(item, 0) + 1
        for item, (count, users) in record.forecasts.items():
            count_errors.append(abs(count - next_counts.get(item, 0)))
            if not math.isnan(users):
                returning_errors.append(abs(users - returning.get(item, 0)))
    return {
        "MAE@10_count": float(np.mean(count_errors)) if count_errors else float("nan"),
        "MAE@10_returning": float(np.mean(returning_errors))
        if returning_errors
        else float("nan"),
    }


def _spearman(
    records: Mapping[int, WindowRecord],
    targets: Sequence[Target],
    log: EventLog,
    window_seconds: int,
) -> float:
    """Mean over windows of Spearman's rho between scores and next-window counts."""
    ts = np.asarray(log.timestamps)
    rhos = []
    for target in targets:
        record = records[target.window_end]
        in_next = (ts >= target.window_end) & (ts < target.window_end + window_seconds)
        ids, counts = np.unique(log.item_ids[in_next], return_counts=True)
        next_counts = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        items = list(record.scores)
        if len(items) < 3:
            continue
        predicted = np.array([record.scores[i] for i in items])
        realised = np.array([next_counts.get(i, 0) for i in items], dtype=np.float64)
        if np.ptp(predicted) == 0 or np.ptp(realised) == 0:
            continue
        rhos.append(float(stats.spearmanr(predicted, realised).statistic))
    return float(np.mean(rhos)) if rhos else float("nan")


def _explanation_metrics(records: Mapping[int, WindowRecord]) -> dict[str, float]:
    explained = [e for r in records.values() for e in r.explained]
    if not explained:
        return {}
    from model.explain import check_explanation

    checks = [
        check_explanation(lm_written_part(text), feats, score) for feats, text, score in explained
    ]
    return {
        "faithfulness": float(np.mean([c.faithfulness for c in checks])),
        "contradiction_rate": float(np.mean([c.contradiction_rate for c in checks])),
        "explanations_without_claims": float(np.mean([c.empty for c in checks])),
        "explanations": float(len(checks)),
    }


def evaluate_scorer(
    log: EventLog,
    scorer: Scorer,
    config: EngineConfig,
    windows: EvaluationWindows,
    targets: Sequence[Target],
    *,
    predictions_out: Path | None = None,
    depth: int = EngineConfig.ranking_depth,
    progress: bool = True,
) -> ScorerReport:
    """Replay ``log`` with ``scorer`` and score its rankings against ``targets``."""
    collector = RankingCollector(windows, depth, scorer)
    publishers: list[Publisher] = [collector]
    if predictions_out is not None:
        publishers.append(
            PredictionsWriter(
                predictions_out, depth=depth, first_window=windows.first, last_window=windows.last
            )
        )
    engine = Engine(config, scorer, score_from_window=windows.first)
    started = time.perf_counter()
    summary = replay(log, engine, publishers, windows, progress=progress)
    seconds = time.perf_counter() - started
    guard = getattr(scorer, "guard", None)
    rankings = {end: record.ranking for end, record in collector.records.items()}
    pairs = score_pairs(rankings, targets, KS)
    metrics: dict[str, Any] = {}
    for k in KS:
        metrics[f"HR@{k}"] = pairs.mean("HR", k)
        metrics[f"NDCG@{k}"] = pairs.mean("NDCG", k)
    metrics["HR@10_ci"] = list(bootstrap_interval(pairs.hr[10]))
    metrics["NDCG@10_ci"] = list(bootstrap_interval(pairs.ndcg[10]))
    metrics["pairs"] = int(pairs.hr[10].size)
    # The whole replay with this scorer (state updates, scoring, explanations), model loading
    # excluded: what a rerun of the evaluation windows costs.
    metrics["seconds"] = round(seconds, 1)
    metrics["spearman"] = _spearman(collector.records, targets, log, config.trend.window.length)
    for category in TREND_CATEGORIES:
        allowed = {
            end: frozenset(item for item, trend in record.trend.items() if trend == category)
            for end, record in collector.records.items()
        }
        if category == "new":
            # Items first seen in the judged window itself are the newest of all.
            allowed = {
                end: _with_unseen(items, collector.records[end], targets, end)
                for end, items in allowed.items()
            }
        group = score_pairs(rankings, targets, (10,), restrict=allowed)
        metrics[f"HR@10_{category}"] = group.mean("HR", 10)
        metrics[f"pairs_{category}"] = int(group.hr[10].size)
    # Cold items are first seen within the last four windows: exactly the "new" group.
    metrics["HR@10_cold"] = metrics["HR@10_new"]
    warm = {
        end: frozenset(i for i, t in record.trend.items() if t != "new")
        for end, record in collector.records.items()
    }
    warm_pairs = score_pairs(rankings, targets, (10,), restrict=warm)
    metrics["HR@10_warm"] = warm_pairs.mean("HR", 10)
    metrics["pairs_warm"] = int(warm_pairs.hr[10].size)
    metrics.update(_explanation_metrics(collector.records))
    metrics.update(
        _forecast_errors(collector.records, targets, log, config.trend.window.length)
    )
    if guard is not None:
        metrics.update(guard.report())
    per_window = {
        int(end): float(pairs.hr[10][pairs.window_end == end].mean())
        for end in sorted(rankings)
        if (pairs.window_end == end).any()
    }
    return ScorerReport(
        scorer.name, scorer.version, metrics, per_window, summary, pairs.hr[10], pairs.ndcg[10]
    )


def _with_unseen(
    items: frozenset[str], record: WindowRecord, targets: Sequence[Target], end: int
) -> frozenset[str]:
    target = next(t for t in targets if t.window_end == end)
    touched = set().union(*target.relevant.values()) if target.relevant else set()
    return items | frozenset(i for i in touched if i not in record.scores)


def evaluate(
    log: EventLog,
    scorers: Sequence[tuple[str, Callable[[], Scorer]]],
    config: EngineConfig,
    *,
    test_windows: int | None = DEFAULT_TEST_WINDOWS,
    predictions_dir: Path | None = None,
    depth: int = EngineConfig.ranking_depth,
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate each named scorer on ``log`` over the same windows and targets."""
    log = log.sorted_by_time()
    window_seconds = config.trend.window.length
    windows = EvaluationWindows.of(log.timestamps, window_seconds, test_windows)
    ends = [(w + 1) * window_seconds for w in range(windows.first, windows.last + 1)]
    targets = build_targets(log.user_ids, log.item_ids, log.timestamps, window_seconds, ends)
    reports = []
    for name, make in scorers:
        predictions = predictions_dir / f"{name}.jsonl" if predictions_dir else None
        reports.append(
            evaluate_scorer(
                log,
                make(),
                config,
                windows,
                targets,
                predictions_out=predictions,
                depth=depth,
                progress=progress,
            )
        )
    return EvaluationReport(log.name, window_seconds, windows, reports)


