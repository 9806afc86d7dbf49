"""The README's main job, tested: the shipped model scores and explains real ML-100K items.

``make demo`` runs ``trail replay ml-100k --window 7d --scorer trail``: the base model that
``trail model fetch`` builds (SmolLM2-135M-Instruct, cached in ``$TRAIL_CACHE_DIR`` or
``~/.cache/trail`` and reused across runs) under the committed adapter
``model/adapters/trail-smollm2``. Here the same scorer, built by the registry as the command
line builds it, replays ML-100K (downloaded at first use) and runs the LM on the last windows
only (``--test-windows 1``), which keeps the test under a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from export import INT8_MAX_ABS_DIFF
from export.runtime import OrtTrailModel, OrtTrailScorer
from model.explain import check_explanation
from model.metrics import lm_written_part
from model.priors import prior_log_count
from model.scorer import DEFAULT_ADAPTER, adapter_version
from streams.cli import main as trail
from streams.engine import Engine, WindowResult
from streams.eventlog import DatasetError, EventLog, load_events
from streams.registry import scorer_factory
from streams.replay import EvaluationWindows, replay
from streams.settings import Settings

pytestmark = [pytest.mark.required, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: The last window of ML-100K that gets a ranking judged by a complete window (7-day windows).
LAST_WINDOW_END = 892_684_800
#: What the shipped LM (base + committed adapter) scores, prior + residual, for five classics at
#: that window's close: Toy Story, Star Wars, Return of the Jedi, Liar Liar, Contact (the
#: log of next week's returning users, over the returning-users prior). Computed once on the
#: CPU in float32; they move only when the model, its prompt or its loading does.
PINNED_LM_SCORES = {
    "1": 0.3239658,
    "50": 0.0,
    "181": 0.5394258,
    "294": 0.6155017,
    "258": 0.4804977,
}


@pytest.fixture(scope="module")
def ml_100k(skip_or_fail: Callable[[str], NoReturn]) -> EventLog:
    """ML-100K from the default cache, as ``make demo`` loads it (downloaded once)."""
    try:
        return load_events("ml-100k", progress=False)
    except DatasetError as exc:
        skip_or_fail(f"ML-100K cannot be loaded: {exc}")


class _Scored:
    """A publisher that keeps the windows the LM scored."""

    def __init__(self) -> None:
        self.results: list[WindowResult] = []

    def publish(self, result: WindowResult) -> None:
        if result.scored:
            self.results.append(result)

    def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def demo(smollm2: Path, ml_100k: EventLog) -> tuple[OrtTrailScorer, list[WindowResult]]:
    """``trail replay ml-100k --window 7d --scorer trail --test-windows 1 --rescore-top 8
    --explain-top 3``, in process: the registry's scorer and the replay the command runs."""
    settings = Settings(window="7d", rescore_top=8, explain_top=3)
    scorer = scorer_factory("trail", settings)()
    # The command's default: ONNX Runtime, the adapter exported once into the cache.
    assert isinstance(scorer, OrtTrailScorer)
    config = settings.engine_config()
    windows = EvaluationWindows.of(ml_100k.timestamps, config.trend.window.length, 1)
    engine = Engine(config, scorer, score_from_window=windows.first)
    scored = _Scored()
    replay(ml_100k, engine, [scored], windows, progress=False)
    return scorer, scored.results


def test_trail_model_fetch_finds_the_cached_base_model(
    smollm2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``trail model fetch`` (what a newcomer runs first) answers with the cached model."""
    assert trail(["model", "fetch", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"{smollm2} (")


def test_the_shipped_model_explains_real_items_faithfully(
    demo: tuple[OrtTrailScorer, list[WindowResult]],
) -> None:
    """The shipped model publishes, for the best items of the last windows, explanations that
    open with the forecast and pass the checker against the forecast they state: every claim
    true, none contradicted, none empty; the guard judged each one.

    Catches: a shipped scorer whose explanation guard is off (``TrailScorer(guard=False)`` by
    default was tried: the real LM's own texts hold contradicted claims), or a broken path
    from the real LM's output to the published text.
    """
    scorer, results = demo
    assert scorer.model.manifest["adapter"]["version"] == adapter_version(DEFAULT_ADAPTER)
    assert scorer.version.startswith(f"{adapter_version(DEFAULT_ADAPTER)}+onnx")
    assert [r.window.end for r in results][-1] == LAST_WINDOW_END
    checked = 0
    for result in results:
        positions = np.array(sorted(result.explanations), dtype=np.int64)
        assert positions.tolist() == sorted(result.order[:3].tolist())
        counts, _ = scorer.forecast(result.features.take(positions))
        for position, count in zip(positions.tolist(), counts, strict=True):
            text = result.explanations[position]
            record = result.features.record(position)
            assert record.title, "ML-100K items carry their titles"
            assert text.startswith("Forecast: about "), text
            check = check_explanation(lm_written_part(text), record, float(np.log1p(count)))
            assert not check.empty and check.contradictions == 0, text
            assert check.faithfulness == 1.0, text
            checked += 1
    assert checked == 3 * len(results) >= 3
    assert scorer.guard.checked == checked


def test_the_shipped_model_scores_as_when_it_was_pinned(
    demo: tuple[OrtTrailScorer, list[WindowResult]],
) -> None:
    """The real base model under the committed adapter gives the pinned scores for five real
    items, and they differ from the recency prior (the LoRA and the score head are in use).

    Catches: an adapter whose LoRA weights do not load onto the real model (or load on other
    layers), a score head left at its initialisation, or a prompt or tokenizer change the
    adapter was not trained with (tried once: loading without the LoRA moves every score).
    """
    scorer, results = demo
    result = results[-1]
    ids = result.features.item_ids
    where = {ids[i]: i for i in range(len(ids))}
    records = [result.features.record(where[item]) for item in PINNED_LM_SCORES]
    # The pins are fp32's (what the CPU serves unless export.INT8_DEFAULT_ON_CPU); an int8
    # scorer stays within the tolerance its export was validated to.
    fp32 = OrtTrailModel(scorer.model_dir, precision="fp32")
    scores = fp32.score(records)
    assert scores.tolist() == pytest.approx(list(PINNED_LM_SCORES.values()), abs=1e-3)
    served = scorer.model.score(records)
    assert np.abs(served - scores).max() <= (
        0.0 if scorer.precision == "fp32" else INT8_MAX_ABS_DIFF
    )
    priors = np.array([prior_log_count(r, scorer.prior) for r in records])
    assert np.abs(scores - priors).min() > 0.1
