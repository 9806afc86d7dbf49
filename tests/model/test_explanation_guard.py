"""The explanation guard (model.scorer.ExplanationGuard): what a TRAIL scorer publishes is
either the LM's text with every claim true, or the verbalizer's text for the same signals;
each replacement is counted, and what the LM wrote is judged before the guard."""

from __future__ import annotations

import math

import pytest

from model.explain import check_explanation, forecast_sentence, verbalize
from model.metrics import lm_written_part
from model.scorer import ExplanationGuard
from schemas.records import ItemFeatures

#: A rising, established item (the checker's own example).
RISING = ItemFeatures(
    item_id="1",
    window_end=604800,
    window_seconds=604800,
    count=45.0,
    total=300.0,
    recent_counts=(10, 12, 15, 20, 30, 45),
    ew_1=35.0,
    ew_2=28.0,
    ew_4=20.0,
    ew_8=13.0,
    momentum=2.57,
    slope=6.8,
    accel=1.0,
    burstiness=0.1,
    age_windows=20,
    share=0.004,
    category_momentum=1.4,
    trend="rising",
    title="Toy Story (1995)",
    categories=("Comedy",),
)
#: The forecast the texts state: about 50 events next week.
FORECAST = math.log1p(50.0)


def _forced(text: str) -> str:
    """``text`` after the forced forecast sentence, as a TRAIL scorer hands it to the guard."""
    return forecast_sentence(RISING, FORECAST) + text


def _replacement() -> str:
    return forecast_sentence(RISING, FORECAST) + verbalize(RISING, FORECAST, variant=0)


def test_a_faithful_text_passes_untouched() -> None:
    """Every claim true: published as the LM wrote it, word for word, and not counted as
    replaced.

    Catches: a guard that replaces every text (the verbalizer's wording instead of the LM's)
    or counts a faithful one as replaced.
    """
    guard = ExplanationGuard()
    text = _forced('"Toy Story (1995)" is rising, with 45 events this week.')
    assert check_explanation(lm_written_part(text), RISING, FORECAST).faithfulness == 1.0
    assert text != _replacement()
    assert guard.apply([RISING], [FORECAST], [text]) == [text]
    assert (guard.checked, guard.replaced) == (1, 0)
    assert guard.report() == {
        "raw_faithfulness": 1.0,
        "raw_contradiction_rate": 0.0,
        "guard_replaced": 0.0,
    }


@pytest.mark.parametrize(
    ("written", "faithfulness", "contradiction_rate"),
    [
        # A false claim the signals refute.
        ("It is falling fast.", 0.0, 1.0),
        # One true claim, one false: still replaced, not averaged away.
        ("It is rising, with 90 events this week.", 0.5, 0.5),
        # No checkable claim at all: nothing a reader could trust.
        ("What a film.", 0.0, 0.0),
    ],
)
def test_an_unfaithful_text_is_replaced_and_counted(
    written: str, faithfulness: float, contradiction_rate: float
) -> None:
    """A text with a false claim, a half-true one and one without claims are each replaced by
    the forced sentence plus the verbalizer's text for the same signals and forecast; the
    replacement is counted, and the report judges what the LM wrote, not what was published.

    Catches: a guard that only replaces contradictions (the claim-less text would pass), that
    trusts a text with any true claim (the half-true one), that stops counting replacements,
    or that judges the published text instead of the LM's (raw faithfulness would read 1.0).
    """
    check = check_explanation(written, RISING, FORECAST)
    assert (check.faithfulness, check.contradiction_rate) == (faithfulness, contradiction_rate)
    guard = ExplanationGuard()
    published = guard.apply([RISING], [FORECAST], [_forced(written)])
    assert published == [_replacement()]
    assert (guard.checked, guard.replaced) == (1, 1)
    assert guard.report() == {
        "raw_faithfulness": faithfulness,
        "raw_contradiction_rate": contradiction_rate,
        "guard_replaced": 1.0,
    }


def test_a_batch_keeps_its_order_and_the_disabled_guard_only_counts() -> None:
    """In a batch each text is judged on its own and stays in its place; with the guard off
    (``TRAIL_EXPLANATION_GUARD=false``) nothing is replaced but
    everything is still judged and counted as it would have been.

    Catches: a guard that replaces a whole batch for one bad text, shifts texts between
    items, or that replaces (or stops judging) when it is disabled.
    """
    good = _forced('"Toy Story (1995)" is rising, with 45 events this week.')
    bad = _forced("It is falling fast.")
    texts = [bad, good, bad]
    on, off = ExplanationGuard(), ExplanationGuard(enabled=False)
    assert on.apply([RISING] * 3, [FORECAST] * 3, texts) == [_replacement(), good, _replacement()]
    assert off.apply([RISING] * 3, [FORECAST] * 3, texts) == texts
    for guard in (on, off):
        assert (guard.checked, guard.replaced) == (3, 2 if guard.enabled else 0)
        assert guard.report()["raw_faithfulness"] == pytest.approx(1 / 3)
        assert guard.report()["raw_contradiction_rate"] == pytest.approx(2 / 3)
    assert on.report()["guard_replaced"] == pytest.approx(2 / 3)
    assert off.report()["guard_replaced"] == 0.0
    assert ExplanationGuard().report() == {}
