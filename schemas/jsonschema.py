"""JSON Schema files of the wire records, generated from the models.

The files under ``schemas/json/`` are committed so that consumers in any language can validate
records; ``tests/unit/test_schemas.py`` fails when they drift from the code. Regenerate with
``python -m schemas.jsonschema``.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.records import (
    Event,
    ItemFeatures,
    ItemMeta,
    ScoreUpdate,
    TrendingSnapshot,
    WindowSnapshotRow,
)

JSON_DIR = Path(__file__).parent / "json"
RECORDS: dict[str, type[BaseModel]] = {
    "event": Event,
    "item_meta": ItemMeta,
    "item_features": ItemFeatures,
    "score_update": ScoreUpdate,
    "trending_snapshot": TrendingSnapshot,
    "window_snapshot_row": WindowSnapshotRow,
}


def render(model: type[BaseModel]) -> bytes:
    """The schema of ``model`` as stable, indented JSON text."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(schema, option=options)


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in RECORDS.items():
        path = directory / f"{name}.schema.json"
        path.write_bytes(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
