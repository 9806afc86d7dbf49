"""The topics of a worker's app, created when missing and checked when they exist.

The events, scores and dead-letter topics get ``partitions`` partitions when created (existing
ones keep theirs); the trending topic and the internal trending-partials topic one (the merge
reads one ordered stream); the state changelog and the items topic must have as many
partitions as the events topic, since partition p of each belongs to events partition p.
"""

from __future__ import annotations

from streams.kafka.clients import KafkaClients
from streams.kafka.options import TopicSpec, items_topic_spec
from streams.settings import Settings

#: How long the partials topic keeps records: far more than any merge waits for a window.
PARTIALS_RETENTION_MS = 7 * 86400 * 1000


async def ensure_worker_topics(
    clients: KafkaClients, settings: Settings, *, changelog: str, partials: str
) -> dict[str, int]:
    """Create the app's missing topics; every topic's partition count. Raises
    ``RuntimeError`` when an existing topic's partitions break the layout above."""
    specs = [
        TopicSpec(settings.events_topic, settings.partitions),
        TopicSpec(settings.scores_topic, settings.partitions),
        TopicSpec(settings.trending_topic, 1),
        TopicSpec(settings.dlq_topic, settings.partitions),
        TopicSpec(partials, 1, {"retention.ms": str(PARTIALS_RETENTION_MS)}),
    ]
    counts = await clients.ensure_topics(settings, specs)
    events = counts[settings.events_topic]
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    counts.update(await clients.ensure_topics(settings, [TopicSpec(changelog, events, compacted)]))
    if counts[changelog] != events:
        raise RuntimeError(
            f"{changelog} has {counts[changelog]} partitions but "
            f"{settings.events_topic} has {events}: they must match"
        )
    if counts[partials] != 1:
        raise RuntimeError(f"{partials} must have exactly one partition")
    if settings.items_topic:
        spec = items_topic_spec(settings.items_topic, events)
        counts.update(await clients.ensure_topics(settings, [spec]))
        if counts[settings.items_topic] != events:
            raise RuntimeError(
                f"{settings.items_topic} has {counts[settings.items_topic]} "
                f"partitions but {settings.events_topic} has {events}: they "
                "must match (partition p of the items topic holds the metadata of the items "
                "of events partition p)"
            )
    return counts
