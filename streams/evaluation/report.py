"""The evaluation's report: each scorer's metrics, ratios to the best classic baseline, the
table, JSON, Markdown and the HR@10 plot (docs/architecture.md, "Evaluation protocol").

:mod:`streams.evaluation.protocol` and :mod:`streams.evaluation.sasrec` fill in one
:class:`ScorerReport` per scorer; :class:`EvaluationReport` sets them side by side, with
paired bootstrap intervals over the (user, window) pairs they share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from model.baselines import BASELINES, CLASSIC_BASELINES
from streams.replay import EvaluationWindows, ReplaySummary

FloatArray = npt.NDArray[np.float64]

#: The cut-offs K of HR@K and NDCG@K.
KS = (5, 10, 20)
#: Windows judged when no ``--test-windows`` is given: the protocol's last 8 complete ones.
DEFAULT_TEST_WINDOWS = 8


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
                else f"{number_cell(ratio['HR@10_ratio'], 2)}x "
                f"[{number_cell(ratio['HR@10_ratio_ci'][0], 2)}, "
                f"{number_cell(ratio['HR@10_ratio_ci'][1], 2)}]"
            )
            cells = [
                r.name,
                *(number_cell(m[k]) for k in ("HR@5", "HR@10")),
                f"[{number_cell(lo)}, {number_cell(hi)}]",
                relative,
                *(number_cell(m[k]) for k in ("HR@20", "NDCG@5", "NDCG@10", "NDCG@20")),
                number_cell(m["spearman"]),
                *(number_cell(m[f"HR@10_{g}"]) for g in ("rising", "falling", "steady", "new")),
                number_cell(m["HR@10_warm"]),
                number_cell(m.get("faithfulness")),
                number_cell(m.get("contradiction_rate")),
                number_cell(m.get("MAE@10_count"), 2),
                number_cell(m.get("MAE@10_returning"), 2),
                str(m["pairs"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
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


def number_cell(value: float | None, digits: int = 4) -> str:
    """A table cell: ``-`` when missing, two significant digits from a million on (the
    untuned LM's stated forecasts reach 1e34, which ``digits`` decimals would spell out).

    >>> number_cell(0.12345), number_cell(float("nan")), number_cell(1.9e34, 2)
    ('0.1235', '-', '1.9e+34')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1e6:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def interval_label(value: float, ratio: float | None) -> str:
    """A plotted point's label: HR@10 and its ratio to the best baseline, where it has one
    (SASRec ranks per user on its own pairs, so it has none).

    >>> interval_label(0.3432, 1.1428), interval_label(0.3663, float("nan"))
    ('0.3432  (1.14x)', '0.3663')
    """
    if ratio is None or math.isnan(ratio):
        return f"{value:.4f}"
    return f"{value:.4f}  ({ratio:.2f}x)"


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
        label = interval_label(value, metrics.get("HR@10_ratio"))
        axes.annotate(label, (hi, y), xytext=(6, -3), textcoords="offset points", fontsize=8)
    if best_baseline is not None and best_baseline in results:
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
