"""Row checks: ids and times turned into columns, each malformed row reported once.

Every reader hands its raw columns to :func:`validate`; a row that fails a check is dropped and
reported (:class:`~streams.eventlog.log.BadRow`) with the reason of its first failed check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas import MAX_ID_CHARS
from streams.eventlog.log import MAX_BAD_ROWS, BadRow, DatasetError

#: A plain decimal number, as accepted for unix seconds (no "nan", "inf" or hex).
_NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@dataclass(frozen=True)
class Parsed:
    """Valid events as Arrow string columns and NumPy times, plus the bad-row report.

    ``timestamps`` holds plain numbers as written (their unit is not applied yet), so that the
    parsed-file cache does not depend on ``time_unit``; ``numeric`` marks those rows. ``lines``
    is each event's line number, for reporting rows that the time checks refuse later.
    """

    user_ids: pa.ChunkedArray
    item_ids: pa.ChunkedArray
    timestamps: np.ndarray
    bad_rows: tuple[BadRow, ...]
    bad_row_count: int
    lines: np.ndarray
    numeric: np.ndarray
    time_label: str = "timestamp"


@dataclass(frozen=True)
class _Check:
    """Rows that fail one check, and how to describe such a row."""

    failed: np.ndarray
    reason: Callable[[int], str]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _null_mask(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.is_null().to_numpy())


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def as_text(label: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[_Check]]:
    """Decode a text or binary column as UTF-8; undecodable values become nulls and fail."""
    try:
        return column.cast(pa.string()), []
    except pa.ArrowInvalid:
        pass
    # Slow path, only for files with broken encoding: find the offending values one by one.
    values: list[str | None] = []
    broken = np.zeros(len(column), dtype=bool)
    for index, raw in enumerate(column.to_pylist()):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            broken[index] = True
    text = pa.chunked_array([pa.array(values, type=pa.string())])
    return text, [_Check(broken, lambda _: f"{label} is not valid UTF-8 text")]


def _id_column(label: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[_Check]]:
    """Turn an id column into trimmed strings, with checks for unusable ids."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _id_column(label, column.cast(kind.value_type))
    checks: list[_Check]
    if pa.types.is_integer(kind) or pa.types.is_null(kind):
        text, checks = column.cast(pa.string()), []
    elif pa.types.is_floating(kind):
        text, checks = _whole_numbers(label, column)
    elif _is_text(kind):
        text, checks = as_text(label, column)
    else:
        raise DatasetError(f"column {label} has type {kind}; expected strings or integers")
    trimmed = pc.utf8_trim_whitespace(text)
    length = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy()
    return trimmed, [
        _Check(_null_mask(column), lambda _: f"missing field {label}"),
        *checks,
        _Check(length == 0, lambda _: f"empty {label}"),
        _Check(
            length > MAX_ID_CHARS, lambda _: f"{label} is longer than {MAX_ID_CHARS} characters"
        ),
    ]


def _whole_numbers(label: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[_Check]]:
    """Float ids (pandas stores integer ids with gaps as floats): 7.0 becomes ``"7"``."""
    values = column.to_numpy()  # nulls become NaN
    whole = np.isfinite(values) & (values == np.round(values))
    integers = pa.array(np.where(whole, values, 0).astype(np.int64), mask=~whole)
    return pa.chunked_array([integers.cast(pa.string())]), [
        _Check(~whole, lambda i: f"{label} {float(values[i])!r} is not a whole number")
    ]


def _time_column(
    label: str, column: pa.ChunkedArray
) -> tuple[np.ndarray, np.ndarray, list[_Check]]:
    """Turn a timestamp column into float64 times, with checks for unusable times.

    Returns
    -------
    seconds, numeric, checks
        Unix seconds, except plain numbers (marked in ``numeric``), which are kept as they
        are written: their unit is applied later; and the checks.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _time_column(label, column.cast(kind.value_type))
    if _is_text(kind):
        text, checks = as_text(label, column)
        seconds, numeric, unparsed, empty = _parse_times(text)

        def shown(i: int) -> str:
            return _shown(text[i].as_py())

        checks += [
            _Check(empty, lambda _: f"empty {label}"),
            _Check(unparsed, lambda i: f"{label} {shown(i)} is not a number or an ISO-8601 time"),
        ]
    else:
        seconds, checks = _numeric_seconds(label, column), []
        numeric = np.full(len(seconds), _is_number(kind))

        def shown(i: int) -> str:
            return repr(float(seconds[i]))

    return (
        seconds,
        numeric,
        [
            _Check(_null_mask(column), lambda _: f"missing field {label}"),
            *checks,
            _Check(~np.isfinite(seconds), lambda i: f"{label} {shown(i)} is not finite"),
            _Check(seconds < 0, lambda i: f"{label} {shown(i)} is negative"),
        ],
    )


def _is_number(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    )


def _numeric_seconds(label: str, column: pa.ChunkedArray) -> np.ndarray:
    """Plain numbers, or unix seconds from a timestamp or date column (NaN where null)."""
    kind = column.type
    if _is_number(kind):
        return np.asarray(column.cast(pa.float64()).to_numpy())
    if pa.types.is_date(kind):
        column = column.cast(pa.timestamp("s"))
    elif not pa.types.is_timestamp(kind):
        raise DatasetError(
            f"column {label} has type {kind}; expected numbers, timestamps or ISO-8601 strings"
        )
    # Arrow keeps instants as UTC epoch values in the column's unit; naive times count as UTC.
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
    return np.asarray(column.cast(pa.int64()).to_numpy()) / per_second


def _parse_times(text: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse plain numbers or ISO-8601 strings.

    Returns
    -------
    seconds, numeric, unparsed, empty : numpy.ndarray
        The numbers as written, ISO times as unix seconds (NaN where unknown); and masks of
        plain numbers, of non-empty values that are not times, and of empty values.
    """
    trimmed = pc.utf8_trim_whitespace(text)
    present = ~_null_mask(trimmed)
    empty = pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), False).to_numpy()
    numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN), False).to_numpy()
    if numeric.all():
        seconds = trimmed.cast(pa.float64()).to_numpy()
        return seconds, numeric, np.zeros(len(seconds), dtype=bool), empty
    seconds = np.full(len(trimmed), np.nan)
    seconds[numeric] = trimmed.filter(pa.array(numeric)).cast(pa.float64()).to_numpy()
    other = present & ~numeric & ~empty
    if other.any():
        moments = pd.to_datetime(
            trimmed.filter(pa.array(other)).to_pandas(),
            utc=True,
            format="ISO8601",
            errors="coerce",
        )
        elapsed = (moments - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        seconds[other] = elapsed.to_numpy(dtype=np.float64, na_value=np.nan)
    unparsed = other & np.isnan(seconds)
    return seconds, numeric, unparsed, empty


def validate(
    users: pa.ChunkedArray,
    items: pa.ChunkedArray,
    times: pa.ChunkedArray,
    *,
    time_label: str,
    lines: np.ndarray,
    blank: np.ndarray,
    earlier: list[BadRow],
    earlier_count: int,
) -> tuple[Parsed, np.ndarray]:
    """Keep the rows that pass every check; report the others with their first failure.

    Returns
    -------
    parsed : Parsed
        The rows that pass, and the report.
    failed : numpy.ndarray
        Which of the given rows failed a check (blank rows do not).
    """
    user_text, user_checks = _id_column("user_id", users)
    item_text, item_checks = _id_column("item_id", items)
    seconds, numeric, time_checks = _time_column(time_label, times)
    checks = [*user_checks, *item_checks, *time_checks]
    failed = np.zeros(len(lines), dtype=bool)
    for check in checks:
        failed |= check.failed
    failed &= ~blank
    bad_index = np.flatnonzero(failed)
    found = [
        BadRow(int(lines[i]), next(check.reason(i) for check in checks if check.failed[i]))
        for i in bad_index[:MAX_BAD_ROWS]
    ]
    bad_rows = sorted([*earlier, *found], key=lambda row: row.line)[:MAX_BAD_ROWS]
    keep = ~(failed | blank)
    if not keep.all():
        mask = pa.array(keep)
        user_text, item_text, seconds = (
            user_text.filter(mask),
            item_text.filter(mask),
            seconds[keep],
        )
        lines, numeric = lines[keep], numeric[keep]
    parsed = Parsed(
        user_text,
        item_text,
        np.ascontiguousarray(seconds, dtype=np.float64),
        tuple(bad_rows),
        earlier_count + int(bad_index.size),
        lines=np.asarray(lines, dtype=np.int64),
        numeric=np.asarray(numeric, dtype=bool),
        time_label=time_label,
    )
    return parsed, failed
