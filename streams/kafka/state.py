"""The changelog state store: each events partition's checkpoint, written and read back.

Each partition's state is a checkpoint in the compacted ``<app_id>-state-changelog`` topic,
co-partitioned with the events topic (events partition p -> changelog partition p, key
``"p"``): the engine's ``TrendState.state_dict()``, the last applied offset, counters, the
item metadata's section (:mod:`streams.kafka.items`), and the scorer's ``state_dict()`` when
it has one, as JSON (orjson) compressed with zlib, in chunks of :data:`CHUNK_BYTES` under a
header record with the SHA-256 (:class:`StateStore`). Never pickle.

What a checkpoint holds is written by :func:`encode_checkpoint` and read back by
:func:`decode_checkpoint`, side by side below, so the two cannot drift apart unseen.

Exactness after a restart holds for scorers without hidden state (the baselines) and for
scorers that expose ``state_dict()`` / ``load_state_dict()`` (the River regression does: its
weights and optimizer moments travel in the checkpoint, beside the last window's retraining
rows that its next ``learn`` needs); an online learner without them restarts its learning
from the checkpoint on, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import ItemMeta
from streams.engine import Engine, EngineConfig
from streams.kafka.clients import KafkaClients, Reader, TopicPartition
from streams.kafka.items import items_checkpoint, restore_items_checkpoint
from streams.kafka.sender import BatchSender
from streams.settings import Settings
from streams.trend.state import TrendConfig, TrendState

log = logging.getLogger("trail.worker")

CHECKPOINT_FORMAT = 1
#: Checkpoints are cut into records of at most this many bytes (compressed).
CHUNK_BYTES = 256 * 1024


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-state-changelog"


@dataclass
class Checkpoint:
    """One partition's durable state: what was applied up to ``offset`` (inclusive)."""

    partition: int
    offset: int
    payload: dict[str, Any]


# ------------------------------------------------------------------------------ the payload
@dataclass(frozen=True)
class CheckpointContext:
    """What every checkpoint of one worker shares: its topics, engine configuration, catalog
    file and name."""

    events_topic: str
    items_topic: str
    config: EngineConfig
    file_items: Mapping[str, ItemMeta]
    file_fingerprint: str | None
    worker_id: str


@dataclass
class Restored:
    """A partition's state as a checkpoint gives it back (see :func:`decode_checkpoint`)."""

    state: TrendState
    pending: Any  # the engine's pending_state_dict()
    items_offset: int
    topic_items: dict[str, ItemMeta | None]
    counters: dict[str, int]
    scorer_state_lost: bool  # an online learner whose learning restarts here


def encode_checkpoint(
    context: CheckpointContext,
    *,
    partition: int,
    offset: int,
    engine: Engine,
    scorer: Any,
    topic_items: Mapping[str, ItemMeta | None],
    items_offset: int,
    counters: Mapping[str, int],
) -> dict[str, Any]:
    """The checkpoint payload of one partition (plain data; :meth:`StateStore.encode` makes it
    bytes). ``scorer`` is the partition's scorer (its ``state_dict()`` travels when it has one)."""
    scorer_state = None
    state_dict = getattr(scorer, "state_dict", None)
    if callable(state_dict):
        scorer_state = state_dict()
    state = engine.state
    items = items_checkpoint(state, topic_items, items_offset)
    items["topic"] = context.items_topic
    items["file"] = {"fingerprint": context.file_fingerprint, "items": len(context.file_items)}
    return {
        "format": CHECKPOINT_FORMAT,
        "topic": context.events_topic,
        "partition": partition,
        "offset": offset,
        "trend_state": state.state_dict(metadata=False),
        "pending": engine.pending_state_dict(),
        "items": items,
        "scorer": {
            "name": getattr(scorer, "name", None),
            "version": str(scorer.version),
            "state": scorer_state,
        },
        "counters": dict(counters),
        "written_at": time.time(),
        "worker": context.worker_id,
    }


def decode_checkpoint(
    context: CheckpointContext, partition: int, checkpoint: Checkpoint, scorer: Any
) -> Restored:
    """Read back what :func:`encode_checkpoint` wrote: the trend state with its metadata, the
    engine's pending work, the items topic's records and offset, the counters; ``scorer``
    (a fresh one) gets its saved state. Refuses another format, another partition's state and
    state built with other window settings."""
    payload = checkpoint.payload
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"checkpoint format {payload.get('format')!r} is not supported")
    if payload.get("topic") != context.events_topic or payload["partition"] != partition:
        raise RuntimeError(
            f"checkpoint of partition {partition} belongs to {payload.get('topic')}/"
            f"{payload.get('partition')}"
        )
    stored = TrendConfig.from_dict(payload["trend_state"]["config"])
    if stored != context.config.trend:
        raise RuntimeError(
            f"partition {partition}'s state was built with {stored.to_dict()}, but this "
            f"worker runs {context.config.trend.to_dict()}: use another app id (a new state) "
            "or the same window settings"
        )
    state = TrendState.from_state_dict(payload["trend_state"])
    items_offset, topic_items = _restore_metadata(context, partition, state, payload)
    scorer_info = payload.get("scorer") or {}
    load = getattr(scorer, "load_state_dict", None)
    lost = False
    if scorer_info.get("state") is not None and callable(load):
        load(scorer_info["state"])
    elif getattr(scorer, "learns_online", False):
        lost = True
    counters = {k: int(v) for k, v in (payload.get("counters") or {}).items()}
    return Restored(state, payload.get("pending"), items_offset, topic_items, counters, lost)


def _restore_metadata(
    context: CheckpointContext, partition: int, state: TrendState, payload: Mapping[str, Any]
) -> tuple[int, dict[str, ItemMeta | None]]:
    """Give a restored ``state`` its metadata: the catalog file's, overlaid by what the
    checkpoint got from the items topic, with the category order it was saved in.
    Returns the items offset to read on from and the items topic's records."""
    items = payload.get("items")
    if items is None:
        # Written before the items topic: the file's metadata, recorded by fingerprint.
        old = payload.get("metadata")
        if old is not None:
            if old.get("fingerprint") != context.file_fingerprint:
                _warn_catalog_changed(context, partition, old.get("items"))
            state.add_metadata(context.file_items.values())
        return -1, {}
    topic_items = restore_items_checkpoint(state, items, context.file_items)
    file = items.get("file") or {}
    if file.get("fingerprint") != context.file_fingerprint:
        _warn_catalog_changed(context, partition, file.get("items"))
    offset = int(items["offset"])
    if items.get("topic") != context.items_topic:
        log.warning(
            "partition %d: its checkpoint read items topic %r, this worker reads %r: "
            "reading that one from its beginning",
            partition,
            items.get("topic"),
            context.items_topic,
        )
        offset = -1
    return offset, topic_items


def _warn_catalog_changed(context: CheckpointContext, partition: int, then: Any) -> None:
    log.warning(
        "partition %d: the --items catalog (%d items) is not the one its state was built "
        "with (%s items): the current one applies from here on",
        partition,
        len(context.file_items),
        then,
    )


# ------------------------------------------------------------------------------ the store
class StateStore:
    """Checkpoints in a compacted topic, keyed by partition, co-partitioned with the events.

    Records of changelog partition ``p``: chunks ``p/<gen>.<writer>/<i>`` (zlib-compressed
    JSON), then the header ``p`` = ``{"gen", "writer", "chunks", "sha256", "offset", ...}``.
    A checkpoint's chunks are written before its header and the previous checkpoint's chunks
    are tombstoned after it, so a crash at any point leaves a header whose chunks are complete.
    Chunk keys carry a random per-process writer token: a stale owner that writes after a
    rebalance (a "zombie") can make the header point to its own older but self-consistent
    checkpoint (more records are re-applied: at-least-once), never mix its chunks with the new
    owner's.
    """

    def __init__(self, settings: Settings, topic: str, clients: KafkaClients | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.clients = clients
        self.writer = uuid.uuid4().hex[:12]
        self._generation: dict[int, int] = {}
        self._live: dict[int, list[bytes]] = {}  # chunk keys of the current checkpoint
        self._orphans: dict[int, list[bytes]] = {}

    @staticmethod
    def _chunk_key(partition: int, generation: int, writer: str, index: int) -> bytes:
        return f"{partition}/{generation}.{writer}/{index}".encode()

    # -------------------------------------------------------------- writing
    @staticmethod
    def encode(payload: Any) -> bytes:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    def records(
        self, partition: int, offset: int, payload: Any = None, *, data: bytes | None = None
    ) -> tuple[list[tuple[bytes, bytes | None]], int]:
        """The changelog records of a checkpoint of ``partition`` (chunks, header, tombstones
        of the previous generation), in the order they must be written, and its size.
        ``data`` is the payload already encoded and compressed (``zlib(encode(payload))``)."""
        if data is None:
            data = zlib.compress(self.encode(payload), 1)
        generation = self._generation.get(partition, 0) + 1
        chunks = max(1, math.ceil(len(data) / CHUNK_BYTES))
        keys = [self._chunk_key(partition, generation, self.writer, i) for i in range(chunks)]
        out: list[tuple[bytes, bytes | None]] = [
            (key, data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]) for i, key in enumerate(keys)
        ]
        header = {
            "format": CHECKPOINT_FORMAT,
            "gen": generation,
            "writer": self.writer,
            "chunks": chunks,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "offset": offset,
            "codec": "json+zlib",
        }
        out.append((str(partition).encode(), orjson.dumps(header)))
        stale = self._live.get(partition, []) + self._orphans.pop(partition, [])
        out.extend((key, None) for key in stale if key not in keys)
        self._generation[partition] = generation
        self._live[partition] = keys
        return out, len(data)

    def save(self, sender: BatchSender, partition: int, offset: int, payload: Any) -> int:
        """Queue a checkpoint of ``partition`` in ``sender``; returns its compressed size.
        It is durable once the sender's next flush returns."""
        records, size = self.records(partition, offset, payload)
        for key, value in records:
            sender.add(self.topic, partition, key, value)
        return size

    # -------------------------------------------------------------- reading
    async def load(
        self, partitions: Sequence[int], reader: Reader | None = None
    ) -> dict[int, Checkpoint | None]:
        """The latest checkpoint of each partition (None where there is none). ``reader`` is a
        started consumer without a group (one is made when not given)."""
        result: dict[int, Checkpoint | None] = dict.fromkeys(partitions)
        if not partitions:
            return result
        own = reader is None
        if reader is None:
            if self.clients is None:
                from streams.kafka.aiokafka_clients import AiokafkaClients

                self.clients = AiokafkaClients()
            reader = await self.clients.start_reader(self.settings)
        latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            begins = await reader.beginning_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > begins[tp]}
            for tp in remaining:
                reader.seek(tp, begins[tp])
            while remaining:
                batches = await reader.getmany(*remaining, timeout_ms=1000)
                for tp, records in batches.items():
                    store = latest[tp.partition]
                    for record in records:
                        if record.key is not None:
                            store[record.key] = record.value
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            if own:
                await reader.stop()
        for p in partitions:
            result[p] = self._assemble(p, latest[p])
        return result

    def _assemble(self, partition: int, records: Mapping[bytes, bytes | None]) -> Checkpoint | None:
        header_raw = records.get(str(partition).encode())
        prefix = f"{partition}/".encode()
        if header_raw is None:
            self._generation[partition] = 0
            self._live[partition] = []
            self._orphans[partition] = [
                k for k, v in records.items() if v is not None and k.startswith(prefix)
            ]
            return None
        header = orjson.loads(header_raw)
        generation, chunks = int(header["gen"]), int(header["chunks"])
        keys = [
            self._chunk_key(partition, generation, str(header["writer"]), i) for i in range(chunks)
        ]
        parts = []
        for i, key in enumerate(keys):
            chunk = records.get(key)
            if chunk is None:
                raise RuntimeError(
                    f"checkpoint of partition {partition} (generation {generation}) in "
                    f"{self.topic} misses chunk {i}"
                )
            parts.append(chunk)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != header["sha256"]:
            raise RuntimeError(f"checkpoint of partition {partition} in {self.topic} is corrupt")
        payload = orjson.loads(zlib.decompress(data))
        self._generation[partition] = generation
        self._live[partition] = keys
        live = set(keys)
        self._orphans[partition] = [
            k
            for k, v in records.items()
            if v is not None and k.startswith(prefix) and k not in live
        ]
        return Checkpoint(partition, int(header["offset"]), payload)
