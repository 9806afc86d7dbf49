"""The contract between the engine and whatever ranks items: baselines, River, TRAIL.

The engine hands a scorer the trend features of every item seen so far at a window's close and
gets back one score per item: the predicted ``log(1 + count)`` of the next window, or any
monotone stand-in for it. A scorer that can explain itself returns short texts for the items
the engine asks about; one that learns online is shown each window's features again once the
next window's true counts are known. The engine never knows which implementation it has.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streams.trend.features import FeatureFrame

FloatArray = npt.NDArray[np.float64]


@runtime_checkable
class Scorer(Protocol):
    """Ranks the items of one window. ``version`` goes into every ScoreUpdate it produces."""

    name: str
    #: Whether :meth:`learn` does anything; the engine skips building its input otherwise.
    learns_online: bool

    @property
    def version(self) -> str: ...

    def score(self, features: FeatureFrame) -> FloatArray:
        """One score per row of ``features``; higher means more popular next window."""
        ...

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        """One explanation (or None when the scorer does not explain) per row."""
        ...

    def learn(self, features: FeatureFrame, next_counts: FloatArray) -> None:
        """Observe what came next for rows scored one window earlier (online learners)."""
        ...


class SilentScorer:
    """Mixin for scorers that neither explain nor learn online."""

    learns_online = False

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return [None] * len(features)

    def learn(self, features: FeatureFrame, next_counts: FloatArray) -> None:
        return None
