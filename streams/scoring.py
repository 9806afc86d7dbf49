"""The contract between the engine and whatever ranks items: baselines, River, TRAIL.

The engine hands a scorer the trend features of every item seen so far at a window's close and
gets back one score per item: higher means more popular in the next window (a predicted
``log(1 + count)``, or any score that orders items). A scorer that can explain itself returns
short texts for the items the engine asks about; one that learns online is shown each
window's features again once the next window's outcome (counts, distinct and returning
users) is known. The engine never knows which implementation it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]

log = logging.getLogger("trail.scoring")

#: Items the cheap stage passes to an LM scorer per window (M). A window's LM work grows with
#: it (``bench/window.py`` splits the time); RESULTS.md's TRAIL rows are measured at this M.
DEFAULT_RESCORE_TOP = 20


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

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        """Observe what came next (counts, users, returning users) for the rows of
        ``features``, one window after they were scored (online learners)."""
        ...


class SilentScorer:
    """Mixin for scorers that neither explain nor learn online."""

    learns_online = False

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return [None] * len(features)

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        return None


class FallbackScorer:
    """``primary``, except for a window where it raises: that window is ranked by ``fallback``.

    A scorer failure (a CUDA error, a corrupt model file found late) must not stop a stream
    or make it crash-loop on the same records. The window whose ``score`` raised is ranked by
    the fallback and carries the fallback's ``version``, so its ScoreUpdates never share an
    idempotency key with the primary's; the next window tries the primary again. A failed
    ``explain`` leaves that window's items unexplained. Every failure is logged with its
    traceback and counted in ``failures`` (and reported to ``on_failure``). Other attributes
    (``state_dict``, ...) are the primary's.

    >>> class Broken(SilentScorer):
    ...     name, version = "broken", "broken@1"
    ...     def score(self, features):
    ...         raise RuntimeError("out of memory")
    >>> class Zeros(SilentScorer):
    ...     name, version = "zeros", "zeros@1"
    ...     def score(self, features):
    ...         return np.zeros(len(features))
    >>> scorer = FallbackScorer(Broken(), Zeros())
    >>> scorer.score([1, 2]).tolist(), scorer.version, scorer.failures
    ([0.0, 0.0], 'zeros@1', 1)
    """

    def __init__(
        self,
        primary: Scorer,
        fallback: Scorer,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.on_failure = on_failure
        self.failures = 0
        self._fell_back = False

    def __getattr__(self, name: str) -> Any:
        if name == "primary":  # not set yet (unpickling, copy): no recursion
            raise AttributeError(name)
        return getattr(self.primary, name)

    @property
    def name(self) -> str:
        return self.primary.name

    @property
    def learns_online(self) -> bool:
        return self.primary.learns_online

    @property
    def version(self) -> str:
        return self.fallback.version if self._fell_back else self.primary.version

    def _failed(self, stage: str, exc: BaseException) -> None:
        self.failures += 1
        log.error("scorer %s failed in %s: %r", self.primary.name, stage, exc, exc_info=exc)
        if self.on_failure is not None:
            self.on_failure(stage, exc)

    def score(self, features: FeatureFrame) -> FloatArray:
        try:
            scores = self.primary.score(features)
        except Exception as exc:
            self._failed("score", exc)
            self._fell_back = True
            return self.fallback.score(features)
        self._fell_back = False
        return scores

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        if self._fell_back:
            return self.fallback.explain(features, scores)
        try:
            return self.primary.explain(features, scores)
        except Exception as exc:
            self._failed("explain", exc)
            return [None] * len(features)

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        self.primary.learn(features, outcome)
