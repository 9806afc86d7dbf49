"""Wire records: validation messages, limits, round trips and committed JSON Schemas."""

from __future__ import annotations

import orjson
import pytest

from schemas import (
    MAX_RECORD_BYTES,
    Event,
    RecordError,
    ScoreUpdate,
    TrendingSnapshot,
    decode,
    encode,
)
from schemas.jsonschema import JSON_DIR, RECORDS, render


@pytest.mark.parametrize("name,model", sorted(RECORDS.items()))
def test_committed_json_schemas_match_the_code(name, model) -> None:
    committed = (JSON_DIR / f"{name}.schema.json").read_bytes()
    assert committed == render(model), (
        f"schemas/json/{name}.schema.json is stale: run python -m schemas.jsonschema"
    )


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"item_id": "1", "ts": 5}', "Event.user_id: Field required"),
        (b'{"user_id": "u", "item_id": "1", "ts": -1}', "Event.ts: Input should be greater"),
        (b'{"user_id": "u", "item_id": "1", "ts": true}', "not a boolean"),
        (b'{"user_id": "u", "item_id": "", "ts": 1}', "Event.item_id: String should have"),
        (b'{"user_id": "u", "item_id": "1", "ts": 1, "extra": 1}', "Event.extra: unknown field"),
        (b'{"user_id": "u", "item_id": [1], "ts": 1}', "Event.item_id: Input should be a"),
        (b'{"user_id": "u", "item_id": "1", "ts": NaN}', "not valid JSON"),
    ],
)
def test_bad_events_are_refused_with_a_precise_reason(raw: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message.replace("[", r"\[")):
        decode(Event, raw)


def test_huge_payloads_are_refused_before_parsing() -> None:
    raw = b'{"user_id": "' + b"u" * MAX_RECORD_BYTES + b'", "item_id": "1", "ts": 1}'
    with pytest.raises(RecordError, match="exceeds the 65536 limit"):
        decode(Event, raw)


def test_integer_ids_become_strings_and_defaults_apply() -> None:
    event = decode(Event, b'{"user_id": 5, "item_id": 17, "ts": 1.5}')
    assert (event.user_id, event.item_id, event.ts, event.weight, event.type) == (
        "5",
        "17",
        1.5,
        1.0,
        None,
    )


def test_records_round_trip_through_json() -> None:
    features = {
        "item_id": "9",
        "window_end": 100,
        "window_seconds": 10,
        "count": 3.0,
        "total": 7.0,
        "recent_counts": [0.0, 1.0, 3.0, 3.0],
        "ew_1": 2.0,
        "ew_2": 1.5,
        "ew_4": 1.0,
        "ew_8": 0.6,
        "momentum": 1.9,
        "slope": 1.1,
        "accel": -0.5,
        "burstiness": -0.3,
        "age_windows": 3,
        "share": 0.2,
        "trend": "new",
    }
    update = ScoreUpdate(
        item_id="9",
        window_end=100,
        score=1.2,
        rank=1,
        explanation="rising",
        features=features,
        model_version="m@1",
    )
    assert decode(ScoreUpdate, encode(update)) == update
    assert update.idempotency_key == "9|100|m@1"
    snapshot = TrendingSnapshot(
        window_start=90, window_end=100, model_version="m@1", items=(), changed_items=0, events=0
    )
    assert orjson.loads(encode(snapshot))["schema_version"] == 1
