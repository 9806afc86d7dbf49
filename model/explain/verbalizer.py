"""The verbalizer: one or two short sentences about an item that are true of its signals.

It is the source of the explanation targets the model is fine-tuned on; the ``variant``
argument varies the wording so the model learns content, not one template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from model.explain.signals import (
    FLAT_SLOPE,
    MOVE_RATIO,
    OPPOSITE,
    Direction,
    Signals,
    period_name,
    read_signals,
    relative_slope,
)
from model.explain.wording import (
    DIRECTION_WORDS,
    clean_title,
    format_count,
    format_percent,
    format_ratio,
    plural,
    this_period,
)
from schemas.records import ItemFeatures

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
        f"{subject} was first seen {plural(age, period)} ago",
        f"{subject} has been around for {plural(age, period)}",
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
        ago = f"{subject} was first seen {plural(age, period)} ago"
        return ago + (f" and drew {dated}" if dated else "")
    if form == 3:
        return f"{subject} has been around for {plural(age, period)}{with_count}"
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
    >>> import random
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
            if relative_slope(features) <= FLAT_SLOPE:
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
            word = _choose(DIRECTION_WORDS[direction], variant, 0)
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
    if sig.predicted == OPPOSITE[sig.direction]:
        return None
    return sig.direction


def _category_name(features: ItemFeatures) -> str | None:
    for name in features.categories:
        if _SAFE_CATEGORY.match(name):
            return name
    return None
