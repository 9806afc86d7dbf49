"""How numbers, periods and titles are written.

Shared by the verbalizer and the perturber, so rounding is predictable, and by the prompt
(:func:`clean_title`), so the model reads titles as the explanations quote them.
"""

from __future__ import annotations


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


def plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


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


#: Words for each direction: the verbalizer picks one by variant, the perturber at random.
DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
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
