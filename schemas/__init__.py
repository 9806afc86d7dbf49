"""Wire contracts: events in, scores, trending lists and retraining rows out."""

from schemas.records import (
    MAX_ID_CHARS,
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    Event,
    ItemFeatures,
    ItemMeta,
    RecordError,
    ScoreUpdate,
    TrendCategory,
    TrendingItem,
    TrendingSnapshot,
    WindowSnapshotRow,
    decode,
    describe_validation_error,
    encode,
)

__all__ = [
    "MAX_ID_CHARS",
    "MAX_RECORD_BYTES",
    "SCHEMA_VERSION",
    "Event",
    "ItemFeatures",
    "ItemMeta",
    "RecordError",
    "ScoreUpdate",
    "TrendCategory",
    "TrendingItem",
    "TrendingSnapshot",
    "WindowSnapshotRow",
    "decode",
    "describe_validation_error",
    "encode",
]
