"""Scorers judged under the evaluation protocol (docs/architecture.md, "Evaluation protocol").

``trail evaluate`` replays one event log once per scorer through the engine that serves the
stream, and judges the rankings of the last complete windows against what each returning user
touched next. The package sits in the application layer beside the replay it drives:

``protocol``  each scorer's replay, its rankings collected and scored (:func:`evaluate`)
``report``    the per-scorer metrics side by side: ratios, table, JSON, Markdown, plot
``sasrec``    the personalized SASRec reference under the same windows and targets (torch;
              ``python -m streams.evaluation.sasrec``), imported only when asked for
"""

from streams.evaluation.protocol import evaluate, evaluate_scorer
from streams.evaluation.report import (
    DEFAULT_TEST_WINDOWS,
    KS,
    EvaluationReport,
    ScorerReport,
    paired_ratio_interval,
    plot_hr10_intervals,
)

__all__ = [
    "DEFAULT_TEST_WINDOWS",
    "KS",
    "EvaluationReport",
    "ScorerReport",
    "evaluate",
    "evaluate_scorer",
    "paired_ratio_interval",
    "plot_hr10_intervals",
]
