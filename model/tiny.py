"""Synthetic item features: realistic inputs for tests, prompts' checks and export validation.

:func:`synthetic_features` draws realistic, internally consistent :class:`ItemFeatures` (EW
means, momentum, slope and the rest computed from a generated count history, exactly as their
definitions say); :func:`validation_features` is a reproducible set of them covering every
trend shape, the one an export is validated and calibrated on. It needs no torch. The tiny
stand-in for the base model that tests train on is :mod:`model.tiny_lm`, which builds on these.

>>> f = synthetic_features(random.Random(0), shape="new")
>>> f.age_windows <= 1, f.trend
(True, 'new')
"""

from __future__ import annotations

import math
import random
from typing import Literal

import numpy as np

from model.explain import NEW_MAX_AGE, read_signals
from schemas.records import ItemFeatures

Shape = Literal["rising", "falling", "steady", "new", "spiky"]
SHAPES: tuple[Shape, ...] = ("rising", "falling", "steady", "new", "spiky")

#: Half-lives, in windows, of the EW means in :class:`ItemFeatures`.
HALF_LIVES = (1, 2, 4, 8)
RECENT_WINDOWS = 8
WINDOW_LENGTHS = (3600, 86_400, 604_800, 2_592_000, 21_600)

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
_TITLE_FIRST = ("The", "A", "Last", "Lost", "Silent", "Golden", "Dark", "Little", "Red", "Blue")
_TITLE_SECOND = (
    "River", "Empire", "Kingdom", "Summer", "Storm", "Garden", "Mirror", "Road", "Heart",
    "Machine", "Island", "Letter", "Secret", "Voyage", "Dance",
)  # fmt: skip

def _ew_mean(history: list[float], half_life: float) -> float:
    # Windows before the item was first seen had zero events, so the mean starts at zero.
    alpha = 1.0 - 0.5 ** (1.0 / half_life)
    mean = 0.0
    for count in history:
        mean += alpha * (count - mean)
    return mean


def _fit(counts: tuple[float, ...]) -> tuple[float, float]:
    """Least-squares slope (per window) and acceleration (second derivative) over counts."""
    n = len(counts)
    if n < 2:
        return 0.0, 0.0
    x = np.arange(n, dtype=float)
    y = np.asarray(counts, dtype=float)
    slope = float(np.polyfit(x, y, 1)[0])
    accel = float(2.0 * np.polyfit(x, y, 2)[0]) if n >= 3 else 0.0
    return slope, accel


def _burstiness(counts: tuple[float, ...]) -> float:
    # Goh-Barabasi: (sigma - mu) / (sigma + mu), -1 for perfectly regular, towards 1 for bursts.
    mu = float(np.mean(counts))
    sigma = float(np.std(counts))
    return 0.0 if mu + sigma == 0 else (sigma - mu) / (sigma + mu)


def _history(rng: random.Random, shape: Shape, length: int) -> list[float]:
    level = math.exp(rng.uniform(math.log(1.0), math.log(800.0)))
    if shape == "rising":
        growth = rng.uniform(1.2, 1.7)
    elif shape == "falling":
        growth = rng.uniform(0.55, 0.85)
    elif shape == "steady":
        growth = 1.0
    else:
        growth = rng.uniform(0.7, 1.4)
    noise = 0.04 if shape == "steady" else 0.12
    # The trend acts over the last RECENT_WINDOWS windows; before that the item idles at a
    # level that makes the final count come out near `level`.
    moving = min(length, RECENT_WINDOWS)
    start = level / growth ** (moving - 1)
    counts: list[float] = []
    for t in range(length):
        steps = max(0, t - (length - moving))
        value = start * growth**steps * rng.uniform(1 - noise, 1 + noise)
        if shape == "spiky" and rng.random() < 0.2:
            value *= rng.uniform(3, 8)
        counts.append(value)
    return counts


def synthetic_features(
    rng: random.Random,
    *,
    shape: Shape | None = None,
    window_seconds: int | None = None,
    with_metadata: bool | None = None,
    weighted: bool | None = None,
) -> ItemFeatures:
    """Draw one item's features from a generated count history; every field is consistent.

    Parameters
    ----------
    rng
        Source of randomness; equal seeds give equal features.
    shape
        The history's shape (``rising``, ``falling``, ``steady``, ``new`` or ``spiky``);
        random when ``None``. The resulting ``trend`` is computed from the numbers with
        :func:`model.explain.read_signals`, so a noisy "rising" history may come out mixed.
    window_seconds
        Window length; random among hour, 6 hours, day, week and 30 days when ``None``.
    with_metadata
        Whether the item has a title and categories (and so category momentum); random when
        ``None`` (mostly yes).
    weighted
        Whether counts are weighted (fractional); random when ``None`` (mostly no).

    Returns
    -------
    ItemFeatures
        A valid record; ``item_id`` is a random number (it must never matter).

    Examples
    --------
    >>> f = synthetic_features(random.Random(5), shape="steady", window_seconds=604800)
    >>> f.window_seconds, abs(f.momentum - (f.ew_1 + 1) / (f.ew_8 + 1)) < 1e-9
    (604800, True)
    """
    drawn: Shape = shape if shape is not None else rng.choice(SHAPES)
    window = window_seconds or rng.choice(WINDOW_LENGTHS)
    meta = with_metadata if with_metadata is not None else rng.random() < 0.8
    is_weighted = weighted if weighted is not None else rng.random() < 0.15

    age = rng.randint(0, NEW_MAX_AGE) if drawn == "new" else rng.randint(NEW_MAX_AGE + 1, 60)
    raw = _history(rng, drawn, age + 1)
    history = [round(c, 1) if is_weighted else float(round(c)) for c in raw]
    recent = tuple(history[-RECENT_WINDOWS:])
    ew = {h: _ew_mean(history, h) for h in HALF_LIVES}
    slope, accel = _fit(recent)
    count = history[-1]
    others = count * rng.uniform(20, 2000) + rng.uniform(0, 100)
    share = count / (count + others) if count + others > 0 else 0.0

    title = None
    categories: tuple[str, ...] = ()
    category_momentum = None
    if meta:
        title = (
            f"{rng.choice(_TITLE_FIRST)} {rng.choice(_TITLE_SECOND)} ({rng.randint(1930, 2024)})"
        )
        categories = tuple(rng.sample(GENRES, rng.randint(1, 3)))
        if rng.random() < 0.85:
            category_momentum = round(math.exp(rng.uniform(math.log(0.4), math.log(2.5))), 3)

    fields = {
        "item_id": str(rng.randint(1, 10**9)),
        "window_end": 1_700_000_000 // window * window,
        "window_seconds": window,
        "count": count,
        "total": float(sum(history)),
        "recent_counts": recent,
        "ew_1": ew[1],
        "ew_2": ew[2],
        "ew_4": ew[4],
        "ew_8": ew[8],
        "momentum": (ew[1] + 1.0) / (ew[8] + 1.0),
        "slope": slope,
        "accel": accel,
        "burstiness": _burstiness(recent),
        "age_windows": age,
        "share": share,
        "category_momentum": category_momentum,
        "trend": "steady",
        "title": title,
        "categories": categories,
    }
    draft = ItemFeatures.model_validate(fields)
    signals = read_signals(draft)
    trend = "new" if signals.new else signals.direction
    fields["trend"] = "steady" if trend == "mixed" else trend
    return ItemFeatures.model_validate(fields)


def validation_features(count: int, seed: int = 0) -> list[ItemFeatures]:
    """Realistic item signals for validation: every trend shape, window length and metadata.

    >>> [f.trend for f in validation_features(3)] == [f.trend for f in validation_features(3)]
    True
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible validation inputs, not security
    return [synthetic_features(rng, shape=SHAPES[i % len(SHAPES)]) for i in range(count)]
