"""The online first stage of the TRAIL cascade, and how the LM's opinion is blended into it.

TRAIL ranks in two stages. The :class:`~model.ranker.OnlineRanker` orders every item (it is
refit at each window close on earlier windows only). The LM then re-scores the ranker's top
``rescore_top``: its score head predicts ``log(1 + next count)`` as a residual over a recency
prior, and that residual ``d`` (what the LM adds to the prior) moves the ranker's score ``r``:

    final = r + alpha * std(r) * (d - mean(d)) / std(d)        (over the re-scored items)

``alpha`` is chosen online by :class:`ResidualBlend`, on the windows already judged: for each
``alpha`` of a small grid, how many of the next window's returning users the top 10 would have
held, over the last ``windows`` windows. The smallest ``alpha`` within one standard error of
the best (the error of their per-window difference) is taken, and with fewer than two judged
windows ``alpha`` is 0 (the ranker alone): the best of five weights on a handful of windows
is mostly chance, so the LM moves the ranking only as far as it has earned beyond that noise
on past windows, and never on the window being ranked. Everything here is
plain data that checkpoints round-trip (no pickle) and imports no torch.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model.ranker import OnlineRanker, RankerConfig
from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]

BLEND_STATE_FORMAT = "trail-residual-blend@1"
#: The weights of the LM's residual that the blend chooses from.
ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0)


def blended(ranker_scores: FloatArray, residuals: FloatArray, alpha: float) -> FloatArray:
    """``r + alpha * std(r) * z(d)``: the LM's residual on the ranker's own scale.

    >>> blended(np.array([3.0, 2.0, 1.0]), np.array([0.0, 0.0, 3.0]), 1.0).round(3).tolist()
    [2.423, 1.423, 2.155]
    """
    spread = float(np.std(residuals))
    if alpha == 0.0 or spread == 0.0 or residuals.shape[0] < 2:
        return ranker_scores
    z = (residuals - residuals.mean()) / spread
    result: FloatArray = ranker_scores + alpha * float(np.std(ranker_scores)) * z
    return result


def one_standard_error_choice(held: FloatArray) -> float:
    """The smallest of :data:`ALPHAS` whose mean ``held`` (windows x alphas) is within one
    standard error of the best one's; 0 with fewer than two windows.

    The error is that of the per-window difference to the best ``alpha`` (paired: the
    windows' own ups and downs cancel).

    >>> one_standard_error_choice(np.array([[5.0, 6, 7, 7, 7], [5, 6, 7, 7, 7]]))
    0.5
    >>> one_standard_error_choice(np.array([[5.0, 8, 8, 8, 8], [5, 4, 4, 4, 4]]))
    0.0
    """
    if held.shape[0] < 2:
        return 0.0
    means = held.mean(axis=0)
    best = int(np.argmax(means))
    differences = held[:, [best]] - held
    errors = differences.std(axis=0, ddof=1) / np.sqrt(held.shape[0])
    within = np.flatnonzero(means >= means[best] - errors)
    return float(ALPHAS[int(within[0])])


@dataclass(frozen=True)
class _Judged:
    ranker_scores: FloatArray
    residuals: FloatArray
    labels: FloatArray


class ResidualBlend:
    """Chooses ``alpha`` from :data:`ALPHAS` on the last ``windows`` judged windows.

    >>> blend = ResidualBlend(top=1)
    >>> blend.alpha
    0.0
    >>> for end in (100, 200):  # the LM was right twice: b came back, a did not
    ...     blend.remember(end, ["a", "b"], np.array([2.0, 1.0]), np.array([0.0, 5.0]))
    ...     blend.judge(end, {"a": 0.0, "b": 3.0})
    ...     print(blend.alpha)
    0.0
    2.0
    """

    def __init__(self, windows: int = 8, top: int = 10) -> None:
        self.windows = windows
        self.top = top
        self._pending: dict[int, tuple[list[str], FloatArray, FloatArray]] = {}
        self._judged: collections.deque[_Judged] = collections.deque(maxlen=windows)
        self.alpha = 0.0

    def remember(
        self, window_end: int, item_ids: list[str], ranker_scores: FloatArray, residuals: FloatArray
    ) -> None:
        """Keep one window's re-scored items until their next window is known."""
        self._pending = {window_end: (item_ids, ranker_scores.copy(), residuals.copy())}

    def judge(self, window_end: int, returning: dict[str, float]) -> None:
        """Score every ``alpha`` on the remembered window, now that its labels are known."""
        pending = self._pending.pop(window_end, None)
        if pending is None:
            return
        ids, scores, residuals = pending
        labels = np.array([returning.get(i, 0.0) for i in ids])
        self._judged.append(_Judged(scores, residuals, labels))
        self.alpha = one_standard_error_choice(
            np.array([[self._held(j, alpha) for alpha in ALPHAS] for j in self._judged])
        )

    def _held(self, judged: _Judged, alpha: float) -> float:
        scores = blended(judged.ranker_scores, judged.residuals, alpha)
        best = np.argsort(-scores, kind="stable")[: self.top]
        return float(judged.labels[best].sum())

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": BLEND_STATE_FORMAT,
            "alpha": self.alpha,
            "pending": [
                {"window_end": end, "ids": ids, "scores": s.tolist(), "residuals": d.tolist()}
                for end, (ids, s, d) in self._pending.items()
            ],
            "judged": [
                {
                    "scores": j.ranker_scores.tolist(),
                    "residuals": j.residuals.tolist(),
                    "labels": j.labels.tolist(),
                }
                for j in self._judged
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != BLEND_STATE_FORMAT:
            raise ValueError(f"blend state format {state.get('format')!r} is unknown")
        self.alpha = float(state["alpha"])
        self._pending = {
            int(p["window_end"]): (
                list(p["ids"]),
                np.asarray(p["scores"], dtype=np.float64),
                np.asarray(p["residuals"], dtype=np.float64),
            )
            for p in state["pending"]
        }
        self._judged = collections.deque(
            (
                _Judged(
                    np.asarray(j["scores"], dtype=np.float64),
                    np.asarray(j["residuals"], dtype=np.float64),
                    np.asarray(j["labels"], dtype=np.float64),
                )
                for j in state["judged"]
            ),
            maxlen=self.windows,
        )


class RankingStage:
    """The online parts of a TRAIL scorer: the ranker and the residual blend.

    One stage can outlive the LM it serves (a hot-reloaded export keeps what was learned).
    """

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.ranker = OnlineRanker(config)
        self.blend = ResidualBlend()

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        self.ranker.learn(features, outcome)
        returning = dict(
            zip((str(i) for i in features.item_ids), outcome.returning.tolist(), strict=True)
        )
        self.blend.judge(features.window_end, returning)

    def state_dict(self) -> dict[str, Any]:
        return {"ranker": self.ranker.state_dict(), "blend": self.blend.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranker.load_state_dict(state["ranker"])
        self.blend.load_state_dict(state["blend"])
