"""Time units of plain-number timestamps, and the horizon beyond which a time is malformed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import pyarrow as pa

from streams.eventlog.log import MAX_BAD_ROWS, BadRow, DatasetError
from streams.eventlog.validate import Parsed
from streams.trend.windows import parse_duration

#: Seconds per unit of a plain-number timestamp.
TIME_UNITS: Mapping[str, float] = MappingProxyType({"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9})
TimeUnit = Literal["auto", "s", "ms", "us", "ns"]
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
#: ``time_unit="auto"``: a median plain-number time below the bound means that unit. Each bound
#: is year 5138 in its unit, and 1973 in the next one: no real date falls between two readings.
_UNIT_BOUNDS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", 1e20))
#: 9999-12-31T23:59:59Z: no later time is ever accepted (nor can it be shown as a date).
LATEST_TIME = 253_402_300_799.0
#: The automatic horizon never refuses a time between these (1973-03-03 and 2100-01-01): every
#: millisecond epoch after Feb 1970 read as seconds lies after the end, every second epoch
#: read as milliseconds before the start.
_PLAUSIBLE_START = 1e8
_PLAUSIBLE_END = 4_102_444_800.0
#: The automatic horizon widens the log's 1st..99th percentile span by this factor of it ...
_HORIZON_SPREAD = 10.0
#: ... or by a year, whichever is more, on each side.
_HORIZON_MIN_MARGIN = 365 * 86_400.0
#: The share of times at each end that does not count for the log's span.
_HORIZON_TRIM = 0.01


def horizon_margin(value: str | float) -> Literal["auto", "off"] | float:
    """Parse a ``time_horizon``: ``"auto"``, ``"off"``, or a duration as seconds.

    Parameters
    ----------
    value : str or float
        ``"auto"``, ``"off"``, a duration such as ``"30d"``, or seconds.

    Returns
    -------
    "auto", "off" or float
        The policy, or the margin in seconds.

    Raises
    ------
    ValueError
        Any other value.

    Examples
    --------
    >>> horizon_margin("auto"), horizon_margin("2d"), horizon_margin(60)
    ('auto', 172800.0, 60.0)
    """
    if value in ("auto", "off"):
        return "auto" if value == "auto" else "off"
    try:
        return float(parse_duration(value))
    except ValueError as exc:
        raise ValueError(
            f"time horizon {value!r} is not auto, off or a duration such as 30d"
        ) from exc


def unit_of(parsed: Parsed, time_unit: str, path: Path) -> tuple[str, list[str]]:
    """The unit of the log's plain-number times, and a note when ``"auto"`` chose one not s."""
    if time_unit != "auto":
        return time_unit, []
    numbers = parsed.timestamps
    if not parsed.numeric.all():
        numbers = numbers[parsed.numeric]
    if numbers.size == 0 or float(numbers.max()) < _UNIT_BOUNDS[0][1]:
        return "s", []  # (without a median: this is every log of seconds, and fast)
    median = float(np.median(numbers))
    unit = next((unit for unit, bound in _UNIT_BOUNDS if median < bound), None)
    if unit is None:
        raise DatasetError(
            f"{path}: cannot tell the unit of the timestamps: their median, {median:.4g}, is "
            "too large even for nanoseconds since 1970. Choose one with --time-unit "
            f"{{{','.join(TIME_UNITS)}}} (time_unit=...)."
        )
    if unit == "s":
        return unit, []
    return unit, [
        f"{path.name}: timestamps read as {_UNIT_NAMES[unit]} since 1970 (their median is "
        f"{median:.4g}); choose another unit with --time-unit"
    ]


def _horizon(seconds: np.ndarray, margin: Literal["auto", "off"] | float) -> tuple[float, float]:
    """The earliest and latest time a row may have (see the module's notes)."""
    if margin == "off" or seconds.size == 0:
        return -math.inf, LATEST_TIME
    low, high = float(seconds.min()), float(seconds.max())
    # Shortcuts that refuse nothing, without sorting: the common case of a clean log.
    if margin == "auto" and _PLAUSIBLE_START <= low and high <= _PLAUSIBLE_END:
        return _PLAUSIBLE_START, _PLAUSIBLE_END
    if margin != "auto" and high - low <= margin and high <= LATEST_TIME:
        return low, high
    usable = seconds[seconds <= LATEST_TIME]
    if usable.size == 0:
        return -math.inf, LATEST_TIME
    count = usable.size
    trim = min(math.ceil(_HORIZON_TRIM * count), (count - 1) // 2)
    ends = np.partition(usable, sorted({trim, count - 1 - trim}))
    first, last = float(ends[trim]), float(ends[count - 1 - trim])
    if margin == "auto":
        widen = max(_HORIZON_MIN_MARGIN, _HORIZON_SPREAD * (last - first))
        start = min(first - widen, _PLAUSIBLE_START)
        return start, min(max(last + widen, _PLAUSIBLE_END), LATEST_TIME)
    return first - margin, min(last + margin, LATEST_TIME)


def _instant(seconds: float) -> str:
    """A time as ISO-8601 UTC when it is a date, else as seconds."""
    if 0 <= seconds <= LATEST_TIME:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{seconds:.6g} s"


def _number(value: float) -> str:
    """A number as written in a file: ``4102444800000``, ``1e+20``, ``12.5``."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 20 else f"{value:.6g}"


def within_horizon(parsed: Parsed, unit: str, margin: Literal["auto", "off"] | float) -> Parsed:
    """Apply the time unit, then refuse (report and count) the rows beyond the horizon."""
    raw = parsed.timestamps
    seconds = raw
    if unit != "s" and parsed.numeric.any():
        seconds = raw.copy()
        seconds[parsed.numeric] = raw[parsed.numeric] / TIME_UNITS[unit]
    start, end = _horizon(seconds, margin)
    refused = (seconds < start) | (seconds > end)
    if not refused.any():
        return dataclasses.replace(parsed, timestamps=seconds)
    where = np.flatnonzero(refused)

    def reason(i: int) -> str:
        numeric = bool(parsed.numeric[i])
        shown = _number(float(raw[i])) if numeric else _instant(float(seconds[i]))
        what = f"{parsed.time_label} {shown}" + (
            f" (read as {_UNIT_NAMES[unit]})" if numeric else ""
        )
        if seconds[i] > LATEST_TIME:
            return f"{what} is after the year 9999"
        if seconds[i] > end:
            return f"{what} is after the horizon {_instant(end)} (see --time-horizon)"
        return f"{what} is before the horizon {_instant(start)} (see --time-horizon)"

    found = [BadRow(int(parsed.lines[i]), reason(int(i))) for i in where[:MAX_BAD_ROWS]]
    keep = ~refused
    mask = pa.array(keep)
    return Parsed(
        parsed.user_ids.filter(mask),
        parsed.item_ids.filter(mask),
        np.ascontiguousarray(seconds[keep]),
        tuple(sorted([*parsed.bad_rows, *found], key=lambda row: row.line)[:MAX_BAD_ROWS]),
        parsed.bad_row_count + int(where.size),
        lines=parsed.lines[keep],
        numeric=parsed.numeric[keep],
        time_label=parsed.time_label,
    )
