"""Claims: an explanation, verbalized or generated, parsed back into checkable statements."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ClaimKind = Literal["direction", "magnitude", "recency", "category", "item"]


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


NUMBER = r"\d[\d,]*(?:\.\d+)?"
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
    re.compile(rf"\bfirst (?:seen|appeared)\s+(?P<n>{NUMBER}|an?|one)\s+{_UNIT}\s+ago\b", re.I),
    re.compile(
        rf"\b(?:first (?:seen|appeared)|debuted)\s+(?:this|in the current)\s+{_UNIT}\b", re.I
    ),
    re.compile(rf"\bin (?:its|their) (?:first|debut|opening)\s+{_UNIT}\b", re.I),
    re.compile(rf"\bfirst (?:seen|appeared)\s+last\s+{_UNIT}\b", re.I),
    re.compile(r"\bfirst (?:seen|appeared)\s+(?P<day>today|yesterday)\b", re.I),
    re.compile(rf"\b(?:around|out|live|listed)\s+for\s+(?P<n>{NUMBER}|an?|one)\s+{_UNIT}\b", re.I),
    re.compile(
        rf"\b(?P<n>{NUMBER})\s+{_UNIT}\s+(?:old|since (?:its|their) (?:debut|release))\b", re.I
    ),
    re.compile(rf"\bdebuted\s+(?P<n>{NUMBER}|an?|one)\s+{_UNIT}\s+ago\b", re.I),
)
_RATIO_RE = re.compile(
    rf"(?:\b(?P<dir>up|down)\s+(?P<to>to\s+)?)?{_APPROX}(?P<n>{NUMBER})\s*(?:x|×|times)(?![a-z])",
    re.IGNORECASE,
)
_COUNT_RE = re.compile(
    rf"(?:{_APPROX}(?P<n>{NUMBER})|(?P<none>\bno|\bzero))\s+{_EVENT_NOUN}\b"
    rf"(?P<after>\s+(?:(?:this|last|next|in the (?:last|latest|next))\s+{_UNIT}|today|"
    r"tomorrow|yesterday))?",
    re.IGNORECASE,
)
_SHARE_RE = re.compile(
    rf"(?P<n>{NUMBER})\s*%\s+(?:share\b|of\s+(?:[\w']+\s+){{0,3}}?"
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
