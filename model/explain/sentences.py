"""The sentences every TRAIL explanation is framed by: its forecast opening, its clean end."""

from __future__ import annotations

import math
import re

from model.explain.signals import period_name
from model.explain.wording import format_count, next_period
from schemas.records import ItemFeatures


def forecast_sentence(features: ItemFeatures, predicted_log_count: float) -> str:
    """The forced opening of every TRAIL explanation: the model's own forecast, as a count.

    >>> from model.tiny import synthetic_features
    >>> import random
    >>> forecast_sentence(synthetic_features(random.Random(0)), math.log1p(41.6))
    'Forecast: about 42 events next month. '
    >>> forecast_sentence(synthetic_features(random.Random(0)), math.log1p(1.2))
    'Forecast: about 1 event next month. '
    """
    count = format_count(max(0.0, math.expm1(predicted_log_count)))
    period = period_name(features.window_seconds)
    events = "event" if count == "1" else "events"
    return f"Forecast: about {count} {events} {next_period(period)}. "


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def complete_sentences(text: str) -> str:
    """``text`` up to its last complete sentence: generation stops at a token limit, often in
    the middle of a sentence, and half a claim is neither readable nor checkable.

    Text without any sentence end is returned unchanged (stripped). A period inside a number
    ("4.1x") does not end a sentence.

    >>> complete_sentences("Forecast: about 4 events next week. It is up 4.1x. It is on track for")
    'Forecast: about 4 events next week. It is up 4.1x.'
    >>> complete_sentences("It is rising.")
    'It is rising.'
    """
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return text.strip()
    return text[: ends[-1].end()].strip()
