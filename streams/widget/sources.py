"""Where the hub's snapshots come from: the Kafka topics, or the embedded replay (demo)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from schemas import ScoreUpdate, TrendingSnapshot, decode
from schemas.records import RecordError
from streams.widget.hub import DEFAULT_HISTORY, TrendingHub

if TYPE_CHECKING:  # pragma: no cover
    from streams.engine import WindowResult
    from streams.settings import Settings

log = logging.getLogger("trail.widget")

#: Trending snapshots re-read from the topic at start, to rebuild rank changes and history.
KAFKA_BACKLOG_SNAPSHOTS = DEFAULT_HISTORY


def _fallback_explanation(features: Any) -> str:
    trend = features.trend
    counts = " → ".join(f"{c:g}" for c in features.recent_counts)
    return f"{trend.capitalize()}: {features.count:g} events this window (recent windows {counts})."


def _explainer() -> Callable[[Any, float], str]:
    """Grounded explanations for scorers that do not explain themselves (the baselines)."""
    from model.explain import verbalize  # pure Python, no model files: always importable

    def explain(features: Any, score: float) -> str:
        try:
            return str(verbalize(features, None, variant=0))
        except Exception:  # one odd record must not stop the demo: say it plainly instead
            return _fallback_explanation(features)

    return explain


class _DemoStopped(Exception):
    pass


class DemoSource:
    """The embedded replay on a dataset, one window every ``interval`` seconds, in a thread."""

    def __init__(
        self,
        hub: TrendingHub,
        *,
        dataset: str,
        settings: Settings,
        scorer: str,
        interval: float,
        windows: int | None = None,
        loop_forever: bool = False,
    ) -> None:
        self.hub = hub
        self.dataset = dataset
        self.settings = settings
        self.scorer = scorer
        self.interval = interval
        self.windows = windows
        self.loop_forever = loop_forever
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.error: str | None = None

    def start(self) -> None:
        self.hub.source_ready = True
        self._thread = threading.Thread(target=self._run, name="trail-widget-demo", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._replay_loop()
        except _DemoStopped:
            return
        except Exception as exc:  # keep serving what was published; say what went wrong
            self.error = f"{type(exc).__name__}: {exc}"
            self.hub.stats.source_errors += 1
            self.hub.source_ready = False
            log.exception("demo source failed")

    def _replay_loop(self) -> None:
        from streams.engine import Engine
        from streams.eventlog import load_events
        from streams.registry import scorer_factory
        from streams.replay import EvaluationWindows, replay

        config = self.settings.engine_config()
        length = config.trend.window.length
        log_ = load_events(self.dataset, progress=False)
        if self.windows is not None:
            first = int(log_.timestamps.min() // length)
            # Keep `windows` complete windows; the window after them is the log's partial end.
            log_ = log_.slice_time(None, float((first + self.windows + 1) * length))
        windows = EvaluationWindows.of(log_.timestamps, length, None)
        make = scorer_factory(self.scorer, self.settings)
        publisher = _HubPublisher(self, _explainer())
        while True:
            engine = Engine(config, make())
            replay(log_, engine, [publisher], windows, progress=False)
            if not self.loop_forever:
                log.info("demo replay finished after %d windows", self.published)
                return
            if self._stop.wait(self.interval):
                raise _DemoStopped
            self.hub.submit_threadsafe(self.hub.reset)


class _HubPublisher:
    """A replay publisher that hands each scored window's top-N to the hub, then pauses."""

    def __init__(self, source: DemoSource, explain: Callable[[Any, float], str]) -> None:
        self.source = source
        self.explain = explain

    def publish(self, result: WindowResult) -> None:
        if self.source._stop.is_set():
            raise _DemoStopped
        if not result.scored:
            return
        snapshot = result.trending()
        positions = result.order[: result.top_n].tolist()
        items = []
        for item, position in zip(snapshot.items, positions, strict=True):
            if item.explanation is None:
                text = self.explain(result.features.record(int(position)), item.score)
                item = item.model_copy(update={"explanation": text})
            items.append(item)
        snapshot = snapshot.model_copy(update={"items": tuple(items)})
        self.source.hub.submit_threadsafe(self.source.hub.apply_snapshot, snapshot)
        self.source.published += 1
        if self.source._stop.wait(self.source.interval):
            raise _DemoStopped

    def close(self) -> None:
        return None


class KafkaSource:
    """Follows the trending and scores topics with aiokafka (no group, manual assignment).

    At start the last few snapshots of the trending topic are re-read (rank changes and
    history need the window before); scores are followed from the end. Topics or partitions
    that appear later are picked up from their beginning. Records that do not decode are
    logged and counted; a broker outage is retried with backoff.
    """

    REFRESH_S = 10.0

    def __init__(
        self,
        hub: TrendingHub,
        settings: Settings,
        *,
        trending_topic: str,
        scores_topic: str,
        backlog: int = KAFKA_BACKLOG_SNAPSHOTS,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.trending_topic = trending_topic
        self.scores_topic = scores_topic
        self.backlog = backlog
        self.assigned: set[Any] = set()

    def _client_options(self) -> dict[str, Any]:
        from streams.kafka.options import client_options

        return {**client_options(self.settings), "client_id": "trail-widget"}

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self._consume()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.hub.stats.source_errors += 1
                log.warning("kafka source failed (%s); retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _wanted(self, consumer: Any) -> set[Any]:
        from aiokafka import TopicPartition

        # A fresh metadata fetch of every topic: consumer.partitions_for_topic() only knows the
        # topics of its cached metadata, which an assign-only consumer never extends.
        cluster = await consumer._client.fetch_all_metadata()
        wanted = set()
        for topic in (self.trending_topic, self.scores_topic):
            for partition in cluster.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, partition))
        return wanted

    async def _assign(self, consumer: Any, wanted: set[Any], *, initial: bool) -> None:
        positions = {tp: await consumer.position(tp) for tp in self.assigned & wanted}
        consumer.assign(list(wanted))
        new = sorted(wanted - self.assigned)
        ends = await consumer.end_offsets(new) if new else {}
        begins = await consumer.beginning_offsets(new) if new else {}
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        for tp in new:
            if not initial:
                consumer.seek(tp, begins[tp])
            elif tp.topic == self.trending_topic:
                consumer.seek(tp, max(begins[tp], ends[tp] - self.backlog))
            else:
                consumer.seek(tp, ends[tp])
        self.assigned = set(wanted)
        log.info("kafka source follows %s", ", ".join(f"{t.topic}[{t.partition}]" for t in new))

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            **self._client_options(),
        )
        self.assigned = set()
        try:
            await consumer.start()  # inside the try: a failed start must still be stopped
            warned = False
            while not self.assigned:
                wanted = await self._wanted(consumer)
                if any(tp.topic == self.trending_topic for tp in wanted):
                    await self._assign(consumer, wanted, initial=True)
                    break
                if not warned:
                    log.warning(
                        "waiting for topic %r on %s", self.trending_topic, self.settings.broker
                    )
                    warned = True
                await asyncio.sleep(1.0)
            self.hub.source_ready = True
            refreshed = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    for record in records:
                        self._handle(record)
                if time.monotonic() - refreshed > self.REFRESH_S:
                    refreshed = time.monotonic()
                    wanted = await self._wanted(consumer)
                    if wanted - self.assigned:
                        await self._assign(consumer, wanted | self.assigned, initial=False)
        finally:
            self.hub.source_ready = False
            await consumer.stop()

    def _handle(self, record: Any) -> None:
        try:
            if record.value is None:
                raise RecordError("empty record (tombstone)")
            if record.topic == self.trending_topic:
                self.hub.apply_snapshot(decode(TrendingSnapshot, record.value))
            else:
                self.hub.apply_score(decode(ScoreUpdate, record.value))
        except RecordError as exc:
            self._bad(record, str(exc))
        except Exception as exc:  # never let one record stop the widget
            self._bad(record, f"{type(exc).__name__}: {exc}")

    def _bad(self, record: Any, reason: str) -> None:
        self.hub.stats.bad_records += 1
        count = self.hub.stats.bad_records
        if count <= 20 or count % 1000 == 0:
            log.warning(
                "skipped bad record %s[%s]@%s (%d so far): %s",
                record.topic,
                record.partition,
                record.offset,
                count,
                reason[:300],
            )
