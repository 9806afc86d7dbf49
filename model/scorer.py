"""Language-model scorers behind the engine's Scorer protocol: TRAIL and the untuned base LM.

TRAIL runs a cascade: the online learned ranker (:mod:`model.cascade`) scores every item seen
so far, which is cheap and vectorised; only its ``rescore_top`` best go through the LM, whose
residual over its recency prior (:mod:`model.priors`) is blended in as far as it has helped on
past windows. The base LM re-scores the top of the EW-mean prior zero-shot. The cost of a
window grows with ``rescore_top`` and the number of explanations, never with the catalog.
Which of them serves, on which runtime, is the scorer factory's (:mod:`streams.registry`).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.cascade import RankingStage, blended
from model.explain import complete_sentences
from model.priors import prior_scores
from streams.scoring import DEFAULT_RESCORE_TOP
from streams.trend.catalog import rank_positions, tie_ranks
from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]

#: The adapter trained and committed with the project: the default of ``--scorer trail``.
DEFAULT_ADAPTER = Path(__file__).resolve().parent / "adapters" / "trail-smollm2"

_LEADING_NUMBER = re.compile(r"\s*(\d[\d,]*(?:\.\d+)?)")


def adapter_version(adapter_dir: Path) -> str:
    """``trail@<first 10 hex of the adapter weights' sha256>``: changes with every retrain."""
    digest = hashlib.sha256()
    for name in ("adapter_model.safetensors", "score_head.safetensors", "trail_config.json"):
        path = adapter_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    return f"trail@{digest.hexdigest()[:10]}"


class ExplanationGuard:
    """Publishes an LM explanation only when the checker finds every claim in it true.

    Anything else (a false or contradicting claim, or no checkable claim at all) is replaced by
    the deterministic verbalizer's text for the same signals and score, so a consumer never
    sees an explanation that disagrees with the numbers. What the LM wrote is still judged and
    counted: ``raw_faithfulness`` and ``replaced`` say how often the guard had to step in.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.checked = 0
        self.replaced = 0
        self._faithfulness = 0.0
        self._contradictions = 0.0

    def apply(self, records: list[Any], scores: list[float], texts: list[str]) -> list[str]:
        from model.explain import check_explanation, forecast_sentence, verbalize
        from model.metrics import lm_written_part

        published = []
        for record, score, text in zip(records, scores, texts, strict=True):
            check = check_explanation(lm_written_part(text), record, score)
            self.checked += 1
            self._faithfulness += check.faithfulness
            self._contradictions += check.contradiction_rate
            trusted = not check.empty and check.true_claims == check.claims
            if self.enabled and not trusted:
                self.replaced += 1
                text = forecast_sentence(record, score) + verbalize(record, score, variant=0)
            published.append(text)
        return published

    def report(self) -> dict[str, float]:
        """What the LM wrote, judged before the guard, and how often it was replaced."""
        if not self.checked:
            return {}
        return {
            "raw_faithfulness": self._faithfulness / self.checked,
            "raw_contradiction_rate": self._contradictions / self.checked,
            "guard_replaced": self.replaced / self.checked,
        }


class CascadeScorer:
    """The cascade shared by the PyTorch and ONNX TRAIL scorers.

    The online ranker (:class:`model.cascade.RankingStage`) orders every item; ``_rescore``
    (the LM) re-scores the ranker's top ``rescore_top``, and the LM's residual over its prior
    moves their scores as far as :class:`model.cascade.ResidualBlend` has found it helps on
    past windows. Explanations carry the ranker's calibrated count forecast and pass the
    :class:`ExplanationGuard`. Subclasses set ``model`` (with ``explain(records, scores)``),
    ``guard``, ``rescore_top`` and ``prior`` (the one the model's score head was trained on);
    ``stage`` may be shared between scorers (hot reload keeps what was learned).
    """

    name = "trail"
    learns_online = True
    model: Any
    guard: ExplanationGuard
    rescore_top: int
    prior: str

    @property
    def stage(self) -> RankingStage:
        stage: RankingStage | None = self.__dict__.get("_stage")
        if stage is None:
            stage = self.__dict__["_stage"] = RankingStage()
        return stage

    @stage.setter
    def stage(self, stage: RankingStage) -> None:
        self.__dict__["_stage"] = stage

    def _rescore(self, records: list[Any]) -> FloatArray:
        raise NotImplementedError

    def score(self, features: FeatureFrame) -> FloatArray:
        scores = self.stage.ranker.score(features).copy()
        # The engine's own order (ties by item id), whatever order the catalog met items in.
        tie = tie_ranks([str(i) for i in features.item_ids])
        top = rank_positions(scores, tie)[: self.rescore_top]
        if top.size:
            lm = self._rescore([features.record(int(p)) for p in top])
            residuals = lm - prior_scores(features.take(top), self.prior)
            ids = [str(features.item_ids[p]) for p in top]
            self.stage.blend.remember(features.window_end, ids, scores[top], residuals)
            scores[top] = blended(scores[top], residuals, self.stage.blend.alpha)
        return scores

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        records = features.records()
        # The forecast a reader sees is the calibrated count, not the ranking score.
        counts, _ = self.forecast(features)
        forecasts = [float(np.log1p(c)) for c in counts]
        return list(self.guard.apply(records, forecasts, self.model.explain(records, forecasts)))

    def forecast(self, features: FeatureFrame) -> tuple[FloatArray, FloatArray]:
        """The online ranker's calibrated next-window events and returning users."""
        return self.stage.ranker.forecast(features)

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        self.stage.learn(features, outcome)

    def state_dict(self) -> dict[str, Any]:
        """The online stage's state (the LM's weights are files, named by ``version``)."""
        return {"format": "trail-cascade@1", "stage": self.stage.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "trail-cascade@1":
            raise ValueError(f"TRAIL cascade state format {state.get('format')!r} is unknown")
        self.stage.load_state_dict(state["stage"])


class TrailScorer(CascadeScorer):
    """TRAIL (PyTorch): re-scores the prior's top ``rescore_top`` items and explains the best."""

    def __init__(
        self,
        adapter_dir: Path,
        *,
        base_model: str | None = None,
        rescore_top: int = DEFAULT_RESCORE_TOP,
        guard: bool = True,
    ) -> None:
        from model.trail import TrailModel

        self.adapter_dir = Path(adapter_dir)
        self.model = TrailModel.load(self.adapter_dir, base_model=base_model)
        self.prior = self.model.config.prior
        self.rescore_top = rescore_top
        self.guard = ExplanationGuard(guard)
        self._version = adapter_version(self.adapter_dir)

    @property
    def version(self) -> str:
        return self._version

    def _rescore(self, records: list[Any]) -> FloatArray:
        return np.asarray(self.model.score(records), dtype=np.float64)


class BaseLMScorer:
    """The base LM without fine-tuning, zero-shot: it is asked for a forecast and a reason.

    The answer is forced to open with ``Forecast: about`` so that its first number can be read
    as the predicted next-window count; an answer without a number keeps the prior's score.
    """

    name = "base-lm"
    learns_online = False

    def __init__(self, *, base_model: str | None = None, rescore_top: int = 50) -> None:
        from model.trail import TrailConfig, TrailModel

        self.model = TrailModel.from_base(
            TrailConfig(base_model=base_model or "smollm2-135m"), with_lora=False
        )
        self.model.eval()
        self.rescore_top = rescore_top
        self._answers: dict[str, str] = {}

    @property
    def version(self) -> str:
        return f"base-lm@{self.model.config.base_model}"

    def score(self, features: FeatureFrame) -> FloatArray:
        scores = prior_scores(features).copy()
        top = np.argsort(-scores, kind="stable")[: self.rescore_top]
        records = [features.record(int(p)) for p in top]
        opening = "Forecast: about "
        answers = self.model.generate([self.model.prompt_text(r) + opening for r in records])
        self._answers = {}
        for position, record, answer in zip(top.tolist(), records, answers, strict=True):
            self._answers[record.item_id] = complete_sentences(opening + answer)
            number = _LEADING_NUMBER.match(answer)
            if number is not None:
                scores[position] = math.log1p(float(number.group(1).replace(",", "")))
        return scores

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return [self._answers.get(str(item_id)) for item_id in features.item_ids]

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        return None
