"""Explanations grounded in the trend signals: a verbalizer, a claim checker and a perturber.

Three pieces, all pure (no torch) and deterministic:

* :func:`verbalize` turns an item's :class:`~schemas.records.ItemFeatures` (and optionally the
  predicted next-window score) into one or two short sentences that are *true* by
  construction. It is the source of the explanation targets the model is fine-tuned on; the
  ``variant`` argument varies the wording so the model learns content, not one template.
* :func:`extract_claims` parses any explanation (verbalized or generated) back into claims of
  five kinds: ``direction`` (rising / falling / steady, and the age words brand-new / new /
  established), ``magnitude`` (momentum multiplier, event count, forecast, traffic share),
  ``recency`` (age), ``category`` (the genre's own momentum) and ``item`` (a quoted title).
  :func:`check_explanation` scores the claims against the signals: faithfulness is the share
  of true claims, and a contradiction is a claim the signals (or the model's own score) refute.
* :func:`perturb` makes an unfaithful variant of an explanation (direction flipped, a number
  changed, or the item swapped): the negative of the contrastive explanation loss.

The rules that decide what is "rising" live in :func:`read_signals`, so the verbalizer and the
checker cannot drift apart.

What a reader understands, and so what the checker accepts and the verbalizer says:

* **Ages.** "brand-new", "new this week", "first seen this week", "in its first week", "just
  launched" mean first seen in *this* window (``age_windows == 0``). "new", "a newcomer",
  "recently introduced" cover the first :data:`RECENT_MAX_AGE` windows (ages 0-3: the ages the
  prompt's trend category calls ``new``). "established" and "long-running" need
  :data:`ESTABLISHED_MIN_AGE` windows; between the two, neither word is true or refuted.
  "first seen N weeks ago" (in the window's own unit) is exact up to N = 3 and within
  :data:`TOLERANCE` beyond; other units are converted to windows.
* **Ratios.** "up 2.6x vs its long-run average", "at 2.6x its usual level" quote momentum, a
  ratio of EW means that start at zero when the item is first seen. Such a claim means what a
  reader thinks only when the item has a usual level (:func:`baseline_level`): at least
  :data:`RATIO_MIN_AGE` earlier windows, so the zero start moves momentum by less than
  :data:`TOLERANCE`, and a long-run level of at least :data:`RATIO_MIN_BASELINE` events per
  window before this one. Otherwise a ratio claim is false (a contradiction for an item first
  seen this window, which has no earlier level at all), and the verbalizer never makes one.
* **Repetition.** Two claims that state the same fact ("brand-new, first seen this week";
  "rising ... growing") count once: the repeat is flagged (:attr:`Verdict.repeated`, counted
  in :attr:`Faithfulness.repeated`) and left out of the claim, true-claim and contradiction
  counts, so padding neither raises nor lowers faithfulness. Claims on one topic that say
  different things ("new" and "first seen 2 weeks ago") are each judged. The verbalizer is
  stricter: it states each topic (age, direction, count, ratio, share, category, title) at
  most once, and never restates the forecast that :func:`forecast_sentence` opens with.

>>> from schemas.records import ItemFeatures
>>> f = ItemFeatures(item_id="1", window_end=604800, window_seconds=604800, count=45.0,
...     total=300.0, recent_counts=(10, 12, 15, 20, 30, 45), ew_1=35.0, ew_2=28.0, ew_4=20.0,
...     ew_8=13.0, momentum=2.57, slope=6.8, accel=1.0, burstiness=0.1, age_windows=20,
...     share=0.004, category_momentum=1.4, trend="rising", title="Toy Story (1995)",
...     categories=("Comedy",))
>>> text = verbalize(f, None, variant=0)
>>> print(text)  # doctest: +NORMALIZE_WHITESPACE
"Toy Story (1995)" is rising, up 2.6x vs its long-run average with 45 events this week.
Its category Comedy is also heating up.
>>> check_explanation(text, f, None).faithfulness
1.0
>>> check_explanation("It is falling.", f, None).contradictions
1
>>> newcomer = f.model_copy(update={"age_windows": 0})
>>> check_explanation("It is brand-new, at 2.6x its usual level.", newcomer, None).faithfulness
0.5
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from schemas.records import ItemFeatures

ClaimKind = Literal["direction", "magnitude", "recency", "category", "item"]
Direction = Literal["rising", "falling", "steady"]
PerturbKind = Literal["direction", "numbers", "item"]

#: Momentum (short / long EW mean) beyond this ratio, either way, counts as movement.
MOVE_RATIO = 1.15
#: Momentum beyond this ratio, either way, is a strong move: calling it "steady" contradicts.
STRONG_RATIO = 2.0
#: Least-squares slope per window, relative to the mean recent count (+1), that counts as flat.
FLAT_SLOPE = 0.10
#: An item first seen at most this many windows ago is :attr:`Signals.new` (and the synthetic
#: "new" shape of :mod:`model.tiny`). What the age *words* mean is set by the three below.
NEW_MAX_AGE = 1
#: "new", "a newcomer", "recently introduced": first seen at most this many windows ago. These
#: are exactly the ages the prompt's trend category calls ``new`` (the trend core's default
#: ``new_item_windows`` is 4), so the words agree with what the model reads.
RECENT_MAX_AGE = 3
#: "established", "long-running": first seen at least this many windows ago. Ages in between
#: are neither: both words are then unsupported, not refuted.
ESTABLISHED_MIN_AGE = 8
#: Relative error beyond which a number in an explanation is wrong.
TOLERANCE = 0.25
#: Half-life, in windows, of the long-run EW mean (``ew_8``) that momentum divides by.
LONG_HALF_LIFE = 8.0
#: A ratio claim needs a long-run level of at least this many events per window before this
#: window: against a fraction of an event, momentum's +1 smoothing is most of the "usual level".
RATIO_MIN_BASELINE = 1.0


def _min_ratio_age(half_life: float, tolerance: float) -> int:
    # An EW mean that starts at zero keeps weight 2^(-(age+1)/h) on the zero after age+1
    # windows; dividing by it inflates momentum by at most 1 / (1 - that weight). The first age
    # at which that stays within the tolerance is the first with a usual level to compare to.
    age = 0
    while 1.0 / (1.0 - 2.0 ** (-(age + 1) / half_life)) - 1.0 > tolerance:
        age += 1
    return age


#: A ratio claim needs the item to be at least this many windows old (18 with a half-life of 8
#: and a 25% tolerance): younger, the zero start of the long-run mean makes a flat item look
#: 1.3x to 6x "its usual level".
RATIO_MIN_AGE = _min_ratio_age(LONG_HALF_LIFE, TOLERANCE)

#: Window lengths that have a natural name; any other length is a "window".
_PERIOD_NAMES = {3600: "hour", 86_400: "day", 604_800: "week", 2_592_000: "month"}
_UNIT_SECONDS = {
    "hour": 3600,
    "day": 86_400,
    "week": 604_800,
    "month": 2_592_000,
    "year": 31_536_000,
}
_OPPOSITE: dict[str, str] = {"rising": "falling", "falling": "rising"}


# --------------------------------------------------------------------------------------------
# Signals


@dataclass(frozen=True)
class Signals:
    """What the numbers say, in the checker's vocabulary.

    ``direction`` is ``"mixed"`` when momentum and slope disagree; no direction claim is then
    true. ``predicted`` compares the predicted next-window log count with ``log1p(count)``.
    """

    direction: Direction | Literal["mixed"]
    strong: bool
    new: bool
    predicted: Direction | None
    predicted_strong: bool
    category: Direction | None
    category_strong: bool
    #: First seen in this window: "brand-new", "first seen this week".
    brand_new: bool = False
    #: First seen at most :data:`RECENT_MAX_AGE` windows ago: "new", "a newcomer".
    young: bool = False
    #: First seen at least :data:`ESTABLISHED_MIN_AGE` windows ago: "established".
    established: bool = False
    #: Momentum may be quoted as a ratio to a usual level (see :func:`baseline_level`).
    ratio_meaningful: bool = False


def _ratio_direction(ratio: float) -> Direction:
    if ratio >= MOVE_RATIO:
        return "rising"
    if ratio <= 1.0 / MOVE_RATIO:
        return "falling"
    return "steady"


def _is_strong(ratio: float) -> bool:
    return ratio >= STRONG_RATIO or ratio <= 1.0 / STRONG_RATIO


def _relative_slope(features: ItemFeatures) -> float:
    counts = features.recent_counts or (features.count,)
    return features.slope / (sum(counts) / len(counts) + 1.0)


def read_signals(features: ItemFeatures, predicted_log_count: float | None = None) -> Signals:
    """Classify an item's signals: direction from momentum and slope, newness, forecast.

    Rising needs momentum of at least ``MOVE_RATIO`` and a slope that is not clearly negative;
    falling is the mirror image; steady needs momentum inside the band and a flat slope
    (``|slope| <= FLAT_SLOPE * (mean recent count + 1)``). Anything else is ``"mixed"``.

    Examples
    --------
    >>> from model.tiny import synthetic_features
    >>> f = synthetic_features(random.Random(3), shape="rising")
    >>> read_signals(f).direction
    'rising'
    >>> read_signals(f, predicted_log_count=0.0).predicted
    'falling'
    """
    rel_slope = _relative_slope(features)
    by_momentum = _ratio_direction(features.momentum)
    direction: Direction | Literal["mixed"]
    if by_momentum == "rising":
        direction = "rising" if rel_slope >= -FLAT_SLOPE else "mixed"
    elif by_momentum == "falling":
        direction = "falling" if rel_slope <= FLAT_SLOPE else "mixed"
    else:
        direction = "steady" if abs(rel_slope) <= FLAT_SLOPE else "mixed"

    predicted: Direction | None = None
    predicted_strong = False
    if predicted_log_count is not None:
        # A ratio of (1 + predicted next count) to (1 + this window's count).
        ratio = math.exp(predicted_log_count - math.log1p(features.count))
        predicted = _ratio_direction(ratio)
        predicted_strong = _is_strong(ratio)

    category: Direction | None = None
    category_strong = False
    if features.category_momentum is not None and features.category_momentum > 0:
        category = _ratio_direction(features.category_momentum)
        category_strong = _is_strong(features.category_momentum)

    age = features.age_windows
    return Signals(
        direction=direction,
        strong=_is_strong(features.momentum),
        new=age <= NEW_MAX_AGE,
        predicted=predicted,
        predicted_strong=predicted_strong,
        category=category,
        category_strong=category_strong,
        brand_new=age == 0,
        young=age <= RECENT_MAX_AGE,
        established=age >= ESTABLISHED_MIN_AGE,
        ratio_meaningful=baseline_level(features) is not None,
    )


def baseline_level(features: ItemFeatures) -> float | None:
    """The item's usual level before this window, when a ratio against it means something.

    The level is the long-run EW mean (half-life :data:`LONG_HALF_LIFE`) as it stood before
    this window's count entered it, in events per window. It is a usual level a reader can
    compare with only when the item is at least :data:`RATIO_MIN_AGE` windows old (so the
    mean's zero start moves momentum by less than :data:`TOLERANCE`) and the level is at
    least :data:`RATIO_MIN_BASELINE`; otherwise ``None``, and no ratio claim is true.

    Examples
    --------
    >>> from model.tiny import synthetic_features
    >>> old = synthetic_features(random.Random(3), shape="steady")
    >>> old.age_windows >= RATIO_MIN_AGE, round(baseline_level(old) or 0.0)
    (True, 57)
    >>> baseline_level(old.model_copy(update={"age_windows": 0})) is None
    True
    """
    if features.age_windows < RATIO_MIN_AGE:
        return None
    keep = 2.0 ** (-1.0 / LONG_HALF_LIFE)
    # ew_8 = keep * before + (1 - keep) * count, so the level before this window is exact.
    before = max(0.0, (features.ew_8 - (1.0 - keep) * features.count) / keep)
    return before if before >= RATIO_MIN_BASELINE else None


def period_name(window_seconds: int) -> str:
    """The natural name of a window length.

    >>> period_name(604800), period_name(3600), period_name(1234)
    ('week', 'hour', 'window')
    """
    return _PERIOD_NAMES.get(window_seconds, "window")


# --------------------------------------------------------------------------------------------
# Number formatting (shared by the verbalizer and the perturber, so rounding is predictable)


def format_count(value: float) -> str:
    """A count as people say it: whole numbers below 100, two significant digits above.

    >>> format_count(44.6), format_count(1234.0), format_count(98765.0)
    ('45', '1,200', '99,000')
    """
    if value < 100:
        return str(round(value))
    digits = len(str(int(value))) - 2
    rounded = round(value, -digits)
    return f"{int(rounded):,}"


def format_ratio(value: float) -> str:
    """A multiplier with about two significant digits and no exponent.

    >>> format_ratio(2.567), format_ratio(0.4449), format_ratio(13.4), format_ratio(0.031)
    ('2.6', '0.44', '13', '0.031')
    """
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_percent(share: float) -> str:
    """A share in [0, 1] as a percentage with two significant digits.

    >>> format_percent(0.0041), format_percent(0.1234), format_percent(0.00002)
    ('0.41', '12', '0.002')
    """
    pct = share * 100
    if pct >= 10:
        return f"{pct:.0f}"
    if pct >= 1:
        return f"{pct:.1f}"
    if pct >= 0.1:
        return f"{pct:.2f}"
    return f"{pct:.2g}" if pct >= 0.001 else "0.001"


def this_period(period: str) -> str:
    """``"this week"``, but ``"today"`` for days.

    >>> this_period("week"), this_period("day")
    ('this week', 'today')
    """
    return "today" if period == "day" else f"this {period}"


def next_period(period: str) -> str:
    """``"next week"``, but ``"tomorrow"`` for days.

    >>> next_period("month"), next_period("day")
    ('next month', 'tomorrow')
    """
    return "tomorrow" if period == "day" else f"next {period}"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


# --------------------------------------------------------------------------------------------
# Verbalizer

_DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "rising": ("rising", "growing", "surging", "gaining momentum", "trending up", "climbing"),
    "falling": (
        "falling",
        "declining",
        "cooling off",
        "losing momentum",
        "trending down",
        "slipping",
    ),
    "steady": ("steady", "stable", "holding steady", "flat"),
}
_CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "rising": ("heating up", "gaining", "rising"),
    "falling": ("cooling", "losing steam", "declining"),
    "steady": ("steady", "holding steady", "flat"),
}
_SUBJECTS = ("This item", "It", "This title")
#: Category names the verbalizer will mention: short, one line, no sentence punctuation, so
#: that the checker's pattern can read them back unambiguously.
_SAFE_CATEGORY = re.compile(r"^[A-Za-z0-9][\w'&/+ -]{0,39}$")


def _choose(options: Sequence[str], variant: int, slot: int) -> str:
    # Mixed-radix style pick: different slots vary at different rates as variant grows, so
    # consecutive variants differ in template *and* wording; fully deterministic.
    return options[(variant * (2 * slot + 1) + slot * 3 + variant // 7) % len(options)]


def clean_title(title: str | None, max_chars: int = 60) -> str | None:
    """A title safe to quote: one line, no double quotes; ``None`` when empty or too long.

    >>> clean_title('  The "Big"\\n Lebowski ')
    "The 'Big' Lebowski"
    """
    if not title:
        return None
    # Titles are user content: one line, no double quotes (they delimit the title in text).
    one_line = " ".join(title.replace('"', "'").split())
    return one_line if 0 < len(one_line) <= max_chars else None


def _ratio_phrase(momentum: float, variant: int) -> str:
    r = format_ratio(momentum)
    if 1.0 / MOVE_RATIO < momentum < MOVE_RATIO:
        # Inside the steady band "up 1.0x" or "down to 0.99x" would suggest a move.
        options = (
            f"at {r}x its usual level",
            f"running at {r}x its long-run average",
            f"at {r}x its long-run average",
        )
    elif momentum >= 1:
        options = (
            f"up {r}x vs its long-run average",
            f"at {r}x its usual level",
            f"running {r}x its long-run average",
        )
    else:
        options = (
            f"down to {r}x its long-run average",
            f"at {r}x its usual level",
            f"running at {r}x its long-run average",
        )
    return _choose(options, variant, 2)


def _count_phrase(count: float, period: str, variant: int, *, dated: bool = True) -> str | None:
    # ``dated=False`` leaves out "this week" where the sentence already says when.
    when = f" {this_period(period)}" if dated else ""
    if count == 0:
        return f"no events{when}"
    if count < 1:
        return None  # weighted fractions of one event are noise, not a story
    exact = float(count).is_integer() and count < 100
    n = format_count(count)
    events = "event" if n == "1" else "events"
    if exact and variant % 2 == 0:
        return f"{n} {events}{when}"
    return f"about {n} {events}{when}"


def _recency_clause(age: int, period: str, variant: int, subject: str = "it") -> str:
    if age == 0:
        return f"{subject} was first seen {this_period(period)}"
    options = (
        f"{subject} was first seen {_plural(age, period)} ago",
        f"{subject} has been around for {_plural(age, period)}",
    )
    return _choose(options, variant, 3)


def _category_phrase(name: str, direction: Direction, item_rising: bool, variant: int) -> str:
    word = _choose(_CATEGORY_WORDS[direction], variant, 4)
    noun = _choose(("genre", "category"), variant, 5)
    also = "also " if item_rising and direction == "rising" else ""
    return f"its {noun} {name} is {also}{word}"


def _young_opening(subject: str, features: ItemFeatures, period: str, variant: int) -> str:
    """The first sentence for an item at most :data:`RECENT_MAX_AGE` windows old.

    Exactly one statement of its age (never "new this week, first seen this week"), no ratio
    (it has no usual level yet) and no direction (its EW means are still filling up).
    """
    age = features.age_windows
    dated = _count_phrase(features.count, period, variant)
    bare = _count_phrase(features.count, period, variant, dated=False)
    this = this_period(period)
    if age == 0:
        form = (variant + variant // 4) % 4
        if form == 1:
            return f"{subject} is new {this}" + (f", with {bare}" if bare else "")
        if form == 2:
            return f"{subject} was first seen {this}" + (f" and drew {bare}" if bare else "")
        if form == 3 and bare is not None:
            return f"{subject} drew {bare} in its first {period}"
        return f"{subject} is brand-new" + (f", with {dated}" if dated else "")
    form = (variant + variant // 5) % 5
    with_count = f", with {dated}" if dated else ""
    if form == 1:
        return f"{subject} is a newcomer{with_count}"
    if form == 2:
        ago = f"{subject} was first seen {_plural(age, period)} ago"
        return ago + (f" and drew {dated}" if dated else "")
    if form == 3:
        return f"{subject} has been around for {_plural(age, period)}{with_count}"
    if form == 4:
        return f"{subject} was recently introduced{with_count}"
    return f"{subject} is new{with_count}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def verbalize(features: ItemFeatures, predicted_log_count: float | None, *, variant: int) -> str:
    """Describe an item's trend in one or two short sentences that are true of its signals.

    Parameters
    ----------
    features
        The item's signals at the close of a window.
    predicted_log_count
        The predicted ``log(1 + count)`` of the next window, or ``None``. When given, a
        direction is stated only if the forecast does not oppose it. The forecast itself is
        not restated: every explanation that carries one opens with
        :func:`forecast_sentence`, and saying it twice is padding.
    variant
        Any integer; selects the template and the wording. Equal inputs give equal text.

    Returns
    -------
    str
        An explanation for which :func:`check_explanation` finds only true claims, each on
        a different topic: an item at most :data:`RECENT_MAX_AGE` windows old is described
        by its age (one phrase) and count; an older one by its direction, its ratio to its
        usual level (only when :func:`baseline_level` says it has one) and its count. An
        item without a usual level is called rising only when its recent counts climb
        (relative slope above :data:`FLAT_SLOPE`), not on momentum alone.

    Examples
    --------
    >>> from model.tiny import synthetic_features
    >>> f = synthetic_features(random.Random(1), shape="falling")
    >>> verbalize(f, None, variant=1) == verbalize(f, None, variant=1)
    True
    >>> len({verbalize(f, None, variant=v) for v in range(6)}) > 3
    True
    >>> new = synthetic_features(random.Random(2), shape="new", window_seconds=604800)
    >>> new.age_windows, verbalize(new, None, variant=3)
    (0, 'This item drew about 2 events in its first week.')
    """
    sig = read_signals(features, predicted_log_count)
    period = period_name(features.window_seconds)
    title = clean_title(features.title)
    template = variant % 4

    if title is not None and template in (0, 2):
        subject = f'"{title}"'
    else:
        subject = _choose(_SUBJECTS, variant, 1)

    count = _count_phrase(features.count, period, variant)
    extras: list[str] = []
    item_rising = False

    if sig.young:
        first = _young_opening(subject, features, period, variant)
    else:
        direction = _stated_direction(sig)
        if direction == "rising" and not sig.ratio_meaningful:
            # Without a usual level, momentum is inflated by the long-run mean's zero start: a
            # flat item ten windows old reads 1.5x. Say "rising" only if the counts climb too.
            if _relative_slope(features) <= FLAT_SLOPE:
                direction = None
        ratio = _ratio_phrase(features.momentum, variant) if sig.ratio_meaningful else None
        age_said = False
        if direction is None:
            if ratio is not None:
                first = f"{subject} is {ratio}" + (f" with {count}" if count else "")
            elif count is not None:
                first = f"{subject} drew {count}"
            else:
                first = _recency_clause(features.age_windows, period, variant, subject)
                age_said = True
        else:
            word = _choose(_DIRECTION_WORDS[direction], variant, 0)
            if template == 1 and (ratio is not None or count is not None):
                who = subject if subject.startswith('"') else subject.lower()
                if ratio is not None:
                    rest = f"is {ratio}" + (f" with {count}" if count else "")
                else:
                    rest = f"drew {count}"
                first = f"{word[:1].upper()}{word[1:]}: {who} {rest}"
            else:
                first = f"{subject} is {word}"
                if ratio is not None:
                    first += f", {ratio}" + (f" with {count}" if count else "")
                elif count is not None:
                    first += f", with {count}"
            item_rising = direction == "rising"
        if template == 3 and not age_said:
            extras.append(_recency_clause(features.age_windows, period, variant))

    category = _category_name(features)
    if category is not None and sig.category is not None and template != 2:
        extras.insert(0, _category_phrase(category, sig.category, item_rising, variant))
    if features.share >= 1e-4 and template == 0 and sig.category is None:
        # Below 0.01% the rounded figure would be mostly rounding error.
        extras.append(
            f"that is {format_percent(features.share)}% of {this_period(period)}'s traffic"
        )

    text = _sentence(first)
    if extras:
        text += " " + _sentence(", and ".join(extras[:2]))
    return text


def _stated_direction(sig: Signals) -> Direction | None:
    # State a direction only when it is true of the signals and the forecast does not oppose
    # it: exactly the condition under which the checker calls a direction claim true.
    if sig.direction == "mixed":
        return None
    if sig.predicted is None:
        return sig.direction
    if sig.direction == "steady":
        return "steady" if sig.predicted == "steady" else None
    if sig.predicted == _OPPOSITE[sig.direction]:
        return None
    return sig.direction


def _category_name(features: ItemFeatures) -> str | None:
    for name in features.categories:
        if _SAFE_CATEGORY.match(name):
            return name
    return None


# --------------------------------------------------------------------------------------------
# Claims


@dataclass(frozen=True)
class Claim:
    """One checkable statement found in an explanation.

    ``attribute`` names what the claim is about: ``trend`` (direction), ``momentum``,
    ``count``, ``forecast``, ``share`` (magnitudes), ``age`` (recency), the category name
    (category) or ``title`` (item). ``value`` is a number for magnitudes and recency (a share
    as a fraction, an age in ``unit``: hour, day, week, month, year or window) and a word
    otherwise. ``span`` locates the claim in the text.
    """

    kind: ClaimKind
    value: float | str
    attribute: str
    span: tuple[int, int]
    text: str
    unit: str | None = None


_NUM = r"\d[\d,]*(?:\.\d+)?"
_APPROX = r"(?:(?:about|around|roughly|nearly|almost|some|over|under|~)\s*)?"
_UNIT = r"(?P<unit>window|hour|day|week|month|year)s?"
_EVENT_NOUN = (
    r"(?:events?|plays?|views?|interactions?|ratings?|hits?|visits?|purchases?|clicks?|"
    r"listens?|streams?|reviews?)"
)

_TITLE_RE = re.compile(r"[\"“](?P<title>[^\"”\n]{1,120})[\"”]")
_CATEGORY_RE = re.compile(
    r"\b(?:genre|category)\s+(?P<name>[^.;:!?,\n]+?)\s+(?:is|was|are|were)\s+"
    r"(?:also\s+|likewise\s+|itself\s+|too\s+)?(?P<word>heating up|gaining(?: steam)?|"
    r"rising|growing|surging|climbing|cooling(?: off)?|losing steam|declining|falling|"
    r"slipping|fading|holding steady|steady|stable|flat)",
    re.IGNORECASE,
)
_RECENCY_RES = (
    re.compile(rf"\bfirst (?:seen|appeared)\s+(?P<n>{_NUM}|an?|one)\s+{_UNIT}\s+ago\b", re.I),
    re.compile(
        rf"\b(?:first (?:seen|appeared)|debuted)\s+(?:this|in the current)\s+{_UNIT}\b", re.I
    ),
    re.compile(rf"\bin (?:its|their) (?:first|debut|opening)\s+{_UNIT}\b", re.I),
    re.compile(rf"\bfirst (?:seen|appeared)\s+last\s+{_UNIT}\b", re.I),
    re.compile(r"\bfirst (?:seen|appeared)\s+(?P<day>today|yesterday)\b", re.I),
    re.compile(rf"\b(?:around|out|live|listed)\s+for\s+(?P<n>{_NUM}|an?|one)\s+{_UNIT}\b", re.I),
    re.compile(
        rf"\b(?P<n>{_NUM})\s+{_UNIT}\s+(?:old|since (?:its|their) (?:debut|release))\b", re.I
    ),
    re.compile(rf"\bdebuted\s+(?P<n>{_NUM}|an?|one)\s+{_UNIT}\s+ago\b", re.I),
)
_RATIO_RE = re.compile(
    rf"(?:\b(?P<dir>up|down)\s+(?P<to>to\s+)?)?{_APPROX}(?P<n>{_NUM})\s*(?:x|×|times)(?![a-z])",
    re.IGNORECASE,
)
_COUNT_RE = re.compile(
    rf"(?:{_APPROX}(?P<n>{_NUM})|(?P<none>\bno|\bzero))\s+{_EVENT_NOUN}\b"
    rf"(?P<after>\s+(?:(?:this|last|next|in the (?:last|latest|next))\s+{_UNIT}|today|"
    r"tomorrow|yesterday))?",
    re.IGNORECASE,
)
_SHARE_RE = re.compile(
    rf"(?P<n>{_NUM})\s*%\s+(?:share\b|of\s+(?:[\w']+\s+){{0,3}}?"
    r"(?:traffic|events|activity|plays|views|interactions))",
    re.IGNORECASE,
)
_FORECAST_CUE = re.compile(
    r"(?:expect|forecast|predict|project|on track|likely|should (?:see|reach|get)|will|next)\w*",
    re.IGNORECASE,
)
#: Right after a count, these make it a forecast: "300 plays expected next week".
_FORECAST_AFTER = re.compile(
    r"^[^.;!?]{0,12}?\b(?:expected|forecast|predicted|projected|next|tomorrow)\b", re.IGNORECASE
)
_DIRECTION_RE = re.compile(
    r"\b(?P<established>long-running|long-established|established|veteran|perennial)\b"
    r"|\b(?P<brand_new>brand[- ]new|just (?:appeared|launched|released|arrived)|"
    r"new\s+(?:this\s+(?:window|hour|day|week|month|year)|today))\b"
    r"|\b(?P<new>newcomers?|new|debut(?:s|ed|ing)?|recently (?:introduced|added|launched|"
    r"released|arrived)|fresh arrivals?)\b"
    r"|\b(?P<rising>rising|rises|rose|risen|growing|grows|grew|surging|surges|surged|"
    r"climbing|climbs|climbed|gaining (?:momentum|steam|ground|traction)|gaining|gains|gained|"
    r"heating up|trending up|on the rise|"
    r"picking up|accelerating|soaring|booming|taking off|up(?!\s*(?:to\s+)?[~\d]))\b"
    r"|\b(?P<falling>falling|falls|fell|declining|declines|declined|cooling(?: off)?|cools|"
    r"cooled|dropping|drops|dropped|slipping|slips|slipped|fading|fades|waning|wanes|"
    r"losing (?:momentum|steam|ground|traction)|trending down|on the decline|slowing|shrinking|"
    r"down(?!\s*(?:to\s+)?[~\d]))\b"
    r"|\b(?P<steady>steady|steadily|stable|flat|unchanged|plateau(?:ed|ing|s)?)\b",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"[.!?](?:\s|$)")
_NEGATION = re.compile(
    r"\b(?:not|no longer|isn't|aren't|wasn't|never|hardly|barely)\s+$", re.IGNORECASE
)


def _number(text: str) -> float:
    lowered = text.lower()
    if lowered in {"a", "an", "one"}:
        return 1.0
    return float(text.replace(",", ""))


def _mask(text: str, span: tuple[int, int]) -> str:
    # Blank out a consumed span, keeping offsets, so later patterns do not read it twice.
    start, end = span
    return text[:start] + " " * (end - start) + text[end:]


def extract_claims(text: str) -> list[Claim]:
    """Parse an explanation into the claims it makes, in order of appearance.

    Quoted strings are item titles; ``genre|category NAME is WORD`` is a category claim;
    ages (``first seen 3 weeks ago``), multipliers (``up 2.6x``, ``0.4 times``), event counts
    (``about 45 events this week``; followed by ``next`` or preceded by ``expected`` they are
    forecasts) and shares (``0.41% of traffic``) come next; the remaining words give
    directions (rising/growing/surging/up, falling/declining/cooling/down,
    steady/stable/flat) and the age words (brand-new/new this week/just launched as
    ``brand-new``, new/newcomer/recently introduced/debut as ``new``, and
    established/long-running). A direction word right after a negation (``not rising``) makes
    no claim. A count is a forecast only by the words of its own sentence.

    Examples
    --------
    >>> [(c.kind, c.attribute, c.value) for c in extract_claims(
    ...     'Surging: "Heat (1995)" is up 3.2x with about 1,200 events this week.')]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('direction', 'trend', 'rising'), ('item', 'title', 'Heat (1995)'),
     ('magnitude', 'momentum', 3.2), ('magnitude', 'count', 1200.0)]
    >>> [(c.attribute, c.value) for c in extract_claims("Its genre Sci-Fi is cooling off.")]
    [('Sci-Fi', 'falling')]
    >>> [(c.attribute, c.value) for c in extract_claims("New, first seen 2 weeks ago.")]
    [('trend', 'new'), ('age', 2.0)]
    >>> [(c.attribute, c.value) for c in extract_claims("New today: 9 events in its first day.")]
    [('trend', 'brand-new'), ('count', 9.0), ('age', 0.0)]
    >>> extract_claims("Nothing to see here.")
    []
    """
    claims: list[Claim] = []
    work = text

    for m in _TITLE_RE.finditer(work):
        claims.append(Claim("item", m.group("title").strip(), "title", m.span(), m.group(0)))
        work = _mask(work, m.span())

    for m in _CATEGORY_RE.finditer(work):
        word = m.group("word").lower()
        value = _word_direction(word)
        name = m.group("name").strip()
        claims.append(Claim("category", value, name, m.span(), m.group(0)))
        work = _mask(work, m.span())

    for pattern in _RECENCY_RES:
        for m in pattern.finditer(work):
            groups = m.groupdict()
            unit = (groups.get("unit") or "day").lower()
            if groups.get("n") is not None:
                n = _number(groups["n"])
            elif re.search(r"\b(?:last|yesterday)\b", m.group(0), re.I):
                n = 1.0
            else:
                n = 0.0
            # Ages are kept in the unit the text used; the checker converts with the window.
            claims.append(Claim("recency", n, "age", m.span(), m.group(0), unit=unit))
            work = _mask(work, m.span())

    for m in _SHARE_RE.finditer(work):
        claims.append(
            Claim("magnitude", _number(m.group("n")) / 100, "share", m.span(), m.group(0))
        )
        work = _mask(work, m.span())

    for m in _COUNT_RE.finditer(work):
        n = 0.0 if m.group("none") else _number(m.group("n"))
        after = (m.group("after") or "").lower()
        # Only the count's own sentence: "...events next week. It drew 45 events" is no forecast.
        before = _SENTENCE_SPLIT.split(work[max(0, m.start() - 40) : m.start()])[-1]
        if after:
            forecast = "next" in after or "tomorrow" in after
        else:
            forecast = (
                _FORECAST_CUE.search(before) is not None
                or _FORECAST_AFTER.search(work[m.end() : m.end() + 40]) is not None
            )
        attribute = "forecast" if forecast else "count"
        claims.append(Claim("magnitude", n, attribute, m.span(), m.group(0)))
        work = _mask(work, m.span())

    for m in _RATIO_RE.finditer(work):
        n = _number(m.group("n"))
        if m.group("dir") and m.group("dir").lower() == "down" and not m.group("to") and n > 1:
            n = 1.0 / n  # "down 2x" means half
        claims.append(Claim("magnitude", n, "momentum", m.span(), m.group(0)))
        work = _mask(work, m.span())

    for m in _DIRECTION_RE.finditer(work):
        if _NEGATION.search(work[max(0, m.start() - 20) : m.start()]):
            continue
        kind = (m.lastgroup or "").replace("_", "-")
        claims.append(Claim("direction", kind, "trend", m.span(), m.group(0)))

    claims.sort(key=lambda c: c.span[0])
    return claims


def _word_direction(word: str) -> str:
    if word.startswith(("heat", "gain", "ris", "grow", "surg", "climb")):
        return "rising"
    if word.startswith(("cool", "los", "declin", "fall", "slip", "fad")):
        return "falling"
    return "steady"


# --------------------------------------------------------------------------------------------
# Checker


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


def _norm(text: str) -> str:
    return " ".join(text.replace('"', "'").split()).casefold()


#: The age words and the ages (in windows) a reader understands by them.
_AGE_WORDS: dict[str, tuple[int, float]] = {
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
        return _AGE_WORDS.get(str(claim.value))
    if claim.kind != "recency":
        return None
    value = float(claim.value)
    unit = claim.unit or "window"
    unit_seconds = window_seconds if unit == "window" else _UNIT_SECONDS[unit]
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
        return ("item", _norm(str(claim.value)))
    if claim.kind == "category":
        return ("category", _norm(claim.attribute.strip().strip("'\"")), claim.value)
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
        if title is not None and _norm(str(claim.value)) == _norm(title):
            return verdict(True, False, "the item's title")
        if any(_norm(str(claim.value)) == _norm(c) for c in features.categories):
            return verdict(True, False, "the item's category, quoted")
        if title is None:
            return verdict(False, False, "the item has no known title")
        return verdict(False, True, f"names another item (the title is {title!r})")

    if claim.kind == "category":
        name = claim.attribute.strip().strip("'\"")
        if not any(_norm(name) == _norm(c) for c in features.categories):
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
    opposite = _OPPOSITE.get(word)
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


# --------------------------------------------------------------------------------------------
# Perturbation (negatives for the contrastive explanation loss)

_DECOY_TITLES = (
    "The Silent Harbor",
    "Midnight Express Lane",
    "Paper Moons",
    "Operation Lighthouse",
    "A Winter in Lisbon",
    "Glass Horizon",
)
_DECOY_CATEGORIES = ("Western", "Documentary", "Musical", "Horror", "Gardening", "Jazz")
_FLIP_WORDS: dict[str, tuple[str, ...]] = {
    "rising": ("rising", "growing", "surging", "gaining momentum", "trending up", "climbing"),
    "falling": ("falling", "declining", "cooling off", "losing momentum", "trending down"),
    "new": ("long-running", "long-established"),
    "brand-new": ("long-running", "long-established"),
    "established": ("brand-new", "a newcomer"),
}


def _match_case(template: str, word: str) -> str:
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def _replace(text: str, span: tuple[int, int], new: str) -> str:
    return text[: span[0]] + new + text[span[1] :]


def perturb(
    text: str,
    features: ItemFeatures,
    rng: random.Random,
    *,
    kind: PerturbKind | None = None,
) -> str:
    """Make an unfaithful variant of an explanation: the contrastive loss's negative.

    Parameters
    ----------
    text
        A (faithful) explanation of ``features``.
    features
        The item's signals; used to pick a replacement that is wrong for this item.
    rng
        Source of randomness (the caller seeds it, so datasets are reproducible).
    kind
        ``"direction"`` flips every direction word (rising <-> falling, steady -> a strong
        move, new <-> long-running), or adds a false direction when there is none;
        ``"numbers"`` moves one number far outside the tolerance (x2 to x4), or adds a wrong
        count; ``"item"`` swaps the quoted title (or the category name) for another item's.
        ``None`` picks one at random.

    Returns
    -------
    str
        The perturbed text; :func:`check_explanation` finds a false claim in it.

    Examples
    --------
    >>> from model.tiny import synthetic_features
    >>> f = synthetic_features(random.Random(2), shape="rising")
    >>> perturb("It is rising.", f, random.Random(0), kind="direction")
    'It is losing momentum.'
    """
    kinds: tuple[PerturbKind, ...] = ("direction", "numbers", "item")
    chosen: PerturbKind = kind if kind is not None else rng.choice(kinds)
    claims = extract_claims(text)
    if chosen == "direction":
        return _flip_direction(text, claims, features, rng)
    if chosen == "numbers":
        return _change_number(text, claims, features, rng)
    return _swap_item(text, claims, features, rng)


def _flip_direction(
    text: str, claims: list[Claim], features: ItemFeatures, rng: random.Random
) -> str:
    sig = read_signals(features, None)
    directions = [c for c in claims if c.kind == "direction"]
    if not directions:
        # Assert the direction the signals (or newness) rule out.
        if sig.young:
            return f"{text} It is long-running.".strip()
        if sig.direction == "rising":
            word = rng.choice(_DIRECTION_WORDS["falling"])
        elif sig.direction == "falling":
            word = rng.choice(_DIRECTION_WORDS["rising"])
        else:
            # Steady or mixed: any clear move is unsupported by the signals.
            word = rng.choice(("surging", "falling sharply"))
        return f"{text} It is {word}.".strip()
    # Replace from the end so earlier spans keep their offsets.
    for claim in sorted(directions, key=lambda c: c.span[0], reverse=True):
        value = str(claim.value)
        if value == "steady":
            target = "rising" if sig.direction != "rising" else "falling"
            options = _FLIP_WORDS[target]
        else:
            options = _FLIP_WORDS.get(_OPPOSITE.get(value, value), ())
            if value in _AGE_WORDS:
                options = _FLIP_WORDS[value]
        new_word = _match_case(claim.text, rng.choice(options))
        text = _replace(text, claim.span, new_word)
    return text


_NUMBER_IN = re.compile(_NUM)


def _far(value: float, rng: random.Random, *, minimum_step: float) -> float:
    factor = rng.uniform(2.0, 4.0)
    # Going down from small values could land inside the absolute tolerance: go up instead.
    if value > 4 * minimum_step and rng.random() < 0.5:
        return value / factor
    return max(value * factor, value + minimum_step)


def _change_number(
    text: str, claims: list[Claim], features: ItemFeatures, rng: random.Random
) -> str:
    period = period_name(features.window_seconds)
    numeric = [c for c in claims if c.kind in ("magnitude", "recency")]
    if not numeric:
        wrong = _far(max(features.count, 1.0), rng, minimum_step=5.0)
        return f"{text} It drew about {format_count(wrong)} events {this_period(period)}.".strip()
    claim = rng.choice(numeric)
    value = float(claim.value)
    if claim.kind == "recency":
        unit = claim.unit or period_name(features.window_seconds)
        # Always older: at least 3 more units and at least double, beyond any tolerance.
        new_age = round(value) + max(3, round(value * rng.uniform(1.0, 3.0)))
        older = _plural(new_age, unit)
        lasting = re.match(r"(around|out|live|listed) for\b", claim.text, re.IGNORECASE)
        if lasting is not None:  # keep the sentence's grammar: "has been around for N weeks"
            return _replace(text, claim.span, f"{lasting.group(1)} for {older}")
        if claim.text.lower().startswith("in "):  # "drew 9 events in its first week"
            return _replace(text, claim.span, f"since it was first seen {older} ago")
        return _replace(text, claim.span, f"first seen {older} ago")
    if claim.attribute in ("count", "forecast") and value == 0:
        when = next_period(period) if claim.attribute == "forecast" else this_period(period)
        new_count = format_count(rng.uniform(8, 60))
        return _replace(text, claim.span, f"about {new_count} events {when}")
    if claim.attribute == "momentum":
        formatted = format_ratio(_far(value, rng, minimum_step=0.5))
    elif claim.attribute == "share":
        wrong = _far(value, rng, minimum_step=0.0005)
        if wrong > 1.0:  # a share cannot exceed 100%: move it down instead
            wrong = value / rng.uniform(2.0, 4.0)
        formatted = format_percent(wrong)
    else:
        formatted = format_count(_far(value, rng, minimum_step=3.0))
    m = _NUMBER_IN.search(claim.text)
    if m is None:  # pragma: no cover - every numeric claim pattern contains a number
        return text
    start = claim.span[0] + m.start()
    return _replace(text, (start, start + len(m.group(0))), formatted)


def _swap_item(text: str, claims: list[Claim], features: ItemFeatures, rng: random.Random) -> str:
    own_title = _norm(features.title or "")
    own_categories = {_norm(c) for c in features.categories}
    titles = [c for c in claims if c.kind == "item"]
    if titles:
        claim = titles[0]
        decoy = rng.choice([t for t in _DECOY_TITLES if _norm(t) != own_title])
        return _replace(text, claim.span, f'"{decoy}"')
    categories = [c for c in claims if c.kind == "category"]
    if categories:
        claim = categories[0]
        decoy = rng.choice([c for c in _DECOY_CATEGORIES if _norm(c) not in own_categories])
        start = claim.span[0] + claim.text.index(claim.attribute)
        return _replace(text, (start, start + len(claim.attribute)), decoy)
    decoy = rng.choice([t for t in _DECOY_TITLES if _norm(t) != own_title])
    return f'"{decoy}": {text}'


def forecast_sentence(features: ItemFeatures, predicted_log_count: float) -> str:
    """The forced opening of every TRAIL explanation: the model's own forecast, as a count.

    >>> from model.tiny import synthetic_features
    >>> import random
    >>> forecast_sentence(synthetic_features(random.Random(0)), math.log1p(41.6))
    'Forecast: about 42 events next month. '
    """
    count = max(0.0, math.expm1(predicted_log_count))
    period = period_name(features.window_seconds)
    return f"Forecast: about {format_count(count)} events {next_period(period)}. "


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
