"""The checker: each claim of an explanation judged against the signals and the forecast."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from model.explain.claims import Claim, extract_claims
from model.explain.signals import (
    ESTABLISHED_MIN_AGE,
    OPPOSITE,
    RECENT_MAX_AGE,
    TOLERANCE,
    UNIT_SECONDS,
    Direction,
    Signals,
    read_signals,
)
from schemas.records import ItemFeatures


@dataclass(frozen=True)
class Verdict:
    """The checker's judgement of one claim: true, a contradiction, or neither (unsupported).

    ``repeated`` marks a claim that states the same fact as an earlier one in the same text
    (see :func:`claim_fact`); it is judged like its first statement but not counted again.
    """

    claim: Claim
    true: bool
    contradiction: bool
    reason: str
    repeated: bool = False


@dataclass(frozen=True)
class Faithfulness:
    """How well an explanation agrees with the signals.

    ``faithfulness`` is ``true_claims / claims``; an explanation without any checkable claim
    scores 0.0 and is flagged ``empty`` (saying nothing is not being faithful).
    ``contradiction_rate`` is ``contradictions / claims`` (0.0 when empty). Every count is of
    distinct facts: ``repeated`` is how many further statements of an already stated fact the
    text made (padding, reported apart; 0 for a text that says each thing once).
    """

    claims: int
    true_claims: int
    contradictions: int
    faithfulness: float
    contradiction_rate: float
    empty: bool
    repeated: int = 0
    verdicts: tuple[Verdict, ...] = field(default=(), repr=False)


def _within(claimed: float, actual: float, *, absolute: float) -> bool:
    return abs(claimed - actual) <= max(TOLERANCE * abs(actual), absolute)


def normalized(text: str) -> str:
    return " ".join(text.replace('"', "'").split()).casefold()


_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)$")
_TRAILING_ARTICLE = re.compile(r"^(.*), (the|a|an)$")
_WORD = re.compile(r"[^\W_]+")


def title_key(title: str) -> str:
    """What a reader compares to tell whether two titles name one item: the words.

    Case, punctuation, a trailing year and MovieLens's trailing article do not make another
    item; a different word does.

    >>> title_key("Me, myself, and Irene") == title_key("Me, Myself and Irene")
    True
    >>> title_key("Silence of the Lambs, The (1991)") == title_key("The Silence of the Lambs")
    True
    >>> title_key("Toy Story 2") == title_key("Toy Story (1995)")
    False
    """
    text = _TRAILING_YEAR.sub("", " ".join(title.split()).casefold())
    article = _TRAILING_ARTICLE.match(text)
    if article is not None:
        text = f"{article.group(2)} {article.group(1)}"
    words = _WORD.findall(text)
    # A title of punctuation alone has no words to compare; it is then compared as written.
    return " ".join(words) if words else normalized(title)


#: The age words and the ages (in windows) a reader understands by them.
AGE_WORDS: dict[str, tuple[int, float]] = {
    "brand-new": (0, 0),
    "new": (0, RECENT_MAX_AGE),
    "established": (ESTABLISHED_MIN_AGE, math.inf),
}
_EPSILON = 1e-9


def age_range(claim: Claim, window_seconds: int) -> tuple[int, float] | None:
    """The item ages, in windows, for which an age claim is true; ``None`` for other claims.

    The age words map through :data:`RECENT_MAX_AGE` and :data:`ESTABLISHED_MIN_AGE`
    ("brand-new" is age 0 only). An age in the window's own unit (or "windows") is read as
    that age, exact up to 3 and within :data:`TOLERANCE` beyond; in another unit it is
    converted to ``x`` windows, and an item first seen ``a`` windows ago was first seen
    between ``a`` and ``a + 1`` windows before the window's end, give or take the tolerance.

    Examples
    --------
    >>> week = 604800
    >>> [age_range(c, week) for c in extract_claims(
    ...     "Brand-new, new, first seen this week, first seen 8 weeks ago, 3 days old.")]
    [(0, 0), (0, 3), (0, 0), (6, 10), (0, 0)]
    """
    if claim.kind == "direction":
        return AGE_WORDS.get(str(claim.value))
    if claim.kind != "recency":
        return None
    value = float(claim.value)
    unit = claim.unit or "window"
    unit_seconds = window_seconds if unit == "window" else UNIT_SECONDS[unit]
    if unit_seconds == window_seconds:
        low = math.ceil(value * (1 - TOLERANCE) - _EPSILON)
        high = math.floor(value * (1 + TOLERANCE) + _EPSILON)
        return max(0, low), high
    windows = value * unit_seconds / window_seconds
    low = math.ceil(windows / (1 + TOLERANCE) - 1 - _EPSILON)
    high = math.floor(windows / (1 - TOLERANCE) + _EPSILON)
    return max(0, low), high


def claim_fact(claim: Claim, window_seconds: int) -> tuple[object, ...]:
    """What a claim asserts, as a key: two claims with equal keys say the same thing.

    The key is the claim's topic and its content: the title, the category and its direction,
    the direction word, the magnitude and its value, or, for every claim about age (age
    words and recency), the range of ages it allows (:func:`age_range`), so "brand-new" and
    "first seen this week" state one fact while "new" and "first seen 2 weeks ago" state two.

    >>> a, b, c = extract_claims("Brand-new, first seen this week, and new.")
    >>> claim_fact(a, 604800) == claim_fact(b, 604800) != claim_fact(c, 604800)
    True
    """
    ages = age_range(claim, window_seconds)
    if ages is not None:
        return ("age", *ages)
    if claim.kind == "item":
        return ("item", title_key(str(claim.value)))
    if claim.kind == "category":
        return ("category", normalized(claim.attribute.strip().strip("'\"")), claim.value)
    if claim.kind == "magnitude":
        return ("magnitude", claim.attribute, float(claim.value))
    return (claim.kind, claim.attribute, claim.value)


def _judge(
    claim: Claim, features: ItemFeatures, sig: Signals, predicted_log_count: float | None
) -> Verdict:
    def verdict(true: bool, contradiction: bool, reason: str) -> Verdict:
        return Verdict(claim, true, contradiction, reason)

    if claim.kind == "item":
        title = features.title
        if title is not None and title_key(str(claim.value)) == title_key(title):
            return verdict(True, False, "the item's title")
        if any(normalized(str(claim.value)) == normalized(c) for c in features.categories):
            return verdict(True, False, "the item's category, quoted")
        if title is None:
            return verdict(False, False, "the item has no known title")
        return verdict(False, True, f"names another item (the title is {title!r})")

    if claim.kind == "category":
        name = claim.attribute.strip().strip("'\"")
        if not any(normalized(name) == normalized(c) for c in features.categories):
            return verdict(False, True, f"{name!r} is not one of the item's categories")
        return _judge_direction(
            claim,
            str(claim.value),
            sig.category,
            sig.category_strong,
            None,
            False,
            "category momentum",
        )

    age = features.age_windows
    ages = age_range(claim, features.window_seconds)
    if ages is not None:
        ok = ages[0] <= age <= ages[1]
        # "new" at age 5, "established" at age 5: a stretch, not a falsehood.
        grey = claim.kind == "direction" and str(claim.value) in ("new", "established")
        grey = grey and RECENT_MAX_AGE < age < ESTABLISHED_MIN_AGE
        allowed = f"{ages[0]}" if ages[0] == ages[1] else f"{ages[0]}-{ages[1]:g}"
        return verdict(ok, not ok and not grey, f"age is {age} windows (claim: {allowed})")

    if claim.kind == "magnitude":
        value = float(claim.value)
        if claim.attribute == "momentum":
            ok = _within(value, features.momentum, absolute=0.01)
            if not ok:
                return verdict(False, True, f"momentum is {features.momentum:.3g}")
            if not sig.ratio_meaningful:
                # Momentum is right but means nothing to a reader: the usual level is (mostly)
                # the zero the EW means started at. First seen this window: there is none.
                return verdict(
                    False, age == 0, f"no usual level to compare with (age {age} windows)"
                )
            return verdict(True, False, f"momentum is {features.momentum:.3g}")
        if claim.attribute == "count":
            ok = _within(value, features.count, absolute=0.5)
            return verdict(ok, not ok, f"count is {features.count:.4g}")
        if claim.attribute == "share":
            ok = _within(value, features.share, absolute=5e-6)
            return verdict(ok, not ok, f"share is {features.share:.3g}")
        if predicted_log_count is None:
            return verdict(False, False, "no forecast to compare with")
        expected = max(0.0, math.expm1(predicted_log_count))
        ok = _within(value, expected, absolute=0.5)
        return verdict(ok, not ok, f"forecast is {expected:.4g}")

    signal = None if sig.direction == "mixed" else sig.direction
    return _judge_direction(
        claim,
        str(claim.value),
        signal,
        sig.strong,
        sig.predicted,
        sig.predicted_strong,
        "momentum and slope",
    )


def _judge_direction(
    claim: Claim,
    word: str,
    signal: Direction | None,
    strong: bool,
    predicted: Direction | None,
    predicted_strong: bool,
    source: str,
) -> Verdict:
    opposite = OPPOSITE.get(word)
    if opposite is not None and signal == opposite:
        return Verdict(claim, False, True, f"{source} say {signal}")
    if opposite is not None and predicted == opposite:
        return Verdict(claim, False, True, f"the forecast is {predicted}")
    if word == "steady" and signal is not None and signal != "steady" and strong:
        return Verdict(claim, False, True, f"{source} show a strong move ({signal})")
    if word == "steady" and predicted not in (None, "steady") and predicted_strong:
        return Verdict(claim, False, True, f"the forecast is a strong move ({predicted})")
    if signal is None:
        return Verdict(claim, False, False, f"{source} are unknown or mixed")
    if word != signal:
        return Verdict(claim, False, False, f"{source} say {signal}")
    if word == "steady" and predicted not in (None, "steady"):
        return Verdict(claim, False, False, f"the forecast is {predicted}")
    return Verdict(claim, True, False, f"{source} say {signal}")


def check_explanation(
    text: str, features: ItemFeatures, predicted_log_count: float | None
) -> Faithfulness:
    """Score an explanation's claims against the item's signals and the predicted score.

    Parameters
    ----------
    text
        The explanation, generated or verbalized.
    features
        The signals it is supposed to be grounded in.
    predicted_log_count
        The score it accompanies (predicted ``log(1 + next count)``), or ``None``. A direction
        claim that opposes the forecast (predicted versus ``log1p(count)``) is a contradiction.

    Returns
    -------
    Faithfulness
        Counts of distinct facts, ``faithfulness = true / claims`` (0.0 and ``empty=True``
        without claims) and ``contradiction_rate = contradictions / claims``; a fact stated
        again is counted once and its repeats in ``repeated``.

    Examples
    --------
    >>> import random
    >>> from model.tiny import synthetic_features
    >>> f = synthetic_features(random.Random(0), shape="rising")
    >>> check_explanation("It is falling fast, down 3x.", f, None).contradictions
    2
    >>> check_explanation("Hard to say.", f, None).empty
    True
    >>> padded = check_explanation("It is new this week, first seen this week.", f, None)
    >>> padded.claims, padded.repeated
    (1, 1)
    """
    sig = read_signals(features, predicted_log_count)
    seen: set[tuple[object, ...]] = set()
    judged: list[Verdict] = []
    for claim in extract_claims(text):
        verdict = _judge(claim, features, sig, predicted_log_count)
        fact = claim_fact(claim, features.window_seconds)
        if fact in seen:
            verdict = replace(verdict, repeated=True)
        seen.add(fact)
        judged.append(verdict)
    verdicts = tuple(judged)
    counted = [v for v in verdicts if not v.repeated]
    n = len(counted)
    true = sum(v.true for v in counted)
    contradictions = sum(v.contradiction for v in counted)
    return Faithfulness(
        claims=n,
        true_claims=true,
        contradictions=contradictions,
        faithfulness=true / n if n else 0.0,
        contradiction_rate=contradictions / n if n else 0.0,
        empty=n == 0,
        repeated=len(verdicts) - n,
        verdicts=verdicts,
    )
