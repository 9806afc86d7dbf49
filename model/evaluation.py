"""Replay-based evaluation of scorers under the protocol of DESIGN.md.

Each scorer gets its own engine and replays the whole log; rankings of the evaluated windows
are collected (and optionally written as a predictions file), then scored against what each
eligible user touched in the next window. The HR/NDCG computed here are computed from exactly
the rankings a predictions file holds, so any independent harness gets the same numbers.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import stats

from model.metrics import Target, bootstrap_interval, build_targets, score_pairs
from streams.datasets import EventLog
from streams.engine import Engine, EngineConfig, WindowResult
from streams.publish import PredictionsWriter, Publisher
from streams.replay import EvaluationWindows, ReplaySummary, replay
from streams.scoring import Scorer
from streams.trend.features import TREND_CATEGORIES

KS = (5, 10, 20)


@dataclass
class WindowRecord:
    """What one evaluated window leaves behind for the metrics."""

    ranking: list[str]
    scores: dict[str, float]
    trend: dict[str, str]
    explained: list[tuple[Any, str, float]] = field(default_factory=list)


class RankingCollector:
    """Publisher that keeps the rankings, scores and item groups of the evaluated windows."""

    def __init__(self, windows: EvaluationWindows, depth: int) -> None:
        self.windows = windows
        self.depth = depth
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
        for position, text in result.explanations.items():
            record.explained.append(
                (features.record(position), text, float(result.scores[position]))
            )
        self.records[result.window.end] = record

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class ScorerReport:
    name: str
    version: str
    metrics: dict[str, Any]
    hr10_per_window: dict[int, float]
    summary: ReplaySummary


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


#: The forced opening of LM explanations (the model's own forecast, true by construction); it
#: is left out when judging what the LM itself wrote.
_FORCED_FORECAST = re.compile(r"^Forecast: about [^.]*\.\s*")


def lm_written_part(text: str) -> str:
    """An explanation without its forced forecast sentence: what the LM itself wrote.

    >>> lm_written_part("Forecast: about 4 events next week. It is rising.")
    'It is rising.'
    """
    return _FORCED_FORECAST.sub("", text, count=1)


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
    depth: int = 100,
    progress: bool = True,
) -> ScorerReport:
    """Replay ``log`` with ``scorer`` and score its rankings against ``targets``."""
    collector = RankingCollector(windows, depth)
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
    if guard is not None:
        metrics.update(guard.report())
    per_window = {
        int(end): float(pairs.hr[10][pairs.window_end == end].mean())
        for end in sorted(rankings)
        if (pairs.window_end == end).any()
    }
    return ScorerReport(scorer.name, scorer.version, metrics, per_window, summary)


def _with_unseen(
    items: frozenset[str], record: WindowRecord, targets: Sequence[Target], end: int
) -> frozenset[str]:
    target = next(t for t in targets if t.window_end == end)
    touched = set().union(*target.relevant.values()) if target.relevant else set()
    return items | frozenset(i for i in touched if i not in record.scores)


@dataclass(frozen=True)
class EvaluationReport:
    dataset: str
    window_seconds: int
    windows: EvaluationWindows
    reports: list[ScorerReport]

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "window_seconds": self.window_seconds,
            "test_windows": len(self.windows),
            "first_window_end": (self.windows.first + 1) * self.window_seconds,
            "last_window_end": (self.windows.last + 1) * self.window_seconds,
            "results": {r.name: {**r.metrics, "model_version": r.version} for r in self.reports},
            "hr10_per_window": {
                r.name: {str(k): v for k, v in r.hr10_per_window.items()} for r in self.reports
            },
        }

    def table(self) -> str:
        """The human-readable table (also the body of the Markdown report)."""
        head = (
            "| scorer | HR@5 | HR@10 | HR@10 95% CI | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 "
            "| Spearman | rising | falling | steady | new/cold | warm | faithful | contra | pairs |"
        )
        lines = [head, "|" + "---|" * 17]
        for r in self.reports:
            m = r.metrics
            lo, hi = m["HR@10_ci"]
            lines.append(
                f"| {r.name} | {_f(m['HR@5'])} | {_f(m['HR@10'])} | [{_f(lo)}, {_f(hi)}] "
                f"| {_f(m['HR@20'])} | {_f(m['NDCG@5'])} | {_f(m['NDCG@10'])} "
                f"| {_f(m['NDCG@20'])} | {_f(m['spearman'])} | {_f(m['HR@10_rising'])} "
                f"| {_f(m['HR@10_falling'])} | {_f(m['HR@10_steady'])} | {_f(m['HR@10_new'])} "
                f"| {_f(m['HR@10_warm'])} | {_f(m.get('faithfulness'))} "
                f"| {_f(m.get('contradiction_rate'))} | {m['pairs']} |"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        return (
            f"## {self.dataset}, window {self.window_seconds} s, "
            f"{len(self.windows)} evaluated windows\n\n{self.table()}\n\n"
            "HR@10 by group restricts each user's next-window items to that group (pairs with "
            "none are skipped); new/cold = first seen within the last 4 windows or not before "
            "the judged window.\n"
        )

    def plot(self, path: Path) -> None:
        """PNG of HR@10 per evaluated window, one line per scorer."""
        plot_hr10_per_window(self.dataset, {r.name: r.hr10_per_window for r in self.reports}, path)

    def write(
        self, json_path: Path | None, markdown_path: Path | None, plot_path: Path | None
    ) -> None:
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_bytes(
                orjson.dumps(
                    self.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                )
            )
        if markdown_path is not None:
            markdown_path.parent.mkdir(parents=True, exist_ok=True)
            markdown_path.write_text(self.markdown())
        if plot_path is not None:
            self.plot(plot_path)


def _f(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def evaluate(
    log: EventLog,
    scorers: Sequence[tuple[str, Callable[[], Scorer]]],
    config: EngineConfig,
    *,
    test_windows: int | None = 8,
    predictions_dir: Path | None = None,
    depth: int = 100,
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


def plot_hr10_per_window(
    dataset: str, per_window: Mapping[str, Mapping[int, float]], path: Path
) -> None:
    """PNG of HR@10 per evaluated window (window end, unix s), one line per scorer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    for name, values in per_window.items():
        ends = sorted(values)
        axes.plot(
            [np.datetime64(int(e), "s") for e in ends],
            [values[e] for e in ends],
            marker="o",
            label=name,
        )
    axes.set_title(f"HR@10 per window: {dataset}")
    axes.set_ylabel("HR@10")
    axes.set_xlabel("end of the ranked window")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
