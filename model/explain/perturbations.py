"""Perturbations: unfaithful variants of an explanation, the contrastive loss's negatives."""

from __future__ import annotations

import random
import re
from typing import Literal

from model.explain.checker import AGE_WORDS, normalized, title_key
from model.explain.claims import NUMBER, Claim, extract_claims
from model.explain.signals import OPPOSITE, period_name, read_signals
from model.explain.wording import (
    DIRECTION_WORDS,
    format_count,
    format_percent,
    format_ratio,
    next_period,
    plural,
    this_period,
)
from schemas.records import ItemFeatures

PerturbKind = Literal["direction", "numbers", "item"]

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
    >>> import random
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
            word = rng.choice(DIRECTION_WORDS["falling"])
        elif sig.direction == "falling":
            word = rng.choice(DIRECTION_WORDS["rising"])
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
            options = _FLIP_WORDS.get(OPPOSITE.get(value, value), ())
            if value in AGE_WORDS:
                options = _FLIP_WORDS[value]
        new_word = _match_case(claim.text, rng.choice(options))
        text = _replace(text, claim.span, new_word)
    return text


_NUMBER_IN = re.compile(NUMBER)


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
        older = plural(new_age, unit)
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
    own_title = title_key(features.title or "")
    own_categories = {normalized(c) for c in features.categories}
    titles = [c for c in claims if c.kind == "item"]
    if titles:
        claim = titles[0]
        decoy = rng.choice([t for t in _DECOY_TITLES if title_key(t) != own_title])
        return _replace(text, claim.span, f'"{decoy}"')
    categories = [c for c in claims if c.kind == "category"]
    if categories:
        claim = categories[0]
        decoy = rng.choice([c for c in _DECOY_CATEGORIES if normalized(c) not in own_categories])
        start = claim.span[0] + claim.text.index(claim.attribute)
        return _replace(text, (start, start + len(claim.attribute)), decoy)
    decoy = rng.choice([t for t in _DECOY_TITLES if title_key(t) != own_title])
    return f'"{decoy}": {text}'
