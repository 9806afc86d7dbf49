"""Scorers by their command-line name (docs/architecture.md, "Conventions that tools rely on").

Baselines need nothing; the language-model scorers load their weights only when asked for,
so listing or running a baseline never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

from model.baselines import BASELINES
from streams.scoring import Scorer
from streams.settings import Settings

BASELINE_NAMES = tuple(BASELINES)
#: The online ranker and its ablations: the label HR@10 counts, or the sub-window signals,
#: taken away one at a time.
RANKERS: dict[str, dict[str, object]] = {
    "ranker": {},
    "ranker-count-label": {"label": "count"},
    "ranker-no-subwindow": {"subwindow": False},
}
#: The scorers with a language model: the untuned base LM and TRAIL's adapter.
LANGUAGE_MODELS = ("base-lm", "trail")
#: Every scorer name the CLI accepts, in the order reports list them: each of the three
#: kinds above is listed where it is defined, and only there.
SCORER_NAMES = (*BASELINES, *RANKERS, *LANGUAGE_MODELS)


class UnknownScorerError(ValueError):
    pass


def scorer_factory(name: str, settings: Settings) -> Callable[[], Scorer]:
    """A zero-argument constructor for scorer ``name`` configured by ``settings``."""
    if name in BASELINES:
        return BASELINES[name]
    if name in RANKERS:
        from model.ranker import OnlineRanker, RankerConfig

        config = RankerConfig(**RANKERS[name])  # type: ignore[arg-type]
        return lambda: _named(OnlineRanker(config), name)
    if name in LANGUAGE_MODELS:
        from model.scorer import language_model_scorer_factory

        return language_model_scorer_factory(name, settings)
    raise UnknownScorerError(f"unknown scorer {name!r}; choose one of: {', '.join(SCORER_NAMES)}")


def _named(scorer: Scorer, name: str) -> Scorer:
    scorer.name = name
    return scorer
