"""The one engine behind the embedded replay and the Kafka worker.

Events go in as batches; every window that closes comes out as a :class:`WindowResult`: the
ranking of every item seen so far, the score updates of the items that changed, the trending
top-N, and the retraining rows of the window before it (whose next-window counts are now
known). Records are built lazily from columns, so a caller that only needs rankings (an
evaluation) never pays for them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import (
    ItemMeta,
    ScoreUpdate,
    TrendingItem,
    TrendingSnapshot,
    WindowSnapshotRow,
)
from streams.scoring import Scorer
from streams.trend.catalog import rank_positions
from streams.trend.features import FeatureFrame
from streams.trend.open_windows import ClosedWindow
from streams.trend.state import TrendConfig, TrendState, WindowOutcome

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EngineConfig:
    """How windows are scored and published.

    ``top_n`` items make the trending list; the ``explain_top`` best get explanations;
    rankings keep ``ranking_depth`` items.
    """

    trend: TrendConfig
    top_n: int = 10
    explain_top: int = 10
    ranking_depth: int = 100


class SnapshotBatch:
    """Retraining rows of one window: features at its close and what the next window did
    (counts, distinct users, returning users).

    The sub-frame is cut only when someone reads it: an evaluation that writes no snapshots
    and runs no online learner never pays for it.
    """

    def __init__(self, frame: FeatureFrame, positions: IndexArray, outcome: WindowOutcome):
        self._frame = frame
        self._positions = positions
        self.outcome = outcome

    @property
    def next_counts(self) -> FloatArray:
        return self.outcome.counts

    @functools.cached_property
    def features(self) -> FeatureFrame:
        return self._frame.take(self._positions)

    def __len__(self) -> int:
        return int(self._positions.shape[0])

    def rows(self) -> list[WindowSnapshotRow]:
        return [
            WindowSnapshotRow(
                **self.features.record(i).model_dump(),
                next_count=float(self.outcome.counts[i]),
                next_returning=float(self.outcome.returning[i]),
                next_users=float(self.outcome.users[i]),
            )
            for i in range(len(self.features))
        ]

    def columns(self) -> dict[str, list[Any]]:
        """Column-oriented rows (for Parquet), with the same fields as WindowSnapshotRow."""
        records = self.rows()
        if not records:
            return {name: [] for name in WindowSnapshotRow.model_fields}
        return {
            name: [getattr(record, name) for record in records]
            for name in WindowSnapshotRow.model_fields
        }


@dataclass(frozen=True)
class WindowResult:
    """Everything the engine knows at one window's close."""

    window: ClosedWindow
    features: FeatureFrame
    scores: FloatArray
    order: IndexArray  # positions into features, best first (every seen item)
    explanations: dict[int, str]  # by position into features
    model_version: str
    snapshot: SnapshotBatch | None
    scored: bool
    top_n: int
    _rank_of: IndexArray = field(repr=False)

    def ranking(self, depth: int | None = None) -> list[str]:
        """Item ids best first (at most ``depth``)."""
        positions = self.order if depth is None else self.order[:depth]
        ids = self.features.item_ids
        return [ids[int(p)] for p in positions]

    def changed_positions(self) -> IndexArray:
        positions: IndexArray = np.flatnonzero(self.features.count > 0).astype(np.int64)
        return positions

    def score_updates(self) -> list[ScoreUpdate]:
        """One update per item that changed in this window, in rank order."""
        changed = self.changed_positions()
        changed = changed[np.argsort(self._rank_of[changed], kind="stable")]
        return [self._update(int(p)) for p in changed]

    def _update(self, position: int) -> ScoreUpdate:
        return ScoreUpdate(
            item_id=self.features.item_ids[position],
            window_end=self.window.end,
            score=round(float(self.scores[position]), 6),
            rank=int(self._rank_of[position]) + 1,
            explanation=self.explanations.get(position),
            features=self.features.record(position),
            model_version=self.model_version,
        )

    def trending(self) -> TrendingSnapshot:
        """The global top-N of this window."""
        items = []
        for rank, position in enumerate(self.order[: self.top_n].tolist(), start=1):
            meta = self.features.meta.get(self.features.item_ids[position])
            items.append(
                TrendingItem(
                    item_id=self.features.item_ids[position],
                    rank=rank,
                    score=round(float(self.scores[position]), 6),
                    explanation=self.explanations.get(position),
                    title=meta.title if meta else None,
                    trend=self.features.trend_name(position),
                    recent_counts=tuple(float(c) for c in self.features.recent[position]),
                )
            )
        return TrendingSnapshot(
            window_start=self.window.start,
            window_end=self.window.end,
            model_version=self.model_version,
            items=tuple(items),
            changed_items=int(self.window.changed.shape[0]),
            events=float(self.window.events),
        )


class Engine:
    """Drives a :class:`TrendState` and a :class:`Scorer` window by window.

    >>> from streams.trend.windows import WindowSpec
    >>> from model.baselines import LastWindow
    >>> engine = Engine(EngineConfig(TrendConfig(WindowSpec(10)), top_n=2), LastWindow())
    >>> results = engine.ingest_ids(["a", "b", "b", "c"], np.array([1.0, 2.0, 3.0, 12.0]))
    >>> [(r.window.end, r.ranking()) for r in results]
    [(10, ['b', 'a'])]
    """

    def __init__(
        self,
        config: EngineConfig,
        scorer: Scorer,
        *,
        score_from_window: int | None = None,
        state: TrendState | None = None,
    ) -> None:
        self.config = config
        self.scorer = scorer
        self.state = state if state is not None else TrendState(config.trend)
        self.score_from_window = score_from_window
        self._pending_snapshot: tuple[FeatureFrame, IndexArray] | None = None

    def pending_state_dict(self) -> dict[str, Any] | None:
        """The last closed window's retraining rows, which the next close needs (for an
        online learner's ``learn`` and for snapshots): a checkpoint keeps them beside the trend
        state, so that a restored engine continues exactly. None before the first close."""
        if self._pending_snapshot is None:
            return None
        features, active = self._pending_snapshot
        return {"features": features.take(active).to_dict()}

    def load_pending_state_dict(self, data: dict[str, Any] | None) -> None:
        """Restore what :meth:`pending_state_dict` returned (None: nothing pending)."""
        if data is None:
            self._pending_snapshot = None
            return
        features = FeatureFrame.from_dict(data["features"], self.state.catalog.meta)
        self._pending_snapshot = (features, np.arange(len(features), dtype=np.int64))

    @property
    def catalog_size(self) -> int:
        return len(self.state.catalog)

    def add_metadata(self, items: Iterable[ItemMeta]) -> None:
        self.state.add_metadata(items)

    def ingest_ids(
        self,
        item_ids: Sequence[str] | npt.NDArray[Any],
        timestamps: FloatArray,
        weights: FloatArray | None = None,
        *,
        users: npt.ArrayLike | None = None,
    ) -> list[WindowResult]:
        """Ingest events given by item id (the live path)."""
        codes = self.state.catalog.codes(item_ids)
        return self.ingest(codes, timestamps, weights, users=users)[0]

    def ingest(
        self,
        codes: IndexArray,
        timestamps: FloatArray,
        weights: FloatArray | None = None,
        on_result: Callable[[WindowResult], None] | None = None,
        *,
        users: npt.ArrayLike | None = None,
    ) -> tuple[list[WindowResult], npt.NDArray[np.bool_]]:
        """Ingest events given by catalog code; returns closed windows and the late mask.

        ``users`` are the events' user ids (for the audience signals and the returning-user
        labels; None when the stream has none). ``on_result`` sees each closed window as soon
        as it is scored, before the rest of the batch is applied: a batch spanning many
        windows need not finish before the first one is published (a replay printing windows
        scored by a slow LM, say). With ``on_result`` the results stream through it and are not
        kept: the returned list is empty, so a batch spanning many windows holds one at a time.
        """
        results: list[WindowResult] = []
        ingested = self.state.ingest(
            codes, timestamps, weights, on_close=self._closer(results, on_result), users=users
        )
        return results, ingested.late

    def advance_to(
        self, watermark_ts: float, on_result: Callable[[WindowResult], None] | None = None
    ) -> list[WindowResult]:
        """Close the windows that a watermark at ``watermark_ts`` closes (streamed through
        ``on_result`` when given, as in :meth:`ingest`)."""
        results: list[WindowResult] = []
        self.state.advance_to(watermark_ts, on_close=self._closer(results, on_result))
        return results

    def _closer(
        self, results: list[WindowResult], on_result: Callable[[WindowResult], None] | None
    ) -> Callable[[ClosedWindow], None]:
        def close(window: ClosedWindow) -> None:
            result = self._on_close(window)
            if on_result is None:
                results.append(result)
            else:
                on_result(result)

        return close

    def _on_close(self, window: ClosedWindow) -> WindowResult:
        state = self.state
        snapshot = None
        if self._pending_snapshot is not None:
            previous, active = self._pending_snapshot
            outcome = state.outcome(previous.rows[active], window.index)
            snapshot = SnapshotBatch(previous, active, outcome)
            if self.scorer.learns_online:
                self.scorer.learn(snapshot.features, outcome)
        features = state.features(state.seen_rows(), window.index)
        # Retraining rows: items with events in any of the recent windows (what an online
        # ranker picks its candidates from, and what snapshots export).
        active = _any_positive_row(features.recent)
        self._pending_snapshot = (features, active)
        scored = self.score_from_window is None or window.index >= self.score_from_window
        if scored and len(features):
            scores = np.asarray(self.scorer.score(features), dtype=np.float64)
        else:
            scores = np.zeros(len(features))
        order = rank_positions(scores, state.catalog.tie_order().take(features.rows))
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(order.shape[0])
        explanations: dict[int, str] = {}
        if scored and self.config.explain_top > 0 and len(features):
            top = order[: self.config.explain_top]
            texts = self.scorer.explain(features.take(top), scores[top])
            explanations = {
                int(p): t for p, t in zip(top.tolist(), texts, strict=True) if t is not None
            }
        return WindowResult(
            window=window,
            features=features,
            scores=scores,
            order=order,
            explanations=explanations,
            model_version=self.scorer.version,
            snapshot=snapshot,
            scored=scored,
            top_n=self.config.top_n,
            _rank_of=rank_of,
        )


def _any_positive_row(values: FloatArray) -> IndexArray:
    """Positions of the rows with a value above 0: ``np.flatnonzero((values > 0).any(1))``,
    a column at a time (a reduction over a short row runs one inner loop per row).

    >>> _any_positive_row(np.array([[0.0, 1.0], [0.0, -1.0], [2.0, 0.0]])).tolist()
    [0, 2]
    """
    if values.ndim != 2 or values.shape[1] == 0:
        rows: IndexArray = np.flatnonzero((values > 0).any(axis=-1)).astype(np.int64)
        return rows
    positive = values[:, 0] > 0
    for column in range(1, values.shape[1]):
        positive |= values[:, column] > 0
    rows = np.flatnonzero(positive).astype(np.int64, copy=False)
    return rows
