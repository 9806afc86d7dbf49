"""Property-based tests of event decoding (issue 11 item 10): whatever arrives on the events
topic, :func:`~streams.kafka.decode.decode_events` never raises, accepts exactly what the schema
(:class:`schemas.Event`) accepts with the same values, and dead-letters everything else with
its reason; and garbage mixed into a real log costs none of its good rows.

No broker: the records are built in memory with the fields of an aiokafka ``ConsumerRecord``.
Under CI (``CI=true``) the examples are derandomized, so a run is reproducible; elsewhere each
run explores new ones.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka_support import ml100k

from schemas import MAX_RECORD_BYTES, Event, RecordError, decode, encode
from streams.engine import Engine
from streams.kafka.deadletters import MAX_REASON_CHARS, dead_letter_record, read_dead_letter
from streams.kafka.decode import DecodedEvents, decode_events
from streams.kafka_cli import event_values
from streams.registry import scorer_factory
from streams.settings import Settings

NOW = 1_700_000_000.0
BOUND = NOW + 300.0
CATEGORIES = {
    "too_large",
    "missing_key",
    "missing_value",
    "bad_json",
    "not_object",
    "unknown_field",
    "invalid",
    "key_mismatch",
    "future",
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------ strategies
_odd_text = st.sampled_from(["", "\x00", "é", "\U0001f600", "\ud800", "\udfff", " ", "1"])
_text = st.one_of(st.text(max_size=12), _odd_text, st.text(min_size=250, max_size=260))
_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**53, 2**53 + 1, 10**15, 10**16, 1e300, 5e-324, NOW, BOUND]),
    st.sampled_from([BOUND + 0.001, NOW + 3 * 86400, 4102444800000, 1e6, 1e6 + 1]),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _text)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_text, children, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = ("user_id", "item_id", "ts", "type", "weight")


@st.composite
def _event_like(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object built around the event's fields: each present or not, of any type, often
    a plausible one; sometimes with extra fields."""
    obj: dict[str, Any] = {}
    for name in _FIELDS:
        if draw(st.integers(0, 9)) < (8 if name in ("user_id", "item_id", "ts") else 3):
            # Plausible values, and the near misses a sloppy fast path would take: booleans
            # (ints in Python), integral floats, numeric strings.
            near = st.one_of(st.booleans(), st.sampled_from([7.0, "7", "1e3", ""]))
            ids = st.one_of(st.text(min_size=1, max_size=8), st.integers(), near)
            plausible = {
                "user_id": ids,
                "item_id": ids,
                "ts": st.one_of(_numbers, near),
                "type": st.one_of(st.none(), st.text(max_size=70), near),
                "weight": st.one_of(_numbers, near),
            }[name]
            obj[name] = draw(st.one_of(plausible, plausible, _json))
    if draw(st.integers(0, 9)) == 0:
        obj.update(draw(st.dictionaries(_text, _json, max_size=2)))
    return obj


def _dumps(value: Any, ascii_only: bool) -> bytes:
    # The standard library writes any integer (orjson stops at 64 bits); a lone surrogate
    # becomes an escape (ASCII) or invalid UTF-8 (surrogatepass): both must be refused.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def _value(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=64))
    if kind == 2:
        return _dumps(draw(_json), draw(st.booleans()))
    if kind == 3:
        # Around the size limit: a valid event padded with whitespace to n bytes.
        core = b'{"user_id": "u", "item_id": "1", "ts": 1}'
        size = draw(st.integers(MAX_RECORD_BYTES - 2, MAX_RECORD_BYTES + 2))
        return core + b" " * (size - len(core))
    if kind == 4:
        tokens = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0", b"1.0e5", b"[" * 2000]
        token = draw(st.sampled_from(tokens))
        return b'{"user_id": "u", "item_id": "1", "ts": ' + token + b"}"
    raw = _dumps(draw(_event_like()), draw(st.booleans()))
    if draw(st.integers(0, 19)) == 0:  # a duplicated key: the last one counts
        raw = raw[:-1] + b', "ts": 5}' if raw.endswith(b"}") and len(raw) > 2 else raw
    return raw


def _item_key(value: bytes | None) -> bytes | None:
    """The key a correct producer would give ``value``: its item_id's UTF-8 bytes."""
    try:
        obj = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    item = obj.get("item_id") if isinstance(obj, dict) else None
    if isinstance(item, bool) or not isinstance(item, int | str):
        return None
    try:
        return str(item).encode("utf-8")
    except UnicodeEncodeError:
        return None


@st.composite
def _records(draw: st.DrawFn) -> list[SimpleNamespace]:
    out = []
    for offset in range(draw(st.integers(0, 12))):
        value = draw(_value())
        choice = draw(st.integers(0, 9))
        if choice == 0:
            key = None
        elif choice == 1:
            key = draw(st.binary(max_size=300))
        else:
            key = _item_key(value)
            if key is None:
                key = draw(st.binary(max_size=8))
        out.append(SimpleNamespace(offset=offset, key=key, value=value, timestamp=offset))
    return out


# ------------------------------------------------------------------------------ the oracle
def _expected(record: SimpleNamespace, max_ts: float) -> Event | str:
    """What the schema says of ``record``: the event it carries, or the category of its
    dead letter."""
    if record.value is None:
        return "missing_value"
    if len(record.value) > MAX_RECORD_BYTES:
        return "too_large"
    if record.key is None:
        return "missing_key"
    try:
        event = decode(Event, record.value)
    except RecordError:
        return "schema"
    if record.key != event.item_id.encode("utf-8"):
        return "key_mismatch"
    if event.ts > max_ts:
        return "future"
    return event


def _check(records: list[SimpleNamespace], decoded: DecodedEvents, max_ts: float) -> None:
    n_good = len(decoded.records)
    assert n_good + len(decoded.dead) == len(records), "every record accepted or dead"
    assert len(decoded.item_ids) == len(decoded.user_ids) == len(decoded.timestamps) == n_good
    assert decoded.weights is None or len(decoded.weights) == n_good
    good = {id(r): i for i, r in enumerate(decoded.records)}
    dead = {letter.offset: letter for letter in decoded.dead}
    assert len(dead) == len(decoded.dead)
    positions = []
    for record in records:
        expected = _expected(record, max_ts)
        if isinstance(expected, Event):
            assert id(record) in good, (record, expected)
            i = good[id(record)]
            positions.append(i)
            assert decoded.item_ids[i] == expected.item_id
            assert decoded.user_ids[i] == expected.user_id
            assert decoded.timestamps[i] == expected.ts
            weight = 1.0 if decoded.weights is None else decoded.weights[i]
            assert weight == expected.weight
            continue
        letter = dead[record.offset]
        assert letter.kind == "malformed" and letter.category in CATEGORIES
        assert letter.reason.strip(), letter
        if expected == "schema":
            try:
                decode(Event, record.value)
            except RecordError as exc:
                assert letter.reason == str(exc)
        else:
            assert letter.category == expected, (record, letter)
        assert (letter.key, letter.value) == (record.key, record.value)
        # The dead-letter record is writable and reads back to its source and bytes.
        key, value, headers = dead_letter_record(letter, "fuzz")
        back = read_dead_letter(SimpleNamespace(key=key, value=value, headers=headers))
        assert back.source == ("events", 3, record.offset)
        assert back.value == record.value and back.category == letter.category
        assert 0 < len(back.reason) <= MAX_REASON_CHARS
    assert positions == sorted(positions), "accepted events keep their order"


@FUZZ
@given(records=_records(), bounded=st.booleans())
def test_decoding_never_raises_and_accounts_for_every_record(
    records: list[SimpleNamespace], bounded: bool
) -> None:
    """Arbitrary bytes, JSON values and field types: ``decode_events`` never raises; every
    record is either accepted with exactly the schema's values (user id included) or
    dead-lettered with a reason (the schema's own, or why its key, size or time is wrong);
    count in = accepted + dead. Catches a fast path that accepts what the schema refuses (or
    with other values), a decoder that raises on some input, or one that drops a record."""
    max_ts = BOUND if bounded else math.inf
    decoded = decode_events(records, "events", 3, max_ts=max_ts)
    _check(records, decoded, max_ts)


# ------------------------------------------------------------------------------ a real log
N_REAL = 3_000


@pytest.fixture(scope="module")
def real_log() -> tuple[list[SimpleNamespace], list[bytes]]:
    """The first ML-100K events as ``trail produce`` writes them, and the clean engine output
    (every ScoreUpdate, encoded) of a 1-day-window replay of them."""
    log = ml100k(N_REAL)
    values = event_values(log)
    records = [
        SimpleNamespace(offset=-1, key=str(item).encode(), value=value, timestamp=0)
        for item, value in zip(log.item_ids.tolist(), values, strict=True)
    ]
    engine = _engine()
    results = engine.ingest_ids(
        log.item_ids, np.asarray(log.timestamps), users=np.asarray(log.user_ids, dtype=object)
    )
    return records, [encode(u) for r in results for u in r.score_updates()]


def _engine() -> Engine:
    settings = Settings(window="1d", scorer="ewma-2")
    return Engine(settings.engine_config(), scorer_factory("ewma-2", settings)())


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_garbage_mixed_into_a_real_log_costs_no_good_row(
    real_log: tuple[list[SimpleNamespace], list[bytes]], data: st.DataObject
) -> None:
    """Random garbage records at random places of a real log, decoded in random batches:
    every good row arrives, in order, with its user; the engine fed the decoded columns
    publishes exactly what it publishes for the clean log; every garbage record is accounted
    for. Catches a bad record that takes a good neighbour with it (a batch-level failure) or
    shifts the columns."""
    good, clean_updates = real_log
    garbage = data.draw(st.lists(_value(), min_size=1, max_size=40), label="garbage")
    places = data.draw(
        st.lists(st.integers(0, len(good)), min_size=len(garbage), max_size=len(garbage)),
        label="places",
    )
    inserts: dict[int, list[bytes | None]] = {}
    for place, value in zip(places, garbage, strict=True):
        inserts.setdefault(place, []).append(value)
    stream: list[SimpleNamespace] = []
    is_good: list[bool] = []
    for i in range(len(good) + 1):
        for value in inserts.get(i, []):
            # No garbage can pass as an event: no key, or one that is not UTF-8 (no item_id's).
            key = data.draw(st.one_of(st.none(), st.binary(max_size=6).map(b"\xff".__add__)))
            stream.append(SimpleNamespace(offset=0, key=key, value=value, timestamp=0))
            is_good.append(False)
        if i < len(good):
            stream.append(SimpleNamespace(**vars(good[i])))
            is_good.append(True)
    for offset, record in enumerate(stream):
        record.offset = offset
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8), label="cuts"))
    engine = _engine()
    updates: list[bytes] = []
    arrived: list[SimpleNamespace] = []
    max_ts = NOW + 300.0  # the worker's bound; ML-100K is from 1997-98
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        batch = stream[start:stop]
        decoded = decode_events(batch, "events", 3, max_ts=max_ts)
        _check(batch, decoded, max_ts)
        arrived.extend(decoded.records)
        if decoded.records:
            codes = engine.state.catalog.codes(decoded.item_ids)
            users = np.asarray(decoded.user_ids, dtype=object)
            results, late = engine.ingest(codes, decoded.timestamps, decoded.weights, users=users)
            assert not late.any()
            updates += [encode(u) for r in results for u in r.score_updates()]
    wanted = [r.offset for r, ok in zip(stream, is_good, strict=True) if ok]
    assert [r.offset for r in arrived] == wanted
    assert [r.value for r in arrived] == [r.value for r in good]
    assert updates == clean_updates
