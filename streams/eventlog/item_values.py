"""The values of an item catalog's fields: each read, checked against its limit, or refused.

:func:`item_meta` turns one row's values (by field name) into :class:`schemas.ItemMeta`; a value
of the wrong kind or over its limit raises :class:`BadValue` with the reason the reader reports
beside the row's line number (see :mod:`streams.eventlog.items` for the fields and formats).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Mapping

from pydantic import ValidationError

from schemas import MAX_ID_CHARS, ItemMeta

#: Separates the categories (or tags) of one item inside one text value.
LIST_SEPARATOR = "|"

_YEAR = re.compile(r"^(\d{4})(\.0*)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_LIMITS = {"title": 512, "brand": 256}
_LABEL_CHARS = 128
_MAX_LABELS = 64


class BadValue(ValueError):
    """A value that makes its row unusable; the message is the row's reason."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadValue(f"{name} is not valid UTF-8 text") from None
    if isinstance(value, bool) or not isinstance(value, str | int | float | decimal.Decimal):
        raise BadValue(f"{name} must be text, got {_shown(value)}")
    text = str(value).strip()
    if not text:
        return None
    limit = _LIMITS.get(name)
    if limit is not None and len(text) > limit:
        raise BadValue(f"{name} has {len(text)} characters, more than {limit}")
    return text


def _item_id(value: object) -> str:
    if isinstance(value, float):
        if not value.is_integer():
            raise BadValue(f"item_id must be text or an integer, got {_shown(value)}")
        value = int(value)  # an integer id stored as a float (a column with gaps, say)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _text("item_id", value)
    if text is None:
        raise BadValue("no item_id")
    if len(text) > MAX_ID_CHARS:
        raise BadValue(f"item_id has {len(text)} characters, more than {MAX_ID_CHARS}")
    return text


def _labels(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        parts = [_text(name, part) for part in value]
    else:
        text = _text(name, value)
        parts = [p.strip() for p in text.split(LIST_SEPARATOR)] if text else []
    labels = tuple(dict.fromkeys(p for p in parts if p))
    for label in labels:
        if len(label) > _LABEL_CHARS:
            raise BadValue(f"{name}: {_shown(label)} has {len(label)} characters, more than 128")
    if len(labels) > _MAX_LABELS:
        raise BadValue(f"{name}: {len(labels)} of them, more than {_MAX_LABELS}")
    return labels


def _price(value: object) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | decimal.Decimal):
        raise BadValue(f"price must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except ValueError:
        raise BadValue(f"price {_shown(value)} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise BadValue(f"price {_shown(value)} must be a finite number of 0 or more")
    return number


def _year(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 9999:
        return value
    if isinstance(value, float) and value.is_integer() and 1 <= value <= 9999:
        return int(value)
    text = value.strip() if isinstance(value, str) else None
    if text == "":
        return None
    match = _YEAR.match(text) if text is not None else None
    if match is None or int(match.group(1)) < 1:
        raise BadValue(f"{name} {_shown(value)} is not a year (YYYY)")
    return int(match.group(1))


def _release(value: object) -> tuple[dt.date | None, int | None]:
    """``(date, year)`` of a release date: a date, an ISO date or time, or a bare year."""
    if value is None:
        return None, None
    if isinstance(value, dt.datetime):
        return value.date(), value.year
    if isinstance(value, dt.date):
        return value, value.year
    if isinstance(value, int | float) and not isinstance(value, bool):
        year = _year("release_date", value)
        return None, year
    if not isinstance(value, str):
        raise BadValue(f"release_date must be a date, got {_shown(value)}")
    text = value.strip()
    if not text:
        return None, None
    if _YEAR.match(text):
        return None, _year("release_date", text)
    if _DATE.match(text):
        try:
            date = dt.datetime.fromisoformat(text).date() if len(text) > 10 else None
            date = date or dt.date.fromisoformat(text)
        except ValueError:
            pass
        else:
            return date, date.year
    raise BadValue(f"release_date {_shown(value)} is not a date (YYYY-MM-DD) or a year (YYYY)")


def item_meta(values: Mapping[str, object]) -> ItemMeta:
    """One row's fields (by :data:`COLUMNS` name) as an :class:`ItemMeta`; raises _Bad."""
    date, date_year = _release(values.get("release_date"))
    year = _year("year", values.get("year"))
    if year is not None and date_year is not None and year != date_year:
        raise BadValue(f"year {year} and release_date {values.get('release_date')!r} disagree")
    try:
        return ItemMeta(
            item_id=_item_id(values.get("item_id")),
            title=_text("title", values.get("title")),
            categories=_labels("categories", values.get("categories")),
            tags=_labels("tags", values.get("tags")),
            brand=_text("brand", values.get("brand")),
            price=_price(values.get("price")),
            release_date=date,
            year=year if year is not None else date_year,
        )
    except ValidationError as exc:  # the checks above leave little; say what is left plainly
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise BadValue(f"{where}: {problem['msg']}") from None
