"""Wire contracts of TRAIL: every record that crosses a topic, a file or an HTTP boundary.

Each record is a frozen pydantic model that rejects unknown fields, so a producer typo is a
clear error (or a dead-letter record) instead of a silently ignored value. Records travel as
JSON encoded with orjson; :func:`decode` turns bytes into a record or raises
:class:`RecordError` with a message that names the field and the problem.

>>> raw = b'{"user_id": "u1", "item_id": "42", "ts": 1700000000}'
>>> event = decode(Event, raw)
>>> event.item_id, event.weight
('42', 1.0)
>>> try:
...     decode(Event, b'{"user_id": "u1", "item_id": "42", "ts": "soon"}')
... except RecordError as error:
...     print(error)
Event.ts: Input should be a valid number, unable to parse string as a number (got 'soon')
"""

from __future__ import annotations

import datetime
import math
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: A record larger than this is refused before parsing: a runaway producer must not be able to
#: make a consumer allocate without bound.
MAX_RECORD_BYTES = 64 * 1024

#: Identifiers are keys on topics and in tables: bounded and non-empty.
MAX_ID_CHARS = 256

#: Schema version written into every outgoing record, so consumers can tell formats apart.
SCHEMA_VERSION = 1

TrendCategory = Literal["rising", "falling", "steady", "new"]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]


class RecordError(ValueError):
    """A record that could not be decoded or validated; the message says exactly why."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _identifier(value: object) -> object:
    # Ids may arrive as JSON integers (MovieLens, Amazon); they are keys, so they become strings.
    # Booleans are ints in Python but never a sensible id.
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, not a boolean")
    if isinstance(value, int):
        return str(value)
    return value


class Event(_Record):
    """One interaction on the ``events`` topic (key = ``item_id``).

    ``ts`` is event time in unix seconds; ``weight`` scales the event's contribution to its
    window's count (a purchase may weigh more than a view).

    >>> Event(user_id=7, item_id=3, ts=10).user_id
    '7'
    >>> raw = b'{"user_id": "u", "item_id": "i", "ts": 1, "weight": -2, "colour": 1}'
    >>> try:
    ...     decode(Event, raw)
    ... except RecordError as error:
    ...     for problem in str(error).split("; "):
    ...         print(problem)
    Event.weight: Input should be greater than 0 (got -2)
    Event.colour: unknown field (got 1)
    """

    user_id: Identifier
    item_id: Identifier
    ts: float = Field(ge=0, description="Event time, unix seconds")
    type: Annotated[str, Field(max_length=64)] | None = None
    weight: float = Field(default=1.0, gt=0, le=1e6)

    _ids = field_validator("user_id", "item_id", mode="before")(_identifier)

    @field_validator("ts", mode="before")
    @classmethod
    def _finite_number(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number of unix seconds, not a boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number of unix seconds")
        return value


#: A category or a tag: a short non-empty name.
Label = Annotated[str, Field(min_length=1, max_length=128)]


class ItemMeta(_Record):
    """What is known about an item besides its traffic: one record of the ``items`` topic
    (key = ``item_id``; a null value removes the item's metadata) and one row of an
    ``--items`` file.

    Titles and categories reach the features, the prompts and the explanations, and categories
    drive category momentum; tags, brand, price and the release date travel with the catalog.
    ``year`` is the release year (a file's ``release_date`` of only a year sets it alone).
    Repeated categories or tags are kept once, in their first place.

    >>> ItemMeta(item_id="1", title="Toy Story (1995)", categories=("Animation", "Comedy")).year
    >>> ItemMeta(item_id=7, categories=("Toys", "Games", "Toys"), price="9.5").categories
    ('Toys', 'Games')
    """

    item_id: Identifier
    title: Annotated[str, Field(max_length=512)] | None = None
    categories: tuple[Label, ...] = Field(default=(), max_length=64)
    tags: tuple[Label, ...] = Field(default=(), max_length=64)
    brand: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    price: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    release_date: datetime.date | None = None
    year: int | None = Field(default=None, ge=1, le=9999)

    _ids = field_validator("item_id", mode="before")(_identifier)

    @field_validator("categories", "tags", mode="after")
    @classmethod
    def _once_each(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A repeated category would count the item twice in that category's momentum.
        return tuple(dict.fromkeys(value))

    @field_validator("price", mode="before")
    @classmethod
    def _price_number(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value


class ItemFeatures(_Record):
    """Trend signals of one item at the close of one window: the model's whole input.

    Counts are (weighted) events per window. ``ew_h`` is an exponentially weighted mean of the
    per-window counts with a half-life of ``h`` windows; ``momentum`` is ``(ew_1 + 1) /
    (ew_8 + 1)``; ``slope`` and ``accel`` are least-squares fits over ``recent_counts`` (oldest
    first, the last entry being this window).

    The sub-window signals: ``decayed_w32 .. decayed_w1`` are the item's events decayed in
    continuous time to ``window_end`` with half-lives of W/32, W/8, W/4, W/2 and W (W the window
    length); ``last_quarter`` / ``last_half`` count the events of the window's last quarter and
    half; ``users`` and ``returning_users`` are the window's distinct users of the item and
    those seen anywhere before the window began; ``return_rate`` is the share of the item's
    users of the window before who were active again in this one.
    """

    item_id: Identifier
    window_end: int = Field(description="End of the window, unix seconds (exclusive)")
    window_seconds: int = Field(gt=0)
    count: float = Field(ge=0)
    total: float = Field(ge=0, description="All events of the item up to window_end")
    recent_counts: tuple[float, ...]
    ew_1: float
    ew_2: float
    ew_4: float
    ew_8: float
    momentum: float
    slope: float
    accel: float
    burstiness: float = Field(ge=-1, le=1)
    age_windows: int = Field(ge=0, description="Windows since the item was first seen")
    share: float = Field(ge=0, le=1, description="Share of this window's traffic")
    category_momentum: float | None = None
    trend: TrendCategory
    title: str | None = None
    categories: tuple[str, ...] = ()
    decayed_w32: float = Field(default=0.0, ge=0)
    decayed_w8: float = Field(default=0.0, ge=0)
    decayed_w4: float = Field(default=0.0, ge=0)
    decayed_w2: float = Field(default=0.0, ge=0)
    decayed_w1: float = Field(default=0.0, ge=0)
    last_quarter: float = Field(default=0.0, ge=0)
    last_half: float = Field(default=0.0, ge=0)
    seconds_since_first: float = Field(default=0.0, ge=0)
    seconds_since_last: float = Field(default=0.0, ge=0)
    users: float = Field(default=0.0, ge=0)
    returning_users: float = Field(default=0.0, ge=0)
    return_rate: float = Field(default=0.0, ge=0, le=1)


class ScoreUpdate(_Record):
    """One item's score for one window on the ``scores`` topic (key = ``item_id``).

    ``(item_id, window_end, model_version)`` is the idempotency key: a repeat after a restart
    carries the same key and consumers keep the first.
    """

    schema_version: int = SCHEMA_VERSION
    item_id: Identifier
    window_end: int
    score: float = Field(description="Predicted log(1 + count) of the next window")
    rank: int = Field(ge=1)
    explanation: str | None = None
    features: ItemFeatures
    model_version: str

    @property
    def idempotency_key(self) -> str:
        """``item_id|window_end|model_version``: what consumers de-duplicate on."""
        return f"{self.item_id}|{self.window_end}|{self.model_version}"


class TrendingItem(_Record):
    """One entry of a trending list."""

    item_id: Identifier
    rank: int = Field(ge=1)
    score: float
    explanation: str | None = None
    title: str | None = None
    trend: TrendCategory | None = None
    recent_counts: tuple[float, ...] = ()


class TrendingSnapshot(_Record):
    """The global top-N of one window on the ``trending`` topic (key = ``"global"``)."""

    schema_version: int = SCHEMA_VERSION
    window_start: int
    window_end: int
    model_version: str
    items: tuple[TrendingItem, ...]
    changed_items: int = Field(ge=0, description="Items with events in this window")
    events: float = Field(ge=0, description="Weighted events in this window")


class WindowSnapshotRow(ItemFeatures):
    """One retraining example: an item's features at a window's close and what came next.

    ``next_count`` is the realised count of the following window, filled in once it closed;
    ``next_returning`` its distinct returning users (what HR@10 counts) and ``next_users``
    all its distinct users.
    """

    next_count: float = Field(ge=0)
    next_returning: float = Field(default=0.0, ge=0)
    next_users: float = Field(default=0.0, ge=0)


RecordT = TypeVar("RecordT", bound=BaseModel)


def describe_validation_error(model: type[BaseModel], error: ValidationError) -> str:
    """One line per problem: ``Model.field: message (got value)``."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(record)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        got = problem.get("input")
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{model.__name__}.{where}: {message} (got {shown})")
    return "; ".join(parts)


def decode(model: type[RecordT], raw: bytes | bytearray | memoryview | str) -> RecordT:
    """Parse JSON bytes into ``model``; raise :class:`RecordError` saying what is wrong."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(
            f"{model.__name__}: record of {len(raw)} bytes exceeds the {MAX_RECORD_BYTES} limit"
        )
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"{model.__name__}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RecordError(f"{model.__name__}: expected a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise RecordError(describe_validation_error(model, exc)) from None


def encode(record: BaseModel) -> bytes:
    """Serialise a record to compact JSON bytes (orjson)."""
    return orjson.dumps(record.model_dump(mode="json"))
