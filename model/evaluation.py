"""Replay-based evaluation of scorers (docs/architecture.md, "Evaluation protocol").

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
import numpy.typing as npt
import orjson
from scipy import stats

from model.baselines import BASELINES, CLASSIC_BASELINES
from model.metrics import Target, bootstrap_interval, build_targets, score_pairs
from streams.engine import Engine, EngineConfig, WindowResult
from streams.eventlog import EventLog
from streams.publish import PredictionsWriter, Publisher
from streams.replay import EvaluationWindows, ReplaySummary, replay
from streams.scoring import Scorer
from streams.trend.features import TREND_CATEGORIES, FeatureFrame

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

KS = (5, 10, 20)
#: Windows judged when no ``--test-windows`` is given: the protocol's last 8 complete ones.
DEFAULT_TEST_WINDOWS = 8

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


@dataclass(frozen=True)
class ScorerReport:
    name: str
    version: str
    metrics: dict[str, Any]
    hr10_per_window: dict[int, float]
    summary: ReplaySummary
    #: HR@10 and NDCG@10 of every (user, window) pair, in the same pair order for every
    #: scorer of one evaluation (for paired comparisons).
    pair_hr10: FloatArray = field(default_factory=lambda: np.zeros(0))
    pair_ndcg10: FloatArray = field(default_factory=lambda: np.zeros(0))


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


def paired_ratio_interval(
    numerator: FloatArray, denominator: FloatArray, *, samples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(numerator) / mean(denominator)`` and its 95% paired bootstrap interval: the
    same resampled (user, window) pairs in both means.

    >>> a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, 0.0, 0.0, 1.0])
    >>> round(paired_ratio_interval(a, b)[0], 3)
    1.5
    """
    if numerator.shape != denominator.shape or numerator.size == 0 or denominator.sum() == 0:
        return (float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    ratios = np.empty(samples)
    for i in range(samples):
        picked = rng.integers(0, numerator.size, numerator.size)
        below = denominator[picked].mean()
        ratios[i] = numerator[picked].mean() / below if below > 0 else np.nan
    ratio = float(numerator.mean() / denominator.mean())
    return (ratio, float(np.nanquantile(ratios, 0.025)), float(np.nanquantile(ratios, 0.975)))


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


@dataclass(frozen=True)
class EvaluationReport:
    dataset: str
    window_seconds: int
    windows: EvaluationWindows
    reports: list[ScorerReport]

    def best_baseline(self) -> ScorerReport | None:
        """The classic baseline with the highest HR@10 among the evaluated scorers."""
        classic = [r for r in self.reports if r.name in CLASSIC_BASELINES]
        return max(classic, key=lambda r: r.metrics["HR@10"], default=None)

    def ratios(self) -> dict[str, dict[str, Any]]:
        """Each scorer's HR@10 and NDCG@10 over the best classic baseline's, with paired
        bootstrap intervals over the (user, window) pairs."""
        best = self.best_baseline()
        if best is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for report in self.reports:
            hr = paired_ratio_interval(report.pair_hr10, best.pair_hr10)
            ndcg = paired_ratio_interval(report.pair_ndcg10, best.pair_ndcg10)
            out[report.name] = {
                "baseline": best.name,
                "HR@10_ratio": hr[0],
                "HR@10_ratio_ci": [hr[1], hr[2]],
                "NDCG@10_ratio": ndcg[0],
                "NDCG@10_ratio_ci": [ndcg[1], ndcg[2]],
            }
        # What the LM adds on top of the learned ranking alone, paired the same way.
        ranker = next((r for r in self.reports if r.name == "ranker"), None)
        trail = next((r for r in self.reports if r.name == "trail"), None)
        if ranker is not None and trail is not None:
            vs = paired_ratio_interval(trail.pair_hr10, ranker.pair_hr10)
            out["trail"]["HR@10_vs_ranker"] = vs[0]
            out["trail"]["HR@10_vs_ranker_ci"] = [vs[1], vs[2]]
        return out

    def to_json(self) -> dict[str, Any]:
        ratios = self.ratios()
        best = self.best_baseline()
        return {
            "dataset": self.dataset,
            "best_baseline": None if best is None else best.name,
            "window_seconds": self.window_seconds,
            "test_windows": len(self.windows),
            "first_window_end": (self.windows.first + 1) * self.window_seconds,
            "last_window_end": (self.windows.last + 1) * self.window_seconds,
            "results": {
                r.name: {**r.metrics, **ratios.get(r.name, {}), "model_version": r.version}
                for r in self.reports
            },
            "hr10_per_window": {
                r.name: {str(k): v for k, v in r.hr10_per_window.items()} for r in self.reports
            },
        }

    def table(self) -> str:
        """The human-readable table (also the body of the Markdown report)."""
        ratios = self.ratios()
        head = (
            "| scorer | HR@5 | HR@10 | HR@10 95% CI | x best baseline [95% CI] | HR@20 | NDCG@5 "
            "| NDCG@10 | NDCG@20 | Spearman | rising | falling | steady | new/cold | warm "
            "| faithful | contra | MAE@10 events | MAE@10 returning | pairs |"
        )
        lines = [head, "|" + "---|" * 20]
        for r in self.reports:
            m = r.metrics
            lo, hi = m["HR@10_ci"]
            ratio = ratios.get(r.name)
            relative = (
                "-"
                if ratio is None
                else f"{_f(ratio['HR@10_ratio'], 2)}x [{_f(ratio['HR@10_ratio_ci'][0], 2)}, "
                f"{_f(ratio['HR@10_ratio_ci'][1], 2)}]"
            )
            lines.append(
                f"| {r.name} | {_f(m['HR@5'])} | {_f(m['HR@10'])} | [{_f(lo)}, {_f(hi)}] "
                f"| {relative} | {_f(m['HR@20'])} | {_f(m['NDCG@5'])} | {_f(m['NDCG@10'])} "
                f"| {_f(m['NDCG@20'])} | {_f(m['spearman'])} | {_f(m['HR@10_rising'])} "
                f"| {_f(m['HR@10_falling'])} | {_f(m['HR@10_steady'])} | {_f(m['HR@10_new'])} "
                f"| {_f(m['HR@10_warm'])} | {_f(m.get('faithfulness'))} "
                f"| {_f(m.get('contradiction_rate'))} | {_f(m.get('MAE@10_count'), 2)} "
                f"| {_f(m.get('MAE@10_returning'), 2)} | {m['pairs']} |"
            )
        best = self.best_baseline()
        if best is not None:
            lines.append(
                f"\nRatios are to the best classic baseline here, {best.name}, with paired "
                "bootstrap intervals over (user, window) pairs."
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
        """PNG of each scorer's HR@10 with its interval, the best classic baseline marked."""
        data = self.to_json()
        plot_hr10_intervals(self.dataset, data["results"], data["best_baseline"], path)

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


def _f(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


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


def plot_hr10_intervals(
    dataset: str, results: Mapping[str, Mapping[str, Any]], best_baseline: str | None, path: Path
) -> None:
    """PNG of each scorer's HR@10 with its 95% bootstrap interval, best first; the best
    classic baseline's value is a dashed line, so "above the rule" reads at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(
        ((name, m) for name, m in results.items() if not math.isnan(m.get("HR@10", math.nan))),
        key=lambda item: item[1]["HR@10"],
    )
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    for y, (name, metrics) in enumerate(rows):
        lo, hi = metrics.get("HR@10_ci", [math.nan, math.nan])
        value = metrics["HR@10"]
        colour = "tab:red" if name == best_baseline else (
            "tab:blue" if name in BASELINES else "tab:green"
        )
        axes.errorbar(
            value, y, xerr=[[value - lo], [hi - value]], fmt="o", color=colour, capsize=3
        )
        ratio = metrics.get("HR@10_ratio")
        label = f"{value:.4f}" + (f"  ({ratio:.2f}x)" if ratio is not None else "")
        axes.annotate(label, (hi, y), xytext=(6, -3), textcoords="offset points", fontsize=8)
    if best_baseline in results:
        axes.axvline(results[best_baseline]["HR@10"], color="tab:red", linestyle="--", lw=1)
    axes.set_yticks(range(len(rows)), [name for name, _ in rows])
    axes.set_xlabel("HR@10 with 95% bootstrap interval (ratio to the best classic baseline)")
    axes.set_title(
        f"{dataset}: HR@10 per scorer (dashed: best classic baseline, {best_baseline})"
    )
    axes.grid(axis="x", alpha=0.3)
    axes.margins(x=0.25)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
