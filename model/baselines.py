"""Baseline scorers of the evaluation protocol, behind the engine's Scorer protocol.

Every baseline scores every item seen so far, using only events before the window's end, and
returns the predicted ``log(1 + next-window count)`` (or a monotone stand-in for it, which gives
the same ranking): MostPop, LastWindow, EWMA-h and LinearTrend as docs/architecture.md
("Baselines" under "The scorer cascade") defines them, and an online River regression on the
trend features.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import river
from river import linear_model, optim, utils

from streams.scoring import SilentScorer
from streams.trend.catalog import tie_ranks
from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]


class MostPop(SilentScorer):
    """All events of an item so far.

    >>> from model.baselines import MostPop
    >>> MostPop().version
    'mostpop@1'
    """

    name = "mostpop"
    version = "mostpop@1"

    def score(self, features: FeatureFrame) -> FloatArray:
        return np.log1p(features.total)


class LastWindow(SilentScorer):
    """The count of the window that just closed."""

    name = "last-window"
    version = "last-window@1"

    def score(self, features: FeatureFrame) -> FloatArray:
        return np.log1p(features.count)


class EWMA(SilentScorer):
    """``sum over w <= t of 2^(-(t-w)/h) * count_w``, from the state's EW mean of half-life h.

    The EW mean is that sum times ``1 - 2^(-1/h)``: a predicted per-window count, hence the
    same ranking.
    """

    def __init__(self, half_life: float) -> None:
        self.half_life = float(half_life)
        self.name = f"ewma-{half_life:g}"

    @property
    def version(self) -> str:
        return f"{self.name}@1"

    def score(self, features: FeatureFrame) -> FloatArray:
        return np.log1p(features.ew_at(self.half_life))


class LinearTrend(SilentScorer):
    """``max(0, count_t + slope)``, the slope fitted by least squares to windows t-3..t."""

    name = "linear-trend"
    version = "linear-trend@1"

    def score(self, features: FeatureFrame) -> FloatArray:
        if features.recent.shape[1] != 4:
            raise ValueError("linear-trend needs the last 4 window counts (recent_windows = 4)")
        return np.log1p(np.maximum(0.0, features.count + features.slope))


def trend_feature_table(features: FeatureFrame) -> pd.DataFrame:
    """The numeric trend signals as a table (log scale where counts are heavy-tailed)."""
    table = {
        "log_count": np.log1p(features.count),
        "log_total": np.log1p(features.total),
        "log_momentum": np.log(features.momentum),
        "slope": np.sign(features.slope) * np.log1p(np.abs(features.slope)),
        "accel": np.sign(features.accel) * np.log1p(np.abs(features.accel)),
        "burstiness": features.burstiness,
        "log_age": np.log1p(features.age_windows.astype(np.float64)),
        "share": features.share * 10.0,
        "category_momentum": np.nan_to_num(np.log(features.category_momentum), nan=0.0),
    }
    for column, half_life in enumerate(features.half_lives):
        table[f"log_ew_{half_life:g}"] = np.log1p(features.ew[:, column])
    for lag in range(features.recent.shape[1]):
        table[f"log_count_lag{features.recent.shape[1] - 1 - lag}"] = np.log1p(
            features.recent[:, lag]
        )
    return pd.DataFrame(table).clip(-20.0, 20.0)


class DecayTuned(SilentScorer):
    """A decayed count whose half-life is picked on the windows before the one it ranks.

    The candidates are the continuous-time decays (half-lives W/32 .. W) and the per-window
    EW sums (half-lives 2, 4 and 8 windows). After each window it records, for every
    candidate, the returning users of the next window that its top 10 would have held; it
    ranks with the candidate that held the most over the last ``windows`` windows (the
    shortest half-life on ties). Until a window has been judged it uses the W/4 decay.
    """

    name = "decay-tuned"
    learns_online = True
    #: (label, half-life in windows) of every candidate, shortest first.
    CANDIDATES: tuple[tuple[str, float], ...] = (
        ("decay-w32", 1 / 32),
        ("decay-w8", 1 / 8),
        ("decay-w4", 1 / 4),
        ("decay-w2", 1 / 2),
        ("decay-w1", 1.0),
        ("ewma-2", 2.0),
        ("ewma-4", 4.0),
        ("ewma-8", 8.0),
    )

    def __init__(self, windows: int = 8, top: int = 10) -> None:
        self.windows = windows
        self.top = top
        self._gains: list[list[float]] = []

    @property
    def version(self) -> str:
        return f"decay-tuned@{self.windows}"

    @staticmethod
    def _columns(features: FeatureFrame) -> FloatArray:
        windowed = [features.ew_at(h) for h in (2.0, 4.0, 8.0)]
        return np.column_stack([features.decayed, *windowed])

    def chosen(self) -> int:
        """Index into :data:`CANDIDATES` of the half-life in use."""
        if not self._gains:
            return 2
        return int(np.argmax(np.mean(self._gains, axis=0)))

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        if len(features) == 0:
            return
        columns = self._columns(features)
        tie = tie_ranks([str(i) for i in features.item_ids])
        gains = []
        for j in range(columns.shape[1]):
            best = np.lexsort((tie, -columns[:, j]))[: self.top]
            gains.append(float(outcome.returning[best].sum()))
        self._gains = [*self._gains, gains][-self.windows :]

    def score(self, features: FeatureFrame) -> FloatArray:
        return np.log1p(self._columns(features)[:, self.chosen()])

    def state_dict(self) -> dict[str, Any]:
        return {"format": "decay-tuned@1", "gains": self._gains}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "decay-tuned@1":
            raise ValueError(f"decay-tuned state format {state.get('format')!r} is unknown")
        self._gains = [list(map(float, g)) for g in state["gains"]]


RIVER_STATE_FORMAT = "river-linear-adam@1"


class RiverRegressor(SilentScorer):
    """An online linear regression (River) from the trend signals to ``log(1 + next count)``.

    It learns as each window's true counts arrive, from the items that were active in the
    window before, and predicts for every item. Until it has seen a window it falls back to
    the last window's count.
    """

    name = "river"
    learns_online = True

    def __init__(self, learning_rate: float = 0.01, seed: int = 0) -> None:
        # The features are already on log scales and clipped, so no running scaler is needed
        # (River's batch StandardScaler breaks on constant columns: negative variances).
        self._model = linear_model.LinearRegression(
            optimizer=optim.Adam(learning_rate), intercept_lr=learning_rate, l2=1e-5
        )
        self._learned_windows = 0
        self.seed = seed

    @property
    def version(self) -> str:
        return "river@1"

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        if len(features) == 0:
            return
        table = trend_feature_table(features)
        target = pd.Series(np.log1p(outcome.counts))
        # Shuffled mini-batches keep SGD from following the catalog order.
        order = np.random.default_rng(self.seed + self._learned_windows).permutation(len(table))
        for chunk in np.array_split(order, max(1, len(order) // 256)):
            self._model.learn_many(table.iloc[chunk], target.iloc[chunk])
        self._learned_windows += 1

    def score(self, features: FeatureFrame) -> FloatArray:
        if self._learned_windows == 0:
            return np.log1p(features.count)
        predictions = self._model.predict_many(trend_feature_table(features))
        return np.asarray(predictions, dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        """What was learned, as plain JSON-able values (the worker checkpoints it; no pickle).

        The weights, the intercept and Adam's moments and step count are all the state a
        River ``LinearRegression`` with Adam carries between ``learn_many`` calls, so a
        restored scorer continues exactly as the original would have.
        """
        optimizer = self._model.optimizer
        return {
            "format": RIVER_STATE_FORMAT,
            "river": river.__version__,
            "learned_windows": self._learned_windows,
            "weights": {str(k): float(v) for k, v in self._model._weights.to_dict().items()},
            "intercept": float(self._model.intercept),
            "adam_steps": int(optimizer.n_iterations),
            "adam_m": None
            if optimizer.m is None
            else {str(k): float(v) for k, v in optimizer.m.items()},
            "adam_v": None
            if optimizer.v is None
            else {str(k): float(v) for k, v in optimizer.v.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (same state format and River version)."""
        if state.get("format") != RIVER_STATE_FORMAT:
            raise ValueError(
                f"river scorer state format {state.get('format')!r} is not {RIVER_STATE_FORMAT!r}"
            )
        if state.get("river") != river.__version__:
            raise ValueError(
                f"river scorer state was written by River {state.get('river')}, this is "
                f"{river.__version__}: its internals may differ, so it is not loaded"
            )
        model = self._model
        model._weights = utils.VectorDict(dict(state["weights"]))
        model.intercept = float(state["intercept"])
        optimizer = model.optimizer
        optimizer.n_iterations = int(state["adam_steps"])
        for name in ("m", "v"):
            values = state[f"adam_{name}"]
            setattr(optimizer, name, None if values is None else defaultdict(float, values))
        self._learned_windows = int(state["learned_windows"])


#: The classic baselines of the evaluation protocol: the fixed rules a learned ranking must
#: beat (ratios in reports are to the best of them).
CLASSIC_BASELINES: dict[str, Callable[[], SilentScorer]] = {
    "mostpop": MostPop,
    "last-window": LastWindow,
    "ewma-1": lambda: EWMA(1),
    "ewma-2": lambda: EWMA(2),
    "ewma-4": lambda: EWMA(4),
    "linear-trend": LinearTrend,
}
#: Scorer names on the command line that need no model files (docs/architecture.md,
#: "Conventions that tools rely on"): the classic rules, then the two that learn online.
BASELINES: dict[str, Callable[[], SilentScorer]] = {
    **CLASSIC_BASELINES,
    "river": RiverRegressor,
    "decay-tuned": DecayTuned,
}
