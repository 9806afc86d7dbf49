"""What an item's numbers say, in the checker's vocabulary: direction, newness, forecast.

The thresholds below are shared by the verbalizer (what it may say) and the checker (what it
accepts), so the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from schemas.records import ItemFeatures

Direction = Literal["rising", "falling", "steady"]

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
#: Seconds per unit of an age written in an explanation ("first seen 3 days ago").
UNIT_SECONDS = {
    "hour": 3600,
    "day": 86_400,
    "week": 604_800,
    "month": 2_592_000,
    "year": 31_536_000,
}
OPPOSITE: dict[str, str] = {"rising": "falling", "falling": "rising"}


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


def relative_slope(features: ItemFeatures) -> float:
    counts = features.recent_counts or (features.count,)
    return features.slope / (sum(counts) / len(counts) + 1.0)


def read_signals(features: ItemFeatures, predicted_log_count: float | None = None) -> Signals:
    """Classify an item's signals: direction from momentum and slope, newness, forecast.

    Rising needs momentum of at least ``MOVE_RATIO`` and a slope that is not clearly negative;
    falling is the mirror image; steady needs momentum inside the band and a flat slope
    (``|slope| <= FLAT_SLOPE * (mean recent count + 1)``). Anything else is ``"mixed"``.

    Examples
    --------
    >>> import random
    >>> from model.tiny import synthetic_features
    >>> f = synthetic_features(random.Random(3), shape="rising")
    >>> read_signals(f).direction
    'rising'
    >>> read_signals(f, predicted_log_count=0.0).predicted
    'falling'
    """
    rel_slope = relative_slope(features)
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
    >>> import random
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
