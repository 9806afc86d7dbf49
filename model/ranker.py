"""The online learned ranker: LightGBM lambdarank over the trend signals, refit every window.

At each window close the engine shows the ranker the previous window's features with what
happened next; the ranker turns them into one query group (its candidates, their features,
and the label: distinct *returning* users of the item in the next window, which is what HR@10
counts, capped at :data:`LABEL_CAP`) and keeps the last ``span`` groups. The next time it is
asked to score, it refits on those groups (never on the window it ranks: that window's label
does not exist yet) and ranks the window's candidates; every other item keeps a score below
every candidate, in the order of its EW mean. There is no offline step: the ranker adapts to
any log and to a live stream, and until it has seen ``min_windows`` labelled windows it ranks
by the EW mean alone.

Its state (the training groups, and the fitted models in LightGBM's own text format) is
plain data: a worker checkpoints it and a restored ranker refits to the identical models (one
thread each, fixed seeds, deterministic LightGBM), so kill -9 recovery stays exact. No pickle.

Two small LightGBM models fitted on the same rows (L1 loss on the next window's events and
on its returning users) give calibrated forecasts: :meth:`OnlineRanker.forecast`. The three
boosters of a refit are fitted concurrently in background threads (LightGBM releases the
GIL; each booster alone is still one deterministic thread, so the models are the ones a
serial fit makes): :meth:`~OnlineRanker.score` waits only for the ranker, and the forecast
models finish while the window goes on.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt

from model.ranker_features import candidate_positions, feature_matrix, recently_active
from streams.scoring import SilentScorer
from streams.trend.features import FeatureFrame
from streams.trend.packing import pack_array, unpack_array
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

RANKER_STATE_FORMAT = "trail-online-ranker@1"
#: Labels above this count as this much: a few huge items must not drown every other pair.
LABEL_CAP = 30
#: Non-candidates score below every candidate by at least this much.
_BELOW_CANDIDATES = 1.0e3
#: Rows one lambdarank query group may hold: LightGBM refuses a query of more rows.
MAX_QUERY_ROWS = 10_000


@dataclass(frozen=True)
class RankerConfig:
    """How the online ranker learns; frozen so a running ranker cannot drift.

    ``label`` is ``returning`` (distinct returning users next window, the default) or
    ``count`` (next-window events: the ablation); ``subwindow=False`` drops the sub-window
    features (the other ablation).

    ``candidates`` is each prior's top ``m``; every item first seen in the window is a
    candidate too, so a window that meets a burst of new items can have any number of them.
    LightGBM's lambdarank takes at most :data:`MAX_QUERY_ROWS` (10,000) rows per query
    group, so a window's training query is capped there (:func:`cap_query`): every row with
    a positive label, then the rows with the best rank under any prior, ties by item id, kept
    in item-id order (so the fit still does not depend on the order the catalog met items
    in). Only the lambdarank query is capped: the forecast models are fitted on every stored
    row, and a window with more candidates than the cap is still ranked whole.
    """

    span: int = 36
    candidates: int = 200
    min_windows: int = 4
    trees: int = 300
    learning_rate: float = 0.05
    leaves: int = 15
    min_leaf_rows: int = 20
    label: str = "returning"
    subwindow: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.label not in ("returning", "count"):
            raise ValueError(f"ranker label {self.label!r}: use 'returning' or 'count'")
        if self.span < 1 or self.candidates < 1 or self.min_windows < 1:
            raise ValueError("ranker span, candidates and min_windows must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @property
    def tag(self) -> str:
        """A short fingerprint of the settings (part of the scorer's version)."""
        text = repr(sorted(self.to_dict().items()))
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def cap_query(
    labels: npt.NDArray[np.int32],
    prior_ranks: npt.NDArray[np.float32],
    limit: int = MAX_QUERY_ROWS,
) -> IndexArray:
    """The rows of one training query group that lambdarank is fitted on, at most ``limit``.

    Parameters
    ----------
    labels : ndarray of int32, shape (n,)
        The group's labels, its rows in item-id order.
    prior_ranks : ndarray, shape (n, p)
        Each row's rank under each prior (0 = best), as in the ``rank_*`` feature columns.
    limit : int
        The most rows to keep (LightGBM's limit by default).

    Returns
    -------
    ndarray of int64
        Row positions in increasing (item-id) order: every row when there are at most
        ``limit``; else every row with a positive label (the highest labels first if even
        they are too many), then the rows whose best rank under any prior is best, ties by
        row order. Positives carry every pairwise gradient a query has, and the best-ranked
        rows are the negatives the ranker must beat (the candidates a smaller ``m`` would
        have chosen). Nothing depends on catalog codes, so neither does the fit.

    >>> cap_query(np.array([0, 2, 0, 0]), np.array([[3.0], [9.0], [0.0], [1.0]]), limit=3)
    array([1, 2, 3])
    """
    if limit < 1:
        raise ValueError(f"query row limit {limit} must be positive")
    rows = labels.shape[0]
    if rows <= limit:
        return np.arange(rows, dtype=np.int64)
    best = prior_ranks.min(axis=1) if prior_ranks.shape[1] else np.zeros(rows)
    # lexsort: the last key is the primary one; the row index last-resort key is item-id order.
    order = np.lexsort((np.arange(rows), best, -labels.astype(np.int64), labels <= 0))
    kept: IndexArray = np.sort(order[:limit]).astype(np.int64)
    return kept


@dataclass(frozen=True)
class TrainingGroup:
    """One labelled window: its candidates' features, labels and next-window counts."""

    window_end: int
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int32]
    next_counts: npt.NDArray[np.float32]
    next_returning: npt.NDArray[np.float32]

    def state_dict(self) -> dict[str, Any]:
        return {
            "window_end": self.window_end,
            "columns": int(self.features.shape[1]),
            "features": pack_array(self.features),
            "labels": pack_array(self.labels),
            "next_counts": pack_array(self.next_counts),
            "next_returning": pack_array(self.next_returning),
        }

    @classmethod
    def from_state_dict(cls, data: dict[str, Any]) -> TrainingGroup:
        features = unpack_array(data["features"], np.float32).reshape(-1, int(data["columns"]))
        return cls(
            int(data["window_end"]),
            features,
            unpack_array(data["labels"], np.int32),
            unpack_array(data["next_counts"], np.float32),
            unpack_array(data["next_returning"], np.float32),
        )


@dataclass(frozen=True)
class _Timed:
    """One fitted booster and when its fit ran (``time.perf_counter`` seconds)."""

    booster: lightgbm.Booster
    started: float
    finished: float


@dataclass(frozen=True)
class _Refit:
    """One refit on ``windows``: the ranker and the two forecast models, each its own task."""

    windows: tuple[int, ...]
    ranker: Future[_Timed]
    counter: Future[_Timed]
    returner: Future[_Timed]


def _fit_threads() -> int:
    """Threads for a refit's three boosters: one each, but no more than the CPUs this process
    may use (on two cores a third thread would only slow the ranker the window waits for)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(3, len(usable) if usable else os.cpu_count() or 1))


class OnlineRanker(SilentScorer):
    """LightGBM lambdarank on the trend features, label = next window's returning users.

    >>> ranker = OnlineRanker(RankerConfig(min_windows=2))
    >>> ranker.name, ranker.version.startswith("ranker@")
    ('ranker', True)
    """

    name = "ranker"
    learns_online = True

    def __init__(self, config: RankerConfig | None = None, fit_threads: int | None = None) -> None:
        """``fit_threads``: threads that fit a refit's boosters (default :func:`_fit_threads`);
        it changes when a model is ready, never the model."""
        self.config = config or RankerConfig()
        self._fit_thread_count = fit_threads or _fit_threads()
        self._groups: collections.deque[TrainingGroup] = collections.deque(
            maxlen=self.config.span
        )
        self._ranker: lightgbm.Booster | None = None
        self._counter: lightgbm.Booster | None = None
        self._returner: lightgbm.Booster | None = None
        self._fitted_on: tuple[int, ...] = ()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # The latest refit started and not installed yet.
        self._pending: _Refit | None = None
        # The refit whose ranker is installed and whose forecast models are not yet.
        self._forecasting: _Refit | None = None
        # Whether score() ran yet: a replay that scores only its last windows fits only then.
        self._scored = False
        self.columns: list[str] = []
        self._fit_seconds: list[float] = []

    @property
    def version(self) -> str:
        return f"ranker@{self.config.tag}"

    @property
    def fit_seconds(self) -> list[float]:
        """Seconds of each installed refit (first booster's start to last one's end), for
        benchmarks and logs; a refit whose forecast models are still fitting is waited for."""
        with self._lock:
            self._install_forecasts()
        return self._fit_seconds

    # ---------------------------------------------------------------- learning
    def _label(self, outcome: WindowOutcome) -> FloatArray:
        values = outcome.returning if self.config.label == "returning" else outcome.counts
        return values

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        """Keep the window's candidates with their labels and start refitting on them."""
        active = recently_active(features)
        if active.shape[0] == 0:
            return
        frame = features.take(active)
        labels = self._label(outcome.take(active))
        positions = candidate_positions(frame, self.config.candidates)
        if positions.shape[0] < 2:
            return
        matrix, self.columns = feature_matrix(frame, positions, subwindow=self.config.subwindow)
        self._groups.append(
            TrainingGroup(
                window_end=features.window_end,
                features=matrix,
                labels=np.minimum(np.rint(labels[positions]), LABEL_CAP).astype(np.int32),
                next_counts=outcome.counts[active][positions].astype(np.float32),
                next_returning=outcome.returning[active][positions].astype(np.float32),
            )
        )
        if self.ready and self._scored:
            self._pending = self._start_fit()

    def _params(self, objective: str) -> dict[str, Any]:
        config = self.config
        params: dict[str, Any] = {
            "objective": objective,
            "learning_rate": config.learning_rate,
            "num_leaves": config.leaves,
            "min_data_in_leaf": config.min_leaf_rows,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "feature_fraction": 0.8,
            "num_threads": 1,
            "deterministic": True,
            "force_row_wise": True,
            "seed": config.seed,
            "verbosity": -1,
        }
        if objective == "lambdarank":
            params["label_gain"] = list(range(LABEL_CAP + 1))
            params["lambdarank_truncation_level"] = LABEL_CAP
        return params

    def _fit_ranker(self, groups: tuple[TrainingGroup, ...], columns: list[str]) -> _Timed:
        """Fit the lambdarank ranker on ``groups`` (touches no state: runs in a fit thread)."""
        started = time.perf_counter()
        # Capped here, not when a group is learned, so that a group stored whole (by a
        # checkpoint written before the cap) still fits.
        rank_columns = [i for i, name in enumerate(columns) if name.startswith("rank_")]
        queries = [cap_query(g.labels, g.features[:, rank_columns]) for g in groups]
        data = lightgbm.Dataset(
            np.concatenate([g.features[q] for g, q in zip(groups, queries, strict=True)]),
            np.concatenate([g.labels[q] for g, q in zip(groups, queries, strict=True)]),
            group=[q.shape[0] for q in queries],
            feature_name=columns,
        )
        ranker = lightgbm.train(self._params("lambdarank"), data, num_boost_round=self.config.trees)
        return _Timed(ranker, started, time.perf_counter())

    def _fit_forecast(
        self, features: npt.NDArray[np.float32], target: npt.NDArray[np.float32], columns: list[str]
    ) -> _Timed:
        """Fit one L1 forecast model on every stored row (runs in a fit thread)."""
        started = time.perf_counter()
        dataset = lightgbm.Dataset(features, target, feature_name=columns)
        rounds = max(50, self.config.trees // 3)
        model = lightgbm.train(self._params("l1"), dataset, num_boost_round=rounds)
        return _Timed(model, started, time.perf_counter())

    @property
    def ready(self) -> bool:
        return len(self._groups) >= self.config.min_windows

    def _wanted(self) -> tuple[int, ...]:
        return tuple(g.window_end for g in self._groups)

    def _start_fit(self) -> _Refit:
        """Fit on the current groups in the fit threads (LightGBM releases the GIL): a live
        worker's event loop keeps running, and the next :meth:`score` finds the model ready.
        The ranker is submitted first, so with fewer threads than boosters it is the one not
        kept waiting. The models are the ones a foreground fit makes (deterministic, one
        thread each), so when they are used never changes a ranking or a forecast."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._fit_thread_count, thread_name_prefix="ranker-fit"
            )
        groups, columns = tuple(self._groups), list(self.columns)
        ranker = self._pool.submit(self._fit_ranker, groups, columns)
        features = np.concatenate([g.features for g in groups])
        counter, returner = (
            self._pool.submit(self._fit_forecast, features, target, columns)
            for target in (
                np.concatenate([g.next_counts for g in groups]),
                np.concatenate([g.next_returning for g in groups]),
            )
        )
        return _Refit(tuple(g.window_end for g in groups), ranker, counter, returner)

    def _refit_if_needed(self) -> None:
        """Install the ranker fitted on the current groups (waiting for it, or fitting it when
        no refit on them is pending); its forecast models follow in :meth:`_install_forecasts`."""
        wanted = self._wanted()
        if not self.ready or self._fitted_on == wanted:
            return
        pending, self._pending = self._pending, None
        if pending is None or pending.windows != wanted:
            pending = self._start_fit()
        ranker = pending.ranker.result().booster
        with self._lock:
            # Each refit is installed whole: the previous one's forecast models first.
            self._install_forecasts()
            self._ranker, self._fitted_on, self._forecasting = ranker, pending.windows, pending

    def _install_forecasts(self) -> None:
        """Install the forecast models of the refit whose ranker is installed, waiting for
        them (the caller holds the lock: a checkpoint never sees models of two refits). A fit
        that failed raises here, and again at each later call, never storing a mixed set."""
        refit = self._forecasting
        if refit is None:
            return
        timed = [refit.ranker.result(), refit.counter.result(), refit.returner.result()]
        self._forecasting = None
        self._counter, self._returner = timed[1].booster, timed[2].booster
        self._fit_seconds.append(max(t.finished for t in timed) - min(t.started for t in timed))

    # ----------------------------------------------------------------- scoring
    def score(self, features: FeatureFrame) -> FloatArray:
        fallback = np.log1p(features.ew_at(1.0))
        self._scored = True
        self._refit_if_needed()
        if self._ranker is None:
            return fallback
        active = recently_active(features)
        frame = features.take(active)
        positions = candidate_positions(frame, self.config.candidates)
        scores = fallback - _BELOW_CANDIDATES
        if positions.shape[0]:
            matrix, _ = feature_matrix(frame, positions, subwindow=self.config.subwindow)
            predicted = np.asarray(self._ranker.predict(matrix, num_threads=1), dtype=np.float64)
            scores[active[positions]] = predicted
        return scores

    def forecast(self, features: FeatureFrame) -> tuple[FloatArray, FloatArray]:
        """Next-window events and returning users per item, calibrated: L1 loss on past
        windows (median-unbiased), on the ranker's features and every stored candidate row
        (the ranker's own query is capped at :data:`MAX_QUERY_ROWS`).

        Before the first fit, and for items without events in the recent windows, the
        forecast is the EW mean (half-life one window) of events and of returning users.
        The first call after a refit waits for its forecast models.
        """
        counts = features.ew_at(1.0).copy()
        returning = features.returning_ew.copy()
        self._refit_if_needed()
        with self._lock:
            self._install_forecasts()
        if self._counter is None or self._returner is None:
            return counts, returning
        active = recently_active(features)
        if active.shape[0]:
            frame = features.take(active)
            positions = np.arange(len(frame), dtype=np.int64)
            matrix, _ = feature_matrix(frame, positions, subwindow=self.config.subwindow)
            predicted = np.asarray(self._counter.predict(matrix, num_threads=1))
            counts[active] = np.maximum(predicted, 0.0)
            predicted = np.asarray(self._returner.predict(matrix, num_threads=1))
            returning[active] = np.maximum(predicted, 0.0)
        return counts, returning

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The training groups and fitted models as plain data (no pickle).

        A refit whose ranker is not installed yet is not waited for: the stored models are
        the last installed ones, and a restored ranker refits to the identical models. Once
        its ranker is installed, its forecast models are waited for, so the three stored
        models are always of one refit (the windows in ``fitted_on``).
        """
        with self._lock:
            self._install_forecasts()
            return self._state_dict()

    def _state_dict(self) -> dict[str, Any]:
        return {
            "format": RANKER_STATE_FORMAT,
            "lightgbm": lightgbm.__version__,
            "config": self.config.to_dict(),
            "columns": list(self.columns),
            "groups": [g.state_dict() for g in self._groups],
            "ranker": None if self._ranker is None else self._ranker.model_to_string(),
            "counter": None if self._counter is None else self._counter.model_to_string(),
            "returner": None if self._returner is None else self._returner.model_to_string(),
            "fitted_on": list(self._fitted_on),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (same format and settings)."""
        if state.get("format") != RANKER_STATE_FORMAT:
            raise ValueError(
                f"ranker state format {state.get('format')!r} is not {RANKER_STATE_FORMAT!r}"
            )
        if state.get("config") != self.config.to_dict():
            raise ValueError("ranker state was written with other ranker settings")
        self.columns = list(state["columns"])
        self._groups = collections.deque(
            (TrainingGroup.from_state_dict(g) for g in state["groups"]), maxlen=self.config.span
        )
        self._ranker = (
            None if state["ranker"] is None else lightgbm.Booster(model_str=state["ranker"])
        )
        self._counter = (
            None if state["counter"] is None else lightgbm.Booster(model_str=state["counter"])
        )
        self._returner = (
            None if state["returner"] is None else lightgbm.Booster(model_str=state["returner"])
        )
        self._fitted_on = tuple(int(v) for v in state["fitted_on"])
        # The loaded models are one refit: none still in flight may overwrite them.
        self._pending = self._forecasting = None

