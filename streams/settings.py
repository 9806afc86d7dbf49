"""All settings in one place: defaults, then ``TRAIL_*`` environment variables, then flags.

A :class:`Settings` object is built once at the edge (CLI, worker start) and passed down
explicitly; nothing below reads the environment itself. The one exception is
:mod:`streams.trend.folders`: ``model/`` and ``streams.eventlog`` sit below this module and
cannot import it, so the cache folder's default is defined there, and ``cache_dir`` takes it
from there too (``$TRAIL_CACHE_DIR``; the older ``$TRAIL_CACHE`` still read when it is unset).

The defaults that the engine also has (the window, ``top_n``, ``explain_top``,
``ranking_depth``) are read from where they are defined, not written again here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.engine import EngineConfig
from streams.scoring import DEFAULT_RESCORE_TOP
from streams.trend.folders import default_cache_dir
from streams.trend.state import TrendConfig
from streams.trend.windows import DEFAULT_WINDOW, WindowSpec, parse_duration


class Settings(BaseSettings):
    """TRAIL's settings. Every field can be set as ``TRAIL_<FIELD>`` in the environment.

    >>> Settings(window="1h").window_seconds
    3600
    """

    model_config = SettingsConfigDict(env_prefix="TRAIL_", frozen=True, extra="forbid")

    # Windows and ranking
    window: str = Field(DEFAULT_WINDOW, description="Tumbling window length, e.g. 1h, 7d, 30d")
    grace: str = Field("0s", description="How long after a window's end late events still count")
    top_n: int = Field(
        EngineConfig.top_n, ge=1, le=1000, description="Items in each trending snapshot"
    )
    explain_top: int = Field(
        EngineConfig.explain_top, ge=0, le=1000, description="Items explained per window"
    )
    ranking_depth: int = Field(
        EngineConfig.ranking_depth, ge=1, description="Items kept in each recorded ranking"
    )
    scorer: str = Field("river", description="Scorer name (see `trail replay --help`)")
    rescore_top: int = Field(
        DEFAULT_RESCORE_TOP, ge=1, description="Items the cheap ranker passes to TRAIL (M)"
    )
    model_dir: Path | None = Field(None, description="Exported ONNX model folder to serve")
    adapter: Path | None = Field(None, description="TRAIL adapter folder (PyTorch scorer)")
    # Not `runtime`: that one picks the Kafka worker's group consumer.
    lm_runtime: Literal["auto", "ort", "ort-fp32", "ort-int8-scorer", "ort-int8", "torch"] = Field(
        "auto",
        description="TRAIL's LM runtime: auto (ONNX Runtime, the adapter exported once "
        "into the cache, int8 scoring on the CPU where it held against fp32; PyTorch where "
        "ONNX Runtime cannot serve), ort (no fallback), ort-fp32, ort-int8-scorer, "
        "ort-int8 (explanations too), or torch",
    )
    base_model: str | None = Field(None, description="Base LM: HF id or path; default SmolLM2")
    explanation_guard: bool = Field(
        True, description="Replace LM explanations the checker does not fully verify"
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Cache folder: datasets, parsed logs, the base model, ONNX exports "
        "(TRAIL_CACHE_DIR; default ~/.cache/trail)",
    )
    # Event logs (trail replay / evaluate)
    time_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        "auto", description="Unit of plain-number timestamps in event logs (auto: from the median)"
    )
    time_horizon: str = Field(
        "auto",
        description="Event-log rows beyond this are malformed: auto, off, or a duration "
        "before the log's 1st / after its 99th percentile time, e.g. 30d",
    )

    # Kafka
    broker: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    events_topic: str = "events"
    scores_topic: str = "scores"
    trending_topic: str = "trending"
    dlq_topic: str = "events.dlq"
    items_topic: str = Field(
        "items",
        description="Compacted item-metadata topic (key = item_id, null value = removed), "
        "co-partitioned with the events topic; empty: none",
    )
    app_id: str = Field("trail", description="Consumer group / Faust application id")
    partitions: int = Field(4, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: Path | None = None
    batch_size: int = Field(10_000, ge=1, description="Events per engine batch in the worker")
    metrics_port: int = Field(9308, ge=0, le=65535, description="Prometheus port (0 = off)")
    # Kafka worker (streams/kafka/)
    runtime: Literal["aiokafka", "faust"] = Field(
        "aiokafka",
        description="Group consumer of `trail worker`: aiokafka (fastest) or a Faust app",
    )
    items_source: str | None = Field(
        None,
        description="Item catalog the worker starts from: a CSV, Parquet or JSON-lines file "
        "(see streams.eventlog.items), a dataset name or a RecBole .inter path",
    )
    checkpoint_interval: str = Field(
        "10s", description="Checkpoint a partition's state at least this often (and every close)"
    )
    checkpoint_records: int = Field(
        200_000, ge=1, description="... or after this many records since its last checkpoint"
    )
    merge_idle_timeout: str = Field(
        "60s", description="Trending merge: a partition idle this long does not hold windows back"
    )
    progress_interval: str = Field(
        "1s", description="How often each partition reports its progress to the trending merge"
    )
    # Minutes, not days: an event time ahead of the clock moves its partition's watermark, and
    # every window it passes closes; the on-time events of those windows are then late.
    max_event_time_skew: str = Field(
        "5m",
        description="Events more than this far ahead of the worker's clock are dead-lettered "
        "as future: no record moves a partition's watermark past the clock plus this (0s: off)",
    )
    replication_factor: int = Field(
        1, ge=1, description="Replication factor of the topics the worker creates"
    )
    session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        description="Consumer group session timeout (a dead worker's partitions "
        "move after this long)",
    )

    @field_validator(
        "checkpoint_interval", "merge_idle_timeout", "progress_interval", "max_event_time_skew"
    )
    @classmethod
    def _worker_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("time_horizon")
    @classmethod
    def _horizon(cls, value: str) -> str:
        if value not in ("auto", "off"):
            parse_duration(value)
        return value

    @field_validator("window", "grace")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _cache_dir(cls, value: object) -> object:
        # As the lower layers read it: empty means unset, "~" is the home folder.
        if value is None or value == "":
            return default_cache_dir()
        return Path(str(value)).expanduser() if isinstance(value, str | Path) else value

    @property
    def window_seconds(self) -> int:
        return parse_duration(self.window)

    @property
    def grace_seconds(self) -> int:
        return parse_duration(self.grace)

    def engine_config(self) -> EngineConfig:
        spec = WindowSpec(length=self.window_seconds, grace=self.grace_seconds)
        if spec.length == 0:
            raise ValueError("window must be longer than 0 s")
        return EngineConfig(
            trend=TrendConfig(window=spec),
            top_n=self.top_n,
            explain_top=self.explain_top,
            ranking_depth=self.ranking_depth,
        )
